"""Read a fully int8 .tflite flatbuffer into an :class:`~edgeprune.export.int8_graph.Int8Graph`, safely.

The file may come from anywhere, so nothing it claims is trusted: the reader uses the ``tflite``
package's generated accessors, but before it follows or allocates anything it checks

* the file's size and identifier, and that every table it visits (with its vtable) lies inside the file;
* every vector's length against the file's size, before iterating over it;
* every opcode, tensor and buffer index against the number there is;
* every shape (rank, non-negative dims) and element count: a constant's bytes must equal its buffer's
  length (so they are bounded by the file), an activation's bytes must be at most ``max_activation_bytes``;
* TFLM's look-up-table compression (a ``TFLM_DECODE`` custom op): per output, the encoded indices
  and the ancillary data's lengths against the shape and table size they claim, the decode type
  (look-up tables only), versions, index width, table axis and every index below the table's
  length; the decoded values become the output tensor's constant data, the tables and indices its
  :class:`~edgeprune.export.int8_graph.LutValues`, and the op leaves the graph;
* the graph itself: one subgraph, only the ops of :data:`~edgeprune.export.int8_graph.OPS` with their
  input counts and options (an unsupported op is named before anything else about it is checked), int8
  activations with valid per-tensor quantization (float32 only at the ends: the graph input of a QUANTIZE
  and the graph output of a DEQUANTIZE), int8 or int32 constants, absent optional inputs (-1) only for a bias,
  symmetric weights quantized per output channel, every output shape equal to the one TFLite computes
  from the op's inputs (:func:`~edgeprune.export.int8_graph.output_shape`), ops in an order where each
  reads only tensors already written.

Anything else is refused with one-line ValueError naming the op and the tensor; a truncated or
garbage file is refused with one line too.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path

import numpy as np
import tflite
from tflite.ActivationFunctionType import ActivationFunctionType
from tflite.BuiltinOperator import BuiltinOperator
from tflite.Padding import Padding
from tflite.TensorType import TensorType

from .bitpack import unpack_bits
from .int8_graph import (
    ACTIVATIONS, DTYPES, INT8_MAX, INT8_MIN, ITEMSIZE, OPS, OPTIONS_TABLE, PADDINGS, Int8Graph, LutValues, OpOptions, QOp,
    QTensor, output_shape,
)

__all__ = ["MAX_ACTIVATION_BYTES", "MAX_FILE_BYTES", "load_tflite", "read_tflite"]

MAX_FILE_BYTES = 2**31 - 1  # a flatbuffer addresses at most 2 GiB
MAX_ACTIVATION_BYTES = 64 << 20  # far above any microcontroller's RAM
MAX_RANK = 6

# (fewest, most) inputs of each op; each has one output. -1 marks an absent optional input (a bias).
_ARITY = {"ADD": (2, 2), "AVERAGE_POOL_2D": (1, 1), "CONV_2D": (2, 3), "DEPTHWISE_CONV_2D": (2, 3), "DEQUANTIZE": (1, 1),
          "FULLY_CONNECTED": (2, 3), "MAX_POOL_2D": (1, 1), "PAD": (2, 2), "PADV2": (3, 3), "QUANTIZE": (1, 1), "RELU": (1, 1),
          "RELU6": (1, 1), "RESHAPE": (1, 2), "SOFTMAX": (1, 1), "TRANSPOSE": (2, 2)}
# inputs that must be constants, with their type: weights, biases, paddings, fill values, shapes, permutations
_WEIGHTS = {1: "int8", 2: "int32"}
_CONSTANT_INPUTS = {"CONV_2D": _WEIGHTS, "DEPTHWISE_CONV_2D": _WEIGHTS, "FULLY_CONNECTED": _WEIGHTS, "PAD": {1: "int32"},
                    "PADV2": {1: "int32", 2: "int8"}, "RESHAPE": {1: "int32"}, "TRANSPOSE": {1: "int32"}}
_NEEDS_OPTIONS = ("AVERAGE_POOL_2D", "CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D")
DECODE = "CUSTOM b'TFLM_DECODE'"  # TFLM's decompression op, as opcode() names it
_DCM_BYTES = 16  # the DECODE common metadata before a look-up table's values
_PER_TENSOR_AXIS = 15


def _names(enum: type) -> dict[int, str]:
    return {v: k for k, v in vars(enum).items() if not k.startswith("_")}


_OP_NAMES, _TYPE_NAMES = _names(BuiltinOperator), _names(TensorType)
_PADDING_NAMES, _ACTIVATION_NAMES = _names(Padding), _names(ActivationFunctionType)


class _Refused(ValueError):
    """A well-formed file the reader will not take (its message already says why)."""


def load_tflite(path: str | os.PathLike, max_activation_bytes: int = MAX_ACTIVATION_BYTES) -> Int8Graph:
    """Read the .tflite file at ``path`` (see :func:`read_tflite`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ValueError(f"{path}: {size:,} bytes is larger than any TFLite flatbuffer (at most 2 GiB)")
    try:
        return read_tflite(path.read_bytes(), max_activation_bytes)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def read_tflite(data: bytes, max_activation_bytes: int = MAX_ACTIVATION_BYTES) -> Int8Graph:
    """The :class:`Int8Graph` of a fully int8 .tflite flatbuffer; ValueError (one line) for anything else.

    Constants' ``data`` are read-only arrays; tensors that share a buffer share its memory, so what the
    reader holds stays bounded by the file's size. Absent optional inputs are -1, as in TFLite.
    """
    data = bytes(data)
    if not 8 <= len(data) <= MAX_FILE_BYTES:
        raise ValueError(f"not a TFLite file: {len(data):,} bytes")
    if data[4:8] != b"TFL3":
        raise ValueError(f"not a TFLite file: the identifier at bytes 4-8 is {data[4:8]!r}, not b'TFL3'")
    try:
        return _Reader(data, max_activation_bytes).graph()
    except _Refused:
        raise
    except (struct.error, IndexError, TypeError, ValueError, OverflowError, UnicodeDecodeError) as exc:
        raise ValueError(f"corrupt or truncated TFLite file ({type(exc).__name__}: {exc})") from exc


class _Reader:
    def __init__(self, data: bytes, max_activation_bytes: int) -> None:
        self.data, self.limit = data, max_activation_bytes
        self.buffers: dict[int, bytes | None] = {}  # buffer index -> its bytes, read once however many tensors share it

    # bounds ---------------------------------------------------------------------------------
    def table(self, obj, what: str):
        """``obj`` (a generated accessor) after checking that its table and vtable lie inside the file."""
        if obj is None:
            raise _Refused(f"the file has no {what}")
        n, pos = len(self.data), obj._tab.Pos
        if not 0 <= pos <= n - 4:
            raise _Refused(f"corrupt TFLite file: the {what} lies outside the file")
        vtable = pos - struct.unpack_from("<i", self.data, pos)[0]
        if not 0 <= vtable <= n - 4 or vtable + struct.unpack_from("<H", self.data, vtable)[0] > n:
            raise _Refused(f"corrupt TFLite file: the {what}'s field table lies outside the file")
        return obj

    def count(self, length: int, itemsize: int, what: str) -> int:
        """``length`` after checking that that many items of ``itemsize`` bytes can fit in the file."""
        if length * itemsize > len(self.data):
            raise _Refused(f"corrupt TFLite file: {what} claims {length:,} entries in a {len(self.data):,}-byte file")
        return length

    def index(self, value: int, size: int, what: str, items: str) -> int:
        """``value`` after checking it indexes one of the ``size`` ``items`` the file has."""
        if not 0 <= value < size:
            raise _Refused(f"{what} is {value}, out of range (the file has {size} {items})")
        return int(value)

    # the graph -------------------------------------------------------------------------------
    def graph(self) -> Int8Graph:
        model = self.table(tflite.Model.GetRootAs(self.data, 0), "model")
        n_subgraphs = self.count(model.SubgraphsLength(), 4, "the subgraph list")
        if n_subgraphs != 1:
            raise _Refused(f"the model has {n_subgraphs} subgraphs; only single-subgraph models (no control flow) are supported")
        sg = self.table(model.Subgraphs(0), "subgraph")
        codes = [self.opcode(model, i) for i in range(self.count(model.OperatorCodesLength(), 4, "the operator code list"))]
        n_buffers = self.count(model.BuffersLength(), 4, "the buffer list")
        n_tensors = self.count(sg.TensorsLength(), 4, "the tensor list")
        tensors = [self.tensor(model, sg, i, n_buffers) for i in range(n_tensors)]
        self.model, self.sg, self.n_buffers, self.decode_inputs = model, sg, n_buffers, set()
        ops = [self.op(sg, k, codes, tensors) for k in range(self.count(sg.OperatorsLength(), 4, "the operator list"))]
        ops = [op for op in ops if op is not None]  # DECODE ops left their values in the tensors they wrote
        inputs = self.io(sg.InputsAsNumpy(), n_tensors, "graph input")
        outputs = self.io(sg.OutputsAsNumpy(), n_tensors, "graph output")
        for role, ends in (("graph input", inputs), ("graph output", outputs)):
            for i in ends:
                self.check_tensor(tensors, i, role, tensors[i].dtype if tensors[i].dtype == "float32" else "int8")
        graph = Int8Graph(tensors, ops, inputs, outputs)
        self.check_order(graph)
        self.check_float_ends(graph)
        for i, t in enumerate(tensors):  # the tensors no op uses
            if t.dtype not in DTYPES and i not in self.decode_inputs:
                raise _Refused(f"tensor {i} {t.name!r} is {t.dtype}; only fully int8 models are supported")
        return graph

    def io(self, indices, n_tensors: int, what: str) -> tuple[int, ...]:
        if isinstance(indices, int) or len(indices) == 0:
            raise _Refused(f"the model has no {what}")
        return tuple(self.index(int(i), n_tensors, what, "tensors") for i in indices)

    def opcode(self, model, i: int) -> str:
        oc = self.table(model.OperatorCodes(i), f"operator code {i}")
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())  # files before code 127 only set the deprecated one
        custom = oc.CustomCode()
        if custom is not None or code == BuiltinOperator.CUSTOM:  # TFLM's DECODE keeps builtin code 0 (ADD)
            return f"CUSTOM {custom!r}"
        return _OP_NAMES.get(code, f"builtin code {code}")  # checked where an op uses it, so the message names its tensor

    def tensor(self, model, sg, i: int, n_buffers: int) -> QTensor:
        t = self.table(sg.Tensors(i), f"tensor {i}")
        name = (t.Name() or b"").decode("utf-8", errors="replace")
        label = f"tensor {i} {name!r}"
        raw_shape = t.ShapeAsNumpy()
        shape = () if isinstance(raw_shape, int) else tuple(int(d) for d in raw_shape[:MAX_RANK + 1])
        if len(shape) > MAX_RANK or any(d < 0 for d in shape):
            raise _Refused(f"{label} has shape {list(shape)}; give static shapes of rank at most {MAX_RANK}")
        dtype = next((k for k, v in DTYPES.items() if v == t.Type()), None)
        if dtype is None:  # refused where an op uses it, so that the message names the op
            empty = np.zeros(0)
            return QTensor(name, shape, _TYPE_NAMES.get(t.Type(), str(t.Type())).lower(), empty, empty)
        if t.Sparsity() is not None:
            raise _Refused(f"{label} is stored sparse; only dense tensors are supported")
        nbytes = math.prod(shape) * ITEMSIZE[dtype]
        b = self.index(t.Buffer(), n_buffers, f"{label}'s buffer index", "buffers")
        if b not in self.buffers:
            self.buffers[b] = self.buffer_bytes(self.table(model.Buffers(b), f"{label}'s buffer"), label)
        raw = self.buffers[b]
        if raw is None and nbytes > self.limit:
            raise _Refused(f"{label} has shape {list(shape)}: {nbytes:,} bytes, above the "
                           f"{self.limit:,}-byte limit for activations")
        if raw is not None and len(raw) != nbytes:
            raise _Refused(f"{label} has shape {list(shape)} ({nbytes:,} bytes) but its buffer holds {len(raw):,} bytes")
        scale, zero_point, qdim = self.quantization(t, label, shape)
        if dtype == "int8" and not len(scale):
            raise _Refused(f"{label} is int8 without quantization parameters; give it a scale and zero point")
        values = None if raw is None else np.frombuffer(raw, np.dtype(dtype).newbyteorder("<")).reshape(shape)
        return QTensor(name, shape, dtype, scale, zero_point, qdim, values)

    def buffer_bytes(self, buffer, label: str) -> bytes | None:
        """The constant bytes a buffer holds (inside the flatbuffer, or after it as large models store them), or None."""
        offset, size = buffer.Offset(), buffer.Size()
        if offset > 1:
            if offset + size > len(self.data):
                raise _Refused(f"{label}'s buffer claims bytes {offset:,} to {offset + size:,} of a {len(self.data):,}-byte file")
            return self.data[offset:offset + size] if size else None
        length = self.count(buffer.DataLength(), 1, f"{label}'s buffer")
        return bytes(buffer.DataAsNumpy()) if length else None

    def quantization(self, t, label: str, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, int]:
        q = t.Quantization()
        if q is None:
            return np.zeros(0, np.float32), np.zeros(0, np.int64), 0
        q = self.table(q, f"{label}'s quantization")
        n_scale = self.count(q.ScaleLength(), 4, f"{label}'s scales")
        n_zp = self.count(q.ZeroPointLength(), 8, f"{label}'s zero points")
        scale = q.ScaleAsNumpy().astype(np.float32) if n_scale else np.zeros(0, np.float32)
        zero_point = q.ZeroPointAsNumpy().astype(np.int64) if n_zp else np.zeros(0, np.int64)
        qdim = q.QuantizedDimension()
        if n_scale > 1 and len(shape) == 1 and shape[0] == n_scale:
            qdim = 0  # a vector (a bias) has one dimension, whatever the file states: TFLM does not read it either
        if n_scale != n_zp:
            raise _Refused(f"{label} has {n_scale} scales but {n_zp} zero points")
        if n_scale > 1 and not (0 <= qdim < len(shape) and shape[qdim] == n_scale):
            raise _Refused(f"{label} has {n_scale} per-channel scales along dimension {qdim} of shape {list(shape)}")
        if not (np.isfinite(scale).all() and (scale > 0).all()):
            raise _Refused(f"{label} has scales {scale[:4].tolist()}...; every scale must be positive and finite")
        if not ((zero_point >= INT8_MIN) & (zero_point <= INT8_MAX)).all():
            raise _Refused(f"{label} has zero points outside the int8 range")
        return scale, zero_point, int(qdim)

    # operators -------------------------------------------------------------------------------
    def op(self, sg, k: int, codes: list[str], tensors: list[QTensor]) -> QOp | None:
        op = self.table(sg.Operators(k), f"operator {k}")
        name = codes[self.index(op.OpcodeIndex(), len(codes), f"operator {k}'s opcode index", "operator codes")]
        n_in = self.count(op.InputsLength(), 4, f"operator {k}'s inputs")
        n_out = self.count(op.OutputsLength(), 4, f"operator {k}'s outputs")
        ins = tuple(int(i) for i in op.InputsAsNumpy()) if n_in else ()
        outs = tuple(int(i) for i in op.OutputsAsNumpy()) if n_out else ()
        label = f"op {k} ({name})"
        for pos, i in enumerate(outs):
            self.index(i, len(tensors), f"{label}'s output {pos}", "tensors")
        if name not in OPS and name != DECODE:  # named first: its inputs follow rules of its own (LSTM's absent ones)
            what = f" writing tensor {outs[0]} {tensors[outs[0]].name!r}" if outs else ""
            raise _Refused(f"{label}{what} is not supported; supported ops: {', '.join(sorted(OPS))}")
        for pos, i in enumerate(ins):
            if i == -1 and pos == 2 and _CONSTANT_INPUTS.get(name) is _WEIGHTS:  # only a bias may be absent
                continue
            if i == -1:
                raise _Refused(f"{label}'s input {pos} is absent (-1); {name} needs it")
            self.index(i, len(tensors), f"{label}'s input {pos}", "tensors")
        if name == DECODE:
            self.decode(label, ins, outs, tensors)
            return None
        fewest, most = _ARITY[name]
        if not fewest <= len(ins) <= most or len(outs) != 1:
            raise _Refused(f"{label} has {len(ins)} inputs and {len(outs)} outputs; it takes {fewest} to {most} inputs and 1 output")
        constants = _CONSTANT_INPUTS.get(name, {})
        for pos, i in enumerate(ins):
            if i != -1:
                dtype = "float32" if name == "QUANTIZE" else constants.get(pos, "int8")
                self.check_tensor(tensors, i, f"{label}'s input {pos}", dtype, pos in constants)
        self.check_tensor(tensors, outs[0], f"{label}'s output", "float32" if name == "DEQUANTIZE" else "int8")
        if constants is _WEIGHTS:
            self.check_weights(tensors, ins, label, channel_axis=3 if name == "DEPTHWISE_CONV_2D" else 0)
        qop = QOp(name, ins, outs, self.options(op, name, label))
        try:
            shape = output_shape(qop, tensors)
        except ValueError as exc:
            raise _Refused(f"{label}: {exc}") from exc
        if shape != tensors[outs[0]].shape:
            raise _Refused(f"{label}'s output, tensor {outs[0]} {tensors[outs[0]].name!r}, has shape "
                           f"{list(tensors[outs[0]].shape)}, but its inputs give {list(shape)}")
        return qop

    # look-up tables (TFLM's DECODE) -------------------------------------------------------------
    def decode(self, label: str, ins: tuple[int, ...], outs: tuple[int, ...], tensors: list[QTensor]) -> None:
        """Decode each output of a DECODE op (an encoded and an ancillary input per output) into a constant."""
        if not outs or len(ins) != 2 * len(outs):
            raise _Refused(f"{label} has {len(ins)} inputs and {len(outs)} outputs; it takes an encoded tensor and "
                           "its ancillary data for each output")
        for j, out in enumerate(outs):
            encoded = self.uint8_bytes(ins[2 * j], f"{label}'s input {2 * j}")
            ancillary = self.uint8_bytes(ins[2 * j + 1], f"{label}'s input {2 * j + 1}")
            t = tensors[out]
            where = f"{label}'s output {j}, tensor {out} {t.name!r},"
            if t.dtype != "int8" or t.data is not None or not len(t.scale):
                raise _Refused(f"{where} must be a quantized int8 tensor without data of its own (it is {t.dtype})")
            tensors[out] = _lut_tensor(t, encoded, ancillary, where)
            self.decode_inputs |= {ins[2 * j], ins[2 * j + 1]}

    def uint8_bytes(self, i: int, role: str) -> bytes:
        """The bytes of tensor ``i``, a 1-D uint8 constant (a DECODE op's encoded or ancillary data)."""
        t = self.table(self.sg.Tensors(i), f"tensor {i}")
        raw_shape = t.ShapeAsNumpy()
        shape = () if isinstance(raw_shape, int) else tuple(int(d) for d in raw_shape[:2])
        b = self.index(t.Buffer(), self.n_buffers, f"{role}'s buffer index", "buffers")
        if t.Type() != TensorType.UINT8 or len(shape) != 1:
            raise _Refused(f"{role}, tensor {i}, must be a 1-D uint8 constant (it is {_TYPE_NAMES.get(t.Type())} "
                           f"of shape {list(shape)})")
        if b not in self.buffers:
            self.buffers[b] = self.buffer_bytes(self.table(self.model.Buffers(b), f"{role}'s buffer"), role)
        raw = self.buffers[b]
        if raw is None or len(raw) != shape[0]:
            raise _Refused(f"{role}, tensor {i}, claims {shape[0]:,} bytes but its buffer holds "
                           f"{0 if raw is None else len(raw):,}")
        return raw

    def check_weights(self, tensors: list[QTensor], ins: tuple[int, ...], label: str, channel_axis: int) -> None:
        """Weights and bias are symmetric (zero point 0); per-channel weights are quantized along the output channels."""
        for pos, i in enumerate(ins[1:], start=1):
            t = tensors[i] if i != -1 else None
            if t is not None and t.zero_point.any():
                raise _Refused(f"{label}'s input {pos}, tensor {i} {t.name!r}, has a non-zero zero point; "
                               "weights and biases must be symmetric")
        w = tensors[ins[1]]
        if len(w.scale) > 1 and w.quantized_dimension != channel_axis:
            raise _Refused(f"{label}'s weights, tensor {ins[1]} {w.name!r}, are quantized along dimension "
                           f"{w.quantized_dimension}; per-channel weights must be quantized along dimension {channel_axis}")

    def check_tensor(self, tensors: list[QTensor], i: int, role: str, dtype: str, constant: bool = False) -> None:
        """Tensor ``i`` is a ``dtype`` constant (``constant``) or a ``dtype`` activation (int8 with one scale and zero
        point, or float32 at the graph's ends), else refused."""
        t = tensors[i]
        label = f"{role}, tensor {i} {t.name!r},"
        if t.dtype not in DTYPES or (t.dtype == "float32" and dtype != "float32"):
            raise _Refused(f"{label} is {t.dtype}; only fully int8 models are supported (int8 tensors, int32 biases and "
                           "shapes; float32 only as the input of a first QUANTIZE and the output of a last DEQUANTIZE)")
        if constant and (t.data is None or t.dtype != dtype):
            raise _Refused(f"{label} must be a constant {dtype} tensor (it is {'an' if t.data is None else 'a constant'} {t.dtype})")
        if not constant and t.data is None and t.dtype != dtype:
            raise _Refused(f"{label} is {t.dtype}; it must be a {dtype} activation")
        if not constant and t.data is None and dtype == "int8" and len(t.scale) != 1:
            raise _Refused(f"{label} must be an int8 activation with one scale and zero point")
        if not constant and t.data is not None:
            raise _Refused(f"{label} must be an activation, not a constant")

    def options(self, op, name: str, label: str) -> OpOptions:
        table = OPTIONS_TABLE[name]
        kind = op.BuiltinOptionsType()
        if table is None or kind == 0:
            if name in _NEEDS_OPTIONS:
                raise _Refused(f"{label} has no options; it needs {table[0]}")
            return OpOptions()
        if kind != table[1]:
            raise _Refused(f"{label} has options of type {kind}; it needs {table[0]} ({table[1]})")
        opts = getattr(tflite, table[0])()
        raw = op.BuiltinOptions()
        opts.Init(raw.Bytes, raw.Pos)
        self.table(opts, f"{label}'s options")
        fields = {}
        if hasattr(opts, "Padding"):
            fields["padding"] = self.enum(opts.Padding(), PADDINGS, _PADDING_NAMES, f"{label}'s padding")
        if hasattr(opts, "FusedActivationFunction"):
            fields["activation"] = self.enum(opts.FusedActivationFunction(), ACTIVATIONS, _ACTIVATION_NAMES,
                                             f"{label}'s fused activation")
        if hasattr(opts, "StrideH"):
            fields["stride"] = (opts.StrideH(), opts.StrideW())
        if hasattr(opts, "DilationHFactor"):
            fields["dilation"] = (opts.DilationHFactor(), opts.DilationWFactor())
        if hasattr(opts, "FilterHeight"):
            fields["filter"] = (opts.FilterHeight(), opts.FilterWidth())
        if hasattr(opts, "DepthMultiplier"):
            fields["depth_multiplier"] = opts.DepthMultiplier()
        if hasattr(opts, "Beta"):
            fields["beta"] = float(opts.Beta())
        if hasattr(opts, "NewShapeLength") and self.count(opts.NewShapeLength(), 4, f"{label}'s new shape"):
            fields["new_shape"] = tuple(int(d) for d in opts.NewShapeAsNumpy())
        for key in ("stride", "dilation", "filter", "depth_multiplier"):
            if key in fields and min(np.atleast_1d(fields[key])) < 1:
                raise _Refused(f"{label} has {key} {fields[key]}; it must be at least 1")
        return OpOptions(**fields)

    def enum(self, code: int, allowed: dict[str, int], names: dict[int, str], what: str) -> str:
        found = next((k for k, v in allowed.items() if v == code), None)
        if found is None:
            raise _Refused(f"{what} is {names.get(code, code)}; supported: {', '.join(allowed)}")
        return found

    def check_float_ends(self, graph: Int8Graph) -> None:
        """A QUANTIZE reads a graph input and a DEQUANTIZE writes a graph output: float32 lives only at the ends."""
        for k, op in enumerate(graph.ops):
            if op.op == "QUANTIZE" and op.inputs[0] not in graph.inputs:
                raise _Refused(f"op {k} (QUANTIZE) reads tensor {op.inputs[0]}, not a graph input; only a float32 graph "
                               "input may be quantized")
            if op.op == "DEQUANTIZE" and op.outputs[0] not in graph.outputs:
                raise _Refused(f"op {k} (DEQUANTIZE) writes tensor {op.outputs[0]}, not a graph output; only a float32 "
                               "graph output may be dequantized")

    def check_order(self, graph: Int8Graph) -> None:
        """Each op reads only constants, graph inputs and tensors an earlier op wrote; no tensor is written twice."""
        written = set(graph.inputs)
        for k, op in enumerate(graph.ops):
            for i in op.inputs:
                if i != -1 and graph.tensors[i].data is None and i not in written:
                    raise _Refused(f"op {k} ({op.op}) reads tensor {i} {graph.tensors[i].name!r} before any op writes it")
            if op.outputs[0] in written:
                raise _Refused(f"op {k} ({op.op}) writes tensor {op.outputs[0]} {graph.tensors[op.outputs[0]].name!r} "
                               "a second time")
            written.add(op.outputs[0])
        for i in graph.outputs:
            if i not in written:
                raise _Refused(f"graph output tensor {i} {graph.tensors[i].name!r} is never written")


def _lut_tensor(t: QTensor, encoded: bytes, ancillary: bytes, where: str) -> QTensor:
    """``t`` with the values of TFLM's look-up-table encoding: ``encoded`` packs one index of ``bits`` bits per
    element (most significant bit first), ``ancillary`` is the 16-byte DECODE metadata (decode type 0, version 1;
    LUT version 1, bits 7-4 the table axis or 15 for one table, bits 2-0 the index width, the table length)
    and then the int8 tables, one per channel along the axis."""
    if len(ancillary) < _DCM_BYTES:
        raise _Refused(f"{where} has {len(ancillary)} bytes of DECODE metadata; it needs {_DCM_BYTES}")
    kind, version, lut_version = ancillary[0], ancillary[1], ancillary[4]
    bits, axis, stride = ancillary[5] & 7, ancillary[5] >> 4, ancillary[6]
    if kind != 0:
        raise _Refused(f"{where} is decoded by type {kind}; only look-up tables (type 0) are supported")
    if version != 1 or lut_version != 1:
        raise _Refused(f"{where} has DECODE version {version} and look-up-table version {lut_version}; "
                       "only version 1 of both is supported")
    shape, n = t.shape, math.prod(t.shape)
    if not 1 <= bits <= 7 or not 1 <= stride <= 1 << bits:
        raise _Refused(f"{where} has {bits}-bit indices into tables of {stride} values; "
                       "give 1 to 7 bits and at most 2**bits values a table")
    if axis != _PER_TENSOR_AXIS and not (axis < len(shape) and axis in (0, len(shape) - 1)):
        raise _Refused(f"{where} has its tables along axis {axis} of shape {list(shape)}; give the first or last axis")
    tables = 1 if axis == _PER_TENSOR_AXIS else shape[axis]
    if len(encoded) != -(-n * bits // 8) or len(ancillary) != _DCM_BYTES + tables * stride:
        raise _Refused(f"{where} has {len(encoded):,} encoded and {len(ancillary):,} ancillary bytes; shape "
                       f"{list(shape)} with {bits}-bit indices and {tables} tables of {stride} values needs "
                       f"{-(-n * bits // 8):,} and {_DCM_BYTES + tables * stride:,}")
    indices = unpack_bits(encoded, n, bits, "big").astype(np.uint8)
    if n and int(indices.max()) >= stride:
        raise _Refused(f"{where} has index {int(indices.max())} into tables of {stride} values")
    table = np.frombuffer(ancillary, np.int8, offset=_DCM_BYTES).reshape(tables, stride)
    indices = indices.reshape(shape)
    if axis == _PER_TENSOR_AXIS:
        values = table[0][indices]
    else:
        rows = np.moveaxis(indices, axis, 0).reshape(tables, -1)
        values = np.moveaxis(np.take_along_axis(table, rows.astype(np.intp), axis=1).reshape(
            np.moveaxis(indices, axis, 0).shape), 0, axis)
    values, indices = np.ascontiguousarray(values), np.ascontiguousarray(indices)
    for array in (values, indices):
        array.setflags(write=False)
    lut = LutValues(int(bits), None if axis == _PER_TENSOR_AXIS else int(axis), table, indices)
    return QTensor(t.name, shape, "int8", t.scale, t.zero_point, t.quantized_dimension, values, lut)
