"""The int8 graph: a quantized IR of a fully int8 TFLite model, its quantization maths and the schema constants.

This is the bottom of the TFLite export. The fx converter (``tflite_convert``) builds an
:class:`Int8Graph`, the writer (``tflite_write``) turns one into flatbuffer bytes, the reader
(``tflite_read``) turns flatbuffer bytes back into one, and the TFLM runtime (``tflm``) runs the
bytes; each of them imports this module and none imports another.

Conventions, as TFLite stores them:

* shapes are NHWC with the batch (``(1, H, W, C)``); a convolution's filter is ``[O, kh, kw, I]``,
  a depthwise filter ``[1, kh, kw, C*m]``, a fully connected weight ``[O, I]``;
* int8 weights are symmetric (zero point 0) with one scale per output channel, along
  ``quantized_dimension``; int8 activations have one scale and zero point per tensor;
* int32 biases have scale ``input_scale * weight_scale[c]`` and zero point 0;
* int32 constants without quantization hold shapes, paddings and permutations.

The numeric codes of the schema (operators, tensor types, padding, fused activations, options
tables) are taken from the generated enums of the ``tflite`` package, never written by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from tflite.ActivationFunctionType import ActivationFunctionType
from tflite.BuiltinOperator import BuiltinOperator
from tflite.BuiltinOptions import BuiltinOptions
from tflite.Padding import Padding
from tflite.TensorType import TensorType

__all__ = [
    "ACTIVATIONS", "DTYPES", "INT8_MAX", "INT8_MIN", "ITEMSIZE", "OPS", "OPTIONS_TABLE", "PADDINGS", "Int8Graph", "LutValues",
    "OpOptions", "QOp", "QTensor", "activation_qparams", "bias_scales", "multiply_by_quantized_multiplier", "output_shape",
    "quantize_activation", "quantize_bias", "quantize_multiplier", "quantize_weight", "same_padding", "weight_scales",
    "window_output_size",
]

INT8_MIN, INT8_MAX = -128, 127

# ---------------------------------------------------------------------------------------------
# schema constants, from the tflite package's enums

#: The builtin operators the graph may hold: name -> ``tflite.BuiltinOperator`` code.
OPS: dict[str, int] = {name: getattr(BuiltinOperator, name) for name in (
    "ADD", "AVERAGE_POOL_2D", "CONV_2D", "DEPTHWISE_CONV_2D", "DEQUANTIZE", "FULLY_CONNECTED", "MAX_POOL_2D", "PAD",
    "PADV2", "QUANTIZE", "RELU", "RELU6", "RESHAPE", "SOFTMAX", "TRANSPOSE")}

#: The options table each operator carries (name and ``tflite.BuiltinOptions`` code), or None for none.
OPTIONS_TABLE: dict[str, tuple[str, int] | None] = {
    op: None if table is None else (table, getattr(BuiltinOptions, table)) for op, table in {
        "ADD": "AddOptions", "AVERAGE_POOL_2D": "Pool2DOptions", "CONV_2D": "Conv2DOptions",
        "DEPTHWISE_CONV_2D": "DepthwiseConv2DOptions", "DEQUANTIZE": None, "FULLY_CONNECTED": "FullyConnectedOptions",
        "MAX_POOL_2D": "Pool2DOptions", "QUANTIZE": None, "PAD": "PadOptions", "PADV2": "PadV2Options", "RELU": None, "RELU6": None,
        "RESHAPE": "ReshapeOptions", "SOFTMAX": "SoftmaxOptions", "TRANSPOSE": "TransposeOptions"}.items()}

#: Tensor element types: name -> ``tflite.TensorType`` code. float32 only at a graph's ends: the input of a
#: QUANTIZE first op and the output of a DEQUANTIZE last op (TensorFlow's converter with float input and output).
DTYPES: dict[str, int] = {"int8": TensorType.INT8, "int32": TensorType.INT32, "float32": TensorType.FLOAT32}

#: Bytes per element of each dtype.
ITEMSIZE: dict[str, int] = {"int8": 1, "int32": 4, "float32": 4}

#: Padding schemes: name -> ``tflite.Padding`` code.
PADDINGS: dict[str, int] = {"SAME": Padding.SAME, "VALID": Padding.VALID}

#: Fused activations: name -> ``tflite.ActivationFunctionType`` code.
ACTIVATIONS: dict[str, int] = {name: getattr(ActivationFunctionType, name) for name in ("NONE", "RELU", "RELU6")}


# ---------------------------------------------------------------------------------------------
# the IR


@dataclass(frozen=True)
class LutValues:
    """How a constant was stored in the file as TFLM look-up-table compression: ``bits``-bit ``indices``
    (uint8, the tensor's shape) into ``tables`` (int8, one row per channel along ``axis``, or a single row
    when ``axis`` is None). The tensor's ``data`` holds the decoded values, ``tables[channel, indices]``."""

    bits: int
    axis: int | None
    tables: np.ndarray
    indices: np.ndarray


@dataclass
class QTensor:
    """One tensor of the graph.

    ``shape`` is as TFLite stores it (NHWC with the batch for activations). ``dtype`` is ``"int8"`` or
    ``"int32"``. ``scale`` (float32) and ``zero_point`` (int64) have one entry per tensor, one per channel
    along ``quantized_dimension`` (per-channel weights and biases; a file from elsewhere may quantize its
    weights per tensor, with one entry), or none (int32 shape constants). ``data`` is the constant's
    values (an array of ``shape`` and ``dtype``, read-only when read from a file), or None for an activation.
    ``lut`` says how the file stored a constant as a look-up table (TFLM's DECODE), or is None.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: np.ndarray
    zero_point: np.ndarray
    quantized_dimension: int = 0
    data: np.ndarray | None = None
    lut: LutValues | None = None

    @property
    def qparams(self) -> tuple[float, int]:
        """(scale, zero point) of a per-tensor quantized tensor."""
        return float(self.scale[0]), int(self.zero_point[0])


@dataclass(frozen=True)
class OpOptions:
    """The options of one operator; each op reads only the fields its TFLite options table has.

    * CONV_2D, DEPTHWISE_CONV_2D: ``padding``, ``stride``, ``dilation``, ``activation``
      (and ``depth_multiplier`` for depthwise);
    * MAX_POOL_2D, AVERAGE_POOL_2D: ``padding``, ``stride``, ``filter``, ``activation``;
    * FULLY_CONNECTED, ADD: ``activation``;
    * SOFTMAX: ``beta``; RESHAPE: ``new_shape``; PAD, PADV2, TRANSPOSE, RELU, RELU6, QUANTIZE, DEQUANTIZE: none
      (their paddings, fill value and permutation are constant input tensors).

    ``padding`` is ``"SAME"`` or ``"VALID"``, ``activation`` ``"NONE"``, ``"RELU"`` or ``"RELU6"``;
    pairs are (height, width).
    """

    padding: str = "VALID"
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    filter: tuple[int, int] = (1, 1)
    depth_multiplier: int = 1
    activation: str = "NONE"
    beta: float = 1.0
    new_shape: tuple[int, ...] = ()


@dataclass
class QOp:
    """One operator: its builtin name (a key of :data:`OPS`), input and output tensor indices, options.

    An absent optional input (a convolution's bias in a file from elsewhere) is -1, as in TFLite.
    """

    op: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: OpOptions = field(default_factory=OpOptions)


@dataclass
class Int8Graph:
    """A fully int8 model: tensors, operators in execution order, and the graph's input and output tensor indices."""

    tensors: list[QTensor] = field(default_factory=list)
    ops: list[QOp] = field(default_factory=list)
    inputs: tuple[int, ...] = ()
    outputs: tuple[int, ...] = ()

    def add(self, tensor: QTensor) -> int:
        """Append ``tensor``; return its index."""
        self.tensors.append(tensor)
        return len(self.tensors) - 1

    def activation(self, name: str, shape: tuple[int, ...], qparams: tuple[float, int]) -> int:
        """Append an int8 activation with per-tensor (scale, zero point); return its index."""
        return self.add(QTensor(name, tuple(shape), "int8", np.array([qparams[0]], np.float32),
                                np.array([qparams[1]], np.int64)))

    def constant(self, name: str, data: np.ndarray, scale: np.ndarray | None = None, quantized_dimension: int = 0,
                 zero_point: int = 0) -> int:
        """Append an int8 or int32 constant (quantized with ``scale`` if given, zero points ``zero_point``)."""
        dtype = {np.dtype(np.int8): "int8", np.dtype(np.int32): "int32"}[data.dtype]
        scale = np.zeros(0, np.float32) if scale is None else np.asarray(scale, np.float32).reshape(-1)
        return self.add(QTensor(name, tuple(data.shape), dtype, scale, np.full(len(scale), zero_point, np.int64),
                                quantized_dimension, np.ascontiguousarray(data)))


# ---------------------------------------------------------------------------------------------
# shapes, as TFLite computes them


def window_output_size(size: int, kernel: int, stride: int, dilation: int, padding: str) -> int:
    """Output length of a convolution or pooling window along one axis: SAME ``ceil(size / stride)``,
    VALID ``(size - effective kernel) // stride + 1`` (effective kernel ``dilation * (kernel - 1) + 1``)."""
    if padding == "SAME":
        return -(-size // stride)
    return (size - dilation * (kernel - 1) - 1) // stride + 1


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """SAME padding (before, after) along one axis: the total the windows need, the odd element after."""
    out = window_output_size(size, kernel, stride, dilation, "SAME")
    total = max((out - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    return total // 2, total - total // 2


def output_shape(op: QOp, tensors: list[QTensor]) -> tuple[int, ...]:
    """The output shape TFLite computes for ``op`` from its inputs; ValueError saying which input disagrees.

    Only what the int8 kernels rely on is accepted: NHWC inputs of rank 4 for convolutions and pools,
    filters whose input channels match, biases with one value per output channel, operands of equal
    shapes for ADD (no broadcasting), and valid paddings, permutations and reshapes.
    """
    x = tensors[op.inputs[0]].shape
    o = op.options
    if op.op in ("CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "AVERAGE_POOL_2D"):
        if len(x) != 4:
            raise ValueError(f"input of shape {list(x)}; it needs N x H x W x C")
        if op.op in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
            kernel, dilation, channels = o.filter, (1, 1), x[3]
        else:
            w = tensors[op.inputs[1]].shape
            depthwise = op.op == "DEPTHWISE_CONV_2D"
            channels = w[3] if depthwise else w[0]
            fits = len(w) == 4 and ((w[0] == 1 and w[3] == x[3] * o.depth_multiplier) if depthwise else w[3] == x[3])
            if not fits:
                raise ValueError(f"filter of shape {list(w)} does not fit an input of shape {list(x)}"
                                 + (f" with depth multiplier {o.depth_multiplier}" if depthwise else ""))
            kernel, dilation = (w[1], w[2]), o.dilation
            _check_bias(op, tensors, channels)
        hw = [window_output_size(x[1 + i], kernel[i], o.stride[i], dilation[i], o.padding) for i in range(2)]
        if min(hw) < 1:
            raise ValueError(f"a {kernel[0]}x{kernel[1]} window does not fit an input of shape {list(x)}")
        return (x[0], hw[0], hw[1], channels)
    if op.op == "FULLY_CONNECTED":
        w = tensors[op.inputs[1]].shape
        size = math.prod(x)
        if len(w) != 2 or w[1] == 0 or size % w[1]:
            raise ValueError(f"weights of shape {list(w)} do not fit an input of shape {list(x)}")
        _check_bias(op, tensors, w[0])
        return (size // w[1], w[0])
    if op.op == "ADD":
        if tensors[op.inputs[1]].shape != x:
            raise ValueError(f"operands of shapes {list(x)} and {list(tensors[op.inputs[1]].shape)}; they must be equal")
        return x
    if op.op in ("PAD", "PADV2"):
        pads = tensors[op.inputs[1]].data
        if pads.shape != (len(x), 2) or (pads < 0).any():
            raise ValueError(f"paddings {pads.tolist()} for an input of rank {len(x)}; give rank x 2 non-negative amounts")
        if op.op == "PADV2" and tensors[op.inputs[2]].data.size != 1:
            raise ValueError("the fill value must be one int8 number")
        return tuple(int(d + before + after) for d, (before, after) in zip(x, pads))
    if op.op == "TRANSPOSE":
        perm = tensors[op.inputs[1]].data
        if sorted(perm.tolist()) != list(range(len(x))):
            raise ValueError(f"permutation {perm.tolist()} for an input of rank {len(x)}")
        return tuple(x[i] for i in perm)
    if op.op == "RESHAPE":  # to the shape the output declares, if it has as many elements
        out = tensors[op.outputs[0]].shape
        if math.prod(out) != math.prod(x):
            raise ValueError(f"reshape of {list(x)} to {list(out)}: the element counts differ")
        return out
    return x  # RELU, RELU6, SOFTMAX, QUANTIZE, DEQUANTIZE


def _check_bias(op: QOp, tensors: list[QTensor], channels: int) -> None:
    if len(op.inputs) > 2 and op.inputs[2] != -1 and tensors[op.inputs[2]].shape != (channels,):
        raise ValueError(f"bias of shape {list(tensors[op.inputs[2]].shape)} for {channels} output channels")


# ---------------------------------------------------------------------------------------------
# quantization maths (TFLite's quantization specification)


def activation_qparams(lo: float, hi: float) -> tuple[float, int]:
    """(scale, zero point) of an int8 per-tensor activation covering [lo, hi] widened to include 0."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo <= 0.0:
        return 1.0, 0
    scale = (hi - lo) / (INT8_MAX - INT8_MIN)
    zero_point = int(np.clip(round(INT8_MIN - lo / scale), INT8_MIN, INT8_MAX))
    return scale, zero_point


def quantize_activation(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Float values as int8 with a per-tensor (scale, zero point): ``clip(round(x / scale) + zero_point)``."""
    return np.clip(np.round(np.asarray(values) / scale) + zero_point, INT8_MIN, INT8_MAX).astype(np.int8)


def weight_scales(weight: np.ndarray, axis: int) -> np.ndarray:
    """Symmetric per-channel int8 scales ``max|w| / 127`` along ``axis`` (1.0 for an all-zero channel)."""
    amax = np.abs(np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)).max(axis=1)
    return np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)


def quantize_weight(weight: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel int8 weights in [-127, 127] and their float32 scales along ``axis``."""
    scales = weight_scales(weight, axis)
    shape = [1] * weight.ndim
    shape[axis] = -1
    q = np.clip(np.round(weight / scales.reshape(shape)), -127, 127).astype(np.int8)
    return q, scales


def bias_scales(input_scale: float, w_scales: np.ndarray) -> np.ndarray:
    """The int32 bias scales ``input_scale * weight_scale[c]``, as float32 (what the file stores)."""
    return np.float32(input_scale) * w_scales.astype(np.float32)


def quantize_bias(bias: np.ndarray, input_scale: float, w_scales: np.ndarray) -> np.ndarray:
    """int32 biases ``round(bias / (input_scale * weight_scale[c]))``, saturated to the int32 range."""
    scale = np.float32(input_scale) * w_scales.astype(np.float64)
    info = np.iinfo(np.int32)
    return np.clip(np.round(bias / scale), info.min, info.max).astype(np.int32)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite's ``QuantizeMultiplier``: ``real ≈ multiplier * 2**(shift - 31)``, multiplier an int32 in [2**30, 2**31).

    ``frexp`` splits ``real`` into a fraction in [0.5, 1) and an exponent (the shift); the fraction
    times 2**31 is rounded half away from zero. A fraction that rounds up to 2**31 is halved (shift + 1);
    a shift below -31 flushes the multiplier to (0, 0), as does ``real == 0``.
    """
    if real == 0.0:
        return 0, 0
    fraction, shift = math.frexp(real)
    q = int(math.copysign(math.floor(abs(fraction) * 2**31 + 0.5), fraction))
    if q == 2**31:
        q, shift = q // 2, shift + 1
    if shift < -31:
        return 0, 0
    return q, shift


def multiply_by_quantized_multiplier(acc: np.ndarray, multiplier: int, shift: int) -> np.ndarray:
    """TFLite's reference ``MultiplyByQuantizedMultiplier`` (double rounding, the default build) on int32 ``acc``.

    ``RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(acc * 2**max(shift, 0), multiplier), max(-shift, 0))``.
    """
    x = np.asarray(acc, np.int64) * (1 << max(shift, 0))  # TFLM shifts in int32: the product must fit int32
    # SaturatingRoundingDoublingHighMul (it saturates only for multiplier -2**31, which never occurs here):
    # (x * multiplier + rounding nudge) / 2**31, truncated toward zero
    product = x * np.int64(multiplier)
    nudged = product + np.where(product >= 0, 1 << 30, 1 - (1 << 30))
    high = np.sign(nudged) * (np.abs(nudged) >> 31)
    # RoundingDivideByPOT: arithmetic shift right, rounding half away from zero
    exponent = max(-shift, 0)
    mask = (1 << exponent) - 1
    threshold = (mask >> 1) + (high < 0)
    return (high >> exponent) + ((high & mask) > threshold)
