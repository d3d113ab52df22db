"""The compressed model format: hand-checked encodings, exact round trips, sizes."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import zstandard
from torchvision.models import resnet18

from edgeprune.export.epz import (
    CompressedFormatError,
    choose_layout,
    decode_bitmap,
    decode_relative,
    encode_bitmap,
    encode_relative,
    load_compressed,
    pack_codes,
    save_compressed,
    size_breakdown,
    unpack_codes,
)
from edgeprune.prune.masks import fine_grained_prune
from edgeprune.models import BasicCNN
from edgeprune.export.quantize import quantize_state_dict

from conftest import reference_lloyd

SEED_SPARSITY = {"conv1.weight": 0.4, "conv2.weight": 0.6, "fc1.weight": 0.67, "fc2.weight": 0.5}


def pruned_basiccnn(**kwargs) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = BasicCNN(**kwargs)
    params = dict(model.named_parameters())
    for name, sparsity in SEED_SPARSITY.items():
        fine_grained_prune(params[name].data, sparsity)
    return model.state_dict()


def bits_of(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bytes, so that equality means bit for bit (NaN and -0.0 included)."""
    return tensor.contiguous().reshape(-1).view(torch.uint8)


def assert_bit_exact(loaded: dict, expected: dict) -> None:
    assert list(loaded) == list(expected)
    for name, tensor in expected.items():
        assert loaded[name].dtype == tensor.dtype, name
        assert loaded[name].shape == tensor.shape, name
        assert torch.equal(bits_of(loaded[name]), bits_of(tensor)), name


# --------------------------------------------------------------------------- hand-checked encodings


def test_bitmap_by_hand():
    mask = np.array([1, 0, 1, 1, 0, 0, 0, 0, 1], dtype=bool)
    data = encode_bitmap(mask)
    assert data == bytes([0b10110000, 0b10000000])
    assert decode_bitmap(data, 9, 4).tolist() == mask.tolist()
    with pytest.raises(CompressedFormatError, match="header says 3"):
        decode_bitmap(data, 9, 3)
    with pytest.raises(CompressedFormatError, match="expected 1"):
        decode_bitmap(data, 8, 4)


def test_relative_indices_by_hand():
    mask = np.zeros(400, dtype=bool)
    mask[[0, 3, 300, 301]] = True
    # gaps of 0, 2, 296 (= escape 255 + 41) and 0 zeros
    data = encode_relative(mask)
    assert data == bytes([0, 2, 255, 41, 0])
    assert np.flatnonzero(decode_relative(data, 400, 4)).tolist() == [0, 3, 300, 301]
    assert encode_relative(np.zeros(5, dtype=bool)) == b""
    with pytest.raises(CompressedFormatError, match="header says 5"):
        decode_relative(data, 400, 5)
    with pytest.raises(CompressedFormatError, match="outside"):
        decode_relative(data, 301, 4)
    with pytest.raises(CompressedFormatError, match="too long"):
        decode_relative(bytes([255] * 10 + [0]), 400, 1)


def test_relative_indices_round_trip_with_long_gaps():
    rng = np.random.default_rng(0)
    mask = rng.random(100_000) < 0.002
    mask[-1] = True
    assert np.array_equal(decode_relative(encode_relative(mask), mask.size, int(mask.sum())), mask)


def test_pack_codes_by_hand():
    assert pack_codes(np.array([1, 2, 3]), 2) == bytes([0b01101100])
    assert pack_codes(np.array([5, 7]), 3) == bytes([0b10111100])
    codes = np.arange(37) % 32
    assert unpack_codes(pack_codes(codes, 5), 37, 5).tolist() == codes.tolist()
    with pytest.raises(CompressedFormatError):
        unpack_codes(bytes(3), 37, 5)


def test_layout_choice_by_hand():
    # 800 fp32 weights: half kept -> bitmap 100 + 1600 beats all 3200 and relative 400 + 1600
    assert choose_layout(800, 400, 400, 32) == "bitmap"
    # 5 % kept: relative 40 + 160 beats bitmap 100 + 160
    assert choose_layout(800, 40, 40, 32) == "relative"
    # nearly dense: storing every element (3200) beats bitmap (100 + 3160)
    assert choose_layout(800, 790, 790, 32) == "all"
    # k-means cannot store zeros as values, so it never picks "all" when some are pruned
    assert choose_layout(800, 790, 790, 4, allow_all=False) == "bitmap"


def test_layouts_chosen_in_a_file(tmp_path):
    weights = {"dense": torch.randn(20, 20), "half": torch.randn(20, 20), "sparse": torch.randn(40, 40)}
    fine_grained_prune(weights["half"], 0.5)
    fine_grained_prune(weights["sparse"], 0.95)
    save_compressed(weights, tmp_path / "m.ep")
    layouts = size_breakdown(tmp_path / "m.ep").layouts
    assert layouts == {"dense": "all/fp32", "half": "bitmap/fp32", "sparse": "relative/fp32"}


# --------------------------------------------------------------------------- round trips


def test_fp32_round_trip_is_bit_exact_on_basiccnn(tmp_path):
    state_dict = pruned_basiccnn()
    save_compressed(state_dict, tmp_path / "m.ep")
    loaded = load_compressed(tmp_path / "m.ep")
    for name, tensor in state_dict.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name
        nonzero = tensor != 0
        assert torch.equal(bits_of(loaded[name][nonzero]), bits_of(tensor[nonzero])), name
    # pruning leaves -0.0 for negative weights; every zero comes back as +0.0
    assert_bit_exact(loaded, quantize_state_dict(state_dict, "fp32"))


def test_fp32_round_trip_is_bit_exact_on_resnet18(tmp_path):
    torch.manual_seed(0)
    model = resnet18(num_classes=10)
    params = dict(model.named_parameters())
    for name in ("conv1.weight", "layer1.0.conv1.weight", "layer3.1.conv2.weight", "fc.weight"):
        fine_grained_prune(params[name].data, 0.7)
    params["layer4.0.conv1.weight"].data[:, :3] = 0  # structured zeros
    model.train()(torch.randn(2, 3, 32, 32))  # non-trivial BatchNorm statistics
    state_dict = model.state_dict()
    assert state_dict["bn1.num_batches_tracked"].dtype == torch.int64
    save_compressed(state_dict, tmp_path / "m.ep", level=3)
    loaded = load_compressed(tmp_path / "m.ep")
    for name, tensor in state_dict.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name
    assert_bit_exact(loaded, quantize_state_dict(state_dict, "fp32"))
    model.load_state_dict(loaded)


def test_any_dtype_round_trips(tmp_path):
    state_dict = {
        "double": torch.randn(3, 4, dtype=torch.float64),
        "half_weight": torch.randn(4, 4).half(),
        "bf16_weight": torch.randn(4, 4).bfloat16(),
        "bias64": torch.randn(5, dtype=torch.float64),
        "scalar": torch.tensor(7, dtype=torch.int64),
        "flags": torch.tensor([True, False, True]),
        "bytes": torch.arange(10, dtype=torch.uint8).reshape(2, 5),
        "small_ints": torch.tensor([-3, 4], dtype=torch.int8),
        "empty": torch.zeros(0, 3),
        "nan": torch.tensor([float("nan"), -0.0, float("inf")]),
    }
    state_dict["half_weight"][0] = 0
    save_compressed(state_dict, tmp_path / "m.ep")
    loaded = load_compressed(tmp_path / "m.ep")
    assert_bit_exact(loaded, quantize_state_dict(state_dict, "fp32"))
    for name in ("half_weight", "bf16_weight", "bias64", "scalar", "flags", "bytes", "small_ints", "nan"):
        assert torch.equal(bits_of(loaded[name]), bits_of(state_dict[name])), name
    # a float64 weight in fp32 mode keeps float32 precision and its dtype
    assert loaded["double"].dtype == torch.float64
    assert torch.equal(bits_of(loaded["double"]), bits_of(state_dict["double"].float().double()))


# --------------------------------------------------------------------------- value modes, checked by hand
#
# The expected values below come from arithmetic written in the test (numpy, plain Python,
# torch's own float16 cast), and the file is read back with safetensors' header layout, json
# and zstandard only, so that a wrong scale, centroid or bit width in the exporter cannot
# agree with itself.


def read_by_hand(path) -> tuple[dict[str, dict], dict[str, dict[str, bytes]]]:
    """The header records and the decompressed streams of a compressed file, without edgeprune's loader.

    A safetensors file is an 8-byte little-endian header length, the JSON header, then the
    tensors back to back; every stream is a uint8 tensor, so the file size is exactly
    ``8 + header length + the zstd frames' lengths``.
    """
    blob = Path(path).read_bytes()
    (header_length,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + header_length])
    body = blob[8 + header_length :]
    records = {record["name"]: record for record in json.loads(header["__metadata__"]["tensors"])}
    streams, frame_bytes = {}, 0
    for name, record in records.items():
        streams[name] = {}
        for kind, info in record["streams"].items():
            start, end = header[info["key"]]["data_offsets"]
            assert end - start == info["length"], (name, kind)
            frame_bytes += end - start
            streams[name][kind] = zstandard.ZstdDecompressor().decompress(body[start:end])
            assert len(streams[name][kind]) == info["raw_length"], (name, kind)
    assert len(blob) == 8 + header_length + frame_bytes
    return records, streams


def int8_by_hand(nonzero: np.ndarray) -> tuple[np.float32, np.ndarray, np.ndarray]:
    """``scale = max|w| / 127`` in float32, ``codes = round(w / scale)`` clamped to +-127, ``decoded = codes * scale``."""
    nonzero = nonzero.astype(np.float32)
    scale = np.float32(np.abs(nonzero).max()) / np.float32(127)
    codes = np.clip(np.rint(nonzero / scale), -127, 127).astype(np.int8)
    return scale, codes, codes.astype(np.float32) * scale


def bits_of_np(array: np.ndarray) -> bytes:
    return np.ascontiguousarray(array, dtype=np.float32).tobytes()


def test_int8_by_hand(tmp_path):
    # 6 of 8 kept: bitmap (1 + 6 bytes) beats all (8) and relative (6 + 6)
    sparse = torch.tensor([[0.5, -0.25, 0.0, 1.27], [-0.0, -1.0, 0.003, 0.9]])
    # 20 of 21 kept: all (21 bytes, the zero stored as code 0) beats bitmap (3 + 20)
    dense = torch.linspace(-2.0, 3.0, 21).reshape(3, 7)
    dense[1, 3] = 0
    bias = torch.tensor([0.1234567, -7.0, 0.0])
    size = save_compressed({"sparse": sparse, "dense": dense, "bias": bias}, tmp_path / "m.epz", values="int8")
    records, streams = read_by_hand(tmp_path / "m.epz")
    assert size == (tmp_path / "m.epz").stat().st_size

    scale = np.float32(1.27) / np.float32(127)  # max |w| / 127: 0.01
    codes = [50, -25, 127, -100, 0, 90]  # 0.5/0.01, -0.25/0.01, 1.27/0.01, -1/0.01, 0.003/0.01 -> 0, 0.9/0.01
    assert (records["sparse"]["layout"], records["sparse"]["count"]) == ("bitmap", 6)
    assert records["sparse"]["scale"] == float(scale)
    assert streams["sparse"]["positions"] == bytes([0b11010111])
    assert streams["sparse"]["values"] == np.array(codes, dtype=np.int8).tobytes()
    expected = np.zeros(8, dtype=np.float32)
    expected[[0, 1, 3, 5, 6, 7]] = np.array(codes, dtype=np.float32) * scale
    loaded = load_compressed(tmp_path / "m.epz")
    assert bits_of(loaded["sparse"]).numpy().tobytes() == bits_of_np(expected)
    assert abs(float(loaded["sparse"][0, 0]) - 0.5) <= 0.005

    dense_values = dense.reshape(-1).numpy()
    dense_scale = np.float32(3.0) / np.float32(127)
    dense_codes = np.clip(np.rint(dense_values / dense_scale), -127, 127).astype(np.int8)
    assert dense_codes[10] == 0 and dense_codes[-1] == 127 and dense_codes[0] == -85  # -2 / (3/127) = -84.67
    assert (records["dense"]["layout"], records["dense"]["count"]) == ("all", 21)
    assert "positions" not in streams["dense"]
    assert streams["dense"]["values"] == dense_codes.tobytes()
    assert bits_of(loaded["dense"]).numpy().tobytes() == bits_of_np(dense_codes.astype(np.float32) * dense_scale)
    error = np.abs(loaded["dense"].reshape(-1).numpy() - dense_values)
    assert float(error.max()) <= dense_scale / 2 * (1 + 1e-6)

    assert records["bias"]["layout"] == "raw" and streams["bias"]["data"] == bias.numpy().tobytes()
    assert torch.equal(bits_of(loaded["bias"]), bits_of(bias))


def test_fp16_by_hand(tmp_path):
    weights = torch.tensor([[0.1, 0.0, -3.14159], [1e-3, 60000.0, -0.0]])
    save_compressed({"w": weights}, tmp_path / "m.epz", values="fp16")
    records, streams = read_by_hand(tmp_path / "m.epz")
    # 4 of 6 kept: bitmap (1 + 8 bytes) beats all (12) and relative (4 + 8)
    assert (records["w"]["layout"], records["w"]["count"]) == ("bitmap", 4)
    assert streams["w"]["positions"] == bytes([0b10111000])
    halves = torch.tensor([0.1, -3.14159, 1e-3, 60000.0], dtype=torch.float16)
    assert halves.tolist() == [0.0999755859375, -3.140625, 0.0010004043579101562, 60000.0]
    assert streams["w"]["values"] == halves.numpy().tobytes()
    expected = torch.tensor([[0.0999755859375, 0.0, -3.140625], [0.0010004043579101562, 60000.0, 0.0]])
    assert torch.equal(bits_of(load_compressed(tmp_path / "m.epz")["w"]), bits_of(expected))


def test_kmeans_by_hand(tmp_path):
    weights = torch.tensor([[-2.0, 0.0, -1.5, 0.25, 0.5], [0.0, 1.0, 3.0, -0.0, 3.5]])
    save_compressed({"w": weights}, tmp_path / "m.epz", values="kmeans", bits=2)
    records, streams = read_by_hand(tmp_path / "m.epz")
    # Lloyd on the 7 non-zeros, 4 centroids starting evenly from -2 to 3.5: -2, -1/6, 5/3, 3.5.
    # Midpoints -13/12, 3/4, 31/12 give the clusters {-2, -1.5} {0.25, 0.5} {1} {3, 3.5};
    # their means -1.75, 0.375, 1, 3.25 give midpoints -0.6875, 0.6875, 2.125: the same clusters.
    codebook = [-1.75, 0.375, 1.0, 3.25]
    # codes in order of the non-zeros: 0, 0, 1, 1, 2, 3, 3 (packed below)
    assert reference_lloyd([-2.0, -1.5, 0.25, 0.5, 1.0, 3.0, 3.5], 2) == codebook
    # zeros cannot be stored as codes, so the positions go in a bitmap (2 + 2 bytes) or relative (7 + 2)
    record = records["w"]
    assert (record["layout"], record["count"], record["bits"], record["codebook_size"]) == ("bitmap", 7, 2, 4)
    assert streams["w"]["positions"] == bytes([0b10111011, 0b01000000])
    assert streams["w"]["codebook"] == np.array(codebook, dtype=np.float32).tobytes()
    assert streams["w"]["values"] == bytes([0b00000101, 0b10111100])  # 00 00 01 01 | 10 11 11 + padding
    expected = torch.tensor([[-1.75, 0.0, -1.75, 0.375, 0.375], [0.0, 1.0, 3.25, 0.0, 3.25]])
    assert torch.equal(bits_of(load_compressed(tmp_path / "m.epz")["w"]), bits_of(expected))


@pytest.mark.parametrize("bits", [2, 3, 5])
def test_kmeans_export_follows_a_hand_run_lloyd(tmp_path, bits):
    generator = torch.Generator().manual_seed(bits)
    weights = torch.randn(9, 7, generator=generator)
    weights[weights.abs() < 0.4] = 0  # pruned
    nonzero = weights[weights != 0].tolist()
    assert len(set(nonzero)) > 2**bits  # k-means really clusters
    save_compressed({"w": weights}, tmp_path / "m.epz", values="kmeans", bits=bits)
    records, streams = read_by_hand(tmp_path / "m.epz")
    centroids = np.array(reference_lloyd(nonzero, bits), dtype=np.float32)
    assert streams["w"]["codebook"] == centroids.tobytes()
    nearest = np.abs(np.array(nonzero)[:, None] - centroids[None].astype(np.float64)).argmin(axis=1)
    count = len(nonzero)
    assert len(streams["w"]["values"]) == math.ceil(count * bits / 8)
    packed = "".join(f"{code:0{bits}b}" for code in nearest)
    packed += "0" * (-len(packed) % 8)
    assert streams["w"]["values"] == bytes(int(packed[i : i + 8], 2) for i in range(0, len(packed), 8))
    loaded = load_compressed(tmp_path / "m.epz")["w"]
    assert torch.equal(loaded[weights != 0], torch.from_numpy(centroids[nearest]))
    assert torch.equal(bits_of(loaded[weights == 0]), bits_of(torch.zeros(63 - count)))


WEIGHTS = list(SEED_SPARSITY)
ALL_MODES = [
    pytest.param("fp32", None, dict.fromkeys(WEIGHTS, ("fp32", None)), id="fp32"),
    pytest.param("fp16", None, dict.fromkeys(WEIGHTS, ("fp16", None)), id="fp16"),
    pytest.param("int8", None, dict.fromkeys(WEIGHTS, ("int8", None)), id="int8"),
    pytest.param("kmeans", 8, dict.fromkeys(WEIGHTS, ("kmeans", 8)), id="kmeans8"),
    pytest.param("kmeans", 2, dict.fromkeys(WEIGHTS, ("kmeans", 2)), id="kmeans2"),
    pytest.param(
        "kmeans",
        {"_default": 4, "fc1.weight": 3},
        {**dict.fromkeys(WEIGHTS, ("kmeans", 4)), "fc1.weight": ("kmeans", 3)},
        id="kmeans-per-layer",
    ),
    pytest.param(
        {"_default": "int8", "re:conv.*": "kmeans"},
        5,
        {"conv1.weight": ("kmeans", 5), "conv2.weight": ("kmeans", 5), "fc1.weight": ("int8", None), "fc2.weight": ("int8", None)},
        id="mixed",
    ),
]


def check_kmeans_tensor(name: str, original: np.ndarray, loaded: np.ndarray, codebook: np.ndarray, bits: int) -> None:
    """Properties of a k-means decoding that need no reference run: few values, nearest centroid, cluster means."""
    kept = original != 0
    assert 0 < codebook.size <= 2**bits and 0.0 not in codebook, name
    decoded = loaded[kept]
    assert np.isin(decoded, codebook).all(), name
    nearest_error = np.full(decoded.shape, np.inf)
    for centroid in codebook.astype(np.float64):  # each weight went to its nearest centroid
        nearest_error = np.minimum(nearest_error, np.abs(original[kept] - centroid))
    assert (np.abs(original[kept] - decoded) <= nearest_error * (1 + 1e-6) + 1e-9).all(), name
    used, cluster = np.unique(decoded, return_inverse=True)  # each used centroid is its cluster's mean
    means = np.bincount(cluster, weights=original[kept].astype(np.float64)) / np.bincount(cluster)
    gap = float(original[kept].max() - original[kept].min()) / 2**bits
    assert np.abs(means - used).max() <= 1e-4 * gap, name


@pytest.mark.parametrize("values, bits, modes", ALL_MODES)
def test_every_value_mode_against_independent_arithmetic(tmp_path, values, bits, modes):
    state_dict = pruned_basiccnn()
    save_compressed(state_dict, tmp_path / "m.epz", values=values, bits=bits, level=3)
    records, streams = read_by_hand(tmp_path / "m.epz")
    loaded = load_compressed(tmp_path / "m.epz")
    assert list(loaded) == list(state_dict)
    for name, tensor in state_dict.items():
        if name not in modes:  # biases: bit for bit
            assert records[name]["layout"] == "raw", name
            assert torch.equal(bits_of(loaded[name]), bits_of(tensor)), name
            continue
        mode, mode_bits = modes[name]
        record = records[name]
        assert (record["values"], record["bits"]) == (mode, 8 if mode == "int8" else mode_bits), name
        original, got = tensor.numpy().reshape(-1), loaded[name].numpy().reshape(-1)
        kept = original != 0
        assert loaded[name].dtype == tensor.dtype and loaded[name].shape == tensor.shape, name
        assert bits_of_np(got[~kept]) == bytes(4 * int((~kept).sum())), name  # zeros are +0.0, whatever the mode
        if record["layout"] == "bitmap":
            assert streams[name]["positions"] == np.packbits(kept).tobytes(), name
        if mode == "kmeans":
            assert len(streams[name]["values"]) == math.ceil(int(kept.sum()) * mode_bits / 8), name
            codebook = np.frombuffer(streams[name]["codebook"], dtype=np.float32)
            check_kmeans_tensor(name, original, got, codebook, mode_bits)
            continue
        if mode == "fp32":
            expected = original[kept]
        elif mode == "fp16":
            expected = torch.tensor(original[kept].tolist(), dtype=torch.float16).float().numpy()
        else:
            scale, codes, expected = int8_by_hand(original[kept])
            assert record["scale"] == float(scale), name
            assert float(np.abs(expected - original[kept]).max()) <= scale / 2 * (1 + 1e-6), name
        assert bits_of_np(got[kept]) == bits_of_np(expected), name


def test_load_equals_quantize_state_dict(tmp_path):
    """The documented contract that the CLI relies on to score a model as it will be decoded."""
    state_dict = pruned_basiccnn()
    for values, bits in (("fp16", None), ("int8", None), ("kmeans", {"_default": 4, "fc1.weight": 3})):
        save_compressed(state_dict, tmp_path / "m.epz", values=values, bits=bits, level=3)
        assert_bit_exact(load_compressed(tmp_path / "m.epz"), quantize_state_dict(state_dict, values, bits))


def test_kmeans_export_of_kmeans_weights_is_lossless(tmp_path):
    quantized = quantize_state_dict(pruned_basiccnn(), "kmeans", 3)
    save_compressed(quantized, tmp_path / "m.ep", values="kmeans", bits=3)
    assert_bit_exact(load_compressed(tmp_path / "m.ep"), quantized)


# --------------------------------------------------------------------------- size


def test_fp32_size_target_on_the_seed_model(tmp_path):
    state_dict = pruned_basiccnn()
    weights = [state_dict[name] for name in SEED_SPARSITY]
    nonzeros = sum(int((w != 0).sum()) for w in weights)
    budget = nonzeros * 4 + sum(w.numel() for w in weights) / 8 + 4096
    size = save_compressed(state_dict, tmp_path / "m.ep")
    assert size <= budget
    assert budget < 0.4 * 2**20


def test_size_breakdown_adds_up(tmp_path):
    size = save_compressed(pruned_basiccnn(), tmp_path / "m.ep", values="int8")
    breakdown = size_breakdown(tmp_path / "m.ep")
    assert breakdown.file_bytes == size
    assert breakdown.header_bytes + sum(breakdown.tensor_bytes.values()) == size
    assert max(breakdown.tensor_bytes, key=breakdown.tensor_bytes.get) == "fc1.weight"
    assert breakdown.layouts["fc1.bias"] == "raw"


# --------------------------------------------------------------------------- user errors


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(values="int4"), "value mode must be one of"),
        (dict(values="kmeans"), "needs a bit width"),
        (dict(values="kmeans", bits=9), "from 2 to 8"),
        (dict(values="kmeans", bits="4"), "from 2 to 8"),
        (dict(values="int8", bits=4), "use values='kmeans'"),
        (dict(values="fp16", bits=4), "only applies to values='kmeans'"),
        (dict(values={"re:(": "fp16"}), "not a valid regular expression"),
        (dict(level=0), "zstd level"),
        (dict(values={"fc1.weight": "kmeans"}, bits={"conv1.weight": 4}), "no bit width matches"),
    ],
)
def test_bad_settings_say_how_to_fix_them(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        save_compressed(pruned_basiccnn(), tmp_path / "m.ep", **options)


def test_unsupported_entries(tmp_path):
    with pytest.raises(ValueError, match="only tensors"):
        save_compressed({"step": 3}, tmp_path / "m.ep")
    with pytest.raises(ValueError, match="cannot be stored"):
        save_compressed({"z": torch.zeros(2, dtype=torch.complex64)}, tmp_path / "m.ep")
