"""Hostile, truncated and corrupted compressed files raise CompressedFormatError and nothing else."""

from __future__ import annotations

import functools
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.numpy
import torch
import zstandard
from hypothesis import HealthCheck, event, given, settings, strategies as st
from torch import nn

from edgeprune.export.epz import CompressedFormatError, load_compressed, save_compressed
from edgeprune.prune.masks import fine_grained_prune

FUZZ = settings(
    max_examples=3000,
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


@functools.cache
def export(kind: str) -> bytes:
    """The bytes of the small model exported with ``EXPORTS[kind]``."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.ep"
        save_compressed(small_state_dict(), path, level=3, **EXPORTS[kind])
        return path.read_bytes()


def draw_export(data) -> bytes:
    return export(data.draw(st.sampled_from(sorted(EXPORTS)), label="export"))


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
        event("rejected")
        return
    event("loaded")
    assert all(isinstance(t, torch.Tensor) for t in state_dict.values())


def test_valid_exports_load(tmp_path):
    for kind in EXPORTS:
        (tmp_path / "f.ep").write_bytes(export(kind))
        assert set(load_compressed(tmp_path / "f.ep")) == set(small_state_dict())


@FUZZ
@given(data=st.data())
def test_truncated_files_are_rejected(tmp_path, data):
    blob = draw_export(data)
    cut = data.draw(st.integers(0, len(blob) - 1))
    (tmp_path / "f.ep").write_bytes(blob[:cut])
    with pytest.raises(CompressedFormatError):
        load_compressed(tmp_path / "f.ep")


@FUZZ
@given(data=st.data())
def test_flipped_and_inserted_bytes(tmp_path, data):
    blob = bytearray(draw_export(data))
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
def test_hostile_header_fields(tmp_path, data):
    metadata, streams = read_parts(draw_export(data), tmp_path / "in.ep")
    records = json.loads(metadata["tensors"])
    for _ in range(data.draw(st.integers(1, 3))):
        record = records[data.draw(st.integers(0, len(records) - 1))]
        field = data.draw(st.sampled_from(RECORD_FIELDS + STREAM_FIELDS))
        value = data.draw(st.sampled_from(HOSTILE_VALUES))
        if field in STREAM_FIELDS and isinstance(record["streams"], dict) and record["streams"]:
            record["streams"][data.draw(st.sampled_from(sorted(record["streams"])))][field] = value
        else:
            record[field] = value
    metadata["tensors"] = json.dumps(records)
    write_parts(tmp_path / "f.ep", metadata, streams)
    loads_or_rejects(tmp_path / "f.ep")


@FUZZ
@given(data=st.data())
def test_hostile_streams(tmp_path, data):
    """Streams swapped, replaced by other zstd frames or garbage, while the header stays plausible."""
    metadata, streams = read_parts(draw_export(data), tmp_path / "in.ep")
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


# --------------------------------------------------------------------------- hand-made hostile files


def edited(tmp_path, kind: str, edit) -> Path:
    """Write the ``kind`` export after ``edit(records, streams)`` changed its header or streams."""
    metadata, streams = read_parts(export(kind), tmp_path / "in.ep")
    records = {record["name"]: record for record in json.loads(metadata["tensors"])}
    edit(records, streams)
    metadata["tensors"] = json.dumps(list(records.values()))
    write_parts(tmp_path / "f.ep", metadata, streams)
    return tmp_path / "f.ep"


def test_not_a_compressed_file(tmp_path):
    (tmp_path / "empty.ep").write_bytes(b"")
    torch.save({"w": torch.ones(2)}, tmp_path / "model.pth")
    safetensors.numpy.save_file({"w": np.ones(2, np.float32)}, str(tmp_path / "plain.safetensors"))
    for name in ("empty.ep", "model.pth", "plain.safetensors"):
        with pytest.raises(CompressedFormatError, match="re-export"):
            load_compressed(tmp_path / name)


def test_huge_shape_is_refused_before_allocating(tmp_path):
    def edit(records, streams):
        records["3.bias"].update(shape=[2**20, 2**20], count=2**40)
        records["3.bias"]["streams"]["data"]["raw_length"] = 4 * 2**40

    with pytest.raises(CompressedFormatError, match="max_bytes"):
        load_compressed(edited(tmp_path, "fp32", edit))


def test_zstd_bomb_is_refused(tmp_path):
    bomb = zstandard.ZstdCompressor(level=3).compress(bytes(200 * 2**20))

    def edit(records, streams):
        streams["8.data"] = np.frombuffer(bomb, dtype=np.uint8)
        records["3.bias"]["streams"]["data"]["length"] = len(bomb)

    path = edited(tmp_path, "fp32", edit)
    assert path.stat().st_size < 100_000
    with pytest.raises(CompressedFormatError, match="declares"):
        load_compressed(path)

    def claim_it(records, streams):
        edit(records, streams)
        records["3.bias"].update(shape=[50 * 2**20], count=50 * 2**20)
        records["3.bias"]["streams"]["data"]["raw_length"] = 200 * 2**20

    with pytest.raises(CompressedFormatError, match="max_bytes"):
        load_compressed(edited(tmp_path, "fp32", claim_it))


def test_codes_outside_the_codebook(tmp_path):
    def edit(records, streams):
        record = records["3.weight"]
        record["codebook_size"] = 2
        codebook = zstandard.ZstdCompressor().compress(bytes(8))
        streams[record["streams"]["codebook"]["key"]] = np.frombuffer(codebook, dtype=np.uint8)
        record["streams"]["codebook"].update(length=len(codebook), raw_length=8)

    with pytest.raises(CompressedFormatError, match="outside a codebook"):
        load_compressed(edited(tmp_path, "kmeans", edit))


@pytest.mark.parametrize("name", ["0.weight", "3.weight"])  # bitmap, relative
def test_position_count_mismatch(tmp_path, name):
    def edit(records, streams):
        records[name]["count"] -= 1

    with pytest.raises(CompressedFormatError):
        load_compressed(edited(tmp_path, "fp16-int8", edit))


def test_max_bytes_is_the_limit(tmp_path):
    (tmp_path / "f.ep").write_bytes(export("fp32"))
    with pytest.raises(CompressedFormatError, match="max_bytes"):
        load_compressed(tmp_path / "f.ep", max_bytes=100)
    assert load_compressed(tmp_path / "f.ep", max_bytes=10**6).keys() == small_state_dict().keys()
