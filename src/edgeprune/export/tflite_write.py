"""An :class:`~edgeprune.export.int8_graph.Int8Graph` -> .tflite flatbuffer bytes, with the ``tflite`` package's builders.

Constant buffers are 16-byte aligned (TFLM and CMSIS-NN read weights in place). Buffer 0 is the
empty sentinel every activation points to; each constant gets a buffer of its own, in tensor order.
With ``lut_bits``, weight tensors with few distinct values per channel are then rewritten by TFLM's
compression tool as look-up tables.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Mapping

import flatbuffers
import numpy as np

from ..prune.settings import setting_for
from .int8_graph import ACTIVATIONS, DTYPES, OPS, OPTIONS_TABLE, PADDINGS, Int8Graph, OpOptions

__all__ = ["graph_to_tflite"]

BUFFER_ALIGNMENT = 16


def _schema(name: str):
    """The generated module ``tflite.<name>`` (PyPI ``tflite``), whose functions build that table."""
    return importlib.import_module(f"tflite.{name}")


def _options(b: flatbuffers.Builder, table: str, o: OpOptions) -> int:
    """Build the options table ``table`` (a name of :data:`OPTIONS_TABLE`) from ``o``; return its offset."""
    mod = _schema(table)

    def add(field: str, value) -> None:
        getattr(mod, f"{table}Add{field}")(b, value)

    if table == "ReshapeOptions":
        shape_vec = b.CreateNumpyVector(np.array(o.new_shape, np.int32))
    getattr(mod, f"{table}Start")(b)
    if table in ("Conv2DOptions", "DepthwiseConv2DOptions"):
        add("Padding", PADDINGS[o.padding])
        add("StrideH", o.stride[0])
        add("StrideW", o.stride[1])
        add("DilationHFactor", o.dilation[0])
        add("DilationWFactor", o.dilation[1])
        add("FusedActivationFunction", ACTIVATIONS[o.activation])
        if table == "DepthwiseConv2DOptions":
            add("DepthMultiplier", o.depth_multiplier)
    elif table in ("FullyConnectedOptions", "AddOptions"):
        add("FusedActivationFunction", ACTIVATIONS[o.activation])
    elif table == "Pool2DOptions":
        add("Padding", PADDINGS[o.padding])
        add("StrideH", o.stride[0])
        add("StrideW", o.stride[1])
        add("FilterHeight", o.filter[0])
        add("FilterWidth", o.filter[1])
    elif table == "SoftmaxOptions":
        add("Beta", o.beta)
    elif table == "ReshapeOptions":
        add("NewShape", shape_vec)
    return getattr(mod, f"{table}End")(b)


def _aligned_bytes(b: flatbuffers.Builder, data: bytes, alignment: int = BUFFER_ALIGNMENT) -> int:
    b.StartVector(1, len(data), alignment)
    b.head -= len(data)
    b.Bytes[b.head:b.head + len(data)] = data
    return b.EndVector()


def _vector(b: flatbuffers.Builder, offsets: list[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


def _serialize(g: Int8Graph, description: str) -> bytes:
    buffer_fb, tensor_fb, quant_fb, op_fb, subgraph_fb, code_fb, model_fb = (
        _schema(n) for n in ("Buffer", "Tensor", "QuantizationParameters", "Operator", "SubGraph", "OperatorCode", "Model"))
    b = flatbuffers.Builder(1024)
    codes = sorted({OPS[op.op] for op in g.ops})
    code_index = {c: i for i, c in enumerate(codes)}

    constants = [t.data.tobytes() for t in g.tensors if t.data is not None]
    buffer_offsets = []
    for data in [b"", *constants]:  # buffer 0 is the empty sentinel every activation points to
        vec = _aligned_bytes(b, data) if data else None
        buffer_fb.BufferStart(b)
        if vec is not None:
            buffer_fb.BufferAddData(b, vec)
        buffer_offsets.append(buffer_fb.BufferEnd(b))

    tensor_offsets, next_buffer = [], 1
    for t in g.tensors:
        buffer = 0 if t.data is None else next_buffer
        next_buffer += t.data is not None
        name = b.CreateString(t.name)
        shape = b.CreateNumpyVector(np.array(t.shape, np.int32))
        quant = None
        if len(t.scale):
            scale = b.CreateNumpyVector(t.scale.astype(np.float32))
            zp = b.CreateNumpyVector(t.zero_point.astype(np.int64))
            quant_fb.QuantizationParametersStart(b)
            quant_fb.QuantizationParametersAddScale(b, scale)
            quant_fb.QuantizationParametersAddZeroPoint(b, zp)
            quant_fb.QuantizationParametersAddQuantizedDimension(b, t.quantized_dimension)
            quant = quant_fb.QuantizationParametersEnd(b)
        tensor_fb.TensorStart(b)
        tensor_fb.TensorAddShape(b, shape)
        tensor_fb.TensorAddType(b, DTYPES[t.dtype])
        tensor_fb.TensorAddBuffer(b, buffer)
        tensor_fb.TensorAddName(b, name)
        if quant is not None:
            tensor_fb.TensorAddQuantization(b, quant)
        tensor_offsets.append(tensor_fb.TensorEnd(b))

    op_offsets = []
    for op in g.ops:
        ins = b.CreateNumpyVector(np.array(op.inputs, np.int32))
        outs = b.CreateNumpyVector(np.array(op.outputs, np.int32))
        table = OPTIONS_TABLE[op.op]
        opts = _options(b, table[0], op.options) if table else None
        op_fb.OperatorStart(b)
        op_fb.OperatorAddOpcodeIndex(b, code_index[OPS[op.op]])
        op_fb.OperatorAddInputs(b, ins)
        op_fb.OperatorAddOutputs(b, outs)
        if opts is not None:
            op_fb.OperatorAddBuiltinOptionsType(b, table[1])
            op_fb.OperatorAddBuiltinOptions(b, opts)
        op_offsets.append(op_fb.OperatorEnd(b))

    tensors_vec, ops_vec = _vector(b, tensor_offsets), _vector(b, op_offsets)
    in_vec = b.CreateNumpyVector(np.array(g.inputs, np.int32))
    out_vec = b.CreateNumpyVector(np.array(g.outputs, np.int32))
    sg_name = b.CreateString("main")
    subgraph_fb.SubGraphStart(b)
    subgraph_fb.SubGraphAddTensors(b, tensors_vec)
    subgraph_fb.SubGraphAddInputs(b, in_vec)
    subgraph_fb.SubGraphAddOutputs(b, out_vec)
    subgraph_fb.SubGraphAddOperators(b, ops_vec)
    subgraph_fb.SubGraphAddName(b, sg_name)
    subgraph = subgraph_fb.SubGraphEnd(b)

    code_offsets = []
    for c in codes:
        code_fb.OperatorCodeStart(b)
        code_fb.OperatorCodeAddDeprecatedBuiltinCode(b, min(c, 127))  # the int8 field before codes passed 127
        code_fb.OperatorCodeAddBuiltinCode(b, c)
        code_fb.OperatorCodeAddVersion(b, 1)
        code_offsets.append(code_fb.OperatorCodeEnd(b))

    codes_vec, subgraphs_vec, buffers_vec = _vector(b, code_offsets), _vector(b, [subgraph]), _vector(b, buffer_offsets)
    desc = b.CreateString(description)
    model_fb.ModelStart(b)
    model_fb.ModelAddVersion(b, 3)
    model_fb.ModelAddOperatorCodes(b, codes_vec)
    model_fb.ModelAddSubgraphs(b, subgraphs_vec)
    model_fb.ModelAddDescription(b, desc)
    model_fb.ModelAddBuffers(b, buffers_vec)
    b.Finish(model_fb.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _lut_width(bits: int | Mapping[str, int], name: str) -> int | None:
    """The look-up-table index width of weight tensor ``name``: ``bits`` itself, or from a per-tensor dict (exact
    name, ``re:`` key, ``_default``; None: the tensor stays as it is)."""
    return setting_for(bits, name) if isinstance(bits, Mapping) else bits


def _lut_compress(data: bytes, g: Int8Graph, bits: int | Mapping[str, int]) -> bytes:
    """Store every int8 weight tensor with at most 2**bits values per channel (its own bits, with a per-tensor dict)
    as TFLM look-up-table tensors."""
    from tflite_micro.tensorflow.lite.micro.compression import spec, spec_builder
    from tflite_micro.tensorflow.lite.micro.compression.compress import compress

    builder, chosen = spec_builder.SpecBuilder(), 0
    for index, t in enumerate(g.tensors):  # the flatbuffer's tensors are g.tensors, in order
        width = None if t.data is None or t.dtype != "int8" or not t.name.endswith(".weight") else _lut_width(bits, t.name)
        if width is None:
            continue
        axis = t.quantized_dimension
        if axis != 0 and t.shape[axis] == 1:  # TFLM's DECODE refuses tables along a last axis of one channel
            continue
        values = np.moveaxis(t.data, axis, 0).reshape(t.shape[axis], -1)
        if max(len(np.unique(row)) for row in values) <= 2**width:
            builder.add_tensor(0, index).with_lut(index_bitwidth=width, mode=spec.PerChannel(axis=axis))
            chosen += 1
    if not chosen:
        at_most = f"at most {2**bits}" if not isinstance(bits, Mapping) else "at most 2**bits"
        bits = f"{bits}" if not isinstance(bits, Mapping) else f"{dict(bits)}"
        raise ValueError(f"lut_bits={bits}: no weight tensor has {at_most} distinct values per channel; "
                         f"share the weights first (k-means with those bits) or leave lut_bits out")
    with warnings.catch_warnings():  # a tiny tensor can grow by its table; the file still shrinks overall
        warnings.simplefilter("ignore")
        return bytes(compress(data, builder.build()))


def graph_to_tflite(graph: Int8Graph, description: str = "edgeprune int8",
                    lut_bits: int | Mapping[str, int] | None = None) -> bytes:
    """The .tflite flatbuffer of ``graph`` (one subgraph, 16-byte aligned constant buffers).

    With ``lut_bits`` (1 to 7), weight tensors whose channels hold at most ``2**lut_bits`` distinct int8
    values (after k-means weight sharing) are stored as TFLM look-up tables (``lut_bits``-bit indices,
    DECODE ops), which TFLM expands at run time. ``lut_bits`` may be per weight tensor, like the k-means bits
    chosen per layer (exact name, ``re:`` key, ``_default``): TFLM's DECODE takes each tensor's own index width,
    so a layer shared at 2 bits keeps 2-bit indices beside one at 4 (a tensor no key matches stays as it is).
    """
    for width in (lut_bits.values() if isinstance(lut_bits, Mapping) else [lut_bits]):
        if width is not None and (isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= 7):
            raise ValueError(f"lut_bits must be from 1 to 7 (TFLM's look-up-table index widths), got {width!r}")
    data = _serialize(graph, description)
    return data if lut_bits is None else _lut_compress(data, graph, lut_bits)
