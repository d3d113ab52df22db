"""Compressed model files: sparse positions, quantized values, zstd, in a safetensors container.

Each weight tensor (floating point, more than one dimension) is stored as its non-zero
values plus their positions, in whichever layout is smallest before entropy coding:

- ``"all"``: every element stored, zeros included (no positions),
- ``"bitmap"``: 1 bit per element, packed with ``numpy.packbits``,
- ``"relative"``: one byte per non-zero holding the number of zeros skipped since the
  previous non-zero; a gap of 255 or more is written as escape bytes ``255`` (each skips
  255 zeros and stores nothing) followed by the remainder, as in Deep Compression.

The values are stored as fp32, fp16, int8 with a scale, or k-means codebook indices packed at
``bits`` bits each (see :mod:`edgeprune.export.quantize`). Every other tensor (biases, BatchNorm
statistics, ``num_batches_tracked``, ...) is stored ``"raw"``: its bytes, any dtype, bit for bit.

Every byte stream is compressed with zstandard (with its content size and a checksum) and
becomes a 1-D uint8 tensor of a safetensors file. The safetensors ``__metadata__`` holds
``format`` (``edgeprune.compressed/2``), ``tensors``: a JSON list with one record per
state-dict entry (name, dtype, shape, layout, value mode, counts, bits, scale, codebook size,
and per stream its key, compressed ``length`` and ``raw_length``), any extra fields (the model
spec), and ``checksum``: a SHA-256 over all the other fields and every stream
(:func:`file_checksum`), so that a changed digit of a scale is refused like a changed byte of a
stream (zstd's own checksums cover only the streams). Files of ``edgeprune.compressed/1``, from
before the checksum, still load, with a warning.

Zeros: a weight that is ``0.0`` or ``-0.0`` is a pruned position and loads as ``+0.0``
(``tensor.mul_(mask)`` leaves ``-0.0`` for negative weights; the number is the same).
Non-zero weights in fp32 mode and all non-weight tensors round-trip bit for bit.

Loading never runs code (no pickle) and checks the checksum and every header field before it
decompresses anything; any malformed, truncated or hostile file raises :class:`CompressedFormatError`.
Byte order is the host's, which is little-endian on every platform torch supports.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import safetensors
import safetensors.numpy
import torch
import zstandard

from ..files import atomic_path
from .bitpack import escape_gaps, pack_bits, unpack_bits
from .quantize import MODES, QuantConfig, QuantizedValues, dequantize_values, quantize_values

__all__ = [
    "FORMAT",
    "DEFAULT_LEVEL",
    "DTYPES",
    "CompressedFile",
    "CompressedFormatError",
    "SizeBreakdown",
    "TensorRecord",
    "choose_layout",
    "decode_bitmap",
    "decode_relative",
    "decode_tensor",
    "default_max_bytes",
    "encode_bitmap",
    "encode_relative",
    "encode_tensor",
    "file_checksum",
    "load_compressed",
    "read_compressed",
    "read_header",
    "read_shapes",
    "pack_codes",
    "relative_length_bound",
    "save_compressed",
    "size_breakdown",
    "unpack_codes",
]

FORMAT = "edgeprune.compressed/2"
LEGACY_FORMAT = "edgeprune.compressed/1"  # before the checksum: read with a warning
RESERVED = frozenset({"format", "tensors", "checksum"})  # header keys of the format itself
DEFAULT_LEVEL = 19
ESCAPE = 255
MAX_DIMS = 16
MAX_NUMEL = 2**48
RATIO_LIMIT = 1024
"""Default decode budget: this many times the file's size, plus ``MIN_LIMIT`` (see ``default_max_bytes``)."""
MIN_LIMIT = 64 * 2**20
REEXPORT = "re-export the model with edgeprune export (save_compressed)"

DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
"""The dtypes a file may hold, by the name used in the header."""
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
LAYOUTS = ("raw", "all", "bitmap", "relative")
VALUE_BITS = {"fp32": 32, "fp16": 16, "int8": 8}
RECORD_FIELDS = ("name", "dtype", "shape", "layout", "values", "count", "bits", "scale", "codebook_size")


class CompressedFormatError(ValueError):
    """A compressed model file is truncated, corrupted, hostile, or not in this format version."""


def _fail(where: str, problem: str) -> CompressedFormatError:
    return CompressedFormatError(f"{where}: {problem}; the file is damaged or not an edgeprune export, {REEXPORT}")


# --------------------------------------------------------------------------- pure primitives


def encode_bitmap(mask: np.ndarray) -> bytes:
    """1 bit per element of a boolean ``mask`` (True = stored), row-major, first element in the high bit."""
    return np.packbits(np.asarray(mask, dtype=bool).ravel()).tobytes()


def decode_bitmap(data: bytes, numel: int, count: int) -> np.ndarray:
    """Flat boolean mask of ``numel`` elements from a bitmap that must hold exactly ``count`` ones."""
    if len(data) != (numel + 7) // 8:
        raise _fail("bitmap", f"{len(data)} bytes for {numel} elements, expected {(numel + 7) // 8}")
    mask = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=numel).astype(bool)
    if int(mask.sum()) != count:
        raise _fail("bitmap", f"{int(mask.sum())} positions set, header says {count}")
    return mask


def relative_length_bound(numel: int, count: int) -> int:
    """The longest relative-index stream ``count`` non-zeros among ``numel`` elements can need."""
    return count + (numel - count) // ESCAPE


def encode_relative(mask: np.ndarray) -> bytes:
    """Relative indices of a boolean ``mask``: per True element, the zeros skipped since the previous one.

    A gap ``g`` becomes ``g // 255`` escape bytes (255) then the byte ``g % 255``
    (:func:`edgeprune.export.bitpack.escape_gaps`). Zeros after the last True element are not written.
    """
    positions = np.flatnonzero(np.asarray(mask, dtype=bool).ravel())
    return escape_gaps(positions, ESCAPE).astype(np.uint8).tobytes()


def decode_relative(data: bytes, numel: int, count: int) -> np.ndarray:
    """Flat boolean mask of ``numel`` elements from relative indices that must mark exactly ``count``.

    The k-th non-escape byte marks position ``(sum of all bytes up to it) + k``.
    """
    if len(data) > relative_length_bound(numel, count):
        raise _fail("relative indices", f"{len(data)} bytes is too long for {count} of {numel} elements")
    stream = np.frombuffer(data, dtype=np.uint8)
    markers = stream != ESCAPE
    if int(markers.sum()) != count:
        raise _fail("relative indices", f"{int(markers.sum())} positions marked, header says {count}")
    positions = np.cumsum(stream, dtype=np.int64)[markers] + np.arange(count, dtype=np.int64)
    if count and positions[-1] >= numel:
        raise _fail("relative indices", f"position {int(positions[-1])} is outside a tensor of {numel} elements")
    mask = np.zeros(numel, dtype=bool)
    mask[positions] = True
    return mask


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Pack integer codes in ``[0, 2**bits)`` at ``bits`` bits each, most significant bit first."""
    return pack_bits(codes, bits, "big").tobytes()


def unpack_codes(data: bytes, count: int, bits: int) -> np.ndarray:
    """The ``count`` int64 codes that ``pack_codes(codes, bits)`` wrote into ``data``."""
    if len(data) != (count * bits + 7) // 8:
        expected = (count * bits + 7) // 8
        raise _fail("codes", f"{len(data)} bytes for {count} codes of {bits} bits, expected {expected}")
    return unpack_bits(data, count, bits, "big")


def choose_layout(numel: int, count: int, relative_bytes: int, value_bits: int, allow_all: bool = True) -> str:
    """The layout with the fewest bytes before zstd; ties go to ``all``, then ``bitmap``.

    ``all`` costs ``numel`` values, ``bitmap`` ``numel / 8`` bytes plus ``count`` values,
    ``relative`` ``relative_bytes`` plus ``count`` values; a value is ``value_bits`` bits.
    ``allow_all=False`` when zeros cannot be stored as values (k-means with zeros present).
    """
    stored = (count * value_bits + 7) // 8
    costs = {"bitmap": (numel + 7) // 8 + stored, "relative": relative_bytes + stored}
    if allow_all:
        costs = {"all": (numel * value_bits + 7) // 8, **costs}
    return min(costs, key=costs.get)


# --------------------------------------------------------------------------- one tensor


def _check_int(value: object, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(where, f"expected an integer from {low} to {high}, got {value!r:.80}")
    return value


def _check_choice(value: object, options, where: str) -> str:
    if not isinstance(value, str) or value not in options:
        raise _fail(where, f"expected one of {', '.join(options)}, got {value!r:.40}")
    return value


@dataclass(frozen=True)
class TensorRecord:
    """How one state-dict entry is stored. Checks its own consistency; raises ``CompressedFormatError``."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    layout: str
    values: str | None = None
    count: int = 0
    bits: int | None = None
    scale: float | None = None
    codebook_size: int | None = None
    numel: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise _fail("tensor record", f"name must be a string, got {self.name!r:.80}")
        where = f"tensor {self.name!r:.120}"
        _check_choice(self.dtype, DTYPES, f"{where} dtype")
        if not isinstance(self.shape, (list, tuple)) or len(self.shape) > MAX_DIMS:
            raise _fail(where, f"shape must be a list of at most {MAX_DIMS} sizes, got {self.shape!r:.80}")
        numel = 1
        for size in self.shape:
            numel *= _check_int(size, f"{where} shape", 0, MAX_NUMEL)
            if numel > MAX_NUMEL:
                raise _fail(where, f"shape {self.shape!r:.80} has more than {MAX_NUMEL} elements")
        object.__setattr__(self, "shape", tuple(self.shape))
        object.__setattr__(self, "numel", numel)
        _check_choice(self.layout, LAYOUTS, f"{where} layout")
        if self.layout == "raw":
            if (self.values, self.bits, self.scale, self.codebook_size) != (None, None, None, None):
                raise _fail(where, "a raw tensor has no value mode, bits, scale or codebook")
            _check_int(self.count, f"{where} count", numel, numel)
            return
        if not DTYPES[self.dtype].is_floating_point:
            raise _fail(where, f"layout {self.layout} needs a floating dtype, got {self.dtype}")
        _check_choice(self.values, MODES, f"{where} value mode")
        _check_int(self.count, f"{where} count", numel if self.layout == "all" else 0, numel)
        if self.values == "kmeans":
            _check_int(self.bits, f"{where} bits", 2, 8)
            _check_int(self.codebook_size, f"{where} codebook_size", 1 if self.count else 0, 2**self.bits)
        else:
            expected_bits = 8 if self.values == "int8" else None
            if self.bits != expected_bits or self.codebook_size is not None:
                raise _fail(where, f"value mode {self.values} has bits={expected_bits} and no codebook")
        if self.values == "int8":
            if not isinstance(self.scale, float) or not (math.isfinite(self.scale) and self.scale > 0):
                raise _fail(where, f"int8 scale must be a positive finite float, got {self.scale!r:.40}")
        elif self.scale is not None:
            raise _fail(where, f"only int8 has a scale, value mode is {self.values}")

    @property
    def decoded_bytes(self) -> int:
        """Bytes of the tensor this record decodes to."""
        return self.numel * DTYPES[self.dtype].itemsize

    def stream_lengths(self) -> dict[str, tuple[int, int]]:
        """For each stream this record needs, the smallest and largest raw length it may have."""
        if self.layout == "raw":
            return {"data": (self.decoded_bytes, self.decoded_bytes)}
        if self.values == "kmeans":
            value_bytes = (self.count * self.bits + 7) // 8
        else:
            value_bytes = self.count * VALUE_BITS[self.values] // 8
        lengths = {"values": (value_bytes, value_bytes)}
        if self.layout == "bitmap":
            lengths["positions"] = ((self.numel + 7) // 8,) * 2
        elif self.layout == "relative":
            lengths["positions"] = (self.count, relative_length_bound(self.numel, self.count))
        if self.values == "kmeans":
            lengths["codebook"] = (4 * self.codebook_size,) * 2
        return lengths


def _raw_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _value_bytes(q: QuantizedValues) -> bytes:
    if q.mode == "kmeans":
        return pack_codes(q.data.numpy(), q.bits)
    return _raw_bytes(q.data)


def encode_tensor(
    name: str, tensor: torch.Tensor, setting: tuple[str, int | None] | None
) -> tuple[TensorRecord, dict[str, bytes]]:
    """Encode one state-dict entry: its record and its uncompressed byte streams.

    ``setting`` is ``(value mode, bits)`` for a weight tensor, ``None`` to store it raw.
    """
    tensor = tensor.detach().cpu()
    if tensor.dtype not in DTYPE_NAMES:
        raise ValueError(f"{name}: dtype {tensor.dtype} cannot be stored; convert it to one of {', '.join(DTYPES)}")
    dtype, shape = DTYPE_NAMES[tensor.dtype], tuple(tensor.shape)
    if setting is None:
        return TensorRecord(name, dtype, shape, "raw", count=tensor.numel()), {"data": _raw_bytes(tensor)}
    mode, bits = setting
    mask = (tensor != 0).reshape(-1)
    q = quantize_values(tensor.reshape(-1)[mask], mode, bits)
    count, numel = int(mask.sum()), tensor.numel()
    relative = encode_relative(mask.numpy())
    value_bits = bits if mode == "kmeans" else VALUE_BITS[mode]
    layout = choose_layout(numel, count, len(relative), value_bits, allow_all=mode != "kmeans" or count == numel)
    streams = {}
    if layout == "all" and count < numel:
        full = torch.zeros(numel, dtype=q.data.dtype)
        full[mask] = q.data
        q = QuantizedValues(q.mode, full, q.scale, q.codebook, q.bits)
        count = numel
    elif layout == "bitmap":
        streams["positions"] = encode_bitmap(mask.numpy())
    elif layout == "relative":
        streams["positions"] = relative
    streams["values"] = _value_bytes(q)
    codebook_size = None
    if mode == "kmeans":
        streams["codebook"] = _raw_bytes(q.codebook.to(torch.float32))
        codebook_size = q.codebook.numel()
    record_bits = {"kmeans": bits, "int8": 8}.get(mode)
    record = TensorRecord(name, dtype, shape, layout, mode, count, record_bits, q.scale, codebook_size)
    return record, streams


def _from_bytes(data: bytes, dtype: torch.dtype, count: int) -> torch.Tensor:
    if count == 0:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=dtype)


def decode_tensor(record: TensorRecord, streams: Mapping[str, bytes]) -> torch.Tensor:
    """The tensor a record and its uncompressed streams stand for; checks positions, counts and codes."""
    dtype, where = DTYPES[record.dtype], f"tensor {record.name!r:.120}"
    if record.layout == "raw":
        flat = _from_bytes(streams["data"], dtype, record.numel)
        if dtype == torch.bool and bool((flat.view(torch.uint8) > 1).any()):
            raise _fail(where, "a bool tensor holds bytes other than 0 and 1")
        return flat.reshape(record.shape)
    if record.values == "kmeans":
        codebook = _from_bytes(streams["codebook"], torch.float32, record.codebook_size)
        codes = unpack_codes(streams["values"], record.count, record.bits)
        if record.count and int(codes.max()) >= record.codebook_size:
            raise _fail(where, f"code {int(codes.max())} is outside a codebook of {record.codebook_size}")
        q = QuantizedValues("kmeans", torch.from_numpy(codes), codebook=codebook, bits=record.bits)
    else:
        stored = {"fp32": torch.float32, "fp16": torch.float16, "int8": torch.int8}[record.values]
        q = QuantizedValues(record.values, _from_bytes(streams["values"], stored, record.count), scale=record.scale)
    values = dequantize_values(q)
    if record.layout == "all":
        return values.reshape(record.shape).to(dtype)
    decode = decode_bitmap if record.layout == "bitmap" else decode_relative
    mask = torch.from_numpy(decode(streams["positions"], record.numel, record.count))
    dense = torch.zeros(record.numel, dtype=torch.float32)
    dense[mask] = values
    return dense.reshape(record.shape).to(dtype)


# --------------------------------------------------------------------------- the file


def file_checksum(fields: Mapping[str, str], streams: Mapping[str, bytes]) -> str:
    """The ``checksum`` header field of a file with these header ``fields`` and ``streams``: ``sha256:<hex>``.

    The SHA-256 runs over a sequence of parts, each preceded by its length as 8 little-endian
    bytes: first the header fields other than ``checksum`` as JSON (keys sorted, no spaces,
    ASCII), then each stream's key (UTF-8) and its compressed bytes, in key order. So a changed
    digit of the header, a changed byte of a stream, or a field or stream added, removed or
    renamed gives another checksum.
    """
    digest = hashlib.sha256()
    covered = {key: value for key, value in fields.items() if key != "checksum"}
    parts = [json.dumps(covered, sort_keys=True, separators=(",", ":")).encode()]
    for key in sorted(streams):
        parts += [key.encode(), streams[key]]
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return f"sha256:{digest.hexdigest()}"


def save_compressed(
    state_dict: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    values: str | Mapping[str, str] = "fp32",
    bits: int | Mapping[str, int] | None = None,
    level: int = DEFAULT_LEVEL,
    header: Mapping[str, str] | None = None,
) -> int:
    """Write ``state_dict`` as a compressed model file; return its size in bytes.

    ``values`` and ``bits`` choose each weight tensor's value mode as in
    :class:`edgeprune.export.quantize.QuantConfig`; ``level`` is the zstd level (1..22).
    ``load_compressed`` returns exactly ``quantize_state_dict(state_dict, values, bits)``.
    ``header``: more string fields for the file's header (such as the model spec), read back by :func:`read_header`.
    The header's ``checksum`` (:func:`file_checksum`) covers every header field and every stream.
    """
    header = dict(header or {})
    if RESERVED & set(header) or not all(isinstance(k, str) and isinstance(v, str) for k, v in header.items()):
        raise ValueError(f"header must map strings to strings, without the keys {sorted(RESERVED)}")
    config = QuantConfig(values, bits)
    config.check_names(state_dict)
    if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 22:
        raise ValueError(f"zstd level must be an int from 1 to 22, got {level!r}; 19 compresses well, 3 is fast")
    compressor = zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)
    records, frames = [], {}
    for index, (name, tensor) in enumerate(state_dict.items()):
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"{name}: only tensors can be stored, got {type(tensor).__name__}")
        record, streams = encode_tensor(name, tensor, config.mode_for(name, tensor))
        entry = asdict(record)
        del entry["numel"]
        entry["streams"] = {}
        for kind, raw in streams.items():
            key, frame = f"{index}.{kind}", compressor.compress(raw)
            frames[key] = frame
            entry["streams"][kind] = {"key": key, "length": len(frame), "raw_length": len(raw)}
        records.append(entry)
    metadata = {**header, "format": FORMAT, "tensors": json.dumps(records, separators=(",", ":"))}
    metadata["checksum"] = file_checksum(metadata, frames)
    arrays = {key: np.frombuffer(frame, dtype=np.uint8) for key, frame in frames.items()}
    with atomic_path(path) as tmp:
        safetensors.numpy.save_file(arrays, os.fspath(tmp), metadata=metadata)
    return os.path.getsize(path)


def default_max_bytes(file_size: int) -> int:
    """Decode budget for a file of ``file_size`` bytes: ``RATIO_LIMIT * file_size + MIN_LIMIT``.

    zstd alone can expand data about 32000-fold, and a wholly pruned tensor costs only its
    header record, so a hostile file could otherwise ask for any amount of memory. Real
    exports decode to far less than 1024 times their size; pass ``max_bytes`` to allow more.
    """
    return RATIO_LIMIT * file_size + MIN_LIMIT


def _read_container(path: str | os.PathLike) -> tuple[dict[str, str] | None, dict[str, bytes]]:
    """The safetensors metadata and every uint8 stream of the file; wraps safetensors' own errors."""
    try:
        with safetensors.safe_open(os.fspath(path), framework="numpy") as f:
            metadata, streams = f.metadata(), {}
            for key in f.keys():
                part = f.get_slice(key)
                if part.get_dtype() != "U8" or len(part.get_shape()) != 1:
                    got = f"{part.get_dtype()} {part.get_shape()}"
                    raise _fail(f"stream {key!r:.80}", f"must be a 1-D uint8 tensor, got {got:.80}")
                streams[key] = f.get_tensor(key).tobytes()
    except safetensors.SafetensorError as exc:
        raise _fail("safetensors container", str(exc)[:200]) from exc
    return metadata, streams


def _check_integrity(metadata: object, streams: Mapping[str, bytes]) -> bool:
    """Check the format and the checksum; False for a file of the format before checksums (not checked)."""
    found = metadata.get("format") if isinstance(metadata, dict) else None
    if found == LEGACY_FORMAT and "checksum" not in metadata:
        return False
    if found not in (FORMAT, LEGACY_FORMAT):
        raise CompressedFormatError(
            f"not an {FORMAT} file (format field {found!r:.80}); {REEXPORT}, "
            "or update edgeprune if the file comes from a newer version"
        )
    if found != FORMAT or metadata.get("checksum") != file_checksum(metadata, streams):
        raise _fail("checksum", "the header or a stream changed after the file was written")
    return True


def _parse_header(
    metadata: dict[str, str], streams: Mapping[str, bytes]
) -> list[tuple[TensorRecord, dict[str, tuple[str, int]]]]:
    """Validated records and, per record, ``kind -> (stream key, raw length)``."""
    try:
        entries = json.loads(metadata.get("tensors", ""))
    except (ValueError, RecursionError) as exc:
        raise _fail("header", f"the tensors list is not valid JSON ({str(exc)[:80]})") from exc
    if not isinstance(entries, list):
        raise _fail("header", "the tensors field must be a JSON list")
    parsed, names, used = [], set(), set()
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise _fail(f"tensor #{index}", "record must be a JSON object")
        record = TensorRecord(**{key: entry.get(key) for key in RECORD_FIELDS})
        if record.name in names:
            raise _fail(f"tensor {record.name!r:.120}", "name appears twice")
        names.add(record.name)
        declared = entry.get("streams")
        expected = record.stream_lengths()
        if not isinstance(declared, dict) or set(declared) != set(expected):
            listed = f"{declared!r:.120}"
            raise _fail(f"tensor {record.name!r:.120}", f"needs streams {sorted(expected)}, header lists {listed}")
        links = {}
        for kind, (low, high) in expected.items():
            info, where = declared[kind], f"tensor {record.name!r:.120} {kind} stream"
            if not isinstance(info, dict):
                raise _fail(where, "stream description must be a JSON object")
            key = info.get("key")
            if not isinstance(key, str) or key not in streams or key in used:
                raise _fail(where, f"key {key!r:.80} is missing from the file or used twice")
            used.add(key)
            _check_int(info.get("length"), f"{where} length", len(streams[key]), len(streams[key]))
            links[kind] = (key, _check_int(info.get("raw_length"), f"{where} raw_length", low, high))
        parsed.append((record, links))
    if used != set(streams):
        raise _fail("safetensors container", f"{len(set(streams) - used)} stream(s) belong to no tensor")
    return parsed


def _decompress(frame: bytes, raw_length: int, where: str) -> bytes:
    """Decompress one zstd frame that must declare and hold exactly ``raw_length`` bytes."""
    try:
        declared = zstandard.frame_content_size(frame)
        if declared != raw_length:
            raise _fail(where, f"zstd frame declares {declared} bytes, header says {raw_length}")
        data = zstandard.ZstdDecompressor().decompress(frame, max_output_size=raw_length, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise _fail(where, f"zstd: {str(exc)[:120]}") from exc
    if len(data) != raw_length:
        raise _fail(where, f"zstd frame holds {len(data)} bytes, header says {raw_length}")
    return data


@contextlib.contextmanager
def _naming(path: str | os.PathLike) -> Iterator[None]:
    """Put the file's path in front of any ``CompressedFormatError`` raised inside."""
    try:
        yield
    except CompressedFormatError as exc:
        raise CompressedFormatError(f"{os.fspath(path)}: {exc}") from exc


@dataclass(frozen=True)
class CompressedFile:
    """A compressed model file read and checked (format, checksum, every header field); nothing decoded yet.

    ``header`` holds the extra fields given to :func:`save_compressed`; ``records`` pairs each
    tensor's record with ``kind -> (stream key, raw length)``; ``streams`` are the zstd frames.
    """

    path: Path
    size: int
    header: dict[str, str]
    records: list[tuple[TensorRecord, dict[str, tuple[str, int]]]]
    streams: dict[str, bytes]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Each stored tensor's shape, from the checked header."""
        return {record.name: record.shape for record, _ in self.records}

    def decode(self) -> dict[str, torch.Tensor]:
        """The state dict the file holds (CPU tensors, original dtypes and shapes)."""
        state_dict = {}
        with _naming(self.path):
            for record, links in self.records:
                where = f"tensor {record.name!r:.120}"
                raw = {kind: _decompress(self.streams[key], size, f"{where} {kind} stream") for kind, (key, size) in links.items()}
                state_dict[record.name] = decode_tensor(record, raw)
        return state_dict


def read_compressed(path: str | os.PathLike, max_bytes: int | None = None) -> CompressedFile:
    """Read a compressed model file and check it whole, before anything is decompressed.

    The format, the checksum over the header and every stream, and each header field are
    checked; any fault raises :class:`CompressedFormatError` naming the file. A file of the
    format before checksums (``edgeprune.compressed/1``) is read with a warning, since damage to
    it cannot be seen. Decoding it will allocate at most about ``max_bytes`` (default
    :func:`default_max_bytes` of the file size), or it is refused here.
    """
    path = Path(path)
    file_size = os.path.getsize(path)
    with _naming(path):
        metadata, streams = _read_container(path)
        if not _check_integrity(metadata, streams):
            warnings.warn(f"{path}: written before .epz files carried a checksum, so damage to it cannot be seen; "
                          f"{REEXPORT} to protect it", stacklevel=2)
        records = _parse_header(metadata, streams)
    limit = default_max_bytes(file_size) if max_bytes is None else max_bytes
    needed = sum(r.decoded_bytes + sum(raw for _, raw in links.values()) for r, links in records)
    if needed > limit:
        raise CompressedFormatError(
            f"{path}: decoding needs {needed} bytes, more than the limit of {limit} "
            f"for a {file_size}-byte file; if you trust the file, pass max_bytes={needed}"
        )
    header = {key: value for key, value in metadata.items() if key not in RESERVED}
    return CompressedFile(path, file_size, header, records, streams)


def read_shapes(path: str | os.PathLike, max_bytes: int | None = None) -> dict[str, tuple[int, ...]]:
    """Each stored tensor's shape, from the checked header; nothing is decompressed."""
    return read_compressed(path, max_bytes).shapes()


def read_header(path: str | os.PathLike) -> dict[str, str]:
    """The extra header fields given to :func:`save_compressed`, checked; ``{}`` for none."""
    return read_compressed(path).header


def load_compressed(path: str | os.PathLike, max_bytes: int | None = None) -> dict[str, torch.Tensor]:
    """Read a compressed model file back into a plain state dict (CPU tensors, original dtypes and shapes).

    Raises ``CompressedFormatError`` for any malformed or changed file (see :func:`read_compressed`);
    decoding allocates at most about ``max_bytes`` and a small multiple of it in temporaries.
    """
    return read_compressed(path, max_bytes).decode()


@dataclass(frozen=True)
class SizeBreakdown:
    """Where a compressed file's bytes go: per tensor (its zstd streams) and the container header."""

    file_bytes: int
    header_bytes: int
    tensor_bytes: dict[str, int]
    layouts: dict[str, str]


def size_breakdown(path: str | os.PathLike, max_bytes: int | None = None) -> SizeBreakdown:
    """Bytes per tensor of a compressed file, its layouts, and the header (safetensors + JSON) bytes."""
    file = read_compressed(path, max_bytes)
    tensor_bytes = {r.name: sum(len(file.streams[key]) for key, _ in links.values()) for r, links in file.records}
    layouts = {r.name: r.layout if r.layout == "raw" else f"{r.layout}/{r.values}" for r, _ in file.records}
    return SizeBreakdown(file.size, file.size - sum(tensor_bytes.values()), tensor_bytes, layouts)
