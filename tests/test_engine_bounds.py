"""The engine's sizes and int32 bounds: scratch sizes read from the C header and checked by the kernels, every
layer refused at export (one line naming it) when an int32 value its kernels form could overflow, and the
variant choice and budget solver ranking alike.

The header's macros are checked against the C compiler's own evaluation of them; the bounds against values
worked by hand.
"""

from __future__ import annotations

import ctypes
import subprocess
from importlib import resources

import numpy as np
import pytest

from test_mcu_engine import _build

from edgeprune.export.int8_graph import Int8Graph, OpOptions, QOp
from edgeprune.export.tflite_write import graph_to_tflite
from edgeprune.export.tflm import run_int8
from edgeprune.mcu import choice, export_c, kernel_sizes, lower
from edgeprune.mcu.bounds import check_accumulators, check_requantization, check_shifts, worst_accumulators
from edgeprune.mcu.cost import FLASH_WEIGHT
from edgeprune.mcu.sparse import SparseWeights

# ---------------------------------------------------------------------------------------------
# scratch sizes: one definition, checked where used


def test_size_macros_evaluate_as_the_c_compiler_does(tmp_path):
    """kernel_size reads each macro of ep_kernels.h; a C program including the header prints the same values."""
    header = resources.files("edgeprune.mcu") / "c" / "ep_kernels.h"
    (tmp_path / "ep_kernels.h").write_text(header.read_text(encoding="utf-8"))
    shapes = [(1, 1, 1, 1), (3, 3, 3, 8), (3, 3, 16, 16), (5, 1, 7, 3), (1, 9, 2, 1), (7, 7, 13, 64)]
    lines = [f'printf("%d %d %d %d\\n", EP_PATCH_WORDS({a}, {b}, {c}), EP_DENSE_SCRATCH_WORDS({a}, {b}, {c}, {o}), '
             f'EP_DENSE_PADDED({a}, {b}, {c}), EP_SPARSE_SCRATCH_WORDS({a}, {b}, {c}, {o}));' for a, b, c, o in shapes]
    (tmp_path / "sizes.c").write_text('#include <stdio.h>\n#include "ep_kernels.h"\nint main(void) {\n'
                                      + "\n".join(lines) + '\nprintf("%d\\n", EP_ADD_TABLE_WORDS);\nreturn 0;\n}\n')
    subprocess.run(["cc", "-std=c99", "-Wall", "-Werror", "-o", str(tmp_path / "sizes"), str(tmp_path / "sizes.c")],
                   check=True)
    printed = subprocess.run([str(tmp_path / "sizes")], check=True, capture_output=True, text=True).stdout.split("\n")
    for (a, b, c, o), line in zip(shapes, printed):
        size = kernel_sizes.kernel_size
        ours = [size("EP_PATCH_WORDS", a, b, c), size("EP_DENSE_SCRATCH_WORDS", a, b, c, o),
                size("EP_DENSE_PADDED", a, b, c), size("EP_SPARSE_SCRATCH_WORDS", a, b, c, o)]
        assert ours == [int(v) for v in line.split()], (a, b, c, o)
    assert kernel_sizes.kernel_size("EP_ADD_TABLE_WORDS") == int(printed[len(shapes)]) == 512
    assert kernel_sizes.kernel_size("EP_PATCH_WORDS", 3, 3, 16) == 144  # by hand: one word per window position
    # by hand: 27 bytes padded to 28, three times, then 5 words for each of 8 channels' prepared requantization
    assert kernel_sizes.kernel_size("EP_DENSE_SCRATCH_WORDS", 3, 3, 3, 8) == 84 + 40
    assert kernel_sizes.kernel_size("EP_SPARSE_SCRATCH_WORDS", 3, 3, 16, 16) == 144 + 80
    with pytest.raises(ValueError, match="defines no size macro EP_NOPE"):
        kernel_sizes.kernel_size("EP_NOPE")


def _conv_add_graph() -> Int8Graph:
    """int8 [1, 6, 5, 3] -> CONV_2D 3x3 SAME (4 channels) -> ADD with itself -> [1, 6, 5, 4]: the three scratch users."""
    rng = np.random.default_rng(7)
    g = Int8Graph()
    x = g.activation("input", (1, 6, 5, 3), (0.05, 3))
    w = g.constant("conv.weight", rng.integers(-127, 128, size=(4, 3, 3, 3)).astype(np.int8),
                   rng.uniform(0.002, 0.01, 4), quantized_dimension=0)
    b = g.constant("conv.bias", rng.integers(-2000, 2000, size=4).astype(np.int32), rng.uniform(1e-4, 5e-4, 4))
    y = g.activation("conv_out", (1, 6, 5, 4), (0.08, -5))
    out = g.activation("sum", (1, 6, 5, 4), (0.15, 2))
    g.ops = [QOp("CONV_2D", (x, w, b), (y,), OpOptions(padding="SAME")), QOp("ADD", (y, y), (out,))]
    g.inputs, g.outputs = (x,), (out,)
    return g


@pytest.mark.parametrize("sparse", ["never", "always"])
def test_kernels_refuse_scratch_one_word_short(tmp_path, monkeypatch, sparse):
    """With the sizes the header gives, the engine equals TFLM; with every scratch one word short (allocated and
    passed), the kernel that uses it returns EP_ERROR_DIMS instead of writing past it."""
    data = graph_to_tflite(_conv_add_graph())
    x = np.random.default_rng(1).integers(-128, 128, size=(1, 6, 5, 3), dtype=np.int8)
    expected = run_int8(data, x).reshape(-1)
    export_c(data, tmp_path / "right", sparse=sparse)
    source = (tmp_path / "right" / "edgeprune_model.c").read_text()
    assert ", 512, " in source  # the ADD's table size is passed
    lib = _build(tmp_path / "right")
    out = np.zeros(expected.size, np.int8)
    assert lib.edgeprune_invoke(x.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p)) == 0
    np.testing.assert_array_equal(out, expected)

    real = kernel_sizes.kernel_size
    for short in ("EP_ADD_TABLE_WORDS", "EP_SPARSE_SCRATCH_WORDS" if sparse == "always" else "EP_DENSE_SCRATCH_WORDS"):
        with monkeypatch.context() as patch:
            patch.setattr("edgeprune.mcu.lowering.kernel_size",
                          lambda name, *args, short=short: real(name, *args) - (name == short))
            export_c(data, tmp_path / short, sparse=sparse)
        lib = _build(tmp_path / short)
        assert lib.edgeprune_invoke(x.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p)) == -1, short


# ---------------------------------------------------------------------------------------------
# int32 bounds at export


def _fc_graph(bias: int = 100, weight: int = 3, in_scale: float = 0.05, out_scale: float = 0.1,
              out_zero_point: int = 0, inputs: int = 8) -> Int8Graph:
    g = Int8Graph()
    x = g.activation("input", (1, inputs), (in_scale, 0))
    w = g.constant("fc.weight", np.full((2, inputs), weight, np.int8), np.array([0.01, 0.01]), quantized_dimension=0)
    b = g.constant("fc.bias", np.array([bias, -bias], np.int32), np.array([in_scale * 0.01] * 2))
    y = g.activation("out", (1, 2), (out_scale, out_zero_point))
    g.ops = [QOp("FULLY_CONNECTED", (x, w, b), (y,))]
    g.inputs, g.outputs = (x,), (y,)
    return g


def test_worst_accumulator_by_hand():
    """|bias| + 128 * sum |w|: bias 1000 and weights (3, -4, 0) reach 1000 + 128 * 7 = 1896; the bias folded with
    zero point matters only through its own magnitude."""
    assert worst_accumulators(np.array([1000, -1000]), np.array([7, 0])).tolist() == [1896, 1000]
    check_accumulators("layer", np.array([2**31 - 1]))
    with pytest.raises(ValueError, match=r"layer: output channel 1 can accumulate 2,147,483,648 \(\|bias\|"):
        check_accumulators("layer", np.array([5, 2**31]))


def test_a_channel_that_can_overflow_int32_is_refused():
    """127 * 8 * 128 = 130,048 on top of a bias of 2**31 - 130,048 reaches 2**31 exactly: refused; one less passes."""
    lower(_fc_graph(bias=2**31 - 130_049, weight=127))
    with pytest.raises(ValueError, match=r"^op 0 \(FULLY_CONNECTED\): output channel 0 can accumulate 2,147,483,648"):
        lower(_fc_graph(bias=2**31 - 130_048, weight=127))


def test_shifts_outside_tflite_range_are_refused():
    """Shifts in TFLite's [-31, 30] pass, 31 is refused; a layer whose real multiplier (input scale * weight scale /
    output scale) is about 2**31 needs a shift of 31 or 32 and is refused by name."""
    check_shifts("layer", "output", np.array([2**30, 0]), np.array([30, -31]))
    with pytest.raises(ValueError, match=r"layer: the output requantization of channel 1 has multiplier 1 and shift 31"):
        check_shifts("layer", "output", np.array([2**30, 1]), np.array([0, 31]))
    with pytest.raises(ValueError, match=r"^op 0 \(FULLY_CONNECTED\): the output requantization of channel 0 .* shift 3[12],"):
        lower(_fc_graph(out_scale=0.05 * 0.01 / 2**31))


def test_requantization_that_overflows_int32_is_refused():
    """By hand: a value of up to 3 shifted left by 29 is 1.6e9, within int32; by 30 it is 3.2e9, refused. And a
    requantized value near 2**31 plus the output zero point is refused."""
    check_requantization("layer", 3, [2**30], [29], 0)
    with pytest.raises(ValueError, match="layer: channel 0's value of up to 3 shifted left by 30 leaves int32"):
        check_requantization("layer", 3, [2**30], [30], 0)
    # 2**31 - 1 requantized by (2**31 - 1) * 2**-31 is 2**31 - 2 (+ 1 for the rounding): a zero point of 1 fits, 2 not
    check_requantization("layer", 2**31 - 1, [2**31 - 1], [0], 0)
    with pytest.raises(ValueError, match="requantizes to up to 2,147,483,647, which with zero point 2 leaves int32"):
        check_requantization("layer", 2**31 - 1, [2**31 - 1], [0], 2)
    # a layer whose real multiplier is about 2 (shift 2) and whose worst accumulator is 128 * 127 * 8 + bias
    lower(_fc_graph(out_scale=0.05 * 0.01 / 3.9))
    with pytest.raises(ValueError, match=r"^op 0 \(FULLY_CONNECTED\): channel 0's value of up to .* shifted left by 30"):
        lower(_fc_graph(out_scale=0.05 * 0.01 / 2**29.5))


def _single_op(op: str, shape: tuple[int, ...], out_shape: tuple[int, ...], options: OpOptions = OpOptions(),
               in_q: tuple[float, int] = (0.05, 0), out_q: tuple[float, int] = (0.05, 0)) -> Int8Graph:
    g = Int8Graph()
    x = g.activation("input", shape, in_q)
    y = g.activation("out", out_shape, out_q)
    g.ops = [QOp(op, (x,), (y,), options)]
    g.inputs, g.outputs = (x,), (y,)
    return g


def test_sizes_beyond_int32_are_refused():
    """A tensor of 2**31 bytes (shapes only: no data is made), an average pool whose window sum can reach
    2**31, a softmax over 4096 values."""
    with pytest.raises(ValueError, match=r"^op 0 \(RELU\): tensor 0 bytes is 2,147,483,648, beyond the int32 range"):
        lower(_single_op("RELU", (1, 2**15, 2**16, 1), (1, 2**15, 2**16, 1)))
    lower(_single_op("RELU", (1, 2**15, 2**16 - 1, 1), (1, 2**15, 2**16 - 1, 1)))
    big = OpOptions(filter=(2**12, 2**12), stride=(1, 1))  # 2**24 * 128 = 2**31
    with pytest.raises(ValueError, match=r"^op 0 \(AVERAGE_POOL_2D\): window sum is 2,147,483,648"):
        lower(_single_op("AVERAGE_POOL_2D", (1, 2**12, 2**12, 1), (1, 1, 1, 1), big))
    with pytest.raises(ValueError, match=r"^op 0 \(SOFTMAX\): a softmax over 4,096 values"):
        lower(_single_op("SOFTMAX", (1, 4096), (1, 4096), OpOptions(beta=1.0), out_q=(1 / 256, -128)))
    lower(_single_op("SOFTMAX", (1, 4095), (1, 4095), OpOptions(beta=1.0), out_q=(1 / 256, -128)))


def test_relu_requantization_bounds_by_hand():
    """RELU requantizes x - zero point (up to 128 + 60 = 188 here) by input scale / output scale: a ratio just under
    2**22 (shift 22 or 23) shifts 188 to at most 1.6e9, within int32; 2**23.5 (shift 24) to 3.2e9, refused."""
    lower(_single_op("RELU", (1, 4), (1, 4), in_q=(2.0**22 * 1e-3, 60), out_q=(1e-3, 0)))
    with pytest.raises(ValueError, match=r"^op 0 \(RELU\): channel 0's value of up to 188 shifted left by 24"):
        lower(_single_op("RELU", (1, 4), (1, 4), in_q=(2.0**23.5 * 1e-3, 60), out_q=(1e-3, 0)))


# ---------------------------------------------------------------------------------------------
# the variant choice and the budget solver


def test_choose_and_chosen_bytes_break_ties_alike():
    """Dense 1000 instructions + 100 B and sparse 600 + 116 B cost the same at 25 instructions a byte (3500): both
    take the variant of fewer bytes (dense), whichever comes first."""
    def encode():
        return SparseWeights(np.zeros(2, np.uint8), np.zeros(114, np.uint8), np.zeros(0, np.int8), 0)

    picked = choice.choose("auto", 25.0, 1000.0, 100, [("sparse 8-bit", encode)], lambda s: 600.0)
    assert picked.engine == "dense" and picked.options == [(1000.0, 100), (600.0, 116)]
    assert choice.chosen_bytes([picked.options], 25.0) == 100
    assert choice.chosen_bytes([list(reversed(picked.options))], 25.0) == 100


def test_a_plan_over_the_weight_budget_is_refused(monkeypatch):
    """If the budget's exchange rate ever chose formats over the budget, lower() says so instead of returning them."""
    g = _fc_graph(inputs=64)
    dense = lower(g)
    taken = sum(s.weight_bytes + s.index_bytes for s in dense.steps)
    monkeypatch.setattr("edgeprune.mcu.lowering.weight_for_budget", lambda options, budget: FLASH_WEIGHT)
    with pytest.raises(ValueError, match=f"take {taken:,} B of weights and index, over the weight budget of 100 B"):
        lower(g, weight_budget=100)


def test_add_whose_sum_overflows_int32_is_refused():
    """ADD of an input of scale 0.05 (zero point 0) to itself: each term is (x << 20) * 0.5, up to 128 * 2**19 + 1,
    their sum up to 2**27 + 2; an output scale 16 times below 0.1 / 2**20 makes the output multiplier 16 (shift 5),
    which shifts that sum to 2**32: refused. An output scale of 0.1 passes."""
    def add(out_scale: float) -> Int8Graph:
        g = Int8Graph()
        a = g.activation("a", (1, 2, 2, 3), (0.05, 0))
        y = g.activation("sum", (1, 2, 2, 3), (out_scale, 0))
        g.ops, g.inputs, g.outputs = [QOp("ADD", (a, a), (y,))], (a,), (y,)
        return g

    lower(add(0.1))
    with pytest.raises(ValueError, match=r"^op 0 \(ADD\): channel 0's value of up to 134,217,730 shifted left by 5"):
        lower(add(0.1 / 2**20 / 16))


def test_a_one_channel_depthwise_filter_stays_plain_int8_with_look_up_tables(tmp_path):
    """TFLM's DECODE refuses look-up tables along the last axis of a filter of one channel (found by the property
    test, seed 2757): graph_to_tflite leaves such a filter plain int8, compresses the rest, and both runtimes agree."""
    rng = np.random.default_rng(0)
    g = Int8Graph()
    x = g.activation("in", (1, 5, 5, 1), (0.05, 0))
    w1 = g.constant("dw.weight", rng.integers(-3, 4, size=(1, 3, 3, 1)).astype(np.int8), np.full(1, 0.01),
                    quantized_dimension=3)
    y1 = g.activation("dw_out", (1, 3, 3, 1), (0.05, 0))
    w2 = g.constant("fc.weight", rng.integers(-3, 4, size=(4, 9)).astype(np.int8), np.full(4, 0.01))
    flat = g.activation("flat", (1, 9), (0.05, 0))
    shape = g.constant("shape", np.array([1, 9], np.int32))
    y = g.activation("out", (1, 4), (0.05, 0))
    b1 = g.constant("dw.bias", np.array([40], np.int32), np.full(1, 0.0005))
    b2 = g.constant("fc.bias", rng.integers(-50, 50, size=4).astype(np.int32), np.full(4, 0.0005))
    g.ops = [QOp("DEPTHWISE_CONV_2D", (x, w1, b1), (y1,)), QOp("RESHAPE", (y1, shape), (flat,), OpOptions(new_shape=(1, 9))),
             QOp("FULLY_CONNECTED", (flat, w2, b2), (y,))]
    g.inputs, g.outputs = (x,), (y,)
    data = graph_to_tflite(g, lut_bits=4)
    assert b"TFLM_DECODE" in data
    inputs = rng.integers(-128, 128, size=(3, 5, 5, 1), dtype=np.int8)
    expected = run_int8(data, inputs)
    export_c(data, tmp_path / "c", sparse="always")
    lib = _build(tmp_path / "c")
    for x_, e in zip(inputs, expected):
        out = np.zeros(e.size, np.int8)
        assert lib.edgeprune_invoke(x_.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p)) == 0
        np.testing.assert_array_equal(out, e.reshape(-1))
