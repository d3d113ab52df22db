"""Property test: the generated C engine, built for the host under AddressSanitizer and UndefinedBehaviorSanitizer,
equals TensorFlow Lite Micro's interpreter bit for bit on randomly generated small int8 graphs.

Each graph is a seeded chain of the ops the engine lowers (CONV_2D, DEPTHWISE_CONV_2D with a depth multiplier,
FULLY_CONNECTED, ADD, MAX/AVERAGE_POOL_2D, PAD, PADV2, RESHAPE, TRANSPOSE, RELU, RELU6, SOFTMAX, and float ends
through QUANTIZE and DEQUANTIZE) with odd sizes, strides, dilations, SAME and VALID padding, a convolution followed
by a 2x2 max pool (fused by the engine), weights pruned anywhere from 0 to 100 % (whole channels empty, all-zero
layers), rows whose non-zeros are exactly 15, 255, 256 or 257 zeros apart (the 4-bit escape and the 8-bit fillers),
and weights stored as TFLM look-up tables. Each graph is lowered dense, sparse with 4-bit entries or sparse with
8-bit entries, compiled with ``-fsanitize=address,undefined -fno-sanitize-recover -Wall -Wextra -Werror`` into a
small program (the kernels once per session), and run on a few random inputs; any difference, sanitizer report or
non-zero status fails with the graph's seed in the message.

``EDGEPRUNE_PROPERTY_GRAPHS`` sets how many graphs (default 80, about half a minute on two cores),
``EDGEPRUNE_PROPERTY_SEED`` the first seed (default 0). To rerun one failing graph: ``EDGEPRUNE_PROPERTY_SEED=<seed> EDGEPRUNE_PROPERTY_GRAPHS=1``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from edgeprune.export.int8_graph import Int8Graph, OpOptions, QOp, QTensor, window_output_size
from edgeprune.export.tflite_write import graph_to_tflite
from edgeprune.export.tflm import run_int8
from edgeprune.mcu import choice, export_c
from edgeprune.mcu.codegen import KERNEL_FILES

GRAPHS = int(os.environ.get("EDGEPRUNE_PROPERTY_GRAPHS", "80"))
FIRST_SEED = int(os.environ.get("EDGEPRUNE_PROPERTY_SEED", "0"))
INPUTS_PER_GRAPH = 3
SANITIZE = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
CFLAGS = ["-std=c99", "-O1", "-g", "-Wall", "-Wextra", "-Werror", *SANITIZE]
GAPS = (15, 255, 256, 257)  # the 4-bit escape (15) and 8-bit filler (256) boundaries
ENGINES = ("dense", "sparse 4-bit", "sparse 8-bit")

HARNESS = r"""
/* Reads inputs from stdin (EDGEPRUNE_INPUT_SIZE values each), writes outputs to stdout; buffers of exactly
 * the model's sizes on the heap, so that AddressSanitizer sees a read or write past either end. */
#include <stdio.h>
#include <stdlib.h>
#include "edgeprune_model.h"

int main(void) {
    EDGEPRUNE_INPUT_TYPE *input = malloc(sizeof *input * EDGEPRUNE_INPUT_SIZE);
    EDGEPRUNE_OUTPUT_TYPE *output = malloc(sizeof *output * EDGEPRUNE_OUTPUT_SIZE);
    int status = 0;
    if (!input || !output) {
        return 2;
    }
    while (fread(input, sizeof *input, EDGEPRUNE_INPUT_SIZE, stdin) == EDGEPRUNE_INPUT_SIZE) {
        status = edgeprune_invoke(input, output);
        if (status != 0) {
            fprintf(stderr, "edgeprune_invoke returned %d\n", status);
            break;
        }
        fwrite(output, sizeof *output, EDGEPRUNE_OUTPUT_SIZE, stdout);
    }
    free(input);
    free(output);
    return status == 0 ? 0 : 3;
}
"""


# ---------------------------------------------------------------------------------------------
# random graphs


@dataclass
class _Builder:
    """A chain of ops grown at random from one current int8 tensor ``x``."""

    rng: np.random.Generator
    g: Int8Graph = field(default_factory=Int8Graph)
    x: int = -1
    lut: bool = False  # weights with at most 16 values per channel, stored as TFLM look-up tables
    gaps: bool = False  # every row long enough holds the gap boundaries

    # tensors -----------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self.g.tensors[self.x].shape

    def qparams(self) -> tuple[float, int]:
        return float(self.rng.uniform(0.01, 0.1)), int(self.rng.integers(-60, 61))

    def activation(self, shape: tuple[int, ...], qparams: tuple[float, int] | None = None) -> int:
        return self.g.activation(f"t{len(self.g.tensors)}", shape, qparams or self.qparams())

    def weights(self, shape: tuple[int, ...], axis: int) -> np.ndarray:
        """int8 weights pruned at a random sparsity (0 and 100 % among them), whole channels emptied, or rows
        whose non-zeros are exactly one of :data:`GAPS` zeros apart."""
        rng = self.rng
        w = rng.integers(-127, 128, size=shape).astype(np.int8)
        channels = np.moveaxis(w, axis, 0).reshape(shape[axis], -1)  # a view: writes reach w
        kind = rng.choice(["uniform", "zero", "dense", "gaps", "empty channels"], p=[0.5, 0.08, 0.12, 0.15, 0.15])
        if channels.shape[1] > max(GAPS) + 1 and (self.gaps or rng.random() < 0.6):  # rows long enough for them
            kind = "gaps"
        if kind == "uniform":
            channels[rng.random(channels.shape) < rng.uniform(0, 1)] = 0
        elif kind == "zero":
            channels[:] = 0
        elif kind == "gaps":
            for row in channels:
                row[:] = 0
                position = int(rng.integers(0, 20))
                while position < len(row):
                    row[position] = rng.choice([-1, 1]) * rng.integers(1, 128)
                    position += 1 + int(rng.choice(GAPS + (0, 3, 14, 16), p=[0.15, 0.15, 0.15, 0.15, 0.1, 0.1, 0.1, 0.1]))
        elif kind == "empty channels":
            channels[rng.random(len(channels)) < 0.5] = 0
        if self.lut:  # at most 15 non-zero values (and 0) per channel
            levels = rng.choice([-1, 1], size=(len(channels), 15)) * rng.integers(1, 128, size=(len(channels), 15))
            picked = np.take_along_axis(levels, rng.integers(0, 15, size=channels.shape), axis=1)
            channels[:] = np.where(channels != 0, picked, 0)
        return np.ascontiguousarray(np.moveaxis(channels.reshape(np.moveaxis(w, axis, 0).shape), 0, axis))

    def weighted(self, shape: tuple[int, ...], axis: int, in_scale: float, fan_in: int) -> tuple[int, int, float]:
        """Weight and bias constants; (weight, bias, an output scale that keeps the outputs spread)."""
        rng = self.rng
        channels = shape[axis]
        w_scales = rng.uniform(0.002, 0.02, channels).astype(np.float32)
        data = self.weights(shape, axis)
        w = self.g.constant(f"w{len(self.g.tensors)}.weight", data, w_scales, quantized_dimension=axis)
        # the accumulators' spread from the weights as pruned (about 74 * |w| for uniform int8 inputs), so that
        # the outputs spread over the int8 range however sparse the layer is
        norms = np.sqrt((np.moveaxis(data, axis, 0).reshape(channels, -1).astype(np.float64) ** 2).sum(axis=1))
        spread = 74.0 * in_scale * w_scales * np.where(norms > 0, norms, 127.0 * np.sqrt(max(fan_in, 1)))
        bias = rng.normal(0, spread / (in_scale * w_scales) / 2).astype(np.int64).clip(-2**24, 2**24).astype(np.int32)
        b = self.g.constant(f"b{len(self.g.tensors)}.bias", bias, in_scale * w_scales)
        return w, b, float(np.median(spread) / 40.0 * rng.uniform(0.5, 2.0))

    def op(self, name: str, inputs: tuple[int, ...], out_shape: tuple[int, ...], options: OpOptions = OpOptions(),
           qparams: tuple[float, int] | None = None) -> None:
        y = self.activation(out_shape, qparams)
        self.g.ops.append(QOp(name, tuple(inputs), (y,), options))
        self.x = y

    # ops ---------------------------------------------------------------------------------------
    def conv(self, depthwise: bool) -> None:
        rng = self.rng
        _, h, w, c = self.shape
        kh, kw = int(rng.integers(1, min(h, 4) + 1)), int(rng.integers(1, min(w, 4) + 1))
        stride = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        dilation = (int(rng.integers(1, 3)), int(rng.integers(1, 3))) if rng.random() < 0.3 else (1, 1)
        if (kh - 1) * dilation[0] >= h or (kw - 1) * dilation[1] >= w:
            dilation = (1, 1)
        padding = str(rng.choice(["SAME", "VALID"]))
        multiplier = int(rng.choice([1, 1, 2, 3])) if depthwise else 1
        out_c = c * multiplier if depthwise else int(rng.integers(1, 13))
        shape = (1, kh, kw, out_c) if depthwise else (out_c, kh, kw, c)
        scale = self.g.tensors[self.x].qparams[0]
        wt, b, out_scale = self.weighted(shape, 3 if depthwise else 0, scale, kh * kw * (1 if depthwise else c))
        oh = window_output_size(h, kh, stride[0], dilation[0], padding)
        ow = window_output_size(w, kw, stride[1], dilation[1], padding)
        options = OpOptions(padding=padding, stride=stride, dilation=dilation, depth_multiplier=multiplier,
                            activation=str(rng.choice(["NONE", "RELU", "RELU6"])))
        self.op("DEPTHWISE_CONV_2D" if depthwise else "CONV_2D", (self.x, wt, b), (1, oh, ow, out_c), options,
                (out_scale, int(rng.integers(-30, 31))))
        if not depthwise and oh >= 2 and ow >= 2 and rng.random() < 0.35:  # the engine fuses this pool
            self.pool("MAX_POOL_2D", (2, 2), (2, 2), "VALID", "NONE", same_q=True)

    def pool(self, name: str, window: tuple[int, int] | None = None, stride: tuple[int, int] | None = None,
             padding: str | None = None, activation: str | None = None, same_q: bool = False) -> None:
        rng = self.rng
        _, h, w, c = self.shape
        window = window or (int(rng.integers(1, min(h, 4) + 1)), int(rng.integers(1, min(w, 4) + 1)))
        stride = stride or (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        padding = padding or str(rng.choice(["SAME", "VALID"]))
        out = tuple(window_output_size(n, k, s, 1, padding) for n, k, s in zip((h, w), window, stride))
        options = OpOptions(padding=padding, stride=stride, filter=window,
                            activation=activation or str(rng.choice(["NONE", "RELU", "RELU6"])))
        # TFLM's int8 pools keep the input's quantization
        self.op(name, (self.x,), (1, *out, c), options, self.g.tensors[self.x].qparams)

    def pad(self) -> None:
        rng = self.rng
        _, h, w, c = self.shape
        amounts = np.zeros((4, 2), np.int32)
        amounts[1:3] = rng.integers(0, 3, size=(2, 2))
        paddings = self.g.constant(f"p{len(self.g.tensors)}", amounts)
        shape = (1, h + int(amounts[1].sum()), w + int(amounts[2].sum()), c)
        qparams = self.g.tensors[self.x].qparams
        if rng.random() < 0.5:
            self.op("PAD", (self.x, paddings), shape, qparams=qparams)
        else:
            fill = self.g.constant(f"f{len(self.g.tensors)}", np.array([rng.integers(-128, 128)], np.int8),
                                   np.array([qparams[0]]), zero_point=qparams[1])
            self.op("PADV2", (self.x, paddings, fill), shape, qparams=qparams)

    def add(self) -> None:
        """x + (a 1x1 convolution of x, or x itself): ADD's two operands of their own scales."""
        first = self.x
        if self.rng.random() < 0.7:
            c = self.shape[3]
            scale = self.g.tensors[first].qparams[0]
            wt, b, out_scale = self.weighted((c, 1, 1, c), 0, scale, c)
            self.op("CONV_2D", (first, wt, b), self.shape, qparams=(out_scale, int(self.rng.integers(-30, 31))))
        self.op("ADD", (first, self.x), self.shape, OpOptions(activation=str(self.rng.choice(["NONE", "RELU", "RELU6"]))))

    def activation_op(self, name: str) -> None:
        qparams = self.g.tensors[self.x].qparams if name == "RELU6" else None
        self.op(name, (self.x,), self.shape, qparams=qparams)

    def transpose(self) -> None:
        perm = np.array([0, *(1 + self.rng.permutation(len(self.shape) - 1))], np.int32)
        constant = self.g.constant(f"perm{len(self.g.tensors)}", perm)
        self.op("TRANSPOSE", (self.x, constant), tuple(self.shape[i] for i in perm), qparams=self.g.tensors[self.x].qparams)

    def flatten(self) -> None:
        size = int(np.prod(self.shape))
        constant = self.g.constant(f"shape{len(self.g.tensors)}", np.array([1, size], np.int32))
        self.op("RESHAPE", (self.x, constant), (1, size), OpOptions(new_shape=(1, size)), self.g.tensors[self.x].qparams)

    def fully_connected(self) -> None:
        size = self.shape[1]
        out_n = int(self.rng.integers(1, 40))
        wt, b, out_scale = self.weighted((out_n, size), 0, self.g.tensors[self.x].qparams[0], size)
        self.op("FULLY_CONNECTED", (self.x, wt, b), (1, out_n),
                OpOptions(activation=str(self.rng.choice(["NONE", "RELU", "RELU6"]))),
                (out_scale, int(self.rng.integers(-30, 31))))

    def softmax(self) -> None:
        self.op("SOFTMAX", (self.x,), self.shape, OpOptions(beta=float(self.rng.choice([1.0, 0.5, 2.0]))),
                (1 / 256, -128))


def random_graph(seed: int) -> tuple[Int8Graph, bool]:
    """A seeded random chain of the engine's ops; (graph, whether its weights are look-up tables)."""
    rng = np.random.default_rng(seed)
    b = _Builder(rng, lut=bool(rng.random() < 0.1))
    g = b.g
    if rng.random() < 0.12:  # one weighted layer whose rows hold every gap boundary, seen directly in the output
        return _gap_graph(b), b.lut
    float_in, float_out = bool(rng.random() < 0.2), bool(rng.random() < 0.2)
    rank2 = rng.random() < 0.15
    shape = (1, int(rng.integers(8, 300))) if rank2 else (1, int(rng.integers(1, 12)), int(rng.integers(1, 12)),
                                                          int(rng.integers(1, 9)))
    if rng.random() < 0.15 and not rank2:  # a window long enough for gaps of 257 in one convolution
        shape = (1, int(rng.integers(3, 7)), int(rng.integers(3, 7)), int(rng.integers(30, 48)))
    if float_in:
        source = g.add(QTensor("input", shape, "float32", np.zeros(0, np.float32), np.zeros(0, np.int64)))
        b.x = source
        b.op("QUANTIZE", (source,), shape)
    else:
        source = b.activation(shape)
        b.x = source
    for _ in range(int(rng.integers(1, 6))):
        if len(b.shape) == 4:
            choice_ = rng.choice(["conv", "depthwise", "max", "avg", "pad", "add", "relu", "relu6", "transpose",
                                  "flatten"], p=[0.24, 0.14, 0.08, 0.08, 0.08, 0.1, 0.06, 0.06, 0.06, 0.1])
            {"conv": lambda: b.conv(False), "depthwise": lambda: b.conv(True),
             "max": lambda: b.pool("MAX_POOL_2D"), "avg": lambda: b.pool("AVERAGE_POOL_2D"), "pad": b.pad,
             "add": b.add, "relu": lambda: b.activation_op("RELU"), "relu6": lambda: b.activation_op("RELU6"),
             "transpose": b.transpose, "flatten": b.flatten}[str(choice_)]()
        else:
            choice_ = rng.choice(["fc", "relu", "relu6"], p=[0.7, 0.15, 0.15])
            {"fc": b.fully_connected, "relu": lambda: b.activation_op("RELU"),
             "relu6": lambda: b.activation_op("RELU6")}[str(choice_)]()
    if len(b.shape) == 4 and rng.random() < 0.5:
        b.flatten()
    if len(b.shape) == 2 and rng.random() < 0.5:
        b.fully_connected()
        if rng.random() < 0.5:
            b.softmax()
    if b.x == source:  # the input itself: one op at least
        b.activation_op("RELU")
    if float_out:
        out = g.add(QTensor("output", b.shape, "float32", np.zeros(0, np.float32), np.zeros(0, np.int64)))
        g.ops.append(QOp("DEQUANTIZE", (b.x,), (out,)))
        b.x = out
    g.inputs, g.outputs = (source,), (b.x,)
    weighted = any(op.op in ("CONV_2D", "FULLY_CONNECTED") or (op.op == "DEPTHWISE_CONV_2D" and g.tensors[op.inputs[1]].shape[3] > 1)
                   for op in g.ops)  # the weights graph_to_tflite can store as look-up tables
    return g, b.lut and weighted


def _gap_graph(b: _Builder) -> Int8Graph:
    """A fully connected layer over 260 to 700 inputs, or a convolution whose window is that long, with every row's
    non-zeros :data:`GAPS` apart, and at most a softmax after it."""
    rng, g = b.rng, b.g
    b.gaps = True
    if rng.random() < 0.5:
        b.x = source = b.activation((1, int(rng.integers(260, 700))))
        b.fully_connected()
        if rng.random() < 0.3:
            b.softmax()
    else:
        c = int(rng.integers(30, 80))
        b.x = source = b.activation((1, int(rng.integers(3, 7)), int(rng.integers(3, 7)), c))
        while True:  # a 3x3 window at least: 9 * 30 > 257
            before = len(g.ops)
            b.conv(False)
            if g.tensors[g.ops[before].inputs[1]].shape[1] * g.tensors[g.ops[before].inputs[1]].shape[2] * c > 258:
                break
            del g.ops[before:]
            b.x = source
    g.inputs, g.outputs = (source,), (b.x,)
    return g


def _inputs(rng: np.random.Generator, graph: Int8Graph) -> np.ndarray:
    t = graph.tensors[graph.inputs[0]]
    shape = (INPUTS_PER_GRAPH, *t.shape[1:])
    if t.dtype == "float32":  # around the int8 range of the QUANTIZE, with values past both ends
        scale, zero_point = graph.tensors[graph.ops[0].outputs[0]].qparams
        return ((rng.uniform(-160, 160, size=shape) - zero_point) * scale).astype(np.float32)
    return rng.integers(-128, 128, size=shape, dtype=np.int8)


# ---------------------------------------------------------------------------------------------
# the sanitized host build


@pytest.fixture(scope="module")
def kernel_objects(tmp_path_factory) -> list[Path]:
    """The kernels compiled once with the sanitizers."""
    if shutil.which("cc") is None:
        pytest.skip("no host C compiler (cc)")
    folder = tmp_path_factory.mktemp("kernels")
    sources = resources.files("edgeprune.mcu") / "c"
    for name in KERNEL_FILES:
        (folder / name).write_text((sources / name).read_text(encoding="utf-8"))
    (folder / "harness.c").write_text(HARNESS)
    objects = []
    for name in [n for n in KERNEL_FILES if n.endswith(".c")]:
        obj = folder / name.replace(".c", ".o")
        subprocess.run(["cc", *CFLAGS, "-c", str(folder / name), "-o", str(obj)], check=True, capture_output=True,
                       text=True)
        objects.append(obj)
    return objects


def _build(folder: Path, kernel_objects: list[Path]) -> Path:
    """The generated model in ``folder`` linked with the sanitized kernels and the stdin/stdout harness."""
    harness = kernel_objects[0].parent / "harness.c"
    program = folder / "engine"
    result = subprocess.run(["cc", *CFLAGS, f"-I{folder}", str(folder / "edgeprune_model.c"), str(harness),
                             *map(str, kernel_objects), "-o", str(program)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return program


def _run(program: Path, inputs: np.ndarray, out_dtype: np.dtype, out_size: int) -> tuple[np.ndarray | None, str]:
    result = subprocess.run([str(program)], input=np.ascontiguousarray(inputs).tobytes(), capture_output=True,
                            env={**os.environ, "ASAN_OPTIONS": "detect_leaks=0", "UBSAN_OPTIONS": "print_stacktrace=1"})
    if result.returncode != 0:
        return None, result.stderr.decode(errors="replace")[-3000:]
    return np.frombuffer(result.stdout, out_dtype).reshape(len(inputs), out_size), ""


def boundary_gaps(graph: Int8Graph) -> set[int]:
    """The gaps of :data:`GAPS` between non-zeros of a row of the graph's convolutions and fully connected layers."""
    gaps = set()
    for op in graph.ops:
        if op.op in ("CONV_2D", "FULLY_CONNECTED"):
            w = graph.tensors[op.inputs[1]].data
            for row in w.reshape(len(w), -1):
                gaps |= set((np.diff(np.flatnonzero(row)) - 1).tolist()) & set(GAPS)
    return gaps


def engines_for(seed: int, graph: Int8Graph) -> tuple[str, ...]:
    """The engines a graph runs on: one in turn, and both sparse widths when its rows have boundary gaps."""
    return ("sparse 4-bit", "sparse 8-bit") if boundary_gaps(graph) else (ENGINES[seed % len(ENGINES)],)


def check_graph(seed: int, folder: Path, kernel_objects: list[Path], monkeypatch: pytest.MonkeyPatch) -> str:
    """Build, lower and run graph ``seed``; '' when the engine equals TFLM on every input, else what differs."""
    graph, lut = random_graph(seed)
    return compare_graph(graph, lut, seed, engines_for(seed, graph), folder, kernel_objects, monkeypatch)


def compare_graph(graph: Int8Graph, lut: bool, seed: int, engines: tuple[str, ...], folder: Path,
                  kernel_objects: list[Path], monkeypatch: pytest.MonkeyPatch) -> str:
    """Lower ``graph`` on each of ``engines`` and run it on inputs seeded by ``seed``; '' when the engine equals TFLM
    on every input, else what differs."""
    data = graph_to_tflite(graph, lut_bits=4 if lut else None)
    rng = np.random.default_rng(seed + 1_000_003)
    inputs = _inputs(rng, graph)
    expected = run_int8(data, inputs).reshape(len(inputs), -1)
    ops = " ".join(op.op for op in graph.ops)
    for engine in engines:
        with monkeypatch.context() as patch:
            if engine != "dense":  # one entry width only, so that each is exercised
                patch.setattr(choice, "ENTRY_BITS", (int(engine.split()[1].split("-")[0]),))
            export_c(data, folder, sparse="never" if engine == "dense" else "always")
        program = _build(folder, kernel_objects)
        got, error = _run(program, inputs, expected.dtype, expected.shape[1])
        where = f"seed {seed} ({engine}{', lut' if lut else ''}: {ops})"
        if got is None:
            return f"{where}: the sanitized engine failed:\n{error}"
        if not np.array_equal(got.view(np.uint8), expected.view(np.uint8)):
            k = int(np.flatnonzero((got.view(np.uint8) != expected.view(np.uint8)).any(axis=1))[0])
            return f"{where}: input {k} gives {got[k][:12].tolist()}..., TFLM {expected[k][:12].tolist()}..."
    return ""


def test_random_graphs_equal_tflm_under_sanitizers(tmp_path, kernel_objects, monkeypatch):
    failures = []
    for seed in range(FIRST_SEED, FIRST_SEED + GRAPHS):
        folder = tmp_path / f"g{seed}"
        try:
            message = check_graph(seed, folder, kernel_objects, monkeypatch)
        except Exception as exc:  # a graph the generator, TFLM or the exporter could not take: name its seed
            message = f"seed {seed}: {type(exc).__name__}: {exc}"
        if message:
            failures.append(message)
            if len(failures) >= 3:
                break
        shutil.rmtree(folder, ignore_errors=True)
    assert not failures, f"{len(failures)} graph(s) differ (rerun one with EDGEPRUNE_PROPERTY_SEED=<seed> " \
                         "EDGEPRUNE_PROPERTY_GRAPHS=1):\n" + "\n".join(failures)


def test_random_graphs_cover_every_op_and_sparse_boundary():
    """The generator reaches every op the engine lowers, and rows with every gap boundary that run sparse, within
    the CI share of graphs."""
    ops, gaps = set(), set()
    for seed in range(FIRST_SEED, FIRST_SEED + max(GRAPHS, 48)):
        graph, _ = random_graph(seed)
        ops |= {op.op for op in graph.ops}
        if "sparse 8-bit" in engines_for(seed, graph):
            gaps |= boundary_gaps(graph)
    assert ops >= {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MAX_POOL_2D", "AVERAGE_POOL_2D", "PAD",
                   "PADV2", "RESHAPE", "TRANSPOSE", "RELU", "RELU6", "SOFTMAX", "QUANTIZE", "DEQUANTIZE"}, ops
    assert gaps == set(GAPS), gaps


def depthwise_graph(seed: int, c: int, kernel: tuple[int, int], stride: int, padding: str,
                    sparsity: float) -> Int8Graph:
    """One depth-multiplier-1 depthwise layer over ``c`` channels (the dense kernel's four-channel words and its
    in_c % 4 tail) with ``kernel``, ``stride`` both ways, ``padding`` and a fraction ``sparsity`` of zero weights
    (1.0: all zero), on an input of odd width."""
    rng = np.random.default_rng(seed)
    b = _Builder(rng)
    kh, kw = kernel
    h, w = kh + 2 * stride + 1, kw + 3 * stride + 2
    source = b.activation((1, h, w, c))
    b.x = source
    data = rng.integers(-127, 128, size=(1, kh, kw, c)).astype(np.int8)
    data[rng.random(data.shape) < sparsity] = 0
    b.weights = lambda shape, axis: data  # the weights above instead of the builder's random kinds
    scale = b.g.tensors[source].qparams[0]
    wt, bias, out_scale = b.weighted(data.shape, 3, scale, kh * kw)
    oh, ow = (window_output_size(n, k, stride, 1, padding) for n, k in ((h, kh), (w, kw)))
    options = OpOptions(padding=padding, stride=(stride, stride), dilation=(1, 1), depth_multiplier=1,
                        activation=str(rng.choice(["NONE", "RELU", "RELU6"])))
    b.op("DEPTHWISE_CONV_2D", (source, wt, bias), (1, oh, ow, c), options, (out_scale, int(rng.integers(-30, 31))))
    b.g.inputs, b.g.outputs = (source,), (b.x,)
    return b.g


DEPTHWISE_CASES = [(c, kernel, stride) for c in (1, 3, 5, 7, 8, 9) for kernel in ((3, 3), (5, 5), (10, 4))
                   for stride in (1, 2)]


def test_depthwise_multiplier_one_equals_tflm_under_sanitizers(tmp_path, kernel_objects, monkeypatch):
    """The dense depthwise kernel's depth multiplier 1 path (four channels a word, SXTB16 halves, the channel tail
    one at a time) equals TFLM for odd channel counts, strides 1 and 2, 3x3, 5x5 and 10x4 filters, SAME and VALID
    padding and 0 to 100 % zero weights; the sparse kernel runs the sparse cases too."""
    failures = []
    for i, (c, kernel, stride) in enumerate(DEPTHWISE_CASES):
        padding, sparsity = ("SAME", "VALID")[i % 2], (0.0, 0.3, 0.7, 1.0)[i % 4]
        graph = depthwise_graph(5000 + i, c, kernel, stride, padding, sparsity)
        engines = ("dense", "sparse 8-bit") if sparsity > 0 else ("dense",)
        message = compare_graph(graph, False, 5000 + i, engines, tmp_path / f"dw{i}", kernel_objects, monkeypatch)
        if message:
            failures.append(f"c {c}, kernel {kernel}, stride {stride}, {padding}, sparsity {sparsity}: {message}")
    assert not failures, "\n".join(failures)


def conv_graph(seed: int, c: int, out_c: int, kernel: tuple[int, int], stride: int, padding: str, width: int,
               sparsity: float, activation: str | None = None, zero_point: int | None = None) -> Int8Graph:
    """One CONV_2D layer over ``c`` input channels into ``out_c`` with ``kernel``, ``stride`` both ways, ``padding``,
    an input ``width`` wide (output rows of 1 to 7 pixels: groups of four pixels that run on into the next row)
    and a fraction ``sparsity`` of zero weights; ``activation`` and the output ``zero_point`` random unless
    given."""
    rng = np.random.default_rng(seed)
    b = _Builder(rng)
    kh, kw = kernel
    h = kh + 2 * stride + 1
    source = b.activation((1, h, width, c))
    b.x = source
    data = rng.integers(-127, 128, size=(out_c, kh, kw, c)).astype(np.int8)
    data[rng.random(data.shape) < sparsity] = 0
    b.weights = lambda shape, axis: data
    wt, bias, out_scale = b.weighted(data.shape, 0, b.g.tensors[source].qparams[0], kh * kw * c)
    oh, ow = (window_output_size(n, k, stride, 1, padding) for n, k in ((h, kh), (width, kw)))
    drawn = str(rng.choice(["NONE", "RELU", "RELU6"]))
    options = OpOptions(padding=padding, stride=(stride, stride), dilation=(1, 1),
                        activation=drawn if activation is None else activation)
    zp = int(rng.integers(-30, 31))
    b.op("CONV_2D", (source, wt, bias), (1, oh, ow, out_c), options, (out_scale, zp if zero_point is None else zero_point))
    b.g.inputs, b.g.outputs = (source,), (b.x,)
    return b.g


CONV_CASES = [(c, out_c, kernel, stride, width) for c, out_c in ((1, 5), (3, 8), (4, 3), (7, 9))
              for kernel, stride, width in (((1, 1), 1, 5), ((3, 3), 1, 7), ((10, 4), 2, 10), ((3, 3), 2, 6),
                                            ((1, 1), 2, 3), ((2, 2), 1, 2))]


def test_conv_groups_across_rows_equal_tflm_under_sanitizers(tmp_path, kernel_objects, monkeypatch):
    """The dense and sparse convolutions' groups of four pixels in row-major order (a group running on into the
    next output row, the last group short) equal TFLM for output rows of 1 to 7 pixels, 1x1, 2x2, 3x3 and 10x4
    filters, strides 1 and 2, SAME and VALID, 1 to 9 channels and 0 to 100 % zero weights."""
    failures = []
    for i, (c, out_c, kernel, stride, width) in enumerate(CONV_CASES):
        padding, sparsity = ("SAME", "VALID")[i % 2], (0.0, 0.3, 0.7, 1.0)[i % 4]
        graph = conv_graph(6000 + i, c, out_c, kernel, stride, padding, width, sparsity)
        engines = ("dense", "sparse 8-bit") if sparsity > 0 else ("dense",)
        message = compare_graph(graph, False, 6000 + i, engines, tmp_path / f"cv{i}", kernel_objects, monkeypatch)
        if message:
            failures.append(f"c {c}, out_c {out_c}, kernel {kernel}, stride {stride}, width {width}, {padding}, "
                            f"sparsity {sparsity}: {message}")
    assert not failures, "\n".join(failures)


FULL_RANGE_CASES = [(c, out_c, kernel, stride, width, padding, activation, zp)
                    for (c, out_c, kernel, stride, width, padding), (activation, zp) in zip(
                        [(3, 5, (3, 3), 2, 7, "SAME"), (1, 7, (3, 3), 1, 6, "VALID"), (5, 3, (1, 1), 2, 5, "SAME"),
                         (7, 9, (1, 1), 1, 4, "VALID"), (16, 11, (1, 1), 1, 3, "SAME"), (9, 4, (2, 2), 1, 5, "SAME")] * 2,
                        [("RELU", -128), ("NONE", 5), ("RELU", -128), ("RELU6", -128), ("NONE", -128), ("RELU", 3),
                         ("NONE", 0), ("RELU", -128), ("RELU", 17), ("RELU", -128), ("RELU6", -128), ("NONE", 127)])]


def test_conv_full_range_clamp_equals_tflm_under_sanitizers(tmp_path, kernel_objects, monkeypatch):
    """The dense and sparse convolutions' full-range variant (a layer whose clamp is all of int8: no activation, or a ReLU onto
    zero point -128, clamped with constants, SSAT on the DSP cores) and its bounded variant (ReLU onto another zero
    point, ReLU6) equal TFLM, with 8- and 4-bit entries, odd channel counts, 1x1, 2x2 and 3x3 filters, strides 1 and
    2, SAME and VALID, 0 to 100 % zero weights; the output scale is shrunk so that outputs saturate at both ends."""
    failures = []
    for i, (c, out_c, kernel, stride, width, padding, activation, zp) in enumerate(FULL_RANGE_CASES):
        sparsity = (0.0, 0.5, 0.8, 0.95, 1.0, 0.3)[i % 6]
        graph = conv_graph(8000 + i, c, out_c, kernel, stride, padding, width, sparsity, activation, zp)
        out = graph.tensors[graph.outputs[0]]
        out.scale = (out.scale / 8).astype(np.float32)  # saturates at -128 and at 127
        message = compare_graph(graph, False, 8000 + i, ("dense", "sparse 8-bit", "sparse 4-bit"), tmp_path / f"fr{i}",
                                kernel_objects, monkeypatch)
        if message:
            failures.append(f"c {c}, out_c {out_c}, kernel {kernel}, stride {stride}, width {width}, {padding}, "
                            f"{activation}, zero point {zp}, sparsity {sparsity}: {message}")
    assert not failures, "\n".join(failures)


def fc_graph(seed: int, in_n: int, out_n: int, sparsity: float) -> Int8Graph:
    """One FULLY_CONNECTED layer of ``in_n`` inputs and ``out_n`` outputs with a fraction ``sparsity`` of zero
    weights."""
    rng = np.random.default_rng(seed)
    b = _Builder(rng)
    source = b.activation((1, in_n))
    b.x = source
    data = rng.integers(-127, 128, size=(out_n, in_n)).astype(np.int8)
    data[rng.random(data.shape) < sparsity] = 0
    b.weights = lambda shape, axis: data
    wt, bias, out_scale = b.weighted(data.shape, 0, b.g.tensors[source].qparams[0], in_n)
    b.op("FULLY_CONNECTED", (source, wt, bias), (1, out_n), OpOptions(activation=str(rng.choice(["NONE", "RELU"]))),
         (out_scale, int(rng.integers(-30, 31))))
    b.g.inputs, b.g.outputs = (source,), (b.x,)
    return b.g


FC_CASES = [(in_n, out_n) for in_n in (1, 3, 4, 7, 16, 67) for out_n in (1, 3, 4, 5, 8, 11)]


def test_fc_four_rows_equal_tflm_under_sanitizers(tmp_path, kernel_objects, monkeypatch):
    """The dense fully connected kernel's blocks of four interleaved rows (and their in_n % 4 tails, and the
    out_n % 4 rows left over) equal TFLM for 1 to 67 inputs, 1 to 11 outputs and 0 to 100 % zero weights; the
    sparse kernel runs the sparse cases too."""
    failures = []
    for i, (in_n, out_n) in enumerate(FC_CASES):
        sparsity = (0.0, 0.3, 0.7, 1.0)[i % 4]
        graph = fc_graph(7000 + i, in_n, out_n, sparsity)
        engines = ("dense", "sparse 8-bit") if sparsity > 0 else ("dense",)
        message = compare_graph(graph, False, 7000 + i, engines, tmp_path / f"fc{i}", kernel_objects, monkeypatch)
        if message:
            failures.append(f"in_n {in_n}, out_n {out_n}, sparsity {sparsity}: {message}")
    assert not failures, "\n".join(failures)
