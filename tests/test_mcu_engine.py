"""The C engine generated from an int8 .tflite, compiled for the host with ``cc`` and run against
TensorFlow Lite Micro's interpreter (an independent implementation) bit for bit.

Tiny random models cover every op ``export_tflite`` writes, each dense and sparse (weights pruned
to 80 % first); BasicCNN runs on Fashion-MNIST images. The sparse format is checked by hand on a
3x3 kernel, and names from the file are checked never to reach the C code.
"""

from __future__ import annotations

import ctypes
import math
from fractions import Fraction
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.export.centroids import share_weights
from edgeprune.export.int8_graph import multiply_by_quantized_multiplier, quantize_activation
from edgeprune.export.tflite import export_tflite
from edgeprune.export.tflite_read import read_tflite
from edgeprune.export.tflm import make_interpreter, run_int8, tflite_arena_bytes
from edgeprune.mcu import export_c
from edgeprune.mcu.arena import plan_arena
from edgeprune.mcu.lowering import _Lowering
from edgeprune.mcu.sparse import encode_conv, encode_fc, gap_entries
from edgeprune.models import BasicCNN, ResNet8

ARM_FLAGS = ["-mcpu=cortex-m4", "-mthumb", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard", "-O2", "-c"]


def _build(folder: Path, extra: list[str] = ()) -> ctypes.CDLL:
    """The generated C compiled with the host's cc into a shared library."""
    lib = folder / "engine.so"
    sources = [str(p) for p in sorted(folder.glob("*.c"))]
    subprocess.run(["cc", "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", *extra, "-o", str(lib),
                    *sources], check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(lib))


def _invoke(lib: ctypes.CDLL, x: np.ndarray, out_size: int) -> np.ndarray:
    x = np.ascontiguousarray(x, np.int8)
    out = np.zeros(out_size, np.int8)
    status = lib.edgeprune_invoke(x.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p))
    assert status == 0
    return out


def _prune(model: nn.Module, fraction: float) -> nn.Module:
    """Zero the ``fraction`` smallest weights of every weight tensor (a uniform magnitude pruning)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                k = int(round(fraction * p.numel()))
                p.view(-1)[p.abs().flatten().argsort()[:k]] = 0
    return model


def _export(model: nn.Module, shape: tuple[int, ...], folder: Path, sparse: str) -> tuple[bytes, dict]:
    torch.manual_seed(0)
    path = export_tflite(model, folder / "m.tflite", torch.randn(64, *shape) * 2)
    data = path.read_bytes()
    return data, export_c(data, folder / "c", sparse=sparse)


class ConvStrides(nn.Module):  # SAME stride 2 with relu6, VALID, a 1x1 conv, a residual add, a relu after a pool
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(8, 12, 3)
        self.c3 = nn.Conv2d(12, 12, 1)

    def forward(self, x):
        y = self.c2(F.relu6(self.c1(x)))
        y = torch.relu(F.max_pool2d(y + self.c3(y), 2, stride=1))  # a RELU of its own (a pool fuses none)
        return y.flatten(1)  # not followed by a linear layer: a TRANSPOSE to NCHW


class DepthwisePools(nn.Module):  # depthwise (multiplier 2), average pool with padding (an explicit PAD), relu6 of its own,
    # max pool with padding (PADV2 with -128), FC, softmax
    def __init__(self) -> None:
        super().__init__()
        self.dw = nn.Conv2d(4, 8, 3, padding=1, groups=4)
        self.fc = nn.Linear(8 * 2 * 2, 6)
        with torch.no_grad():
            self.dw.weight.mul_(8)  # activations well above 6, so the relu6 clamps

    def forward(self, x):
        x = F.relu6(F.avg_pool2d(F.relu(self.dw(x)), 3, stride=2, padding=1))
        x = F.max_pool2d(x, 3, stride=2, padding=1)
        return F.softmax(self.fc(x.flatten(1)), dim=1)


class PaddedConvPool(nn.Module):  # asymmetric kernel with padding TFLite's SAME cannot express, dilation, fused 2x2 max pool
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 6, (3, 2), padding=(2, 1))
        self.c2 = nn.Conv2d(6, 8, 3, padding=2, dilation=2)
        self.fc = nn.Linear(8 * 5 * 4, 5)

    def forward(self, x):
        x = F.max_pool2d(torch.relu(self.c1(x)), 2)
        return self.fc(F.max_pool2d(self.c2(x), 2).flatten(1))


class AddsKeepInput(nn.Module):  # an ADD input read again after it: the sum must not overwrite it
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 1)
        self.c3 = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = torch.relu(self.c1(x))
        z = torch.relu(y + self.c2(y))
        return (self.c3(z) + y).flatten(1)


MODELS = {"conv_strides": (ConvStrides, (3, 11, 9)), "depthwise_pools": (DepthwisePools, (4, 8, 7)),
          "padded_conv_pool": (PaddedConvPool, (2, 19, 15)), "adds_keep_input": (AddsKeepInput, (3, 6, 5))}


@pytest.mark.parametrize("sparse", ["never", "always"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_op_matches_tflm_bit_for_bit(tmp_path, name, sparse):
    factory, shape = MODELS[name]
    torch.manual_seed(1)
    data, report = _export(_prune(factory(), 0.8), shape, tmp_path, sparse)
    engines = {layer["engine"] for layer in report["layers"]} - {"-"}
    assert engines == {"dense" if sparse == "never" else "sparse"}
    lib = _build(tmp_path / "c")
    inputs = np.random.default_rng(0).integers(-128, 128, size=(6, *shape[1:], shape[0]), dtype=np.int8)
    for x, expected in zip(inputs, run_int8(data, inputs)):
        np.testing.assert_array_equal(_invoke(lib, x, expected.size), expected.reshape(-1))


@pytest.mark.parametrize("sparse", ["never", "always"])
def test_resnet8_matches_tflm_bit_for_bit(tmp_path, sparse):
    """MLPerf Tiny's ResNet-8 (random weights, 90 % pruned for the sparse kernels, at 3x16x16 to stay fast): the
    residual ADDs (written in place over an input that dies), the stride-2 shortcuts and the global average pool."""
    torch.manual_seed(2)
    model = ResNet8(image_size=16).eval()
    data, report = _export(_prune(model, 0.9 if sparse == "always" else 0.0), (3, 16, 16), tmp_path, sparse)
    adds = [layer for layer in report["layers"] if layer["op"] == "ADD"]
    assert len(adds) == 3 and {layer["engine"] for layer in report["layers"]} - {"-"} == {
        "dense" if sparse == "never" else "sparse"}
    source = (tmp_path / "c" / "edgeprune_model.c").read_text()
    assert source.count("status = ep_add(") == 3
    lib = _build(tmp_path / "c")
    inputs = np.random.default_rng(3).integers(-128, 128, size=(3, 16, 16, 3), dtype=np.int8)
    for x, expected in zip(inputs, run_int8(data, inputs)):
        np.testing.assert_array_equal(_invoke(lib, x, expected.size), expected.reshape(-1))


class LongGaps(nn.Module):  # a conv with short runs (uint8 counts), an FC of 2700 inputs: gaps of 256+ zeros, a long row
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 12, 3, padding=1)
        self.fc = nn.Linear(12 * 15 * 15, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.mark.parametrize("bits", [4, 8])
def test_escapes_fillers_and_both_count_widths_match_tflm(tmp_path, monkeypatch, bits):
    """One entry width for every layer (4-bit: escapes, the kernel tests each entry; 8-bit: fillers, a stored
    zero every 256 places, no test): FC row 0 keeps 400 weights (more than 255 entries: uint16 counts), rows
    1-4 keep 4 each (gaps of hundreds of zeros); the conv's runs are short (uint8 counts). Equal to TFLM."""
    torch.manual_seed(4)
    model = _prune(LongGaps(), 0.9)
    with torch.no_grad():
        w = model.fc.weight
        keep = torch.zeros_like(w, dtype=torch.bool)
        keep[0, torch.randperm(w.shape[1])[:400]] = True
        for row in range(1, 5):
            keep[row, torch.randperm(w.shape[1])[:4]] = True
        w.copy_(torch.where(keep, torch.sign(torch.randn_like(w)) * (0.5 + torch.rand_like(w)), torch.zeros_like(w)))
    monkeypatch.setattr("edgeprune.mcu.choice.ENTRY_BITS", (bits,))
    data, report = _export(model, (4, 15, 15), tmp_path, "always")
    assert [layer["format"] for layer in report["layers"] if layer["engine"] != "-"] == [f"{bits}-bit"] * 2
    fc = encode_fc(model.fc.weight.detach().ne(0).numpy().astype(np.int8), bits)
    assert fc.counts.dtype == np.uint16 and (fc.multiplies > 408 if bits == 8 else fc.entries > 408)
    source = (tmp_path / "c" / "edgeprune_model.c").read_text()
    assert ".count8 = " in source and ".count = " in source
    lib = _build(tmp_path / "c")
    inputs = np.random.default_rng(5).integers(-128, 128, size=(4, 15, 15, 4), dtype=np.int8)
    for x, expected in zip(inputs, run_int8(data, inputs)):
        np.testing.assert_array_equal(_invoke(lib, x, expected.size), expected.reshape(-1))


def test_requantization_equals_tflite_formula(tmp_path):
    """The kernels' one-step requantization against TFLite's two-step formula (int8_graph's numpy version) on
    rounding ties, signs, every right shift 0..31 and left shifts."""
    (tmp_path / "c").mkdir()
    kernels = Path(__file__).parent.parent / "src" / "edgeprune" / "mcu" / "c"
    shutil.copy(kernels / "ep_requant.h", tmp_path / "c" / "ep_requant.h")
    shutil.copy(Path(__file__).parent / "c" / "ep_requant_probe.c", tmp_path / "c" / "ep_requant_probe.c")
    lib = _build(tmp_path / "c")
    mbqm = lib.ep_probe_multiply_by_quantized_multiplier
    mbqm.argtypes, mbqm.restype = [ctypes.c_int32] * 3, ctypes.c_int32
    rng = np.random.default_rng(4)
    cases = 0
    for shift in [*range(-31, 1), 1, 3, 7]:
        for multiplier in (1 << 30, (1 << 31) - 1, 1518500250, 0):
            limit = (2**31 - 1) >> max(shift, 0)
            xs = np.concatenate([np.arange(-40, 41), rng.integers(-limit, limit, 60), [limit, -limit]])
            if multiplier == 1 << 30 and shift <= 0:  # x / 2 = (k + 1/2) * 2^-shift: a tie of the last rounding
                xs = np.concatenate([xs, (2 * np.arange(-5, 6) + 1) * (1 << -shift)])
            xs = xs[(xs >= -limit) & (xs <= limit)]
            expected = multiply_by_quantized_multiplier(xs, multiplier, shift)
            got = [mbqm(int(x), multiplier, shift) for x in xs]
            np.testing.assert_array_equal(got, expected, err_msg=f"multiplier {multiplier}, shift {shift}")
            cases += len(xs)
    assert cases > 10_000


@pytest.mark.parametrize("name", sorted(MODELS))
def test_look_up_table_values_match_tflm_decoding_them(tmp_path, monkeypatch, name):
    """Weights k-means shared to 16 values, stored by TFLM's compressor as 4-bit look-up tables: TFLM decodes them
    with its DECODE ops, the engine keeps 4-bit codes inside its sparse kernels (forced here in every layer); the
    outputs are equal. Unforced, each layer takes its variant of fewest bytes: never more than with the tables."""
    factory, shape = MODELS[name]
    torch.manual_seed(1)
    model = _prune(factory(), 0.8).eval()
    share_weights(model, 4)
    path = export_tflite(model, tmp_path / "lut.tflite", torch.randn(64, *shape) * 2, lut_bits=4)
    data = path.read_bytes()
    assert b"TFLM_DECODE" in data

    def weighted(report: dict) -> list[dict]:
        return [layer for layer in report["layers"] if layer["op"].split("+")[0] in ("CONV_2D", "FULLY_CONNECTED")]

    def size(layer: dict) -> int:
        return layer["weight_bytes"] + layer["index_bytes"]

    fewest = weighted(export_c(data, tmp_path / "fewest", sparse="always"))
    variants = _Lowering.sparse_variants
    alone = {}  # each encoding forced alone, in every layer
    for name in ("sparse 4-bit", "sparse 8-bit", "sparse 4-bit + lut", "sparse 8-bit + lut"):
        monkeypatch.setattr(_Lowering, "sparse_variants",
                            lambda self, *args, name=name: [v for v in variants(self, *args) if v[0] == name])
        alone[name] = weighted(export_c(data, tmp_path / name.replace(" ", "_"), sparse="always"))
    # the unforced choice is, layer by layer, the fewest bytes of the four encodings made separately
    assert [size(a) for a in fewest] == [min(size(v[i]) for v in alone.values()) for i in range(len(fewest))]
    monkeypatch.setattr(_Lowering, "sparse_variants",
                        lambda self, *args: [v for v in variants(self, *args) if v[0].endswith("+ lut")])
    runs = weighted(export_c(data, tmp_path / "c", sparse="always"))
    assert runs and all(layer["format"].endswith("+ lut") and layer["kernel"].endswith("_sparse_lut") for layer in runs)
    lib = _build(tmp_path / "c")
    inputs = np.random.default_rng(0).integers(-128, 128, size=(6, *shape[1:], shape[0]), dtype=np.int8)
    for x, expected in zip(inputs, run_int8(data, inputs)):
        np.testing.assert_array_equal(_invoke(lib, x, expected.size), expected.reshape(-1))


def test_every_op_of_the_exporter_is_covered(tmp_path):
    ops = set()
    for factory, shape in MODELS.values():
        graph = read_tflite(export_tflite(factory(), tmp_path / "m.tflite", torch.randn(8, *shape)).read_bytes())
        ops |= {op.op for op in graph.ops}
    assert ops >= {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "AVERAGE_POOL_2D", "MAX_POOL_2D", "PAD",
                   "PADV2", "RESHAPE", "TRANSPOSE", "SOFTMAX", "RELU", "RELU6"}


@pytest.mark.parametrize("fraction", [0.0, 0.9])
def test_basiccnn_on_fashion_mnist_matches_tflm(tmp_path, fashion_slice, fraction):
    from edgeprune.data import DataConfig, load_data

    splits = load_data(DataConfig(data_dir=fashion_slice, val_size=100))
    train = torch.stack([splits.train[i][0] for i in range(64)])
    test = torch.stack([splits.test[i][0] for i in range(12)])
    torch.manual_seed(0)
    model = _prune(BasicCNN(in_channels=1, image_size=28), fraction)
    data = export_tflite(model, tmp_path / "b.tflite", train).read_bytes()
    report = export_c(data, tmp_path / "c", sparse="never" if fraction == 0 else "auto")
    assert {layer["engine"] for layer in report["layers"]} - {"-"} == ({"dense"} if fraction == 0 else {"sparse"})
    lib = _build(tmp_path / "c")
    graph = read_tflite(data)
    scale, zp = graph.tensors[graph.inputs[0]].qparams
    inputs = quantize_activation(test.numpy().transpose(0, 2, 3, 1), scale, zp)  # as evaluate_tflite quantizes
    for x, expected in zip(inputs, run_int8(data, inputs)):
        np.testing.assert_array_equal(_invoke(lib, x, expected.size), expected.reshape(-1))
    interp = make_interpreter(data)
    interp.set_input(inputs[:1], 0)
    interp.invoke()
    assert report["arena_bytes"] < tflite_arena_bytes(interp)  # one static arena, smaller than TFLM's for the same model
    header = (tmp_path / "c" / "edgeprune_model.h").read_text()
    assert f"#define EDGEPRUNE_ARENA_SIZE {report['arena_bytes']}\n" in header
    assert "#define EDGEPRUNE_INPUT_SIZE 784\n" in header and "#define EDGEPRUNE_OUTPUT_SIZE 10\n" in header


def test_sparse_indexing_by_hand_on_a_3x3_kernel():
    kernel = np.array([[0, 5, 0],
                       [0, 0, 0],
                       [-3, 0, 7]], np.int8).reshape(1, 3, 3, 1)  # [O, kh, kw, I]
    four = encode_conv(kernel, bits=4)
    # non-zeros at window positions 1, 6 and 8: skip 1 zero, then 4 (positions 2..5), then 1 (position 7)
    assert four.counts.tolist() == [3]
    assert four.index.tolist() == [1 | 4 << 4, 1]  # two entries to a byte, low nibble first; an odd one alone
    assert four.values.tolist() == [5, -3, 7]
    eight = encode_conv(kernel, bits=8)
    assert eight.counts.tolist() == [3] and eight.index.tolist() == [1, 4, 1] and eight.values.tolist() == [5, -3, 7]
    # look-up-table values: the run's table holds -3, 5, 7; the values 5, -3, 7 are codes 1, 0, 2, two to a byte
    lut = encode_conv(kernel, bits=8, lut=True)
    assert lut.table.tolist() == [[-3, 5, 7]] and lut.values.tolist() == [1 | 0 << 4, 2] and lut.index.tolist() == [1, 4, 1]
    assert lut.value_bytes == 2 + 3 and lut.format == "8-bit + lut"
    # 4-bit: a gap of 20 zeros is one escape entry (15 zeros, no multiplication), then 5; every run starts on
    # a byte; counts are uint8 while every run has at most 255 entries
    row = np.zeros((2, 40), np.int8)
    row[0, 20], row[0, 39], row[1, 0] = 9, -1, 4
    fc = encode_fc(row, bits=4)
    assert gap_entries(np.array([20, 39])) == ([15, 5, 15, 3], [20, 39])
    assert fc.counts.tolist() == [4, 1] and fc.counts.dtype == np.uint8
    assert fc.index.tolist() == [15 | 5 << 4, 15 | 3 << 4, 0]
    assert fc.values.tolist() == [9, -1, 4] and fc.multiplies == 3 and fc.index_bytes == 2 + 3
    # 8-bit: no escape; a gap of 600 zeros is two fillers (entry 255 and a stored 0 at positions 255 and 511:
    # 256 places each), then 600 - 512 = 88 zeros before the non-zero at 600
    wide = np.zeros((1, 700), np.int8)
    wide[0, 600], wide[0, 601] = 3, -2
    assert gap_entries(np.array([600, 601]), bits=8) == ([255, 255, 88, 0], [255, 511, 600, 601])
    eight_fc = encode_fc(wide, bits=8)
    assert eight_fc.index.tolist() == [255, 255, 88, 0] and eight_fc.values.tolist() == [0, 0, 3, -2]
    assert eight_fc.multiplies == 4 and eight_fc.entries == 4
    # a run of more than 255 entries takes uint16 counts for the whole layer
    full = np.ones((2, 300), np.int8)
    full[1, :] = 0
    assert encode_fc(full, bits=8).counts.dtype == np.uint16 and encode_fc(full, bits=8).index_bytes == 2 * 2 + 300


def test_arena_plan_reuses_memory_of_dead_tensors():
    sizes = {0: 100, 1: 40, 2: 100, 3: 30}
    lives = {0: (0, 1), 1: (1, 2), 2: (2, 3), 3: (3, 3)}
    offsets, size = plan_arena(sizes, lives)
    for a in sizes:
        for b in sizes:
            overlap_in_time = a < b and lives[a][0] <= lives[b][1] and lives[b][0] <= lives[a][1]
            if overlap_in_time:
                assert offsets[a] + sizes[a] <= offsets[b] or offsets[b] + sizes[b] <= offsets[a]
    assert offsets[0] == offsets[2] == 0 and offsets[1] == 100 and size == 140  # tensor 2 takes tensor 0's bytes


HOSTILE = ['*/ system("x"); /*', "a\nb #include <stdio.h>", "\\", "??/"]


def test_names_from_the_file_never_reach_the_c_code(tmp_path):
    torch.manual_seed(0)
    data = export_tflite(_prune(PaddedConvPool(), 0.5), tmp_path / "m.tflite", torch.randn(16, 2, 19, 15)).read_bytes()
    graph = read_tflite(data)
    export_c(graph, tmp_path / "plain")
    for i, t in enumerate(graph.tensors):
        t.name = HOSTILE[i % len(HOSTILE)]
    export_c(graph, tmp_path / "hostile")
    for name in ("edgeprune_model.c", "edgeprune_model.h"):
        assert (tmp_path / "hostile" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes()
    # the same in the file's own bytes: a tensor name replaced by one of the same length
    name = b"c1.weight"
    assert data.count(name) == 1
    forged = data.replace(name, b'*/x();\n/*')
    export_c(forged, tmp_path / "forged")
    assert (tmp_path / "forged" / "edgeprune_model.c").read_bytes() == (tmp_path / "plain" / "edgeprune_model.c").read_bytes()


def test_layer_hook_runs_after_every_layer(tmp_path):
    torch.manual_seed(0)
    _, report = _export(DepthwisePools(), (4, 8, 7), tmp_path, "auto")
    (tmp_path / "c" / "hook.c").write_text(
        "int ep_calls[64]; int ep_count;\nvoid ep_layer_done(int layer) { ep_calls[ep_count++] = layer; }\n")
    lib = _build(tmp_path / "c", ["-DEDGEPRUNE_LAYER_DONE=ep_layer_done"])
    _invoke(lib, np.zeros((8, 7, 4), np.int8), 6)
    count = ctypes.c_int.in_dll(lib, "ep_count").value
    calls = (ctypes.c_int * 64).in_dll(lib, "ep_calls")
    assert count == len(report["layers"]) and list(calls[:count]) == list(range(count))
    assert f"#define EDGEPRUNE_NUM_LAYERS {count}" in (tmp_path / "c" / "edgeprune_model.h").read_text()


def test_generated_library_compiles_for_cortex_m4_with_nothing_else(tmp_path):
    if shutil.which("arm-none-eabi-gcc") is None:
        pytest.fail("arm-none-eabi-gcc is missing: apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi")
    torch.manual_seed(0)
    _export(_prune(DepthwisePools(), 0.8), (4, 8, 7), tmp_path, "auto")
    folder = tmp_path / "c"
    sources = [str(p) for p in sorted(folder.glob("*.c"))]
    for source in sources:
        subprocess.run(["arm-none-eabi-gcc", *ARM_FLAGS, "-Wall", "-Wextra", "-Werror", source, "-o",
                        str(tmp_path / (Path(source).stem + ".o"))], check=True, capture_output=True, text=True, cwd=folder)
    subprocess.run(["arm-none-eabi-ld", "-r", "-o", str(tmp_path / "all.o"), *map(str, tmp_path.glob("*.o"))], check=True)
    undefined = subprocess.run(["arm-none-eabi-nm", "-u", str(tmp_path / "all.o")], check=True, capture_output=True,
                               text=True).stdout.split()
    assert set(undefined) - {"U"} <= {"memcpy", "memset"}  # no libc beyond <string.h>, no libgcc helpers


def test_report_counts_weights_and_sparse_choice(tmp_path):
    torch.manual_seed(0)
    model = _prune(DepthwisePools(), 0.9)
    _, dense = _export(model, (4, 8, 7), tmp_path / "d", "never")
    _, sparse = _export(model, (4, 8, 7), tmp_path / "s", "always")
    saved = json.loads((tmp_path / "s" / "c" / "layers.json").read_text())
    assert saved == sparse
    fc = [layer for layer in sparse["layers"] if layer["op"] == "FULLY_CONNECTED"][0]
    assert fc["macs"] == 6 * 32 and fc["nonzero_macs"] == int(np.count_nonzero(model.fc.weight.detach().numpy()))
    assert fc["weight_bytes"] == fc["nonzero_macs"] and fc["index_bytes"] > 0 and fc["why"].startswith("sparse")
    assert dense["totals"]["weight_bytes"] == 8 * 9 + 6 * 32 and dense["totals"]["index_bytes"] == 0
    assert [layer["format"] for layer in dense["layers"] if layer["engine"] != "-"] == ["int8", "int8"]
    assert [layer["format"] for layer in sparse["layers"] if layer["engine"] != "-"][0] == "taps"
    assert fc["format"] in ("4-bit", "8-bit")


def test_bad_input_gets_one_line(tmp_path):
    with pytest.raises(ValueError, match="sparse must be one of auto, always, never"):
        export_c(b"", tmp_path / "x", sparse="sometimes")
    with pytest.raises(ValueError, match="not a TFLite file"):
        export_c(b"garbage!" * 4, tmp_path / "x")
    graph = read_tflite(export_tflite(DepthwisePools(), tmp_path / "m.tflite", torch.randn(8, 4, 8, 7)).read_bytes())
    softmax = next(op for op in graph.ops if op.op == "SOFTMAX")
    graph.tensors[softmax.outputs[0]].zero_point[:] = 0
    with pytest.raises(ValueError, match=r"^op \d+ \(SOFTMAX\): output scale .* zero point 0; int8 softmax needs") as info:
        export_c(graph, tmp_path / "x")
    assert "\n" not in str(info.value) and not (tmp_path / "x").exists()


def _tflite_requantize(x: int, multiplier: int, shift: int) -> int:
    """TFLite's MultiplyByQuantizedMultiplier from gemmlowp's definitions, in exact rationals (not the numpy port's
    bit operations): SaturatingRoundingDoublingHighMul is floor(a * m / 2^31 + 1/2) (its nudge rounds halves up),
    RoundingDivideByPOT rounds halves away from zero."""
    high = math.floor(Fraction(x * (1 << max(shift, 0)) * multiplier, 1 << 31) + Fraction(1, 2))
    q = Fraction(high, 1 << max(-shift, 0))
    return int(math.copysign(math.floor(abs(q) + Fraction(1, 2)), q))


def test_requantization_by_hand_and_at_large_shifts(tmp_path):
    """Values worked by hand, then every shift from -31 to 30 (large left shifts included) against exact rationals."""
    (tmp_path / "c").mkdir()
    kernels = Path(__file__).parent.parent / "src" / "edgeprune" / "mcu" / "c"
    shutil.copy(kernels / "ep_requant.h", tmp_path / "c" / "ep_requant.h")
    shutil.copy(Path(__file__).parent / "c" / "ep_requant_probe.c", tmp_path / "c" / "ep_requant_probe.c")
    mbqm = _build(tmp_path / "c").ep_probe_multiply_by_quantized_multiplier
    mbqm.argtypes, mbqm.restype = [ctypes.c_int32] * 3, ctypes.c_int32
    half = 1 << 30  # the multiplier 0.5
    # 3 * 0.5 = 1.5 -> 2, then / 4 = 0.5 -> 1; -3: -1.5 -> -1 (halves up), / 4 = -0.25 -> 0; -5 * 0.5 = -2.5 -> -2, / 2 -> -1
    # 7 << 20 times 0.5 = 7 * 2^19 exactly; 1 << 30 times 0.5 = 2^29
    for x, m, shift, expected in [(3, half, -2, 1), (-3, half, -2, 0), (-5, half, -1, -1), (7, half, 20, 7 << 19),
                                  (1, half, 30, 1 << 29), (-1, half, 30, -(1 << 29)), (1000, half, -31, 0)]:
        assert _tflite_requantize(x, m, shift) == expected
        assert mbqm(x, m, shift) == expected, (x, m, shift)
    rng = np.random.default_rng(5)
    for shift in range(-31, 31):
        for multiplier in (half, (1 << 31) - 1, 1518500250, 1 << 30 | 12345):
            limit = (2**31 - 1) >> max(shift, 0)  # the left-shifted accumulator must fit int32, as TFLite requires
            for x in [*rng.integers(-limit, limit + 1, 40).tolist(), limit, -limit, 0, 1, -1]:
                assert mbqm(int(x), multiplier, shift) == _tflite_requantize(int(x), multiplier, shift), (x, multiplier, shift)
