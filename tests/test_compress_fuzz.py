"""Hostile, truncated and corrupted compressed files raise CompressedFormatError and nothing else."""

from __future__ import annotations

import json

import numpy as np
import pytest
import safetensors
import safetensors.numpy
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

from edgeprune.compress import CompressedFormatError, load_compressed, save_compressed
from edgeprune.masks import fine_grained_prune

FUZZ = settings(
    max_examples=1000,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
# One export per layout and value mode, each small so that mutations often hit the header.
EXPORTS = {
    "fp32": dict(values="fp32"),
    "fp16-int8": dict(values={"0.weight": "fp16", "_default": "int8"}),
    "kmeans": dict(values="kmeans", bits={"0.weight": 2, "_default": 3}),
}
HOSTILE_VALUES = [
    None, True, -1, 0, 1, 3, 255, 256, 2**31, 2**63, 10**30, -(10**30), 1.5, float("nan"), "x", "",
    "float32", "int64", "raw", "bitmap", "relative", "all", "kmeans", "int8", [], [0], [-1], [2**40, 2**40],
    [1] * 40, {}, {"key": "0.data"},
]
RECORD_FIELDS = ["name", "dtype", "shape", "layout", "values", "count", "bits", "scale", "codebook_size", "streams"]
STREAM_FIELDS = ["key", "length", "raw_length"]


def small_state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(36, 40), nn.Linear(40, 3))
    fine_grained_prune(model[0].weight.data, 0.5)
    fine_grained_prune(model[3].weight.data, 0.95)  # sparse enough for relative indices
    model[1].num_batches_tracked.fill_(3)
    return model.state_dict()


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("exports")
    blobs = {}
    for name, options in EXPORTS.items():
        save_compressed(small_state_dict(), folder / f"{name}.ep", level=3, **options)
        blobs[name] = (folder / f"{name}.ep").read_bytes()
    return blobs


def read_parts(blob: bytes, path) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    path.write_bytes(blob)
    with safetensors.safe_open(str(path), framework="numpy") as f:
        return f.metadata(), {key: f.get_tensor(key) for key in f.keys()}


def write_parts(path, metadata: dict[str, str], streams: dict[str, np.ndarray]) -> None:
    safetensors.numpy.save_file(streams, str(path), metadata=metadata)


def loads_or_rejects(path) -> None:
    """The property: a valid state dict of tensors, or CompressedFormatError."""
    try:
        state_dict = load_compressed(path)
    except CompressedFormatError:
        return
    assert all(isinstance(t, torch.Tensor) for t in state_dict.values())


def test_valid_exports_load(exports, tmp_path):
    for blob in exports.values():
        (tmp_path / "f.ep").write_bytes(blob)
        assert set(load_compressed(tmp_path / "f.ep")) == set(small_state_dict())


@FUZZ
@given(data=st.data())
def test_truncated_files_are_rejected(exports, tmp_path, data):
    blob = exports[data.draw(st.sampled_from(sorted(exports)))]
    cut = data.draw(st.integers(0, len(blob) - 1))
    (tmp_path / "f.ep").write_bytes(blob[:cut])
    with pytest.raises(CompressedFormatError):
        load_compressed(tmp_path / "f.ep")


@FUZZ
@given(data=st.data())
def test_flipped_and_inserted_bytes(exports, tmp_path, data):
    blob = bytearray(exports[data.draw(st.sampled_from(sorted(exports)))])
    for _ in range(data.draw(st.integers(1, 4))):
        where = data.draw(st.integers(0, len(blob) - 1))
        if data.draw(st.booleans()):
            blob[where] ^= data.draw(st.integers(1, 255))
        else:
            blob[where:where] = data.draw(st.binary(min_size=1, max_size=8))
    (tmp_path / "f.ep").write_bytes(bytes(blob))
    loads_or_rejects(tmp_path / "f.ep")


@FUZZ
@given(data=st.data())
def test_hostile_header_fields(exports, tmp_path, data):
    metadata, streams = read_parts(exports[data.draw(st.sampled_from(sorted(exports)))], tmp_path / "in.ep")
    records = json.loads(metadata["tensors"])
    for _ in range(data.draw(st.integers(1, 3))):
        record = records[data.draw(st.integers(0, len(records) - 1))]
        field = data.draw(st.sampled_from(RECORD_FIELDS + STREAM_FIELDS))
        value = data.draw(st.sampled_from(HOSTILE_VALUES))
        if field in STREAM_FIELDS:
            record["streams"][data.draw(st.sampled_from(sorted(record["streams"])))][field] = value
        else:
            record[field] = value
    metadata["tensors"] = json.dumps(records)
    write_parts(tmp_path / "f.ep", metadata, streams)
    loads_or_rejects(tmp_path / "f.ep")


@FUZZ
@given(data=st.data())
def test_hostile_streams(exports, tmp_path, data):
    """Streams swapped, replaced by other zstd frames or garbage, while the header stays plausible."""
    import zstandard

    metadata, streams = read_parts(exports[data.draw(st.sampled_from(sorted(exports)))], tmp_path / "in.ep")
    key = data.draw(st.sampled_from(sorted(streams)))
    payload = data.draw(st.binary(max_size=64))
    choice = data.draw(st.sampled_from(["garbage", "frame", "swap"]))
    if choice == "garbage":
        streams[key] = np.frombuffer(payload, dtype=np.uint8)
    elif choice == "frame":
        frame = zstandard.ZstdCompressor(level=1).compress(payload * data.draw(st.integers(1, 1000)))
        streams[key] = np.frombuffer(frame, dtype=np.uint8)
    else:
        other = data.draw(st.sampled_from(sorted(streams)))
        streams[key], streams[other] = streams[other], streams[key]
    records = json.loads(metadata["tensors"])
    if data.draw(st.booleans()):  # keep the declared length consistent so the check goes deeper
        for record in records:
            for info in record["streams"].values():
                info["length"] = len(streams[info["key"]])
    metadata["tensors"] = json.dumps(records)
    write_parts(tmp_path / "f.ep", metadata, streams)
    loads_or_rejects(tmp_path / "f.ep")
