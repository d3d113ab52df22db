"""torch.fx -> :class:`~edgeprune.export.int8_graph.Int8Graph`: trace, fold batch norm, calibrate, convert op by op.

The model is traced with ``torch.fx`` (batch norm folded into the convolution or linear layer before it), each
activation's float range is calibrated on real samples, and the graph is built NHWC following the
TFLite quantization specification (see :mod:`~edgeprune.export.int8_graph` for the parameters).
Samples are images C x H x W (TFLite input 1 x H x W x C), sequences C x T for Conv1d models (1 x 1 x T x C:
a Conv1d is a CONV_2D of height 1) or feature vectors F (1 x F, for MLPs):

* max/avg pool, reshape, transpose and pad outputs share their input's scale and zero point;
  softmax outputs have scale 1/256 and zero point -128.

Ops: conv2d and conv1d (groups 1 or depthwise), linear, max/avg pool (and adaptive average pool to 1x1), add, relu
and relu6 (fused into the op before them when it is their only user), flatten/reshape to 2-D, softmax,
constant padding (``ZeroPad2d``, ``ConstantPad1d/2d``, ``F.pad``: PAD filled with the zero point for 0, PADV2
with the quantized value otherwise), dropout/identity (dropped). Padding that TFLite's SAME does not reproduce
becomes an explicit PAD (the zero point: convolutions, average pooling) or PADV2 (-128: max pooling, as
PyTorch's -inf).
A PyTorch flatten of an NCHW tensor is matched by permuting the next linear layer's weight columns
(or by an explicit TRANSPOSE when no linear layer follows).
"""

from __future__ import annotations

import operator

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.experimental.optimization import fuse as fuse_conv_bn

from .int8_graph import (
    INT8_MIN, Int8Graph, OpOptions, QOp, activation_qparams, bias_scales, quantize_activation, quantize_bias, quantize_weight,
    same_padding, window_output_size,
)

__all__ = ["SUPPORTED_OPS", "convert_model"]

SUPPORTED_OPS = (
    "Conv2d and Conv1d (groups 1 or depthwise), Linear, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d(1), add, ReLU, ReLU6, "
    "flatten/reshape to 2-D, softmax, constant padding (ZeroPad2d, ConstantPad1d/2d, F.pad), Dropout, Identity, "
    "BatchNorm2d after a Conv2d, BatchNorm1d after a Conv1d or Linear"
)
_PAD_MODULES = (nn.ZeroPad2d, nn.ConstantPad2d, nn.ZeroPad1d, nn.ConstantPad1d)


def _paddings(size: int, k: int, s: int, p: int, d: int) -> set[str]:
    """The TFLite paddings (SAME, VALID) that reproduce PyTorch's symmetric padding ``p`` along one axis: none, one or both
    (a 1-wide window at stride 1 pads nothing either way)."""
    out = window_output_size(size + 2 * p, k, s, d, "VALID")
    found = {"VALID"} if p == 0 else set()
    if window_output_size(size, k, s, d, "SAME") == out and same_padding(size, k, s, d)[0] == p:
        found.add("SAME")
    return found


def _padding(shape: tuple[int, int], kernel, stride, pads, dilation) -> str | None:
    """The one TFLite padding that reproduces PyTorch's along both H and W (VALID when both do), or None."""
    both = set.intersection(*(_paddings(*axis) for axis in zip(shape, kernel, stride, pads, dilation)))
    return "VALID" if "VALID" in both else next(iter(both), None)


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
        if isinstance(m, _PAD_MODULES):
            return "pad"
        table = [(nn.Conv2d, "conv"), (nn.Conv1d, "conv"), (nn.Linear, "linear"), (nn.ReLU, "relu"), (nn.ReLU6, "relu6"),
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
                 F.softmax: "softmax", torch.softmax: "softmax", F.pad: "pad"}
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
        self.g = Int8Graph()
        self.tensor_of: dict[str, int] = {}
        self.perm: dict[int, np.ndarray] = {}  # flattened tensor -> PyTorch NCHW flat index of each NHWC position
        self.done: set[str] = set()

    # activation helpers -------------------------------------------------------------------
    def _fused(self, node: fx.Node) -> tuple[str, fx.Node]:
        """The fused activation after ``node`` (RELU/RELU6 when its only user, else NONE) and the node whose output is the op's."""
        users = list(node.users)
        if len(users) == 1 and _kind(users[0], self.modules) in ("relu", "relu6"):
            return _kind(users[0], self.modules).upper(), users[0]
        return "NONE", node

    def _out(self, node: fx.Node, last: fx.Node) -> int:
        shape = self.rec.shapes[last.name]
        idx = self.g.activation(last.name, (1, *_nhwc(shape)), activation_qparams(*self.rec.ranges[last.name]))
        self.tensor_of[node.name] = self.tensor_of[last.name] = idx
        self.done.add(last.name)
        return idx

    def _alias(self, node: fx.Node, src: fx.Node) -> None:
        self.tensor_of[node.name] = self.tensor_of[src.name]

    # ops ---------------------------------------------------------------------------------
    def conv(self, node: fx.Node) -> None:
        m: nn.Conv2d | nn.Conv1d = self.modules[node.target]
        x = self.tensor_of[node.args[0].name]
        if m.padding_mode != "zeros" or m.padding == "same" and any(d * (k - 1) % 2 for k, d in zip(m.kernel_size, m.dilation)):
            raise _unsupported(node, self.modules, f"padding {m.padding!r} with mode {m.padding_mode!r}")
        if isinstance(m.padding, str):  # "valid", or "same" with an odd effective kernel: symmetric padding
            pads = tuple(0 if m.padding == "valid" else d * (k - 1) // 2 for k, d in zip(m.kernel_size, m.dilation))
        else:
            pads = tuple(m.padding)
        kernel, stride, dilation = m.kernel_size, m.stride, m.dilation
        weight = m.weight.detach().double().numpy()
        if isinstance(m, nn.Conv1d):  # a CONV_2D of height 1 on the 1 x 1 x T x C tensor
            kernel, stride, pads, dilation, weight = (1, *kernel), (1, *stride), (0, *pads), (1, *dilation), weight[:, :, None]
        _, h, w, _ = self.g.tensors[x].shape
        depthwise = m.groups > 1 and m.groups == m.in_channels
        if m.groups > 1 and not depthwise:
            raise _unsupported(node, self.modules, f"grouped convolution with groups={m.groups}")
        padding = _padding((h, w), kernel, stride, pads, dilation)
        if padding is None:  # explicit PAD filled with the input's zero point, then VALID
            x, padding = self._pad(node, x, ((0, 0), (pads[0], pads[0]), (pads[1], pads[1]), (0, 0)), None), "VALID"
        act, last = self._fused(node)
        if depthwise:  # PyTorch [C*m, 1, kh, kw] -> TFLite [1, kh, kw, C*m]
            weight, axis = weight.transpose(1, 2, 3, 0), 3
        else:  # [O, I, kh, kw] -> [O, kh, kw, I]
            weight, axis = weight.transpose(0, 2, 3, 1), 0
        bias = m.bias.detach().double().numpy() if m.bias is not None else np.zeros(m.out_channels)
        wi, bi = self._weights(node, x, weight, axis, bias)
        out = self._out(node, last)
        opts = OpOptions(padding=padding, stride=tuple(stride), dilation=tuple(dilation), activation=act,
                         depth_multiplier=m.out_channels // m.in_channels if depthwise else 1)
        self.g.ops.append(QOp("DEPTHWISE_CONV_2D" if depthwise else "CONV_2D", (x, wi, bi), (out,), opts))

    def linear(self, node: fx.Node) -> None:
        m: nn.Linear = self.modules[node.target]
        x = self.tensor_of[node.args[0].name]
        if len(self.g.tensors[x].shape) != 2:
            raise _unsupported(node, self.modules, "linear layers must follow a flatten to 2-D")
        act, last = self._fused(node)
        weight = m.weight.detach().double().numpy()
        if x in self.perm:
            weight = weight[:, self.perm[x]]
        bias = m.bias.detach().double().numpy() if m.bias is not None else np.zeros(m.out_features)
        wi, bi = self._weights(node, x, weight, 0, bias)
        out = self._out(node, last)
        self.g.ops.append(QOp("FULLY_CONNECTED", (x, wi, bi), (out,), OpOptions(activation=act)))

    def _weights(self, node: fx.Node, x: int, weight: np.ndarray, axis: int, bias: np.ndarray) -> tuple[int, int]:
        """Add the int8 per-channel weight (channels along ``axis``) and int32 bias constants of a layer reading ``x``."""
        qw, scales = quantize_weight(weight, axis)
        input_scale = self.g.tensors[x].qparams[0]
        wi = self.g.constant(f"{node.target}.weight", qw, scales, axis)
        bi = self.g.constant(f"{node.target}.bias", quantize_bias(bias, input_scale, scales), bias_scales(input_scale, scales))
        return wi, bi

    def _pad(self, node: fx.Node, x: int, pads: tuple[tuple[int, int], ...], value: int | None, name: str = "") -> int:
        """Pad ``x`` by (before, after) per dimension: PAD with the zero point (``value`` None), else PADV2 with the int8
        ``value``; the result is named ``name`` (default: ``node``'s pad)."""
        shape = self.g.tensors[x].shape
        qparams = self.g.tensors[x].qparams
        padded = self.g.activation(name or f"{node.name}_pad", tuple(d + a + b for d, (a, b) in zip(shape, pads)), qparams)
        amounts = self.g.constant(f"{node.name}_paddings", np.array(pads, np.int32))
        if value is None:
            self.g.ops.append(QOp("PAD", (x, amounts), (padded,)))
        else:
            fill = self.g.constant(f"{node.name}_fill", np.array([value], np.int8), np.array([qparams[0]]), zero_point=qparams[1])
            self.g.ops.append(QOp("PADV2", (x, amounts, fill), (padded,)))
        return padded

    def pad(self, node: fx.Node) -> None:
        """A constant-mode pad (``ZeroPad2d``, ``ConstantPad1d/2d``, ``F.pad``) as PAD, or PADV2 for a non-zero value."""
        if node.op == "call_module":
            m = self.modules[node.target]
            amounts, mode, value = m.padding, "constant", m.value
        else:
            amounts, mode, value = _arg(node, 1, "pad", None), _arg(node, 2, "mode", "constant"), _arg(node, 3, "value", None)
        sample = self.rec.shapes[node.args[0].name]
        if mode != "constant" or not isinstance(amounts, (tuple, list)) or len(amounts) % 2 or len(amounts) > 2 * len(sample):
            raise _unsupported(node, self.modules, f"padding {amounts!r} in mode {mode!r}; only constant padding of sample dimensions")
        if any(not isinstance(a, int) or a < 0 for a in amounts):
            raise _unsupported(node, self.modules, f"padding {amounts!r}: cropping (negative padding) is not supported")
        # PyTorch's pairs start at the last dimension; the sample's dims sit in TFLite's tensor at _nhwc's places
        x = self.tensor_of[node.args[0].name]
        place = {3: (3, 1, 2), 2: (3, 2), 1: (1,)}[len(sample)]
        pads = [[0, 0] for _ in self.g.tensors[x].shape]
        for i in range(len(amounts) // 2):
            pads[place[len(sample) - 1 - i]] = [amounts[2 * i], amounts[2 * i + 1]]
        scale, zero_point = self.g.tensors[x].qparams
        fill = None if not value else int(quantize_activation(np.array(value), scale, zero_point))
        self.tensor_of[node.name] = self._pad(node, x, tuple(map(tuple, pads)), fill, node.name)

    def pool(self, node: fx.Node, kind: str) -> None:
        x = self.tensor_of[node.args[0].name]
        _, h, w, _ = self.g.tensors[x].shape
        if kind == "adaptiveavg":
            size = self.modules[node.target].output_size if node.op == "call_module" else _arg(node, 1, "output_size", None)
            if _pair(size) != (1, 1):
                raise _unsupported(node, self.modules, f"adaptive pooling to {size}; only 1x1")
            k, s, p, d, ceil, code = (h, w), (1, 1), (0, 0), (1, 1), False, "AVERAGE_POOL_2D"
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
            code = "MAX_POOL_2D" if kind == "maxpool" else "AVERAGE_POOL_2D"
            if ceil or d != (1, 1) or divisor is not None or (p != (0, 0) and not include_pad):
                raise _unsupported(node, self.modules, "ceil_mode, dilation, divisor_override or count_include_pad=False")
        padding = _padding((h, w), k, s, p, (1, 1))
        if p != (0, 0) and (padding is None or code == "AVERAGE_POOL_2D"):
            # explicit padding, then VALID: max pool pads with int8's minimum (PyTorch pads with -inf),
            # average pool with the zero point and counts it (count_include_pad, unlike TFLite's SAME)
            pads = ((0, 0), (p[0], p[0]), (p[1], p[1]), (0, 0))
            x, padding = self._pad(node, x, pads, INT8_MIN if code == "MAX_POOL_2D" else None), "VALID"
        shape = self.rec.shapes[node.name]
        out = self.g.activation(node.name, (1, *_nhwc(shape)), self.g.tensors[x].qparams)
        self.tensor_of[node.name] = out
        self.g.ops.append(QOp(code, (x,), (out,), OpOptions(padding=padding, stride=s, filter=k)))

    def add(self, node: fx.Node) -> None:
        a, b = (node.args[0], node.args[1]) if len(node.args) > 1 else (node.args[0], node.kwargs.get("other"))
        if not all(isinstance(v, fx.Node) for v in (a, b)) or node.kwargs.get("alpha", 1) != 1:
            raise _unsupported(node, self.modules, "only the sum of two tensors")
        ia, ib = self.tensor_of[a.name], self.tensor_of[b.name]
        if self.g.tensors[ia].shape != self.g.tensors[ib].shape:
            raise _unsupported(node, self.modules, "operands of different shapes (no broadcasting)")
        act, last = self._fused(node)
        out = self._out(node, last)
        self.g.ops.append(QOp("ADD", (ia, ib), (out,), OpOptions(activation=act)))

    def relu(self, node: fx.Node, kind: str) -> None:  # a relu that could not be fused
        x = self.tensor_of[node.args[0].name]
        out = self._out(node, node)
        self.g.ops.append(QOp(kind.upper(), (x,), (out,)))

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
        c, *spatial = in_shape
        h, w = spatial if len(spatial) == 2 else (1, spatial[0])  # a C x T sequence is 1 x T x C in TFLite
        perm = None
        if h * w > 1:
            users = list(node.users)
            if len(users) == 1 and _kind(users[0], self.modules) == "linear":
                perm = np.arange(c * h * w).reshape(c, h, w).transpose(1, 2, 0).ravel()
            else:  # NHWC -> NCHW before flattening, so the flat order is PyTorch's
                nchw = self.g.activation(f"{node.name}_nchw", (1, c, h, w), self.g.tensors[x].qparams)
                order = self.g.constant(f"{node.name}_perm", np.array([0, 3, 1, 2], np.int32))
                self.g.ops.append(QOp("TRANSPOSE", (x, order), (nchw,)))
                x = nchw
        out = self.g.activation(node.name, (1, c * h * w), self.g.tensors[x].qparams)
        if perm is not None:
            self.perm[out] = perm
        new_shape = self.g.constant(f"{node.name}_shape", np.array([1, c * h * w], np.int32))
        self.g.ops.append(QOp("RESHAPE", (x, new_shape), (out,), OpOptions(new_shape=(1, c * h * w))))
        self.tensor_of[node.name] = out

    def softmax(self, node: fx.Node) -> None:
        dim = _arg(node, 1, "dim", None) if node.op != "call_module" else self.modules[node.target].dim
        x = self.tensor_of[node.args[0].name]
        if len(self.g.tensors[x].shape) != 2 or dim not in (1, -1):
            raise _unsupported(node, self.modules, "softmax over the class dimension of a 2-D tensor only")
        self.tensor_of[node.name] = self._softmax(x, node.name)

    def _softmax(self, x: int, name: str) -> int:
        out = self.g.activation(name, self.g.tensors[x].shape, (1.0 / 256.0, INT8_MIN))
        self.g.ops.append(QOp("SOFTMAX", (x,), (out,), OpOptions(beta=1.0)))
        return out

    # driver ------------------------------------------------------------------------------
    def run(self, softmax: bool) -> Int8Graph:
        inp = out = None
        for node in self.gm.graph.nodes:
            if node.name in self.done:
                continue
            kind = _kind(node, self.modules)
            if node.op == "placeholder":
                if inp is not None:
                    raise ValueError(f"cannot export a model with several inputs ({node.name!r}); give it one image tensor")
                shape = self.rec.shapes[node.name]
                if not 1 <= len(shape) <= 3:
                    raise ValueError(f"cannot export input of per-sample shape {shape}; give images C x H x W, "
                                     "sequences C x T or feature vectors F")
                inp = self.g.activation(node.name, (1, *_nhwc(shape)), activation_qparams(*self.rec.ranges[node.name]))
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
            elif kind == "pad":
                self.pad(node)
            else:
                raise _unsupported(node, self.modules)
        if softmax:
            if len(self.g.tensors[out].shape) != 2:
                raise ValueError(f"softmax=True needs 2-D logits, but the model returns shape {self.g.tensors[out].shape[1:]} per sample")
            out = self._softmax(out, "softmax")
        self.g.inputs, self.g.outputs = (inp,), (out,)
        return self.g


def _nhwc(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A PyTorch per-sample shape in TFLite's layout without the batch: C x H x W -> H x W x C, C x T -> 1 x T x C."""
    if len(shape) == 3:
        return shape[1], shape[2], shape[0]
    return (1, shape[1], shape[0]) if len(shape) == 2 else tuple(shape)


def convert_model(model: nn.Module, calibration_images: torch.Tensor, softmax: bool = False) -> Int8Graph:
    """The fully int8 graph of ``model`` (input NHWC int8, output int8 logits, or softmax with ``softmax``).

    ``calibration_images`` is a float tensor of real training samples (a few hundred), N x C x H x W images,
    N x C x T sequences or N x F feature vectors, preprocessed exactly as the model sees them; activation ranges
    are their [min, max].
    """
    if not isinstance(calibration_images, torch.Tensor) or not 2 <= calibration_images.dim() <= 4 or len(calibration_images) == 0:
        raise ValueError("calibration_images must be a non-empty float tensor of training samples: N x C x H x W images, "
                         "N x C x T sequences or N x F features")
    model = model.eval().cpu()
    if not list(model.children()):  # a bare layer: trace it as a one-layer container, so it stays one module
        model = nn.Sequential(model)
    try:
        gm = fuse_conv_bn(fx.symbolic_trace(model))
    except Exception as exc:  # fx raises many types on data-dependent control flow
        raise ValueError(f"cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc}); "
                         "export a model without data-dependent control flow") from exc
    return _Converter(gm, _calibrate(gm, calibration_images.float().cpu())).run(softmax)
