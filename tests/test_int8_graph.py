"""The int8 graph: its fixed-point maths against values worked out by hand and against TFLM, and the round trip
converter -> writer -> reader, checked against weights and parameters quantized here by hand."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn


from test_tflite import Branchy, FlatThenAdd, _calib, requantize

from edgeprune.export.int8_graph import (
    multiply_by_quantized_multiplier, output_shape, quantize_multiplier, same_padding, window_output_size,
)
from edgeprune.export.tflite import export_tflite
from edgeprune.export.tflite_convert import convert_model
from edgeprune.export.tflite_read import read_tflite
from edgeprune.export.tflite_write import graph_to_tflite
from edgeprune.export.tflm import run_int8


def tiny_model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 3 * 3, 3)).eval()


# ------------------------------------------------------------------ fixed-point maths


def test_quantize_multiplier_by_hand():
    assert quantize_multiplier(0.0) == (0, 0)
    assert quantize_multiplier(0.5) == (2**30, 0)  # frexp: 0.5 * 2**0
    assert quantize_multiplier(1.0) == (2**30, 1)  # 0.5 * 2**1
    assert quantize_multiplier(0.75) == (1610612736, 0)  # 0.75 * 2**31
    assert quantize_multiplier(0.15625) == (1342177280, -2)  # 0.625 * 2**-2
    assert quantize_multiplier(1 - 2**-40) == (2**30, 1)  # the fraction rounds up to 2**31: halved, shift + 1
    assert quantize_multiplier(2**-40) == (0, 0)  # shift -39 < -31: flushed to zero
    # TFLite's contract, checked exactly with fractions (not by a second copy of the code): the multiplier is in
    # [2**30, 2**31) and multiplier * 2**(shift - 31) is the nearest such value to real (within half a step)
    rng = np.random.default_rng(0)
    for real in 10.0 ** rng.uniform(-9, 1, 500):
        q, shift = quantize_multiplier(float(real))
        assert 2**30 <= q < 2**31
        error = abs(Fraction(q) * Fraction(2) ** (shift - 31) - Fraction(float(real)))
        assert error <= Fraction(2) ** (shift - 32)


def test_multiply_by_quantized_multiplier_double_rounding():
    # 5 * 0.75 = 3.75 -> 4 and -3.75 -> -4; 5 * 0.1875 = 0.9375 -> 1
    np.testing.assert_array_equal(multiply_by_quantized_multiplier(np.array([5, -5]), *quantize_multiplier(0.75)), [4, -4])
    assert multiply_by_quantized_multiplier(np.array([5]), *quantize_multiplier(0.1875))[0] == 1
    # 3 * 0.15625 = 0.46875 would round to 0 once; TFLite rounds twice: 3 * 0.625 = 1.875 -> 2, then 2 / 4 = 0.5 -> 1
    assert multiply_by_quantized_multiplier(np.array([3]), *quantize_multiplier(0.15625))[0] == 1
    rng = np.random.default_rng(1)
    for real in 10.0 ** rng.uniform(-6, 0.5, 200):
        acc = rng.integers(-(2**20), 2**20, 64)
        np.testing.assert_array_equal(multiply_by_quantized_multiplier(acc, *quantize_multiplier(float(real))),
                                      requantize(acc, float(real)))


def test_ir_and_its_maths_reproduce_tflm_bit_for_bit(tmp_path):
    """A 1x1 convolution computed from the graph read back (int8 weights, int32 biases, per-channel multipliers)
    equals TFLM's output on every element: the IR carries everything the C engine needs."""
    torch.manual_seed(5)
    conv = nn.Conv2d(3, 4, 1)
    path = export_tflite(conv, tmp_path / "c.tflite", _calib((3, 4, 4)))
    g = read_tflite(path.read_bytes())
    (op,) = g.ops
    x_t, w_t, b_t, y_t = (g.tensors[i] for i in (*op.inputs, *op.outputs))
    (sx, zx), (sy, zy) = x_t.qparams, y_t.qparams
    inputs = np.random.default_rng(2).integers(-128, 128, (6, 4, 4, 3)).astype(np.int8)
    got = run_int8(path, inputs)
    acc = (inputs.astype(np.int64) - zx) @ w_t.data[:, 0, 0, :].T.astype(np.int64) + b_t.data
    expected = np.empty_like(acc)
    for c in range(4):
        real = float(np.float64(sx) * np.float64(w_t.scale[c]) / np.float64(sy))  # TFLite: in doubles
        expected[..., c] = multiply_by_quantized_multiplier(acc[..., c], *quantize_multiplier(real))
    np.testing.assert_array_equal(got, np.clip(expected + zy, -128, 127))


# ------------------------------------------------------------------ round trip


def assert_graphs_equal(a, b) -> None:
    assert (a.inputs, a.outputs) == (b.inputs, b.outputs)
    assert [(o.op, o.inputs, o.outputs, o.options) for o in a.ops] == [(o.op, o.inputs, o.outputs, o.options) for o in b.ops]
    assert len(a.tensors) == len(b.tensors)
    for s, t in zip(a.tensors, b.tensors):
        assert (s.name, s.shape, s.dtype, s.quantized_dimension) == (t.name, t.shape, t.dtype, t.quantized_dimension)
        np.testing.assert_array_equal(s.scale, t.scale)
        np.testing.assert_array_equal(s.zero_point, t.zero_point)
        assert (s.data is None) == (t.data is None)
        if s.data is not None:
            assert s.data.dtype == t.data.dtype
            np.testing.assert_array_equal(s.data, t.data)


@pytest.mark.parametrize("factory,shape", [(tiny_model, (1, 5, 5)), (Branchy, (3, 8, 8)), (FlatThenAdd, (2, 5, 5))])
def test_read_back_equals_the_converted_graph(factory, shape):
    torch.manual_seed(1)
    graph = convert_model(factory().eval(), _calib(shape))
    assert_graphs_equal(read_tflite(graph_to_tflite(graph)), graph)
    # the converter takes each output's shape from PyTorch's run; TFLite's rules give the same
    assert [output_shape(op, graph.tensors) for op in graph.ops] == [graph.tensors[op.outputs[0]].shape for op in graph.ops]


def test_window_shapes_by_hand():
    assert window_output_size(5, 3, 2, 1, "SAME") == 3 and same_padding(5, 3, 2, 1) == (1, 1)  # (3 - 1) * 2 + 3 - 5 = 2
    assert window_output_size(6, 3, 2, 1, "SAME") == 3 and same_padding(6, 3, 2, 1) == (0, 1)  # 4 + 3 - 6 = 1: after
    assert window_output_size(6, 3, 2, 1, "VALID") == 2  # windows at 0 and 2
    assert window_output_size(7, 3, 1, 2, "VALID") == 3 and same_padding(7, 3, 1, 2) == (2, 2)  # effective kernel 5
    assert window_output_size(2, 3, 1, 1, "VALID") == 0  # does not fit


def test_read_back_weights_and_parameters_equal_hand_quantization(tmp_path):
    model = tiny_model()
    calib = _calib((1, 5, 5))
    g = read_tflite(export_tflite(model, tmp_path / "t.tflite", calib).read_bytes())
    assert [o.op for o in g.ops] == ["CONV_2D", "RESHAPE", "FULLY_CONNECTED"]
    conv, reshape, fc = g.ops
    assert conv.options.activation == "RELU" and conv.options.padding == "VALID" and conv.options.stride == (1, 1)
    x = g.tensors[g.inputs[0]]
    lo, hi = min(float(calib.min()), 0.0), max(float(calib.max()), 0.0)
    assert x.shape == (1, 5, 5, 1) and x.dtype == "int8"
    assert x.scale[0] == np.float32((hi - lo) / 255) and x.zero_point[0] == round(-128 - lo / ((hi - lo) / 255))

    def by_hand(w: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        scale = (w.double().abs().reshape(len(w), -1).amax(1) / 127).numpy().astype(np.float32)  # max|w| / 127
        q = torch.round(w.double() / torch.tensor(scale, dtype=torch.float64).reshape(-1, *[1] * (w.dim() - 1)))
        return q.clamp(-127, 127).numpy().astype(np.int8), scale

    conv_w, conv_s = by_hand(model[0].weight.detach().permute(0, 2, 3, 1))  # [O, I, kh, kw] -> [O, kh, kw, I]
    w, b = g.tensors[conv.inputs[1]], g.tensors[conv.inputs[2]]
    assert w.shape == (2, 3, 3, 1) and w.quantized_dimension == 0 and w.dtype == "int8"
    np.testing.assert_array_equal(w.data, conv_w)
    np.testing.assert_array_equal(w.scale, conv_s)
    np.testing.assert_array_equal(w.zero_point, [0, 0])
    bias = model[0].bias.detach().double().numpy() / (np.float64(x.scale[0]) * conv_s.astype(np.float64))
    np.testing.assert_array_equal(b.data, np.round(bias).astype(np.int32))
    assert b.dtype == "int32"

    # the flatten of NCHW [2, 3, 3] becomes NHWC order: the linear weight's columns are permuted to match
    fc_w, fc_s = by_hand(model[3].weight.detach().reshape(3, 2, 3, 3).permute(0, 2, 3, 1).reshape(3, 18))
    np.testing.assert_array_equal(g.tensors[fc.inputs[1]].data, fc_w)
    np.testing.assert_array_equal(g.tensors[fc.inputs[1]].scale, fc_s)
    assert reshape.options.new_shape == (1, 18) and g.tensors[reshape.inputs[1]].data.tolist() == [1, 18]
    assert g.tensors[reshape.outputs[0]].qparams == g.tensors[conv.outputs[0]].qparams  # a reshape keeps them
    assert g.outputs == fc.outputs and g.tensors[fc.outputs[0]].shape == (1, 3)
