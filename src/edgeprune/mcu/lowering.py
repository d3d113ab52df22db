"""Lower an int8 graph to the C engine's steps (pure): one kernel call per step, its constants computed here.

Everything TFLite Micro computes when it prepares a model is computed here once, with the same
arithmetic, so the C code only runs kernels:

* per-channel multipliers and shifts (``QuantizeMultiplier`` of ``input_scale * weight_scale / output_scale``
  in double precision from the file's float32 scales), activation clamps from the fused activation;
* convolutions with padding get an explicit pad step first (filled with the input's zero point),
  so every convolution kernel runs VALID; their biases absorb ``-input_zero_point * sum(weights)``
  (the same for fully connected layers), so the kernels sum ``input * weight`` only;
* RESHAPE moves no bytes: its output is its input;
* a float32 input or output (TensorFlow's converter with float ends: a first QUANTIZE, a last DEQUANTIZE) is
  quantized or dequantized by the engine itself, so ``edgeprune_invoke`` takes and returns ``float``;
* a 2x2 stride-2 max pool that alone reads a convolution's output is fused into it: the convolution
  keeps the largest accumulator of each window and requantizes it once (requantization never
  decreases, so this equals pooling the requantized outputs), and the full-size output never exists;
* each convolution, depthwise convolution and fully connected layer runs dense or sparse
  (see :mod:`edgeprune.mcu.sparse`), whichever :mod:`edgeprune.mcu.cost` predicts is cheaper
  (:mod:`edgeprune.mcu.choice` chooses, and solves a weight budget),
  unless ``sparse`` is ``"always"`` or ``"never"``; a layer whose weights the .tflite stores as TFLM
  look-up tables (``export_tflite(..., lut_bits=N)``) keeps them as 4-bit codes into per-channel
  tables when it runs sparse and each channel has at most 16 distinct non-zeros;
* every int32 value the kernels form is proved in range here, from the layer's constants and shapes
  (:mod:`edgeprune.mcu.bounds`), or the layer is refused with one line naming it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..export.int8_graph import (
    INT8_MAX, INT8_MIN, ITEMSIZE, Int8Graph, QOp, output_shape, quantize_multiplier, same_padding,
)
from .bounds import (
    check_accumulators, check_int32, check_requantization, check_shifts, requantized_bound, worst_accumulators,
)
from .cost import FLASH_WEIGHT, conv_cost, depthwise_cost, fc_cost
from .kernel_sizes import kernel_size
from . import choice
from .choice import SPARSE_MODES, chosen_bytes, weight_for_budget
from .sparse import SparseWeights, encode_conv, encode_depthwise, encode_fc

__all__ = ["SPARSE_MODES", "Arg", "Plan", "Step", "check_sparse_mode", "lower", "weight_for_budget"]

SOFTMAX_DEPTH_LIMIT = 4096  # int8 softmax's sum of exponentials, up to 2**19 each in Q12.19, stays below 2**31


@dataclass(frozen=True)
class Arg:
    """One argument of a kernel call: ``kind`` is ``"int"`` (``value`` an int), ``"float"`` (``value`` a float32
    number), ``"tensor"`` (``value`` a tensor id),
    ``"array"`` (``value`` a 1-D numpy array, passed as a pointer to a const array), ``"words"`` (``value`` a
    tensor id, its bytes passed as ``uint32_t *``: a kernel's scratch) or ``"struct"``
    (``value`` (C type, {field: int or numpy array}), passed as a pointer to a const struct)."""

    kind: str
    value: object


@dataclass
class Step:
    """One kernel call. ``op`` is the TFLite op it runs (``source`` its index in the graph, -1 for a pad the
    engine inserts); ``engine`` is ``"dense"`` or ``"sparse"`` for weighted layers, ``"-"`` otherwise."""

    op: str
    source: int
    kernel: str
    args: list[Arg]
    inputs: tuple[int, ...]
    output: int
    engine: str = "-"
    format: str = "-"  # the weights' format: "int8" dense, "4-bit" or "8-bit" gap runs (+ " + lut"), "taps" (depthwise)
    why: str = ""
    macs: int = 0
    nonzero_macs: int = 0
    weight_bytes: int = 0
    index_bytes: int = 0
    predicted_instructions: float = 0.0


@dataclass
class Plan:
    """The engine's steps, the byte size of every activation tensor they use, and the graph's ends (``input_dtype`` and
    ``output_dtype`` are ``"int8"`` or ``"float32"``; the qparams are those of the int8 tensors next to a float end)."""

    steps: list[Step] = field(default_factory=list)
    sizes: dict[int, int] = field(default_factory=dict)
    alias: dict[int, int] = field(default_factory=dict)  # tensor -> the tensor whose bytes it is (RESHAPE)
    input: int = 0
    output: int = 0
    input_qparams: tuple[float, int] = (1.0, 0)
    output_qparams: tuple[float, int] = (1.0, 0)
    input_shape: tuple[int, ...] = ()
    output_shape: tuple[int, ...] = ()
    input_dtype: str = "int8"
    output_dtype: str = "int8"

    def root(self, t: int) -> int:
        """The tensor whose bytes ``t`` is."""
        while t in self.alias:
            t = self.alias[t]
        return t


# ---------------------------------------------------------------------------------------------
# quantization parameters, as TFLite Micro prepares them


def _round_away(x: float) -> int:
    """C's ``round``: to nearest, halves away from zero."""
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def activation_range(activation: str, scale: float, zero_point: int) -> tuple[int, int]:
    """The int8 clamp of a fused activation (TFLite's ``CalculateActivationRangeQuantized``, float32 maths)."""
    def quantize(f: float) -> int:
        return zero_point + _round_away(float(np.float32(f) / np.float32(scale)))

    lo = max(INT8_MIN, quantize(0.0)) if activation in ("RELU", "RELU6") else INT8_MIN
    hi = min(INT8_MAX, quantize(6.0)) if activation == "RELU6" else INT8_MAX
    return lo, hi


def _multipliers(reals: list[float], label: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    """``QuantizeMultiplier`` of each real: (multipliers, shifts) as int32, the shifts checked to TFLite's range."""
    pairs = [quantize_multiplier(r) for r in reals]
    mult, shift = np.array([m for m, _ in pairs], np.int64), np.array([s for _, s in pairs], np.int64)
    check_shifts(label, what, mult, shift)
    return mult.astype(np.int32), shift.astype(np.int32)


def _requant(in_scale: float, w_scales: np.ndarray, channels: int, out_qp: tuple[float, int], activation: str,
             label: str, worst: np.ndarray) -> Arg:
    """The ``ep_requant`` of a weighted layer: per-channel multipliers of ``in * w[c] / out`` in double precision
    (a per-tensor weight scale repeated for each of the ``channels``), checked to requantize accumulators of up
    to ``worst`` (per channel) within int32."""
    out_scale, out_zp = out_qp
    scales = np.broadcast_to(w_scales, (channels,)) if len(w_scales) == 1 else w_scales
    reals = [float(np.float64(np.float32(in_scale)) * np.float64(s) / np.float64(np.float32(out_scale))) for s in scales]
    mult, shift = _multipliers(reals, label, "output")
    check_requantization(label, worst, mult, shift, out_zp)
    lo, hi = activation_range(activation, out_scale, out_zp)
    return Arg("struct", ("ep_requant", {"multiplier": mult, "shift": shift, "output_zero_point": out_zp,
                                         "act_min": lo, "act_max": hi}))


def _padded_windows(weight: np.ndarray) -> np.ndarray:
    """A dense convolution's weights ``[O, kh, kw, I]`` as the kernel reads them: each output channel's window
    (ky, kx, ci) zero-padded to ``EP_DENSE_PADDED`` bytes (a multiple of 4)."""
    out_c, window = len(weight), weight[0].size
    padded = np.zeros((out_c, kernel_size("EP_DENSE_PADDED", *weight.shape[1:])), np.int8)
    padded[:, :window] = weight.reshape(out_c, window)
    return padded


def _fc_quads(weight: np.ndarray) -> np.ndarray:
    """A dense fully connected layer's weights ``[O, I]`` as ``ep_fc_dense`` reads them (see ``ep_kernels.h``):
    blocks of four rows interleaved per four inputs, then each row's ``I % 4`` last weights; the ``O % 4`` last
    rows plain."""
    out_n, in_n = weight.shape
    blocks, quads = out_n // 4, in_n // 4
    head = weight[:4 * blocks].reshape(blocks, 4, in_n)
    inter = head[:, :, :4 * quads].reshape(blocks, 4, quads, 4).transpose(0, 2, 1, 3).reshape(blocks, 16 * quads)
    tails = head[:, :, 4 * quads:].reshape(blocks, 4 * (in_n - 4 * quads))
    return np.concatenate([np.concatenate([inter, tails], axis=1).reshape(-1), weight[4 * blocks:].reshape(-1)])


def _weight_arg(dense: np.ndarray, chosen: SparseWeights | None) -> tuple[Arg, dict]:
    """The kernel argument holding a layer's weights (``dense`` as stored when ``chosen`` is None) and the
    layer's ``weight_bytes`` and ``index_bytes``."""
    if chosen is None:
        return Arg("array", dense.reshape(-1)), {"weight_bytes": dense.size}
    if chosen.taps:
        struct = ("ep_sparse_dw", {"count": chosen.counts, "taps": chosen.index, "values": chosen.values})
    elif chosen.table is None:
        struct = ("ep_sparse", {"bits": chosen.bits, _count_field(chosen): chosen.counts, "nibbles": chosen.index,
                                "values": chosen.values})
    else:
        struct = ("ep_sparse", {"bits": chosen.bits, _count_field(chosen): chosen.counts, "nibbles": chosen.index,
                                "codes": chosen.values, "table": chosen.table.reshape(-1),
                                "table_size": chosen.table.shape[1]})
    return Arg("struct", struct), {"weight_bytes": chosen.value_bytes, "index_bytes": chosen.index_bytes}


def _count_field(chosen: SparseWeights) -> str:
    """The ``ep_sparse`` field holding the counts: ``count8`` for uint8 counts, ``count`` for uint16 ones."""
    return "count8" if chosen.counts.dtype == np.uint8 else "count"


def _kernel(base: str, engine: str, chosen: SparseWeights | None) -> str:
    """The kernel running a layer: ``base_dense``, ``base_sparse``, or ``base_sparse_lut`` for look-up-table values."""
    return f"{base}_{engine}" + ("_lut" if chosen is not None and chosen.table is not None else "")


def _format(weights: SparseWeights | None) -> str:
    """The name of a layer's weight format in layers.json."""
    return "int8" if weights is None else weights.format


# ---------------------------------------------------------------------------------------------
# the lowering


class _Lowering:
    def __init__(self, graph: Int8Graph, sparse: str, flash_weight: float = FLASH_WEIGHT) -> None:
        self.g, self.sparse, self.flash_weight = graph, sparse, flash_weight
        self.options: list[list[tuple[float, int]]] = []  # per weighted layer, (instructions, bytes) it chose among
        self.plan = Plan()
        self.next_tensor = len(graph.tensors)
        self.readers: dict[int, list[int]] = {}
        for k, op in enumerate(graph.ops):
            for t in op.inputs:
                self.readers.setdefault(t, []).append(k)
        self.fused: set[int] = set()  # max pools run inside the convolution before them

    # helpers ---------------------------------------------------------------------------------
    def shape(self, t: int) -> tuple[int, ...]:
        return self.g.tensors[t].shape

    def nhwc(self, t: int, label: str) -> tuple[int, int, int]:
        shape = self.shape(t)
        if len(shape) != 4 or shape[0] != 1:
            raise ValueError(f"{label}: tensor {t} has shape {list(shape)}; the engine takes NHWC tensors of batch 1")
        return shape[1], shape[2], shape[3]

    def act(self, t: int) -> int:
        self.plan.sizes.setdefault(t, math.prod(self.shape(t)) * ITEMSIZE[self.g.tensors[t].dtype])
        return t

    def new_tensor(self, nbytes: int) -> int:
        t = self.next_tensor
        self.next_tensor += 1
        self.plan.sizes[t] = nbytes
        return t

    def add(self, op: str, source: int, kernel: str, args: list[Arg], inputs: tuple[int, ...], output: int,
            **info) -> None:
        self.plan.steps.append(Step(op, source, kernel, args, inputs, output, **info))

    def choose(self, dense_instructions: float, dense_bytes: int,
               encodings: list[tuple[str, Callable[[], SparseWeights]]],
               sparse_instructions: Callable[[SparseWeights], float]) -> tuple[str, SparseWeights | None, str, float]:
        """The engine of a weighted layer (:func:`edgeprune.mcu.choice.choose` in this lowering's mode and exchange
        rate): (name, sparse weights or None for dense, why, predicted instructions); records what it chose among."""
        chosen = choice.choose(self.sparse, self.flash_weight, dense_instructions, dense_bytes, encodings,
                               sparse_instructions)
        self.options.append(chosen.options)
        return chosen.engine, chosen.weights, chosen.why, chosen.instructions

    def sparse_variants(self, op: QOp, weight: np.ndarray,
                        encode: Callable[..., SparseWeights]) -> list[tuple[str, Callable[[], SparseWeights]]]:
        """The sparse encodings of ``op``'s ``weight`` (:func:`edgeprune.mcu.choice.sparse_variants`)."""
        return choice.sparse_variants(weight, encode, self.g.tensors[op.inputs[1]].lut is not None)

    def pad_input(self, label: str, x: int, pads: tuple[tuple[int, int], tuple[int, int]], value: int) -> tuple[int, int, int, int]:
        """A pad step filling with ``value`` when ``pads`` are not all zero; (tensor, padded h, w, c)."""
        h, w, c = self.nhwc(x, label)
        (top, bottom), (left, right) = pads
        if top == bottom == left == right == 0:
            return x, h, w, c
        ph, pw = h + top + bottom, w + left + right
        check_int32(label, padded_input_bytes=ph * pw * c)
        out = self.new_tensor(ph * pw * c)
        dims = {"in_h": h, "in_w": w, "c": c, "top": top, "left": left, "bottom": bottom, "right": right}
        self.add("PAD", -1, "ep_pad", [Arg("struct", ("ep_pad_dims", dims)), Arg("tensor", x), Arg("int", value),
                                      Arg("tensor", out)], (x,), out)
        return out, ph, pw, c

    def weights_and_bias(self, op: QOp, label: str) -> tuple[np.ndarray, np.ndarray]:
        w = self.g.tensors[op.inputs[1]]
        if np.any(w.zero_point != 0):
            raise ValueError(f"{label}: weight tensor {op.inputs[1]} has non-zero zero points; int8 weights must be symmetric")
        weight = w.data.astype(np.int8)
        has_bias = len(op.inputs) > 2 and op.inputs[2] != -1
        bias = self.g.tensors[op.inputs[2]].data.astype(np.int64) if has_bias else None
        return weight, bias

    def folded_bias(self, bias: np.ndarray | None, rows: np.ndarray, in_zp: int, label: str) -> tuple[Arg, np.ndarray]:
        """The bias the kernels start from, ``bias - input_zero_point * sum(w)`` per output channel (``rows``: one
        row of weights per channel), and per channel the largest accumulator it can reach, checked within int32."""
        sums = rows.astype(np.int64).sum(axis=1)
        if bias is not None and bias.size != len(sums):
            raise ValueError(f"{label}: the bias has {bias.size} entries for {len(sums)} output channels")
        total = (np.zeros(len(sums), np.int64) if bias is None else bias.reshape(-1)) - in_zp * sums
        if np.abs(total).max(initial=0) >= 2**31:
            raise ValueError(f"{label}: bias - input zero point * sum(weights) leaves the int32 range")
        worst = worst_accumulators(total, np.abs(rows.astype(np.int64)).sum(axis=1))
        check_accumulators(label, worst)
        return Arg("array", total.astype(np.int32)), worst

    def fusable_pool(self, y: int) -> int | None:
        """The index of the 2x2 stride-2 max pool that alone reads tensor ``y`` (and keeps its quantization), or None."""
        readers = self.readers.get(y, [])
        if len(readers) != 1 or y in self.g.outputs:
            return None
        pool = self.g.ops[readers[0]]
        if pool.op != "MAX_POOL_2D":  # before reading its quantization: a DEQUANTIZE's output has none
            return None
        o = pool.options
        same_q = self.g.tensors[pool.outputs[0]].qparams == self.g.tensors[y].qparams
        if o.filter != (2, 2) or o.stride != (2, 2) or o.activation != "NONE" or not same_q:
            return None
        h, w, c = self.shape(y)[1:]
        if self.shape(pool.outputs[0]) != (1, h // 2, w // 2, c) or (o.padding == "SAME" and (h % 2 or w % 2)):
            return None
        return readers[0]

    def int8_end(self, t: int, op_name: str) -> int:
        """``t`` when it is int8; for a float32 end, the int8 tensor that the QUANTIZE reading it writes (``op_name``
        QUANTIZE) or that the DEQUANTIZE writing it reads (DEQUANTIZE)."""
        if self.g.tensors[t].dtype == "int8":
            return t
        for op in self.g.ops:
            if op.op == op_name and t in (op.inputs[0], op.outputs[0]):
                return op.outputs[0] if op_name == "QUANTIZE" else op.inputs[0]
        raise ValueError(f"tensor {t} is {self.g.tensors[t].dtype}; only int8 or a float32 end with {op_name} is supported")

    def dies_at(self, t: int, k: int) -> bool:
        """Whether op ``k`` is the last reader of tensor ``t``, which holds bytes of its own (not a graph input or
        output, nor shared by a RESHAPE)."""
        return (max(self.readers.get(t, [k])) == k and self.plan.root(t) == t and t not in self.plan.alias.values()
                and t not in self.g.inputs and t not in self.g.outputs)

    # ops -------------------------------------------------------------------------------------
    def conv(self, k: int, op: QOp, depthwise: bool) -> None:
        label = f"op {k} ({op.op})"
        x, y = op.inputs[0], op.outputs[0]
        in_h, in_w, in_c = self.nhwc(x, label)
        out_h, out_w, out_c = self.nhwc(y, label)
        pool = None if depthwise else self.fusable_pool(y)
        weight, bias = self.weights_and_bias(op, label)
        k_h, k_w = weight.shape[1:3]
        opt = op.options
        mult = opt.depth_multiplier if depthwise else 1
        (sh, sw), (dh, dw) = opt.stride, opt.dilation
        pads = ((0, 0), (0, 0))
        if opt.padding == "SAME":
            pads = (same_padding(in_h, k_h, sh, dh), same_padding(in_w, k_w, sw, dw))
        in_qp, out_qp = self.g.tensors[x].qparams, self.g.tensors[y].qparams
        xp, ph, pw, _ = self.pad_input(label, self.act(x), pads, in_qp[1])
        w_scales = self.g.tensors[op.inputs[1]].scale
        dims = {"in_h": ph, "in_w": pw, "in_c": in_c, "out_h": out_h, "out_w": out_w, "out_c": out_c, "k_h": k_h,
                "k_w": k_w, "stride_h": sh, "stride_w": sw, "dil_h": dh, "dil_w": dw, "depth_multiplier": mult,
                "pool": int(pool is not None)}
        if len(w_scales) not in (1, out_c):
            raise ValueError(f"{label}: the filter has {len(w_scales)} scales for {out_c} output channels")
        check_int32(label, window_reach_in_height=(out_h - 1) * sh + (k_h - 1) * dh,
                    window_reach_in_width=(out_w - 1) * sw + (k_w - 1) * dw,
                    weight_bytes=out_c * kernel_size("EP_DENSE_PADDED", k_h, k_w, in_c))
        rows = weight.reshape(-1, out_c).T if depthwise else weight.reshape(out_c, -1)
        folded, worst = self.folded_bias(bias, rows, in_qp[1], label)
        requant = _requant(in_qp[0], w_scales, out_c, out_qp, opt.activation, label, worst)
        nonzeros = int(np.count_nonzero(weight))
        pixels = out_h * out_w
        full = activation_range(opt.activation, *out_qp) == (-128, 127)  # the SSAT clamp (cost.py)
        shifts = requant.value[1]["shift"]
        if depthwise:
            engine, chosen, why, cost = self.choose(
                depthwise_cost(out_h, out_w, out_c, k_h, k_w, multiplier=mult, full_range=full, shifts=shifts),
                weight.size, [("sparse taps", lambda: encode_depthwise(weight))],
                lambda s: depthwise_cost(out_h, out_w, out_c, k_h, k_w, nonzeros, mult))
            kernel = f"ep_depthwise_{engine}"
        else:
            groups = (out_h // 2) * (out_w // 2) if pool is not None else -(-out_h * out_w // 4)
            geometry = dict(groups=groups, out_c=out_c, k_h=k_h, k_w=k_w, in_c=in_c, pooled=pool is not None,
                            dil_w=dw, full_range=full, shifts=shifts, short=0 if pool is not None else pixels % 4)
            engine, chosen, why, cost = self.choose(
                conv_cost(**geometry), weight.size, self.sparse_variants(op, weight, encode_conv),
                lambda s: conv_cost(**geometry, multiplies=s.multiplies, entries=s.entries, bits=s.bits,
                                    lut=s.table is not None, long_runs=_count_field(s) == "count"))
            kernel = _kernel("ep_conv", engine, chosen)
        w_arg, info = _weight_arg(weight if depthwise else _padded_windows(weight), chosen)
        name = op.op
        if pool is not None:
            self.fused.add(pool)
            y, name = self.g.ops[pool].outputs[0], f"{op.op}+MAX_POOL_2D"
        args = [Arg("struct", ("ep_conv_dims", dims)), Arg("tensor", xp), w_arg, folded, requant,
                Arg("tensor", self.act(y))]
        reads = (xp,)
        if not depthwise or engine == "dense":
            # scratch for four pixels' windows (the dense depthwise: for its split taps), its size in words given to
            # the kernel to check
            if depthwise:
                words = kernel_size("EP_DW_SCRATCH_WORDS", k_h, k_w)
            else:
                words = kernel_size("EP_SPARSE_SCRATCH_WORDS" if engine == "sparse" else "EP_DENSE_SCRATCH_WORDS",
                                    k_h, k_w, in_c, out_c)
            check_int32(label, scratch_bytes=4 * words)
            scratch = self.new_tensor(4 * words)
            args[5:5] = [Arg("words", scratch), Arg("int", words)]
            reads = (xp, scratch)
        self.add(name, k, kernel, args, reads, y, engine=engine, format=_format(chosen), why=why,
                 macs=pixels * weight.size, nonzero_macs=pixels * nonzeros, predicted_instructions=cost, **info)

    def fully_connected(self, k: int, op: QOp) -> None:
        label = f"op {k} ({op.op})"
        x, y = op.inputs[0], op.outputs[0]
        weight, bias = self.weights_and_bias(op, label)
        out_n, in_n = weight.shape
        if math.prod(self.shape(x)) != in_n:
            raise ValueError(f"{label}: input {list(self.shape(x))} is a batch of several; the engine runs batch 1")
        in_qp, out_qp = self.g.tensors[x].qparams, self.g.tensors[y].qparams
        check_int32(label, weight_bytes=in_n * out_n)
        folded, worst = self.folded_bias(bias, weight, in_qp[1], label)
        requant = _requant(in_qp[0], self.g.tensors[op.inputs[1]].scale, out_n, out_qp, op.options.activation, label,
                           worst)
        nonzeros = int(np.count_nonzero(weight))
        engine, chosen, why, cost = self.choose(
            fc_cost(in_n, out_n), weight.size, self.sparse_variants(op, weight, encode_fc),
            lambda s: fc_cost(in_n, out_n, s.multiplies, s.entries, s.bits, s.table is not None))
        w_arg, info = _weight_arg(_fc_quads(weight) if chosen is None else weight, chosen)
        args = [Arg("int", in_n), Arg("int", out_n), Arg("tensor", self.act(x)), w_arg, folded, requant,
                Arg("tensor", self.act(y))]
        self.add(op.op, k, _kernel("ep_fc", engine, chosen), args, (x,), y, engine=engine, format=_format(chosen),
                 why=why, macs=weight.size, nonzero_macs=nonzeros, predicted_instructions=cost, **info)

    def add_op(self, k: int, op: QOp) -> None:
        label = f"op {k} ({op.op})"
        a, b, y = op.inputs[0], op.inputs[1], op.outputs[0]
        (sa, za), (sb, zb), (so, zo) = (self.g.tensors[t].qparams for t in (a, b, y))
        left_shift = 20
        twice_max = 2 * float(max(np.float32(sa), np.float32(sb)))
        (m1, m2, mo), (s1, s2, so_) = _multipliers([float(np.float32(sa)) / twice_max, float(np.float32(sb)) / twice_max,
                                                     twice_max / ((1 << left_shift) * float(np.float32(so)))], label, "ADD")
        terms = []  # each input's largest |term|: (x - zero point) << left_shift, requantized (at most 1 more rounded)
        for z, m, s in ((za, m1, s1), (zb, m2, s2)):
            centred = max(abs(INT8_MIN - z), abs(INT8_MAX - z)) << left_shift
            check_requantization(label, centred, [m], [s], 0)
            terms.append(requantized_bound(centred, m, s))
        check_requantization(label, sum(terms), [mo], [so_], zo)
        lo, hi = activation_range(op.options.activation, so, zo)
        params = {"input1_offset": -za, "input2_offset": -zb, "output_offset": zo, "left_shift": left_shift,
                  "input1_multiplier": int(m1), "input1_shift": int(s1), "input2_multiplier": int(m2),
                  "input2_shift": int(s2), "output_multiplier": int(mo), "output_shift": int(so_), "act_min": lo,
                  "act_max": hi}
        words = kernel_size("EP_ADD_TABLE_WORDS")
        tables = self.new_tensor(4 * words)
        for t in (a, b, y):
            self.act(t)
        dying = [t for t in (a, b) if self.dies_at(t, k)]
        if dying and y not in self.g.outputs:  # elementwise: the sum may overwrite an input no later op reads
            self.plan.alias[y] = dying[0]
        self.add(op.op, k, "ep_add", [Arg("int", math.prod(self.shape(y))), Arg("tensor", a), Arg("tensor", b),
                                      Arg("struct", ("ep_add_params", params)), Arg("words", tables),
                                      Arg("int", words), Arg("tensor", y)], (a, b, tables), y)

    def pool(self, k: int, op: QOp) -> None:
        label = f"op {k} ({op.op})"
        x, y = op.inputs[0], op.outputs[0]
        (in_h, in_w, c), (out_h, out_w, _) = self.nhwc(x, label), self.nhwc(y, label)
        opt = op.options
        (kh, kw), (sh, sw) = opt.filter, opt.stride
        pads = (0, 0)
        if opt.padding == "SAME":
            pads = (same_padding(in_h, kh, sh, 1)[0], same_padding(in_w, kw, sw, 1)[0])
        lo, hi = activation_range(opt.activation, *self.g.tensors[y].qparams)
        check_int32(label, window_reach_in_height=(out_h - 1) * sh + kh, window_reach_in_width=(out_w - 1) * sw + kw,
                    window_sum=kh * kw * -INT8_MIN)
        dims = {"in_h": in_h, "in_w": in_w, "c": c, "out_h": out_h, "out_w": out_w, "k_h": kh, "k_w": kw,
                "stride_h": sh, "stride_w": sw, "pad_h": pads[0], "pad_w": pads[1], "act_min": lo, "act_max": hi}
        kernel = "ep_max_pool" if op.op == "MAX_POOL_2D" else "ep_avg_pool"
        self.add(op.op, k, kernel, [Arg("struct", ("ep_pool_dims", dims)), Arg("tensor", self.act(x)),
                                    Arg("tensor", self.act(y))], (x,), y)

    def pad(self, k: int, op: QOp) -> None:
        label = f"op {k} ({op.op})"
        x, y = op.inputs[0], op.outputs[0]
        amounts = self.g.tensors[op.inputs[1]].data
        if amounts.shape != (4, 2) or amounts[0].any() or amounts[3].any() or (amounts < 0).any():
            raise ValueError(f"{label}: paddings {amounts.tolist()}; the engine pads height and width of NHWC tensors only")
        if op.op == "PADV2":
            value = int(self.g.tensors[op.inputs[2]].data.reshape(-1)[0])
        else:
            value = self.g.tensors[y].qparams[1]
        h, w, c = self.nhwc(x, label)
        dims = {"in_h": h, "in_w": w, "c": c, "top": int(amounts[1, 0]), "left": int(amounts[2, 0]),
                "bottom": int(amounts[1, 1]), "right": int(amounts[2, 1])}
        self.add(op.op, k, "ep_pad", [Arg("struct", ("ep_pad_dims", dims)), Arg("tensor", self.act(x)),
                                      Arg("int", value), Arg("tensor", self.act(y))], (x,), y)

    def reshape(self, k: int, op: QOp) -> None:
        x, y = op.inputs[0], op.outputs[0]
        self.act(x)
        self.plan.alias[y] = x

    def transpose(self, k: int, op: QOp) -> None:
        label = f"op {k} ({op.op})"
        x, y = op.inputs[0], op.outputs[0]
        shape, perm = self.shape(x), self.g.tensors[op.inputs[1]].data.reshape(-1).tolist()
        if len(shape) > 4:
            raise ValueError(f"{label}: a transpose of rank {len(shape)}; the engine transposes up to 4-D")
        lead = 4 - len(shape)
        shape4 = [1] * lead + list(shape)
        perm4 = list(range(lead)) + [p + lead for p in perm]
        self.add(op.op, k, "ep_transpose", [Arg("array", np.array(shape4, np.int32)), Arg("array", np.array(perm4, np.int32)),
                                            Arg("tensor", self.act(x)), Arg("tensor", self.act(y))], (x,), y)

    def relu(self, k: int, op: QOp) -> None:
        x, y = op.inputs[0], op.outputs[0]
        n = math.prod(self.shape(x))
        (si, zi), (so, zo) = self.g.tensors[x].qparams, self.g.tensors[y].qparams
        label = f"op {k} ({op.op})"
        if op.op == "RELU6":  # TFLM clamps the input codes to [zero, six] of the input's own scale
            six = min(INT8_MAX, max(INT8_MIN, _round_away(float(np.float32(6.0) / np.float32(si))) + zi))
            self.add(op.op, k, "ep_clamp", [Arg("int", n), Arg("tensor", self.act(x)), Arg("int", zi), Arg("int", six),
                                            Arg("tensor", self.act(y))], (x,), y)
            return
        (mult,), (shift,) = _multipliers([float(np.float32(si) / np.float32(so))], label, "RELU")
        check_requantization(label, max(abs(INT8_MIN - zi), abs(INT8_MAX - zi)), [mult], [shift], zo)
        self.add(op.op, k, "ep_relu", [Arg("int", n), Arg("tensor", self.act(x)), Arg("int", zi), Arg("int", zo),
                                       Arg("int", int(mult)), Arg("int", int(shift)), Arg("int", max(INT8_MIN, zo)),
                                       Arg("int", INT8_MAX), Arg("tensor", self.act(y))], (x,), y)

    def softmax(self, k: int, op: QOp) -> None:
        label = f"op {k} ({op.op})"
        x, y = op.inputs[0], op.outputs[0]
        scale, zp = self.g.tensors[y].qparams
        if zp != -128 or np.float32(scale) != np.float32(1 / 256):
            raise ValueError(f"{label}: output scale {scale} and zero point {zp}; int8 softmax needs 1/256 and -128")
        real = min(float(np.float32(op.options.beta)) * float(self.g.tensors[x].qparams[0]) * (1 << 26), 2.0**31 - 1)
        mult, shift = quantize_multiplier(real)
        if real <= 1.0 or shift < 0:
            raise ValueError(f"{label}: input scale {self.g.tensors[x].qparams[0]} is too small for int8 softmax")
        diff_min = -math.floor(31.0 * (1 << 26) / (1 << shift))
        shape = self.shape(x)
        if shape[-1] >= SOFTMAX_DEPTH_LIMIT:
            raise ValueError(f"{label}: a softmax over {shape[-1]:,} values; int8 softmax sums its exponentials in "
                             f"TFLite's Q12.19, which overflows from {SOFTMAX_DEPTH_LIMIT:,}: split the last axis")
        params = {"input_multiplier": mult, "input_left_shift": shift, "diff_min": diff_min}
        self.add(op.op, k, "ep_softmax", [Arg("int", math.prod(shape[:-1])), Arg("int", shape[-1]),
                                          Arg("tensor", self.act(x)), Arg("struct", ("ep_softmax_params", params)),
                                          Arg("tensor", self.act(y))], (x,), y)

    def quantize(self, k: int, op: QOp) -> None:
        """QUANTIZE of the float32 graph input into int8 (``ep_quantize``), or DEQUANTIZE of int8 into the float32 output."""
        x, y = op.inputs[0], op.outputs[0]
        scale, zero_point = self.g.tensors[y if op.op == "QUANTIZE" else x].qparams
        kernel = "ep_quantize" if op.op == "QUANTIZE" else "ep_dequantize"
        self.add(op.op, k, kernel, [Arg("int", math.prod(self.shape(x))), Arg("tensor", self.act(x)),
                                    Arg("float", float(np.float32(scale))), Arg("int", zero_point),
                                    Arg("tensor", self.act(y))], (x,), y)

    def run(self) -> Plan:
        g = self.g
        if len(g.inputs) != 1 or len(g.outputs) != 1:
            raise ValueError(f"the model has {len(g.inputs)} inputs and {len(g.outputs)} outputs; the engine takes one of each")
        for role, t in (("input", g.inputs[0]), ("output", g.outputs[0])):
            shape = self.shape(t)
            if not 2 <= len(shape) <= 4 or shape[0] != 1:
                raise ValueError(f"the model's {role}, tensor {t} {g.tensors[t].name!r}, has shape {list(shape)}; the engine "
                                 "takes a batch of 1 of rank 2 to 4 ([1, features] to [1, height, width, channels])")
        handlers = {"CONV_2D": lambda k, op: self.conv(k, op, False), "DEPTHWISE_CONV_2D": lambda k, op: self.conv(k, op, True),
                    "FULLY_CONNECTED": self.fully_connected, "ADD": self.add_op, "AVERAGE_POOL_2D": self.pool,
                    "MAX_POOL_2D": self.pool, "PAD": self.pad, "PADV2": self.pad, "RESHAPE": self.reshape,
                    "TRANSPOSE": self.transpose, "RELU": self.relu, "RELU6": self.relu, "SOFTMAX": self.softmax,
                    "QUANTIZE": self.quantize, "DEQUANTIZE": self.quantize}
        for k, op in enumerate(g.ops):
            if op.op not in handlers:
                raise ValueError(f"op {k} ({op.op}) writing tensor {op.outputs[0]} is not supported by the C engine")
            for t in (*op.inputs, *op.outputs):
                if t != -1:
                    check_int32(f"op {k} ({op.op})", **{f"tensor_{t}_bytes": math.prod(self.shape(t))
                                                        * ITEMSIZE[g.tensors[t].dtype]})
            try:
                shape = output_shape(op, g.tensors)
            except ValueError as exc:
                raise ValueError(f"op {k} ({op.op}): {exc}") from exc
            if shape != g.tensors[op.outputs[0]].shape:
                raise ValueError(f"op {k} ({op.op}) writes shape {list(g.tensors[op.outputs[0]].shape)}, "
                                 f"but its inputs give {list(shape)}")
        for k, op in enumerate(g.ops):
            if k not in self.fused:
                handlers[op.op](k, op)
        p = self.plan
        p.input, p.output = self.act(g.inputs[0]), self.act(g.outputs[0])
        p.input_dtype, p.output_dtype = g.tensors[p.input].dtype, g.tensors[p.output].dtype
        p.input_qparams = g.tensors[self.int8_end(p.input, "QUANTIZE")].qparams
        p.output_qparams = g.tensors[self.int8_end(p.output, "DEQUANTIZE")].qparams
        p.input_shape, p.output_shape = self.shape(p.input), self.shape(p.output)
        if p.input_dtype != "int8" and p.root(p.output) == p.root(p.input):
            raise ValueError("the model's float32 input is its output: there is nothing for the engine to run")
        if p.root(p.output) == p.root(p.input):  # the output is the input's bytes: copy them
            n = math.prod(p.output_shape)
            copy = self.new_tensor(n)
            self.add("RESHAPE", -1, "ep_clamp", [Arg("int", n), Arg("tensor", p.output), Arg("int", INT8_MIN),
                                                 Arg("int", INT8_MAX), Arg("tensor", copy)], (p.output,), copy)
            p.output = copy
        return p


def check_sparse_mode(sparse: str) -> None:
    """One-line ValueError unless ``sparse`` is one of :data:`SPARSE_MODES`."""
    if sparse not in SPARSE_MODES:
        raise ValueError(f"sparse must be one of {', '.join(SPARSE_MODES)}, got {sparse!r}")


def lower(graph: Int8Graph, sparse: str = "auto", weight_budget: int | None = None) -> Plan:
    """The engine's plan for ``graph``: ``sparse`` is ``"auto"`` (per layer the variant of lowest cost by
    :mod:`edgeprune.mcu.cost`), ``"always"`` (the cheapest sparse variant wherever the format holds the
    layer) or ``"never"`` (dense). With ``weight_budget`` (bytes of weights and index, ``auto`` only) the
    layers trade instructions for bytes at the one rate that brings them within it (:func:`weight_for_budget`)."""
    check_sparse_mode(sparse)
    if weight_budget is not None and sparse != "auto":
        raise ValueError(f"a weight budget chooses each layer's format itself: use it with sparse 'auto', not '{sparse}'")
    lowering = _Lowering(graph, sparse)
    plan = lowering.run()
    if weight_budget is None or chosen_bytes(lowering.options, FLASH_WEIGHT) <= weight_budget:
        return plan
    plan = _Lowering(graph, sparse, weight_for_budget(lowering.options, weight_budget)).run()
    taken = sum(step.weight_bytes + step.index_bytes for step in plan.steps)
    if taken > weight_budget:  # the solver and the lowering disagree: never hand back a plan over the budget
        raise ValueError(f"the layers' formats take {taken:,} B of weights and index, over the weight budget of "
                         f"{weight_budget:,} B; give a larger budget, or prune more")
    return plan
