"""Hostile, truncated and corrupted compressed files raise CompressedFormatError and nothing else.

A file changed after it was written (a flipped byte, an edited header field) is refused, or
decodes to exactly the tensors it held: the checksum covers the header and every stream. The
hostile-field tests re-sign the files they edit (as a forger would), so that the checks behind
the checksum are reached too; ``sign`` computes the checksum from the format's description,
independently of the library.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import warnings
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


def draw_kind(data) -> str:
    return data.draw(st.sampled_from(sorted(EXPORTS)), label="export")


def read_parts(blob: bytes, path) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    path.write_bytes(blob)
    with safetensors.safe_open(str(path), framework="numpy") as f:
        return f.metadata(), {key: f.get_tensor(key) for key in f.keys()}


def sign(metadata: dict[str, str], streams: dict[str, np.ndarray]) -> str:
    """The checksum as the format describes it: SHA-256 over length-prefixed parts (header JSON, then key and bytes per stream)."""
    fields = {key: value for key, value in metadata.items() if key != "checksum"}
    parts = [json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()]
    for key in sorted(streams):
        parts += [key.encode(), streams[key].tobytes()]
    blob = b"".join(len(part).to_bytes(8, "little") + part for part in parts)
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def write_parts(path, metadata: dict[str, str], streams: dict[str, np.ndarray], signed: bool = True) -> None:
    """Write a container; ``signed`` gives it the checksum of what it now holds (a forger's file)."""
    if signed:
        metadata = {**metadata, "checksum": sign(metadata, streams)}
    safetensors.numpy.save_file(streams, str(path), metadata=metadata)


def loads_or_rejects(path) -> None:
    """The property of a forged file: a valid state dict of tensors, or CompressedFormatError."""
    try:
        state_dict = load_compressed(path)
    except CompressedFormatError:
        event("rejected")
        return
    event("loaded")
    assert all(isinstance(t, torch.Tensor) for t in state_dict.values())


def assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name], tensor), name


def refused_or_unchanged(path, kind: str) -> None:
    """The property of a damaged file: CompressedFormatError, or exactly the tensors the ``kind`` export held."""
    try:
        state_dict = load_compressed(path)
    except CompressedFormatError:
        event("rejected")
        return
    event("loaded unchanged")
    (path.parent / "original.ep").write_bytes(export(kind))
    assert_same_tensors(state_dict, load_compressed(path.parent / "original.ep"))


def test_valid_exports_load(tmp_path):
    for kind in EXPORTS:
        (tmp_path / "f.ep").write_bytes(export(kind))
        assert set(load_compressed(tmp_path / "f.ep")) == set(small_state_dict())


@FUZZ
@given(data=st.data())
def test_truncated_files_are_rejected(tmp_path, data):
    blob = export(draw_kind(data))
    cut = data.draw(st.integers(0, len(blob) - 1))
    (tmp_path / "f.ep").write_bytes(blob[:cut])
    with pytest.raises(CompressedFormatError):
        load_compressed(tmp_path / "f.ep")


@FUZZ
@given(data=st.data())
def test_flipped_and_inserted_bytes(tmp_path, data):
    kind = draw_kind(data)
    blob = bytearray(export(kind))
    for _ in range(data.draw(st.integers(1, 4))):
        where = data.draw(st.integers(0, len(blob) - 1))
        if data.draw(st.booleans()):
            blob[where] ^= data.draw(st.integers(1, 255))
        else:
            blob[where:where] = data.draw(st.binary(min_size=1, max_size=8))
    (tmp_path / "f.ep").write_bytes(bytes(blob))
    refused_or_unchanged(tmp_path / "f.ep", kind)


@FUZZ
@given(data=st.data())
def test_hostile_header_fields(tmp_path, data):
    kind = draw_kind(data)
    metadata, streams = read_parts(export(kind), tmp_path / "in.ep")
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
    check_edited(tmp_path / "f.ep", kind, metadata, streams, data.draw(st.booleans(), label="re-signed"))


def check_edited(path, kind: str, metadata: dict[str, str], streams: dict[str, np.ndarray], signed: bool) -> None:
    """An edited file: re-signed, it must load or be refused; left with its old checksum, be refused or unchanged."""
    write_parts(path, metadata, streams, signed)
    if signed:
        loads_or_rejects(path)
    else:
        refused_or_unchanged(path, kind)


@FUZZ
@given(data=st.data())
def test_hostile_streams(tmp_path, data):
    """Streams swapped, replaced by other zstd frames or garbage, while the header stays plausible."""
    kind = draw_kind(data)
    metadata, streams = read_parts(export(kind), tmp_path / "in.ep")
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
    check_edited(tmp_path / "f.ep", kind, metadata, streams, data.draw(st.booleans(), label="re-signed"))


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


# --------------------------------------------------------------------------- the checksum


def change_one_scale_digit(blob: bytes) -> bytes:
    """The file with one digit of the first int8 scale in its JSON header changed (same length)."""
    match = re.search(rb'scale\\":(\d+\.\d{4})', blob)
    where = match.start(1) + len(match.group(1)) - 1  # the 4th decimal
    digit = blob[where : where + 1]
    return blob[:where] + (b"3" if digit != b"3" else b"7") + blob[where + 1 :]


def legacy_container(path, blob: bytes) -> None:
    """Rewrite an export as the container of before the checksum: format 1, no checksum field."""
    metadata, streams = read_parts(blob, path.with_suffix(".in"))
    del metadata["checksum"]
    write_parts(path, {**metadata, "format": "edgeprune.compressed/1"}, streams, signed=False)


def test_one_digit_of_a_scale_is_refused_naming_the_file(tmp_path):
    blob = export("fp16-int8")
    changed = change_one_scale_digit(blob)
    assert len(changed) == len(blob) and changed != blob
    (tmp_path / "model.epz").write_bytes(changed)
    with pytest.raises(CompressedFormatError) as refused:
        load_compressed(tmp_path / "model.epz")
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'model.epz'}: checksum") and "re-export" in message
    # without the checksum the same edit loads other weights with no error: what the checksum is for
    legacy_container(tmp_path / "old.epz", changed)
    legacy_container(tmp_path / "old_original.epz", blob)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        edited_weights, original = load_compressed(tmp_path / "old.epz"), load_compressed(tmp_path / "old_original.epz")
    assert not all(torch.equal(edited_weights[name], original[name]) for name in original)


def test_old_files_without_a_checksum_load_with_one_warning(tmp_path):
    for kind in EXPORTS:
        legacy_container(tmp_path / "old.epz", export(kind))
        (tmp_path / "new.epz").write_bytes(export(kind))
        with pytest.warns(UserWarning) as caught:
            old = load_compressed(tmp_path / "old.epz")
        assert len(caught) == 1
        message = str(caught[0].message)
        assert "\n" not in message and message.startswith(f"{tmp_path / 'old.epz'}: ") and "checksum" in message
        assert "re-export" in message
        assert_same_tensors(old, load_compressed(tmp_path / "new.epz"))


@pytest.mark.parametrize("edit", ["drop the checksum", "old format, checksum kept", "drop a stream"])
def test_a_file_cannot_pass_for_another(tmp_path, edit):
    metadata, streams = read_parts(export("fp32"), tmp_path / "in.ep")
    if edit == "drop the checksum":
        del metadata["checksum"]
    elif edit == "old format, checksum kept":  # one digit of the format field: not taken for an old file
        metadata["format"] = "edgeprune.compressed/1"
    else:
        del streams[sorted(streams)[-1]]
    write_parts(tmp_path / "f.ep", metadata, streams, signed=False)
    with pytest.raises(CompressedFormatError, match="checksum"):
        load_compressed(tmp_path / "f.ep")
