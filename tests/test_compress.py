"""The compressed model format: hand-checked encodings, exact round trips, sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
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

SEED_SPARSITY = {"conv1.weight": 0.4, "conv2.weight": 0.6, "fc1.weight": 0.67, "fc2.weight": 0.5}
ALL_MODES = [
    ("fp32", None),
    ("fp16", None),
    ("int8", None),
    ("kmeans", 8),
    ("kmeans", 2),
    ("kmeans", {"_default": 4, "fc1.weight": 3}),
    ({"_default": "int8", "re:conv.*": "kmeans"}, 5),
]


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


@pytest.mark.parametrize("values, bits", ALL_MODES)
def test_decoded_equals_quantized_and_zeros_stay_zero(tmp_path, values, bits):
    state_dict = pruned_basiccnn()
    save_compressed(state_dict, tmp_path / "m.ep", values=values, bits=bits, level=3)
    loaded = load_compressed(tmp_path / "m.ep")
    assert_bit_exact(loaded, quantize_state_dict(state_dict, values, bits))
    for name, tensor in state_dict.items():
        assert bool((loaded[name][tensor == 0] == 0).all()), name
        if name.endswith("bias"):
            assert torch.equal(loaded[name], tensor)


def test_kmeans_uses_at_most_2_to_the_bits_values(tmp_path):
    state_dict = pruned_basiccnn()
    save_compressed(state_dict, tmp_path / "m.ep", values="kmeans", bits={"_default": 4, "fc1.weight": 3})
    loaded = load_compressed(tmp_path / "m.ep")
    assert torch.unique(loaded["fc1.weight"][loaded["fc1.weight"] != 0]).numel() <= 8
    assert torch.unique(loaded["conv2.weight"][loaded["conv2.weight"] != 0]).numel() <= 16


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
