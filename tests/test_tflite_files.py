"""Files shaped as TensorFlow's converter writes them, beyond what edgeprune's own exporter makes: a rank-2 input,
a non-square input, float input and output through QUANTIZE and DEQUANTIZE, a bias whose per-channel scales state
another dimension, a convolution without a bias (input -1), an unsupported op with an absent input.

Each file is written here with the schema package (``graph_to_tflite`` over the ``tflite`` builders, or patched
field by field), run in TensorFlow Lite Micro's interpreter, and its generated C engine, compiled for the host,
must give the same outputs bit for bit; the float kernels are also checked against values worked by hand.
"""

from __future__ import annotations

import ctypes
import json
import math

import numpy as np
import pytest

from test_mcu_engine import _build
from test_tflite_read import CODE_BUILTIN, CODE_DEPRECATED, OP_INPUTS, _parts, _patch, _patch_vector

from edgeprune.cli import main
from edgeprune.export.int8_graph import Int8Graph, OpOptions, QOp, QTensor
from edgeprune.export.tflite_read import read_tflite
from edgeprune.export.tflite_write import graph_to_tflite
from edgeprune.export.tflm import run_int8
from edgeprune.mcu import export_c, load_inputs, random_inputs


def _weights(g: Int8Graph, name: str, shape: tuple[int, ...], axis: int, rng: np.random.Generator,
             bias: bool = True, bias_dimension: int = 0) -> tuple[int, int]:
    """Random int8 weights quantized per channel along ``axis`` and int32 biases (their scales stated along
    ``bias_dimension``); (weight index, bias index or -1)."""
    channels = shape[axis]
    w = g.constant(f"{name}.weight", rng.integers(-127, 128, size=shape, dtype=np.int8),
                   rng.uniform(0.002, 0.01, channels), quantized_dimension=axis)
    if not bias:
        return w, -1
    b = g.constant(f"{name}.bias", rng.integers(-3000, 3000, size=channels).astype(np.int32),
                   rng.uniform(1e-5, 1e-4, channels), quantized_dimension=bias_dimension)
    return w, b


def _float(g: Int8Graph, name: str, shape: tuple[int, ...]) -> int:
    return g.add(QTensor(name, shape, "float32", np.zeros(0, np.float32), np.zeros(0, np.int64)))


def rank2_float_ends() -> Int8Graph:
    """float32 [1, 6] -> QUANTIZE -> FULLY_CONNECTED 6 -> 5 (relu) -> DEQUANTIZE -> float32 [1, 5]."""
    rng = np.random.default_rng(1)
    g = Int8Graph()
    x = _float(g, "serving_default_input:0", (1, 6))
    q = g.activation("input_int8", (1, 6), (0.05, -3))
    w, b = _weights(g, "dense", (5, 6), 0, rng)
    y = g.activation("dense_out", (1, 5), (0.04, -128))
    out = _float(g, "StatefulPartitionedCall:0", (1, 5))
    g.ops = [QOp("QUANTIZE", (x,), (q,)), QOp("FULLY_CONNECTED", (q, w, b), (y,), OpOptions(activation="RELU")),
             QOp("DEQUANTIZE", (y,), (out,))]
    g.inputs, g.outputs = (x,), (out,)
    return g


def non_square_no_bias_bias_dimension() -> Int8Graph:
    """int8 [1, 7, 4, 2] -> CONV_2D 3x2 stride 2 SAME without a bias (-1) -> [1, 4, 2, 3] -> DEPTHWISE 3x3 SAME whose
    bias states its 3 scales along dimension 3 (as TensorFlow copies the filter's) -> RESHAPE [1, 24] -> FULLY_CONNECTED."""
    rng = np.random.default_rng(2)
    g = Int8Graph()
    x = g.activation("input", (1, 7, 4, 2), (0.02, 5))
    w1, _ = _weights(g, "conv", (3, 3, 2, 2), 0, rng, bias=False)
    y1 = g.activation("conv_out", (1, 4, 2, 3), (0.03, -10))
    w2, b2 = _weights(g, "dw", (1, 3, 3, 3), 3, rng, bias_dimension=3)
    y2 = g.activation("dw_out", (1, 4, 2, 3), (0.05, 0))
    shape = g.constant("shape", np.array([1, 24], np.int32))
    flat = g.activation("flat", (1, 24), (0.05, 0))
    w3, b3 = _weights(g, "fc", (4, 24), 0, rng)
    out = g.activation("logits", (1, 4), (0.1, 3))
    g.ops = [QOp("CONV_2D", (x, w1, -1), (y1,), OpOptions(padding="SAME", stride=(2, 2), activation="RELU6")),
             QOp("DEPTHWISE_CONV_2D", (y1, w2, b2), (y2,), OpOptions(padding="SAME")),
             QOp("RESHAPE", (y2, shape), (flat,), OpOptions(new_shape=(1, 24))),
             QOp("FULLY_CONNECTED", (flat, w3, b3), (out,))]
    g.inputs, g.outputs = (x,), (out,)
    return g


def _engine(data: bytes, folder) -> tuple[ctypes.CDLL, dict]:
    report = export_c(data, folder)
    return _build(folder), report


def _run_engine(lib: ctypes.CDLL, x: np.ndarray, out_dtype: np.dtype, out_size: int) -> np.ndarray:
    x = np.ascontiguousarray(x)
    out = np.zeros(out_size, out_dtype)
    assert lib.edgeprune_invoke(x.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p)) == 0
    return out


@pytest.mark.parametrize("make", [rank2_float_ends, non_square_no_bias_bias_dimension])
def test_tensorflow_shaped_files_equal_tflm(tmp_path, make):
    data = graph_to_tflite(make())
    graph = read_tflite(data)
    if make is non_square_no_bias_bias_dimension:  # read as TFLM reads it: the vector's one dimension, no bias
        assert graph.tensors[graph.ops[1].inputs[2]].quantized_dimension == 0 and graph.ops[0].inputs[2] == -1
    path = tmp_path / "m.tflite"
    path.write_bytes(data)
    inputs = random_inputs(path, 40, seed=3)
    expected = run_int8(data, inputs)
    lib, _ = _engine(data, tmp_path / "c")
    header = (tmp_path / "c" / "edgeprune_model.h").read_text()
    floats = make is rank2_float_ends
    ctype = "float" if floats else "int8_t"
    assert f"#define EDGEPRUNE_INPUT_TYPE {ctype}\n" in header and f"#define EDGEPRUNE_OUTPUT_TYPE {ctype}\n" in header
    assert f"#define EDGEPRUNE_INPUT_SIZE {math.prod(inputs.shape[1:])}\n" in header and 'extern "C"' in header
    got = np.stack([_run_engine(lib, x, expected.dtype, expected[0].size) for x in inputs])
    assert got.dtype == (np.float32 if floats else np.int8)
    np.testing.assert_array_equal(got.view(np.uint8), expected.reshape(len(got), -1).view(np.uint8))
    assert len(np.unique(expected.reshape(len(got), -1), axis=0)) > 30  # the inputs reach many distinct outputs


def test_quantize_and_dequantize_round_as_tflite_by_hand(tmp_path):
    """float32 [1, 9] -> QUANTIZE (scale 0.5, zero point 3) -> DEQUANTIZE. By hand: x / 0.5 rounds half away from zero,
    plus 3, clamped to int8; then (q - 3) * 0.5."""
    g = Int8Graph()
    x = _float(g, "in", (1, 9))
    q = g.activation("q", (1, 9), (0.5, 3))
    out = _float(g, "out", (1, 9))
    g.ops, g.inputs, g.outputs = [QOp("QUANTIZE", (x,), (q,)), QOp("DEQUANTIZE", (q,), (out,))], (x,), (out,)
    data = graph_to_tflite(g)
    values = np.array([[0.25, -0.25, 0.75, 1000.0, -1000.0, 0.7499999, 63.0, -65.75, 1.0]], np.float32)
    codes = np.array([4, 2, 5, 127, -128, 4, 127, -128, 5])  # 0.5->1, -0.5->-1, 1.5->2, clamps, 1.4999998->1, 126+3, ...
    by_hand = ((codes - 3) * 0.5).astype(np.float32)
    lib, _ = _engine(data, tmp_path / "c")
    np.testing.assert_array_equal(_run_engine(lib, values[0], np.dtype(np.float32), 9), by_hand)
    np.testing.assert_array_equal(run_int8(data, values)[0], by_hand)  # and TFLM agrees


def test_unsupported_op_with_an_absent_input_is_named(tmp_path):
    """An LSTM-like op whose optional input is absent (-1) is refused for being unsupported, naming it and the set."""
    data = graph_to_tflite(rank2_float_ends())
    model, sg = _parts(data)
    codes = [model.OperatorCodes(i).BuiltinCode() for i in range(model.OperatorCodesLength())]
    fc_code = model.OperatorCodes(codes.index(9))  # FULLY_CONNECTED
    lstm = _patch(_patch(data, fc_code, CODE_BUILTIN, "<i", 16), fc_code, CODE_DEPRECATED, "<b", 16)  # LSTM
    lstm = _patch_vector(lstm, sg.Operators(1), OP_INPUTS, 1, -1)
    with pytest.raises(ValueError) as caught:
        read_tflite(lstm)
    text = str(caught.value)
    assert "\n" not in text and text.startswith("op 1 (LSTM) writing tensor 4 'dense_out' is not supported; supported ops:")
    assert "DEQUANTIZE" in text and "QUANTIZE" in text and "FULLY_CONNECTED" in text


def test_float_graph_and_misplaced_float_tensors_are_refused():
    g = rank2_float_ends()
    g.ops = g.ops[1:2]  # a float input straight into FULLY_CONNECTED
    g.inputs, g.outputs = (1,), (4,)
    g.ops[0].inputs = (0, 2, 3)
    with pytest.raises(ValueError, match=r"op 0 \(FULLY_CONNECTED\)'s input 0, tensor 0 'serving_default_input:0', is "
                                         r"float32; only fully int8 models are supported"):
        read_tflite(graph_to_tflite(g))


def test_mcu_runs_a_float_file_with_no_data_flags_and_checks_inputs(tmp_path, capsys):
    """``edgeprune mcu X.tflite`` on the emulated Cortex-M4: random float inputs, every output equal to TFLM's, no
    accuracy; ``--inputs`` of the wrong dtype or shape is one line stating both; ``--labels`` add the accuracy."""
    path = tmp_path / "float.tflite"
    path.write_bytes(graph_to_tflite(rank2_float_ends()))
    out = tmp_path / "mcu"
    assert main(["mcu", str(path), "--images", "7", "--out", str(out)]) == 0
    result = json.loads((out / "mcu.json").read_text())
    assert result["equal_to_tflm"] == result["images_run"] == 7 and result["accuracy"] is None
    assert "accuracy" not in capsys.readouterr().out
    outputs = np.fromfile(out / "run" / "outputs.bin", np.float32).reshape(7, 5)
    np.testing.assert_array_equal(outputs, run_int8(path.read_bytes(), random_inputs(path, 7, seed=0)))
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((3, 6), np.int8))
    assert main(["mcu", str(path), "--inputs", str(wrong), "--out", str(tmp_path / "m2")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == (f"edgeprune mcu: error: --inputs {wrong}: int8 of shape [3, 6], but float.tflite takes float32 "
                           "inputs of shape [1, 6]: give N x 6 float32 values")
    good, labels = tmp_path / "good.npy", tmp_path / "labels.npy"
    np.save(good, random_inputs(path, 4, seed=5))
    np.save(labels, np.array([0, 1, 2, 3]))
    assert main(["mcu", str(path), "--inputs", str(good), "--labels", str(labels), "--out", str(tmp_path / "m3")]) == 0
    assert json.loads((tmp_path / "m3" / "mcu.json").read_text())["tflm_accuracy"] is not None


def test_inputs_files_are_checked_before_they_are_read(tmp_path):
    path = tmp_path / "float.tflite"
    path.write_bytes(graph_to_tflite(rank2_float_ends()))
    pickled = tmp_path / "objects.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"holds object values; give a numeric array"):
        load_inputs(path, pickled)
    huge = tmp_path / "huge.npy"
    np.save(huge, np.zeros((2, 6), np.float32))
    raw = huge.read_bytes()
    end = raw.index(b"\n")  # the header, padded with spaces: the longer shape takes 9 of them
    header = raw[:end].replace(b"(2, 6)", b"(9999999999, 6)")
    huge.write_bytes(header[:end] + raw[end:])
    with pytest.raises(ValueError, match=r"its header claims shape \[9999999999, 6\] \(239,999,999,976 bytes\)"):
        load_inputs(path, huge)
    one = tmp_path / "one.npy"
    np.save(one, np.ones((1, 6), np.float32))  # the input's own shape, batch included: one input
    x, y = load_inputs(path, one)
    assert x.shape == (1, 6) and y is None
    bad_labels = tmp_path / "labels.npy"
    np.save(bad_labels, np.zeros(2, np.float32))
    with pytest.raises(ValueError, match=r"--labels .*: float32 of shape \[2\]; give 1 integer classes, one per input"):
        load_inputs(path, one, bad_labels)


def test_an_input_of_another_rank_or_batch_names_the_tensor(tmp_path):
    g = rank2_float_ends()
    for shape in [(6,), (2, 6)]:
        g.tensors[0].shape = shape
        g.tensors[1].shape = shape
        with pytest.raises(ValueError, match=rf"the model's input, tensor 0 'serving_default_input:0', has shape "
                                             rf"\[{', '.join(map(str, shape))}\]; the engine takes a batch of 1 of rank 2 to 4"):
            export_c(g, tmp_path / "c")
