"""Fully int8 TensorFlow Lite export for microcontrollers, checked in TensorFlow Lite Micro's own interpreter.

The model is traced with ``torch.fx`` (batch norm folded into the convolution before it), each
activation's float range is calibrated on real images, and the graph is written NHWC, following
the TFLite quantization specification:

* weights int8, symmetric (zero point 0), one scale per output channel, values in [-127, 127];
* activations int8, one scale and zero point per tensor, from the calibrated [min, max] widened to hold 0;
* biases int32 with scale ``input_scale * weight_scale[c]`` and zero point 0;
* max/avg pool, reshape, transpose and pad outputs share their input's scale and zero point;
  softmax outputs have scale 1/256 and zero point -128.

Ops: conv2d, depthwise conv2d, linear, max/avg pool (and adaptive average pool to 1x1), add, relu and
relu6 (fused into the op before them when it is their only user), flatten/reshape to 2-D, softmax,
dropout/identity (dropped). Padding that TFLite's SAME does not reproduce becomes an explicit PAD
(the zero point: convolutions, average pooling) or PADV2 (-128: max pooling, as PyTorch's -inf). A PyTorch flatten of an NCHW tensor is matched by permuting the next
linear layer's weight columns (or by an explicit TRANSPOSE when no linear layer follows).
"""

from __future__ import annotations

import ctypes
import importlib
import operator
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import flatbuffers
import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.experimental.optimization import fuse as fuse_conv_bn

from ..files import atomic_path

__all__ = ["SUPPORTED_OPS", "activation_qparams", "calibration_images", "evaluate_tflite", "export_tflite", "tflite_arena_bytes", "weight_scales"]

SUPPORTED_OPS = (
    "Conv2d (groups 1 or depthwise), Linear, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d(1), add, ReLU, ReLU6, "
    "flatten/reshape to 2-D, softmax, Dropout, Identity, BatchNorm2d after a Conv2d"
)

# TFLite schema constants (tflite.BuiltinOperator, TensorType, Padding, ActivationFunctionType, BuiltinOptions)
_OP = {"ADD": 0, "AVERAGE_POOL_2D": 1, "CONV_2D": 3, "DEPTHWISE_CONV_2D": 4, "FULLY_CONNECTED": 9,
       "MAX_POOL_2D": 17, "RELU": 19, "RELU6": 21, "RESHAPE": 22, "SOFTMAX": 25, "PAD": 34, "TRANSPOSE": 39, "PADV2": 60}
_INT8, _INT32 = 9, 2
_SAME, _VALID = 0, 1
_ACT = {None: 0, "relu": 1, "relu6": 3}
_QMIN, _QMAX = -128, 127


# ---------------------------------------------------------------------------------------------
# pure quantization arithmetic


def activation_qparams(lo: float, hi: float) -> tuple[float, int]:
    """(scale, zero point) of an int8 per-tensor activation covering [lo, hi] widened to include 0."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo <= 0.0:
        return 1.0, 0
    scale = (hi - lo) / (_QMAX - _QMIN)
    zero_point = int(np.clip(round(_QMIN - lo / scale), _QMIN, _QMAX))
    return scale, zero_point


def weight_scales(weight: np.ndarray, axis: int) -> np.ndarray:
    """Symmetric per-channel int8 scales ``max|w| / 127`` along ``axis`` (1.0 for an all-zero channel)."""
    amax = np.abs(np.moveaxis(weight, axis, 0).reshape(weight.shape[axis], -1)).max(axis=1)
    return np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)


def _quantize_weight(weight: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    scales = weight_scales(weight, axis)
    shape = [1] * weight.ndim
    shape[axis] = -1
    q = np.clip(np.round(weight / scales.reshape(shape)), -127, 127).astype(np.int8)
    return q, scales


def _quantize_bias(bias: np.ndarray, input_scale: float, w_scales: np.ndarray) -> np.ndarray:
    bias_scale = np.float32(input_scale) * w_scales.astype(np.float64)
    info = np.iinfo(np.int32)
    return np.clip(np.round(bias / bias_scale), info.min, info.max).astype(np.int32)


def _padding(size: int, k: int, s: int, p: int, d: int) -> int | None:
    """TFLite padding (SAME or VALID) that reproduces PyTorch's symmetric padding ``p``, or None."""
    eff = d * (k - 1) + 1
    out = (size + 2 * p - eff) // s + 1
    if p == 0:
        return _VALID
    same_out = -(-size // s)
    total = max((same_out - 1) * s + eff - size, 0)
    return _SAME if same_out == out and total // 2 == p else None


# ---------------------------------------------------------------------------------------------
# graph being built


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: int
    scale: np.ndarray
    zero_point: np.ndarray
    qdim: int = 0
    data: bytes | None = None
    perm: np.ndarray | None = None  # flat NHWC order -> PyTorch NCHW flat index, for the next linear layer


@dataclass
class _Op:
    code: int
    inputs: list[int]
    outputs: list[int]
    options: tuple[int, Callable] | None = None  # (BuiltinOptions type, builder function)


@dataclass
class _Graph:
    tensors: list[_Tensor] = field(default_factory=list)
    ops: list[_Op] = field(default_factory=list)

    def add(self, t: _Tensor) -> int:
        self.tensors.append(t)
        return len(self.tensors) - 1

    def act(self, name: str, shape: tuple[int, ...], qp: tuple[float, int], perm: np.ndarray | None = None) -> int:
        return self.add(_Tensor(name, shape, _INT8, np.array([qp[0]], np.float32), np.array([qp[1]], np.int64), perm=perm))

    def const(self, name: str, arr: np.ndarray, scale: np.ndarray | None = None, qdim: int = 0) -> int:
        dtype = {np.dtype(np.int8): _INT8, np.dtype(np.int32): _INT32}[arr.dtype]
        scale = np.zeros(0, np.float32) if scale is None else scale.astype(np.float32)
        zp = np.zeros(len(scale), np.int64)
        return self.add(_Tensor(name, tuple(arr.shape), dtype, scale, zp, qdim, np.ascontiguousarray(arr).tobytes()))

    def qp(self, idx: int) -> tuple[float, int]:
        t = self.tensors[idx]
        return float(t.scale[0]), int(t.zero_point[0])


# ---------------------------------------------------------------------------------------------
# calibration: float ranges of every node's output


class _RangeRecorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.ranges: dict[str, tuple[float, float]] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            lo, hi = float(out.min()), float(out.max())
            old = self.ranges.get(n.name, (lo, hi))
            self.ranges[n.name] = (min(lo, old[0]), max(hi, old[1]))
            self.shapes[n.name] = tuple(out.shape[1:])
        return out


def _calibrate(gm: fx.GraphModule, images: torch.Tensor, batch: int = 64) -> _RangeRecorder:
    rec = _RangeRecorder(gm)
    with torch.no_grad():
        for i in range(0, len(images), batch):
            rec.run(images[i:i + batch])
    return rec


# ---------------------------------------------------------------------------------------------
# fx node classification


def _kind(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    """A short name for what ``node`` computes, or ``"unsupported"``."""
    if node.op == "call_module":
        m = modules[node.target]
        table = [(nn.Conv2d, "conv"), (nn.Linear, "linear"), (nn.ReLU, "relu"), (nn.ReLU6, "relu6"),
                 (nn.MaxPool2d, "maxpool"), (nn.AvgPool2d, "avgpool"), (nn.AdaptiveAvgPool2d, "adaptiveavg"),
                 (nn.Flatten, "flatten"), (nn.Dropout, "identity"), (nn.Identity, "identity"), (nn.Softmax, "softmax")]
        for cls, kind in table:
            if type(m) is cls:
                return kind
        return "unsupported"
    if node.op == "call_function":
        funcs = {F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.max_pool2d: "maxpool", torch.max_pool2d: "maxpool",
                 F.avg_pool2d: "avgpool", F.adaptive_avg_pool2d: "adaptiveavg", torch.flatten: "flatten",
                 operator.add: "add", torch.add: "add", operator.iadd: "add", F.dropout: "identity",
                 F.softmax: "softmax", torch.softmax: "softmax"}
        return funcs.get(node.target, "unsupported")
    if node.op == "call_method":
        methods = {"relu": "relu", "flatten": "flatten", "view": "flatten", "reshape": "flatten", "add": "add",
                   "softmax": "softmax", "contiguous": "identity"}
        return methods.get(node.target, "unsupported")
    return node.op


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"{type(modules[node.target]).__name__} at layer {node.target!r}"
    target = getattr(node.target, "__name__", str(node.target))
    return f"{target} at node {node.name!r}"


def _unsupported(node: fx.Node, modules: dict[str, nn.Module], why: str = "") -> ValueError:
    detail = f" ({why})" if why else ""
    return ValueError(f"cannot export {_describe(node, modules)} to int8 TFLite{detail}; supported: {SUPPORTED_OPS}")


def _arg(node: fx.Node, index: int, name: str, default):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


# ---------------------------------------------------------------------------------------------
# the converter


class _Converter:
    def __init__(self, gm: fx.GraphModule, rec: _RangeRecorder) -> None:
        self.gm, self.rec = gm, rec
        self.modules = dict(gm.named_modules())
        self.g = _Graph()
        self.tensor_of: dict[str, int] = {}
        self.done: set[str] = set()

    # activation helpers -------------------------------------------------------------------
    def _fused(self, node: fx.Node) -> tuple[str | None, fx.Node]:
        """The relu/relu6 to fuse after ``node`` (its only user) and the node whose output is the op's output."""
        users = list(node.users)
        if len(users) == 1 and _kind(users[0], self.modules) in ("relu", "relu6"):
            return _kind(users[0], self.modules), users[0]
        return None, node

    def _out(self, node: fx.Node, last: fx.Node) -> int:
        shape = self.rec.shapes[last.name]
        idx = self.g.act(last.name, (1, *_nhwc(shape)), activation_qparams(*self.rec.ranges[last.name]))
        self.tensor_of[node.name] = self.tensor_of[last.name] = idx
        self.done.add(last.name)
        return idx

    def _alias(self, node: fx.Node, src: fx.Node) -> None:
        self.tensor_of[node.name] = self.tensor_of[src.name]

    # ops ---------------------------------------------------------------------------------
    def conv(self, node: fx.Node) -> None:
        m: nn.Conv2d = self.modules[node.target]
        x = self.tensor_of[node.args[0].name]
        if m.padding_mode != "zeros" or m.padding == "same" and any(d * (k - 1) % 2 for k, d in zip(m.kernel_size, m.dilation)):
            raise _unsupported(node, self.modules, f"padding {m.padding!r} with mode {m.padding_mode!r}")
        if isinstance(m.padding, str):  # "valid", or "same" with an odd effective kernel: symmetric padding
            pads = (0, 0) if m.padding == "valid" else tuple(d * (k - 1) // 2 for k, d in zip(m.kernel_size, m.dilation))
        else:
            pads = _pair(m.padding)
        _, h, w, _ = self.g.tensors[x].shape
        depthwise = m.groups > 1 and m.groups == m.in_channels
        if m.groups > 1 and not depthwise:
            raise _unsupported(node, self.modules, f"grouped convolution with groups={m.groups}")
        hw = [_padding(size, k, s, p, d) for size, k, s, p, d in zip((h, w), m.kernel_size, m.stride, pads, m.dilation)]
        if hw[0] is not None and hw[0] == hw[1]:
            padding = hw[0]
        else:  # explicit PAD filled with the input's zero point, then VALID
            x, padding = self._pad(node, x, pads, None), _VALID
        act, last = self._fused(node)
        weight = m.weight.detach().double().numpy()
        if depthwise:  # PyTorch [C*m, 1, kh, kw] -> TFLite [1, kh, kw, C*m]
            weight, axis = weight.transpose(1, 2, 3, 0), 3
        else:  # [O, I, kh, kw] -> [O, kh, kw, I]
            weight, axis = weight.transpose(0, 2, 3, 1), 0
        qw, scales = _quantize_weight(weight, axis)
        bias = m.bias.detach().double().numpy() if m.bias is not None else np.zeros(m.out_channels)
        wi = self.g.const(f"{node.target}.weight", qw, scales, axis)
        bi = self.g.const(f"{node.target}.bias", _quantize_bias(bias, self.g.qp(x)[0], scales), np.float32(self.g.qp(x)[0]) * scales)
        out = self._out(node, last)
        common = {"padding": padding, "stride": m.stride, "dilation": m.dilation, "act": _ACT[act]}
        if depthwise:
            opts = (2, _options("DepthwiseConv2DOptions", depth_multiplier=m.out_channels // m.in_channels, **common))
            self.g.ops.append(_Op(_OP["DEPTHWISE_CONV_2D"], [x, wi, bi], [out], opts))
        else:
            self.g.ops.append(_Op(_OP["CONV_2D"], [x, wi, bi], [out], (1, _options("Conv2DOptions", **common))))

    def linear(self, node: fx.Node) -> None:
        m: nn.Linear = self.modules[node.target]
        x = self.tensor_of[node.args[0].name]
        if len(self.g.tensors[x].shape) != 2:
            raise _unsupported(node, self.modules, "linear layers must follow a flatten to 2-D")
        act, last = self._fused(node)
        weight = m.weight.detach().double().numpy()
        perm = self.g.tensors[x].perm
        if perm is not None:
            weight = weight[:, perm]
        qw, scales = _quantize_weight(weight, 0)
        bias = m.bias.detach().double().numpy() if m.bias is not None else np.zeros(m.out_features)
        wi = self.g.const(f"{node.target}.weight", qw, scales, 0)
        bi = self.g.const(f"{node.target}.bias", _quantize_bias(bias, self.g.qp(x)[0], scales), np.float32(self.g.qp(x)[0]) * scales)
        out = self._out(node, last)
        self.g.ops.append(_Op(_OP["FULLY_CONNECTED"], [x, wi, bi], [out], (8, _options("FullyConnectedOptions", act=_ACT[act]))))

    def _pad(self, node: fx.Node, x: int, pads: tuple[int, int], value: int | None) -> int:
        """Pad H and W symmetrically: PAD with the zero point (``value`` None), else PADV2 with the int8 ``value``."""
        _, h, w, c = self.g.tensors[x].shape
        padded = self.g.act(f"{node.name}_pad", (1, h + 2 * pads[0], w + 2 * pads[1], c), self.g.qp(x))
        amounts = self.g.const(f"{node.name}_paddings", np.array([[0, 0], [pads[0]] * 2, [pads[1]] * 2, [0, 0]], np.int32))
        if value is None:
            self.g.ops.append(_Op(_OP["PAD"], [x, amounts], [padded], (22, _options("PadOptions"))))
        else:
            scale, zp = self.g.qp(x)
            fill = self.g.const(f"{node.name}_fill", np.array([value], np.int8), np.array([scale], np.float32))
            self.g.tensors[fill].zero_point[:] = zp
            self.g.ops.append(_Op(_OP["PADV2"], [x, amounts, fill], [padded], (43, _options("PadV2Options"))))
        return padded

    def pool(self, node: fx.Node, kind: str) -> None:
        x = self.tensor_of[node.args[0].name]
        _, h, w, _ = self.g.tensors[x].shape
        if kind == "adaptiveavg":
            size = self.modules[node.target].output_size if node.op == "call_module" else _arg(node, 1, "output_size", None)
            if _pair(size) != (1, 1):
                raise _unsupported(node, self.modules, f"adaptive pooling to {size}; only 1x1")
            k, s, p, d, ceil, code = (h, w), (1, 1), (0, 0), (1, 1), False, _OP["AVERAGE_POOL_2D"]
        else:
            if node.op == "call_module":
                m = self.modules[node.target]
                k, s, p, ceil = m.kernel_size, m.stride, m.padding, m.ceil_mode
                d = getattr(m, "dilation", 1)
                include_pad, divisor = getattr(m, "count_include_pad", True), getattr(m, "divisor_override", None)
            else:
                k = _arg(node, 1, "kernel_size", None)
                s = _arg(node, 2, "stride", None)
                p = _arg(node, 3, "padding", 0)
                d = _arg(node, 4, "dilation", 1) if kind == "maxpool" else 1
                ceil = _arg(node, 5 if kind == "maxpool" else 4, "ceil_mode", False)
                include_pad = kind == "maxpool" or _arg(node, 5, "count_include_pad", True)
                divisor = None if kind == "maxpool" else _arg(node, 6, "divisor_override", None)
            k, s, p, d = _pair(k), _pair(s if s is not None else k), _pair(p), _pair(d)
            code = _OP["MAX_POOL_2D"] if kind == "maxpool" else _OP["AVERAGE_POOL_2D"]
            if ceil or d != (1, 1) or divisor is not None or (p != (0, 0) and not include_pad):
                raise _unsupported(node, self.modules, "ceil_mode, dilation, divisor_override or count_include_pad=False")
        hw = [_padding(size, kk, ss, pp, 1) for size, kk, ss, pp in zip((h, w), k, s, p)]
        padding = hw[0]
        if p != (0, 0) and (hw[0] is None or hw[0] != hw[1] or code == _OP["AVERAGE_POOL_2D"]):
            # explicit padding, then VALID: max pool pads with int8's minimum (PyTorch pads with -inf),
            # average pool with the zero point and counts it (count_include_pad, unlike TFLite's SAME)
            x, padding = self._pad(node, x, p, -128 if code == _OP["MAX_POOL_2D"] else None), _VALID
        shape = self.rec.shapes[node.name]
        out = self.g.act(node.name, (1, *_nhwc(shape)), self.g.qp(x))
        self.tensor_of[node.name] = out
        self.g.ops.append(_Op(code, [x], [out], (5, _options("Pool2DOptions", padding=padding, stride=s, filter=k))))

    def add(self, node: fx.Node) -> None:
        a, b = (node.args[0], node.args[1]) if len(node.args) > 1 else (node.args[0], node.kwargs.get("other"))
        if not all(isinstance(v, fx.Node) for v in (a, b)) or node.kwargs.get("alpha", 1) != 1:
            raise _unsupported(node, self.modules, "only the sum of two tensors")
        ia, ib = self.tensor_of[a.name], self.tensor_of[b.name]
        if self.g.tensors[ia].shape != self.g.tensors[ib].shape:
            raise _unsupported(node, self.modules, "operands of different shapes (no broadcasting)")
        act, last = self._fused(node)
        out = self._out(node, last)
        self.g.ops.append(_Op(_OP["ADD"], [ia, ib], [out], (11, _options("AddOptions", act=_ACT[act]))))

    def relu(self, node: fx.Node, kind: str) -> None:  # a relu that could not be fused
        x = self.tensor_of[node.args[0].name]
        out = self._out(node, node)
        self.g.ops.append(_Op(_OP["RELU" if kind == "relu" else "RELU6"], [x], [out]))

    def flatten(self, node: fx.Node) -> None:
        src = node.args[0]
        x = self.tensor_of[src.name]
        shape = self.rec.shapes[node.name]
        in_shape = self.rec.shapes[src.name]
        if len(shape) != 1:
            raise _unsupported(node, self.modules, f"reshape to {shape} per sample; only flatten to 2-D")
        if len(in_shape) == 1:
            self._alias(node, src)
            return
        c, h, w = in_shape
        perm = None
        if h * w > 1:
            users = list(node.users)
            if len(users) == 1 and _kind(users[0], self.modules) == "linear":
                perm = np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).ravel()
            else:  # NHWC -> NCHW before flattening, so the flat order is PyTorch's
                nchw = self.g.act(f"{node.name}_nchw", (1, c, h, w), self.g.qp(x))
                order = self.g.const(f"{node.name}_perm", np.array([0, 3, 1, 2], np.int32))
                self.g.ops.append(_Op(_OP["TRANSPOSE"], [x, order], [nchw], (26, _options("TransposeOptions"))))
                x = nchw
        out = self.g.act(node.name, (1, c * h * w), self.g.qp(x), perm)
        new_shape = self.g.const(f"{node.name}_shape", np.array([1, c * h * w], np.int32))
        self.g.ops.append(_Op(_OP["RESHAPE"], [x, new_shape], [out], (17, _options("ReshapeOptions", new_shape=[1, c * h * w]))))
        self.tensor_of[node.name] = out

    def softmax(self, node: fx.Node) -> None:
        dim = _arg(node, 1, "dim", None) if node.op != "call_module" else self.modules[node.target].dim
        x = self.tensor_of[node.args[0].name]
        if len(self.g.tensors[x].shape) != 2 or dim not in (1, -1):
            raise _unsupported(node, self.modules, "softmax over the class dimension of a 2-D tensor only")
        self.tensor_of[node.name] = self._softmax(x, node.name)

    def _softmax(self, x: int, name: str) -> int:
        out = self.g.act(name, self.g.tensors[x].shape, (1.0 / 256.0, -128))
        self.g.ops.append(_Op(_OP["SOFTMAX"], [x], [out], (9, _options("SoftmaxOptions", beta=1.0))))
        return out

    # driver ------------------------------------------------------------------------------
    def run(self, softmax: bool) -> tuple[int, int]:
        inp = out = None
        for node in self.gm.graph.nodes:
            if node.name in self.done:
                continue
            kind = _kind(node, self.modules)
            if node.op == "placeholder":
                if inp is not None:
                    raise ValueError(f"cannot export a model with several inputs ({node.name!r}); give it one image tensor")
                shape = self.rec.shapes[node.name]
                if len(shape) != 3:
                    raise ValueError(f"cannot export input of per-sample shape {shape}; give images C x H x W")
                inp = self.g.act(node.name, (1, *_nhwc(shape)), activation_qparams(*self.rec.ranges[node.name]))
                self.tensor_of[node.name] = inp
            elif node.op == "output":
                result = node.args[0]
                if not isinstance(result, fx.Node):
                    raise ValueError(f"cannot export a model returning {type(result).__name__}; return one logits tensor")
                out = self.tensor_of[result.name]
            elif node.name not in self.rec.shapes and node.op in ("call_method", "call_function", "get_attr"):
                continue  # not a float tensor: shape arithmetic such as x.size(0), read by a reshape
            elif kind == "conv":
                self.conv(node)
            elif kind == "linear":
                self.linear(node)
            elif kind in ("maxpool", "avgpool", "adaptiveavg"):
                self.pool(node, kind)
            elif kind == "add":
                self.add(node)
            elif kind in ("relu", "relu6"):
                self.relu(node, kind)
            elif kind == "flatten":
                self.flatten(node)
            elif kind == "identity":
                self._alias(node, node.args[0])
            elif kind == "softmax":
                self.softmax(node)
            else:
                raise _unsupported(node, self.modules)
        if softmax:
            if len(self.g.tensors[out].shape) != 2:
                raise ValueError(f"softmax=True needs 2-D logits, but the model returns shape {self.g.tensors[out].shape[1:]} per sample")
            out = self._softmax(out, "softmax")
        return inp, out


def _nhwc(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[1], shape[2], shape[0]) if len(shape) == 3 else tuple(shape)


# ---------------------------------------------------------------------------------------------
# flatbuffer writing with the schema's generated bindings (PyPI ``tflite``)


def _schema(name: str):
    """The generated module ``tflite.<name>`` (PyPI ``tflite``), whose functions build that table."""
    return importlib.import_module(f"tflite.{name}")


def _options(kind: str, **kw) -> Callable[[flatbuffers.Builder], int]:
    def build(b: flatbuffers.Builder) -> int:
        mod = _schema(kind)
        if kind == "ReshapeOptions":
            shape_vec = b.CreateNumpyVector(np.array(kw["new_shape"], np.int32))
        getattr(mod, f"{kind}Start")(b)
        if kind in ("Conv2DOptions", "DepthwiseConv2DOptions"):
            getattr(mod, f"{kind}AddPadding")(b, kw["padding"])
            getattr(mod, f"{kind}AddStrideH")(b, kw["stride"][0])
            getattr(mod, f"{kind}AddStrideW")(b, kw["stride"][1])
            getattr(mod, f"{kind}AddDilationHFactor")(b, kw["dilation"][0])
            getattr(mod, f"{kind}AddDilationWFactor")(b, kw["dilation"][1])
            getattr(mod, f"{kind}AddFusedActivationFunction")(b, kw["act"])
            if kind == "DepthwiseConv2DOptions":
                mod.DepthwiseConv2DOptionsAddDepthMultiplier(b, kw["depth_multiplier"])
        elif kind in ("FullyConnectedOptions", "AddOptions"):
            getattr(mod, f"{kind}AddFusedActivationFunction")(b, kw["act"])
        elif kind == "Pool2DOptions":
            mod.Pool2DOptionsAddPadding(b, kw["padding"])
            mod.Pool2DOptionsAddStrideH(b, kw["stride"][0])
            mod.Pool2DOptionsAddStrideW(b, kw["stride"][1])
            mod.Pool2DOptionsAddFilterHeight(b, kw["filter"][0])
            mod.Pool2DOptionsAddFilterWidth(b, kw["filter"][1])
        elif kind == "SoftmaxOptions":
            mod.SoftmaxOptionsAddBeta(b, kw["beta"])
        elif kind == "ReshapeOptions":
            mod.ReshapeOptionsAddNewShape(b, shape_vec)
        return getattr(mod, f"{kind}End")(b)

    return build


def _aligned_bytes(b: flatbuffers.Builder, data: bytes, alignment: int = 16) -> int:
    b.StartVector(1, len(data), alignment)
    b.head -= len(data)
    b.Bytes[b.head:b.head + len(data)] = data
    return b.EndVector()


def _serialize(g: _Graph, inputs: list[int], outputs: list[int], description: str) -> bytes:
    buffer_fb, tensor_fb, quant_fb, op_fb, subgraph_fb, code_fb, model_fb = (
        _schema(n) for n in ("Buffer", "Tensor", "QuantizationParameters", "Operator", "SubGraph", "OperatorCode", "Model"))
    b = flatbuffers.Builder(1024)
    codes = sorted({op.code for op in g.ops})
    code_index = {c: i for i, c in enumerate(codes)}

    buffers = [(None, 0)]  # buffer 0 is the empty sentinel every activation points to
    tensor_buffer = []
    for t in g.tensors:
        if t.data is None:
            tensor_buffer.append(0)
        else:
            buffers.append((t.data, len(buffers)))
            tensor_buffer.append(len(buffers) - 1)

    buffer_offsets = []
    for data, _ in buffers:
        vec = _aligned_bytes(b, data) if data else None
        buffer_fb.BufferStart(b)
        if vec is not None:
            buffer_fb.BufferAddData(b, vec)
        buffer_offsets.append(buffer_fb.BufferEnd(b))

    tensor_offsets = []
    for t, buf in zip(g.tensors, tensor_buffer):
        name = b.CreateString(t.name)
        shape = b.CreateNumpyVector(np.array(t.shape, np.int32))
        quant = None
        if len(t.scale):
            scale = b.CreateNumpyVector(t.scale.astype(np.float32))
            zp = b.CreateNumpyVector(t.zero_point.astype(np.int64))
            quant_fb.QuantizationParametersStart(b)
            quant_fb.QuantizationParametersAddScale(b, scale)
            quant_fb.QuantizationParametersAddZeroPoint(b, zp)
            quant_fb.QuantizationParametersAddQuantizedDimension(b, t.qdim)
            quant = quant_fb.QuantizationParametersEnd(b)
        tensor_fb.TensorStart(b)
        tensor_fb.TensorAddShape(b, shape)
        tensor_fb.TensorAddType(b, t.dtype)
        tensor_fb.TensorAddBuffer(b, buf)
        tensor_fb.TensorAddName(b, name)
        if quant is not None:
            tensor_fb.TensorAddQuantization(b, quant)
        tensor_offsets.append(tensor_fb.TensorEnd(b))

    op_offsets = []
    for op in g.ops:
        ins = b.CreateNumpyVector(np.array(op.inputs, np.int32))
        outs = b.CreateNumpyVector(np.array(op.outputs, np.int32))
        opts = op.options[1](b) if op.options else None
        op_fb.OperatorStart(b)
        op_fb.OperatorAddOpcodeIndex(b, code_index[op.code])
        op_fb.OperatorAddInputs(b, ins)
        op_fb.OperatorAddOutputs(b, outs)
        if opts is not None:
            op_fb.OperatorAddBuiltinOptionsType(b, op.options[0])
            op_fb.OperatorAddBuiltinOptions(b, opts)
        op_offsets.append(op_fb.OperatorEnd(b))

    def vector(offsets: list[int]) -> int:
        b.StartVector(4, len(offsets), 4)
        for off in reversed(offsets):
            b.PrependUOffsetTRelative(off)
        return b.EndVector()

    tensors_vec, ops_vec = vector(tensor_offsets), vector(op_offsets)
    in_vec = b.CreateNumpyVector(np.array(inputs, np.int32))
    out_vec = b.CreateNumpyVector(np.array(outputs, np.int32))
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
        code_fb.OperatorCodeAddDeprecatedBuiltinCode(b, min(c, 127))
        code_fb.OperatorCodeAddBuiltinCode(b, c)
        code_fb.OperatorCodeAddVersion(b, 1)
        code_offsets.append(code_fb.OperatorCodeEnd(b))

    codes_vec, subgraphs_vec, buffers_vec = vector(code_offsets), vector([subgraph]), vector(buffer_offsets)
    desc = b.CreateString(description)
    model_fb.ModelStart(b)
    model_fb.ModelAddVersion(b, 3)
    model_fb.ModelAddOperatorCodes(b, codes_vec)
    model_fb.ModelAddSubgraphs(b, subgraphs_vec)
    model_fb.ModelAddDescription(b, desc)
    model_fb.ModelAddBuffers(b, buffers_vec)
    b.Finish(model_fb.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


# ---------------------------------------------------------------------------------------------
# public API


def _lut_compress(data: bytes, g: _Graph, bits: int) -> bytes:
    """Store every int8 weight tensor with at most 2**bits values per channel as TFLM look-up-table tensors."""
    from tflite_micro.tensorflow.lite.micro.compression import spec, spec_builder
    from tflite_micro.tensorflow.lite.micro.compression.compress import compress

    builder, chosen = spec_builder.SpecBuilder(), 0
    for index, t in enumerate(g.tensors):  # the flatbuffer's tensors are g.tensors, in order
        if t.data is None or t.dtype != _INT8 or not t.name.endswith(".weight"):
            continue
        values = np.moveaxis(np.frombuffer(t.data, np.int8).reshape(t.shape), t.qdim, 0).reshape(t.shape[t.qdim], -1)
        if max(len(np.unique(row)) for row in values) <= 2**bits:
            builder.add_tensor(0, index).with_lut(index_bitwidth=bits, mode=spec.PerChannel(axis=t.qdim))
            chosen += 1
    if not chosen:
        raise ValueError(f"lut_bits={bits}: no weight tensor has at most {2**bits} distinct values per channel; "
                         f"share the weights first (k-means with {bits} bits) or leave lut_bits out")
    with warnings.catch_warnings():  # a tiny tensor can grow by its table; the file still shrinks overall
        warnings.simplefilter("ignore")
        return bytes(compress(data, builder.build()))


def export_tflite(
    model: nn.Module, path: str | os.PathLike, calibration_images: torch.Tensor, softmax: bool = False,
    lut_bits: int | None = None,
) -> Path:
    """Write ``model`` as a fully int8 .tflite file (input NHWC int8, output int8 logits or softmax); return the path.

    ``calibration_images`` is a float N x C x H x W tensor of real training images (a few hundred),
    preprocessed exactly as the model sees them; activation ranges are their [min, max].
    With ``lut_bits``, weight tensors whose channels hold at most ``2**lut_bits`` distinct int8 values
    (after k-means weight sharing) are stored as TFLM look-up tables (``lut_bits``-bit indices, DECODE ops),
    which TFLM expands at run time.
    """
    if not isinstance(calibration_images, torch.Tensor) or calibration_images.dim() != 4 or len(calibration_images) == 0:
        raise ValueError("calibration_images must be a non-empty float tensor N x C x H x W of training images")
    if lut_bits is not None and not 1 <= lut_bits <= 7:
        raise ValueError(f"lut_bits must be from 1 to 7 (TFLM's look-up-table index widths), got {lut_bits}")
    model = model.eval().cpu()
    if not list(model.children()):  # a bare layer: trace it as a one-layer container, so it stays one module
        model = nn.Sequential(model)
    try:
        gm = fuse_conv_bn(fx.symbolic_trace(model))
    except Exception as exc:  # fx raises many types on data-dependent control flow
        raise ValueError(f"cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc}); "
                         "export a model without data-dependent control flow") from exc
    rec = _calibrate(gm, calibration_images.float().cpu())
    conv = _Converter(gm, rec)
    inp, out = conv.run(softmax)
    data = _serialize(conv.g, [inp], [out], f"edgeprune int8 {type(model).__name__}")
    if lut_bits is not None:
        data = _lut_compress(data, conv.g, lut_bits)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def calibration_images(dataset, count: int = 500) -> torch.Tensor:
    """The first ``count`` images of a dataset of (image, label) pairs, stacked: a calibration set for :func:`export_tflite`."""
    count = min(count, len(dataset))
    if count < 1:
        raise ValueError("no calibration images: give a training split with at least one image")
    return torch.stack([dataset[i][0] for i in range(count)])


def _interpreter(model_bytes: bytes, arena_size: int):
    from tflite_micro.python.tflite_micro import runtime

    return runtime.Interpreter.from_bytes(model_bytes, arena_size=arena_size)


def tflite_arena_bytes(interpreter) -> int:
    """Total tensor-arena bytes that TFLM's recording allocator reports for ``interpreter`` (after one invoke)."""
    libc = ctypes.CDLL(None)
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2), os.dup(1)
        libc.fflush(None)
        os.dup2(tmp.fileno(), 2)
        os.dup2(tmp.fileno(), 1)
        try:
            interpreter.print_allocations()
            libc.fflush(None)
        finally:
            os.dup2(saved[0], 2)
            os.dup2(saved[1], 1)
            os.close(saved[0])
            os.close(saved[1])
        tmp.seek(0)
        text = tmp.read().decode(errors="replace")
    found = re.search(r"Arena allocation total (\d+) bytes", text)
    if found is None:
        raise RuntimeError(f"TFLM did not report its arena allocation: {text[:200]!r}")
    return int(found.group(1))


def evaluate_tflite(path: str | os.PathLike, loader: Iterable, arena_size: int = 8 << 20) -> dict:
    """Run a .tflite file from :func:`export_tflite` in TFLM, one image at a time, over ``loader`` (images, labels).

    Images are quantized with the input tensor's own scale and zero point and laid out NHWC.
    Returns ``{"accuracy": percent, "arena_bytes": TFLM arena total, "model_bytes": file size, "count": images}``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; write it first with export_tflite")
    if arena_size < 4096:  # TFLM's own bookkeeping needs a few KB; smaller arenas can crash it instead of failing
        raise ValueError(f"arena_size {arena_size} is too small; give at least 4096 bytes")
    data = path.read_bytes()
    try:
        interp = _interpreter(data, arena_size)
    except RuntimeError as exc:
        raise ValueError(f"{path}: TFLM could not allocate the model in a {arena_size:,}-byte arena ({exc}); "
                         "give a larger arena_size, or check the file was written by export_tflite") from exc
    qp = interp.get_input_details(0)["quantization_parameters"]
    scale, zp = float(qp["scales"][0]), int(qp["zero_points"][0])
    correct = total = 0
    for images, labels in loader:
        q = np.clip(np.round(images.numpy().transpose(0, 2, 3, 1) / scale) + zp, _QMIN, _QMAX).astype(np.int8)
        for img, label in zip(q, labels.numpy()):
            interp.set_input(img[None], 0)
            interp.invoke()
            correct += int(np.argmax(interp.get_output(0)[0]) == label)
            total += 1
    if total == 0:
        raise ValueError("the loader gave no images; give a loader of (images, labels) batches")
    return {"accuracy": 100.0 * correct / total, "arena_bytes": tflite_arena_bytes(interp), "model_bytes": len(data), "count": total}
