"""The .tflite reader on hostile files: forged indices, shapes in the billions, wrong types and ops, truncation.

Each forgery patches one field of a file export_tflite wrote, located through the ``tflite`` package's
accessors; every refusal is one line that names the problem, and memory stays bounded.
"""

from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import tflite

from test_int8_graph import assert_graphs_equal
from test_tflite import Branchy

from edgeprune.export.tflite import export_tflite
from edgeprune.export.tflite_read import load_tflite, read_tflite
from edgeprune.mcu.codegen import render
from edgeprune.mcu.lowering import lower


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> bytes:
    """Conv (1 -> 2, 3x3) + ReLU, flatten, linear 18 -> 3, on 5x5 images (tensors input_1, 0.weight, 0.bias, _1, ...)"""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(18, 3)).eval()
    path = export_tflite(model, tmp_path_factory.mktemp("t") / "t.tflite", torch.rand(8, 1, 5, 5) - 0.5)
    return path.read_bytes()


def _parts(data: bytes):
    model = tflite.Model.GetRootAs(data, 0)
    return model, model.Subgraphs(0)


def _tensor(data: bytes, name: str):
    _, sg = _parts(data)
    return next(sg.Tensors(i) for i in range(sg.TensorsLength()) if sg.Tensors(i).Name().decode() == name)


def _patch(data: bytes, obj, vtable_offset: int, fmt: str, value: int) -> bytes:
    """``data`` with the scalar field at ``vtable_offset`` of table ``obj`` set to ``value``."""
    field = obj._tab.Offset(vtable_offset)
    assert field, "the field is absent (written as its default)"
    out = bytearray(data)
    struct.pack_into(fmt, out, obj._tab.Pos + field, value)
    return bytes(out)


def _patch_vector(data: bytes, obj, vtable_offset: int, index: int, value: int, fmt: str = "<i") -> bytes:
    """``data`` with element ``index`` of the vector at ``vtable_offset`` of ``obj`` (of ``fmt``) set to ``value``."""
    start = obj._tab.Vector(obj._tab.Offset(vtable_offset))
    out = bytearray(data)
    struct.pack_into(fmt, out, start + struct.calcsize(fmt) * index, value)
    return bytes(out)


# vtable offsets of the schema's fields: Tensor shape 4, type 6, buffer 8; Operator opcode_index 4, inputs 6;
# OperatorCode deprecated_builtin_code 4, builtin_code 10; SubGraph tensors 4, outputs 8; QuantizationParameters zero_point 10
TENSOR_SHAPE, TENSOR_TYPE, TENSOR_BUFFER = 4, 6, 8
QUANT_ZERO_POINT = 10
OP_OPCODE, OP_INPUTS = 4, 6
CODE_DEPRECATED, CODE_BUILTIN = 4, 10
SUBGRAPH_TENSORS, SUBGRAPH_OUTPUTS = 4, 8


def refused(data: bytes, match: str, **kw) -> str:
    with pytest.raises(ValueError, match=match) as info:
        read_tflite(data, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_reads_the_file_it_was_given(tiny):
    g = read_tflite(tiny)
    assert [op.op for op in g.ops] == ["CONV_2D", "RESHAPE", "FULLY_CONNECTED"]
    assert g.tensors[g.inputs[0]].shape == (1, 5, 5, 1)


def test_out_of_range_indices_are_named(tiny):
    _, sg = _parts(tiny)
    refused(_patch(tiny, _tensor(tiny, "0.weight"), TENSOR_BUFFER, "<I", 10**6),
            r"tensor 1 '0.weight''s buffer index is 1000000, out of range \(the file has 6 buffers\)")
    fc = sg.Operators(2)
    refused(_patch(tiny, fc, OP_OPCODE, "<I", 200), r"operator 2's opcode index is 200, out of range \(the file has 3 operator codes\)")
    refused(_patch_vector(tiny, fc, OP_INPUTS, 1, 99), r"op 2 \(FULLY_CONNECTED\)'s input 1 is 99, out of range")
    refused(_patch_vector(tiny, fc, OP_INPUTS, 0, -5), r"op 2 \(FULLY_CONNECTED\)'s input 0 is -5, out of range")
    refused(_patch_vector(tiny, fc, OP_INPUTS, 1, -1), r"op 2 \(FULLY_CONNECTED\)'s input 1 is absent \(-1\); "
                                                       r"FULLY_CONNECTED needs it")
    assert read_tflite(_patch_vector(tiny, fc, OP_INPUTS, 2, -1)).ops[2].inputs == (4, 6, -1)  # no bias: TFLite's -1
    refused(_patch_vector(tiny, sg, SUBGRAPH_OUTPUTS, 0, 2**31 - 1), r"graph output is 2147483647, out of range")


def test_shapes_in_the_billions_are_refused_before_anything_is_allocated(tiny):
    relu = _tensor(tiny, "_1")  # the ReLU's output, 1 x 3 x 3 x 2
    huge_activation = tiny
    for axis, dim in enumerate([1, 2**16, 2**16, 2**8]):  # 2**40 int8 elements
        huge_activation = _patch_vector(huge_activation, relu, TENSOR_SHAPE, axis, dim)
    weight = _tensor(tiny, "0.weight")  # a constant of 18 bytes now claiming 2**40
    huge_constant = tiny
    for axis, dim in enumerate([2**14, 2**13, 2**13, 2**0]):
        huge_constant = _patch_vector(huge_constant, weight, TENSOR_SHAPE, axis, dim)
    tracemalloc.start()
    try:
        refused(huge_activation, r"tensor 3 '_1' has shape \[1, 65536, 65536, 256\]: 1,099,511,627,776 bytes, "
                                 r"above the 67,108,864-byte limit for activations")
        refused(huge_constant, r"tensor 1 '0.weight' has shape \[16384, 8192, 8192, 1\] "
                               r"\(1,099,511,627,776 bytes\) but its buffer holds 18 bytes")
        refused(tiny, r"above the 10-byte limit", max_activation_bytes=10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    refused(_patch_vector(tiny, relu, TENSOR_SHAPE, 1, -1), r"tensor 3 '_1' has shape \[1, -1, 3, 2\]; give static shapes")


def test_float32_tensor_and_unsupported_op_name_the_op_and_the_tensor(tiny):
    refused(_patch(tiny, _tensor(tiny, "input_1"), TENSOR_TYPE, "<b", 0),  # TensorType.FLOAT32
            r"op 0 \(CONV_2D\)'s input 0, tensor 0 'input_1', is float32; only fully int8 models")
    refused(_patch(tiny, _tensor(tiny, "3.bias"), TENSOR_TYPE, "<b", 7),  # INT16
            r"op 2 \(FULLY_CONNECTED\)'s input 2, tensor 7 '3.bias', is int16")
    model, _ = _parts(tiny)
    fc_code = model.OperatorCodes(1)  # codes are sorted: CONV_2D, FULLY_CONNECTED, RESHAPE
    gelu = _patch(_patch(tiny, fc_code, CODE_BUILTIN, "<i", 150), fc_code, CODE_DEPRECATED, "<b", 127)
    refused(gelu, r"op 2 \(GELU\) writing tensor 8 '_3' is not supported; supported ops: ADD, AVERAGE_POOL_2D")
    refused(_patch(tiny, _tensor(tiny, "0.weight"), TENSOR_TYPE, "<b", 2),  # INT32: 18 bytes cannot hold 18 int32
            r"tensor 1 '0.weight' has shape \[2, 3, 3, 1\] \(72 bytes\) but its buffer holds 18 bytes")


def test_shapes_that_disagree_with_the_op_are_refused(tiny):
    relu, weight = _tensor(tiny, "_1"), _tensor(tiny, "0.weight")  # 1 x 3 x 3 x 2 from a [2, 3, 3, 1] filter on 5 x 5 x 1
    swapped = tiny
    for axis, dim in enumerate([1, 2, 3, 3]):
        swapped = _patch_vector(swapped, relu, TENSOR_SHAPE, axis, dim)
    refused(swapped, r"op 0 \(CONV_2D\)'s output, tensor 3 '_1', has shape \[1, 2, 3, 3\], but its inputs give \[1, 3, 3, 2\]")
    wide = _patch_vector(_patch_vector(tiny, weight, TENSOR_SHAPE, 1, 1), weight, TENSOR_SHAPE, 2, 9)
    refused(wide, r"op 0 \(CONV_2D\): a 1x9 window does not fit an input of shape \[1, 5, 5, 1\]")
    three_in = _patch_vector(_patch_vector(tiny, weight, TENSOR_SHAPE, 2, 1), weight, TENSOR_SHAPE, 3, 3)
    refused(three_in, r"op 0 \(CONV_2D\): filter of shape \[2, 3, 1, 3\] does not fit an input of shape \[1, 5, 5, 1\]")


def test_asymmetric_weights_are_refused(tiny):
    weight = _tensor(tiny, "3.weight")
    refused(_patch_vector(tiny, weight.Quantization(), QUANT_ZERO_POINT, 2, 5, "<q"),
            r"op 2 \(FULLY_CONNECTED\)'s input 1, tensor 6 '3.weight', has a non-zero zero point; weights and biases must")


def test_files_edgeprune_did_not_write(tiny, tmp_path):
    """TFLM's own flatbuffer writer lays the same model out differently: it reads to the same graph.
    The float sine model shipped with tflite_micro (written by TensorFlow's converter) is refused by name."""
    from tflite_micro.tensorflow.lite.micro.compression import model_editor

    other = bytes(model_editor.read(tiny).build())
    assert other != tiny
    assert_graphs_equal(read_tflite(other), read_tflite(tiny))
    # tensors may share a buffer: Branchy's three identical paddings, deduplicated, are read once
    torch.manual_seed(0)
    branchy = export_tflite(Branchy().eval(), tmp_path / "b.tflite", torch.rand(4, 3, 8, 8)).read_bytes()
    edited = model_editor.read(branchy)
    model_editor.dedupe_buffers(edited)
    deduped = read_tflite(bytes(edited.build()))
    assert_graphs_equal(deduped, read_tflite(branchy))
    paddings = [t.data for t in deduped.tensors if t.name.endswith("_paddings")]
    assert len(paddings) == 3 and all(np.shares_memory(paddings[0], p) for p in paddings[1:])
    from tflite_micro.python.tflite_micro import runtime

    sine = Path(runtime.__file__).parent / "sine_float.tflite"
    with pytest.raises(ValueError, match=r"op 0 \(FULLY_CONNECTED\)'s input 0, tensor 0 'serving_default_dense_input:0', "
                                         r"is float32; only fully int8 models"):
        load_tflite(sine)


def _lut_pair(tmp_path) -> tuple[bytes, bytes]:
    """A tiny conv + linear model as plain int8 and with its weights as TFLM 5-bit look-up tables."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(18, 3)).eval()
    calibration = torch.rand(8, 1, 5, 5)
    plain = export_tflite(model, tmp_path / "plain.tflite", calibration).read_bytes()
    lut = export_tflite(model, tmp_path / "lut.tflite", calibration, lut_bits=5).read_bytes()  # <= 18 values a channel
    return plain, lut


def test_look_up_table_weights_are_decoded(tmp_path):
    """TFLM's compressor encodes; the reader's decoded weights equal the plain file's, with tables and indices kept."""
    plain, lut = _lut_pair(tmp_path)
    a, b = read_tflite(plain), read_tflite(lut)
    assert [op.op for op in b.ops] == [op.op for op in a.ops] == ["CONV_2D", "RESHAPE", "FULLY_CONNECTED"]
    for op_a, op_b in zip(a.ops, b.ops):
        for i, j in zip(op_a.inputs, op_b.inputs):
            ta, tb = a.tensors[i], b.tensors[j]
            if ta.data is None:
                continue
            np.testing.assert_array_equal(tb.data, ta.data)
            assert (tb.lut is not None) == ta.name.endswith(".weight")
            if tb.lut is not None:
                assert tb.lut.bits == 5 and tb.lut.axis == 0 and tb.lut.indices.shape == ta.shape
                rows = tb.lut.indices.reshape(len(ta.data), -1)
                np.testing.assert_array_equal(np.take_along_axis(tb.lut.tables, rows.astype(int), 1),
                                              ta.data.reshape(len(ta.data), -1))


def _forged_ancillary(lut: bytes, edit) -> bytes:
    """``lut`` with the DECODE ancillary bytes of the first such tensor (the linear layer's) replaced by ``edit``."""
    from tflite_micro.tensorflow.lite.micro.compression import model_editor

    model = model_editor.read(lut)
    tensor = next(t for t in model.subgraphs[0].tensors if t.name and t.name.endswith("_ancillary"))
    data = bytearray(tensor.buffer.data)
    data = edit(data) or data
    tensor.buffer = model_editor.Buffer(data=bytes(data))
    tensor.shape = (len(data),)
    return bytes(model.build())


def test_forged_look_up_tables_get_one_line(tmp_path):
    _, lut = _lut_pair(tmp_path)

    def setter(pos: int, value: int):
        return lambda d: d.__setitem__(pos, value)

    refused(_forged_ancillary(lut, setter(0, 1)), r"is decoded by type 1; only look-up tables")
    refused(_forged_ancillary(lut, setter(1, 2)), r"has DECODE version 2 and look-up-table version 1")
    refused(_forged_ancillary(lut, setter(5, 0x00)), r"has 0-bit indices into tables of \d+ values")
    refused(_forged_ancillary(lut, setter(5, 0x25)), r"has its tables along axis 2 of shape \[3, 18\]")
    refused(_forged_ancillary(lut, lambda d: d[:-1]), r"encoded and \d+ ancillary bytes; shape \[3, 18\] "
                                                       r"with 5-bit indices and 3 tables of \d+ values needs")
    refused(_forged_ancillary(lut, lambda d: d[:16] + bytes([d[16]])), r"needs")
    # tables cut to their first 2 values: the file's indices now point past them
    refused(_forged_ancillary(lut, lambda d: d[:6] + bytes([2]) + d[7:16] + b"".join(
        d[16 + k * d[6]:18 + k * d[6]] for k in range(3))), r"has index \d+ into tables of 2 values")
    refused(_forged_ancillary(lut, lambda d: d[:8]), r"has 8 bytes of DECODE metadata; it needs 16")


def test_truncated_garbage_and_forged_offsets_get_one_line(tiny, tmp_path):
    for cut in (0, 7, 8, 64, len(tiny) // 2, len(tiny) - 1):
        with pytest.raises(ValueError) as info:
            read_tflite(tiny[:cut])
        assert "\n" not in str(info.value) and ("corrupt" in str(info.value) or "not a TFLite file" in str(info.value))
    refused(b"\x00" * 4 + b"TFL4" + tiny[8:], r"not a TFLite file: the identifier at bytes 4-8 is b'TFL4'")
    refused(b"hello", r"not a TFLite file: 5 bytes")
    x = _tensor(tiny, "input_1")
    forged = bytearray(tiny)
    struct.pack_into("<i", forged, x._tab.Pos, 2**30)  # the table's vtable 1 GiB before it
    refused(bytes(forged), r"corrupt TFLite file: the tensor 0's field table lies outside the file")
    _, sg = _parts(tiny)
    forged = bytearray(tiny)
    struct.pack_into("<I", forged, sg._tab.Vector(sg._tab.Offset(SUBGRAPH_TENSORS)) - 4, 10**6)  # the vector's length
    refused(bytes(forged), r"corrupt TFLite file: the tensor list claims 1,000,000 entries in a [\d,]+-byte file")
    (tmp_path / "bad.tflite").write_bytes(tiny[:100])
    with pytest.raises(ValueError, match=r"bad.tflite: corrupt TFLite file"):
        load_tflite(tmp_path / "bad.tflite")


def test_random_damage_is_read_or_refused_in_one_line(tiny):
    """Bytes overwritten at random: the reader returns a graph whose every index is in range, or one ValueError line;
    a graph that reads is lowered and rendered as C, or refused in one line."""
    rng = np.random.default_rng(0)
    outcomes = {"read": 0, "refused": 0, "generated": 0}
    for _ in range(300):
        damaged = bytearray(tiny)
        for pos in rng.integers(8, len(tiny), rng.integers(1, 4)):
            damaged[pos] = rng.integers(0, 256)
        try:
            g = read_tflite(bytes(damaged))
        except ValueError as exc:
            assert "\n" not in str(exc)
            outcomes["refused"] += 1
            continue
        outcomes["read"] += 1
        for op in g.ops:
            assert all(-1 <= i < len(g.tensors) for i in op.inputs + op.outputs)
        for t in g.tensors:
            assert t.data is None or t.data.size == int(np.prod(t.shape))
        try:  # what still reads goes on to the C engine's lowering and code: C text, or one line, never a crash
            files = render(lower(g))
            outcomes["generated"] += 1
            assert "edgeprune_invoke" in files["edgeprune_model.c"]
        except ValueError as exc:
            assert "\n" not in str(exc)
    assert outcomes["read"] > 0 and outcomes["refused"] > 0 and outcomes["generated"] > 0
