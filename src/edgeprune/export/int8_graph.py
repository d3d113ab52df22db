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
    "ACTIVATIONS", "DTYPES", "INT8_MAX", "INT8_MIN", "OPS", "OPTIONS_TABLE", "PADDINGS", "Int8Graph", "OpOptions",
    "QOp", "QTensor", "activation_qparams", "bias_scales", "multiply_by_quantized_multiplier", "quantize_bias",
    "quantize_multiplier", "quantize_weight", "weight_scales",
]

INT8_MIN, INT8_MAX = -128, 127

# ---------------------------------------------------------------------------------------------
# schema constants, from the tflite package's enums

#: The builtin operators the graph may hold: name -> ``tflite.BuiltinOperator`` code.
OPS: dict[str, int] = {name: getattr(BuiltinOperator, name) for name in (
    "ADD", "AVERAGE_POOL_2D", "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "MAX_POOL_2D", "PAD", "PADV2",
    "RELU", "RELU6", "RESHAPE", "SOFTMAX", "TRANSPOSE")}

#: The options table each operator carries (name and ``tflite.BuiltinOptions`` code), or None for none.
OPTIONS_TABLE: dict[str, tuple[str, int] | None] = {
    op: None if table is None else (table, getattr(BuiltinOptions, table)) for op, table in {
        "ADD": "AddOptions", "AVERAGE_POOL_2D": "Pool2DOptions", "CONV_2D": "Conv2DOptions",
        "DEPTHWISE_CONV_2D": "DepthwiseConv2DOptions", "FULLY_CONNECTED": "FullyConnectedOptions",
        "MAX_POOL_2D": "Pool2DOptions", "PAD": "PadOptions", "PADV2": "PadV2Options", "RELU": None, "RELU6": None,
        "RESHAPE": "ReshapeOptions", "SOFTMAX": "SoftmaxOptions", "TRANSPOSE": "TransposeOptions"}.items()}

#: Tensor element types: name -> ``tflite.TensorType`` code.
DTYPES: dict[str, int] = {"int8": TensorType.INT8, "int32": TensorType.INT32}

#: Padding schemes: name -> ``tflite.Padding`` code.
PADDINGS: dict[str, int] = {"SAME": Padding.SAME, "VALID": Padding.VALID}

#: Fused activations: name -> ``tflite.ActivationFunctionType`` code.
ACTIVATIONS: dict[str, int] = {name: getattr(ActivationFunctionType, name) for name in ("NONE", "RELU", "RELU6")}


# ---------------------------------------------------------------------------------------------
# the IR


@dataclass
class QTensor:
    """One tensor of the graph.

    ``shape`` is as TFLite stores it (NHWC with the batch for activations). ``dtype`` is ``"int8"`` or
    ``"int32"``. ``scale`` (float32) and ``zero_point`` (int64) have one entry per tensor, one per channel
    along ``quantized_dimension`` (per-channel weights and biases), or none (int32 shape constants).
    ``data`` is the constant's values (an array of ``shape`` and ``dtype``), or None for an activation.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    scale: np.ndarray
    zero_point: np.ndarray
    quantized_dimension: int = 0
    data: np.ndarray | None = None

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
    * SOFTMAX: ``beta``; RESHAPE: ``new_shape``; PAD, PADV2, TRANSPOSE, RELU, RELU6: none
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
    """One operator: its builtin name (a key of :data:`OPS`), input and output tensor indices, options."""

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
# quantization maths (TFLite's quantization specification)


def activation_qparams(lo: float, hi: float) -> tuple[float, int]:
    """(scale, zero point) of an int8 per-tensor activation covering [lo, hi] widened to include 0."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo <= 0.0:
        return 1.0, 0
    scale = (hi - lo) / (INT8_MAX - INT8_MIN)
    zero_point = int(np.clip(round(INT8_MIN - lo / scale), INT8_MIN, INT8_MAX))
    return scale, zero_point


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
