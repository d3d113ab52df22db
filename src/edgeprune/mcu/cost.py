"""The engine's cost model (pure): predicted Cortex-M4 instructions of each weighted layer, dense or sparse.

These are instructions executed (as QEMU counts them with ``-icount``), not cycles. A layer's cost is a sum of
items the exporter counts exactly (groups of four output pixels, window words, output channels, stored values,
index entries, requantized outputs), each priced by its entry in :data:`COSTS`. The ``*_features`` functions
count; :func:`cost` prices. The prices were fitted by least squares (relative errors) with
``benchmarks/fit_cost.py`` on 145 layers: MLPerf Tiny's four reference files (dense and with every layer forced
sparse), ResNet-8 at 90 % (also under a weight budget, so with 4-bit entries), MobileNetV1 0.25 with 80 % of its
pointwise weights pruned, and SmallNet, BasicCNN and OddNet (fused max pools, ReLU6 clamps, short last groups),
dense and sparse (``benchmarks/mk_cost_models.py``), compiled with ``arm-none-eabi-gcc -O2 -mcpu=cortex-m4``
and counted in QEMU (``mps2-an386``): within 6.5 % on every one (docs/benchmarks.md). ``dw_tap`` is counted by
hand (12 instructions, the depthwise inner loop). A group is four output pixels (a fused 2x2 max pool's window,
or four consecutive pixels of the output; the last group may be short).

A (group, output channel) takes the kernels' fast path (``ep_channel_store4_full``: seven instructions an
output) when the layer's clamp is all of int8 (no activation, or a ReLU onto zero point -128), the group holds four
pixels and is not pooled, the channel's requantization shift is a right shift from 2 to 23 (:func:`fast_channel`)
and, for a sparse layer, its entries are 8-bit values with 8-bit counts; any other takes the generic path (its
outputs after the first priced ``requant`` each):

* dense convolution, per group: ``dense_fill_word`` per (pixel, window word) when a window's rows are whole
  words, else ``dense_fill_block`` per four window bytes and ``dense_fill_row`` per row; ``dense_block`` per
  (output channel, four window bytes: two SMLADs per pixel) and ``dense_channel_fast`` or ``dense_channel``
  per output channel;
* sparse convolution, per group: ``fill_quad`` per four window bytes transposed into the patch, ``fill_byte`` per
  byte left over, ``fill_row`` per kernel row, ``sparse_channel_fast`` or ``sparse_channel`` per output channel,
  per stored value (a non-zero, or an 8-bit filler's zero: four pixels' multiply-accumulates) ``nonzero8`` for
  8-bit entries with int8 values (the loop written out for the DSP cores) or ``nonzero`` otherwise, plus
  ``lut_nonzero`` for a look-up-table code, and ``checked_entry`` per index entry tested for escapes (4-bit
  entries; 8-bit ones have none, :mod:`edgeprune.mcu.sparse`);
* fully connected: dense, four rows at a time, ``fc_quad4`` per (row, four weights) and ``fc_dense_row`` per
  output; the ``out_n % 4`` rows left over, ``fc_quad`` per four weights and ``fc_row`` per output; sparse,
  ``fc_nonzero`` per multiplication, ``checked_entry`` per tested entry and ``fc_row`` per output;
* dense depthwise with depth multiplier 1, four channels at a time: ``dw_tap`` per (tap, four channels, output
  pixel), ``dw_quad_pixel_fast`` or ``dw_quad_pixel`` per (four channels, output pixel) (the four stores: fast
  when the clamp is all of int8 and the four channels are fast), ``dw_quad_row`` per (four channels, output row)
  and ``dw_quad`` per four channels (the split taps and the prepared requantization); the other channels one at a
  time, ``dw_slow_mac`` per MAC and ``dw_slow_output`` per output (not refitted: no file here has them);
* sparse depthwise: ``dw_sparse_mac`` per non-zero MAC and ``dw_sparse_output`` per output (from VWW's 3x3 layer
  run sparse; one layer, so rough).

The exporter (``sparse="auto"``) runs each layer in the variant of lowest cost, its predicted
instructions plus ``FLASH_WEIGHT`` per byte of weights and index, so a variant may cost up to
``FLASH_WEIGHT`` instructions per inference for each byte of flash it saves (a weight budget raises
that rate, :func:`edgeprune.mcu.choice.weight_for_budget`). This keeps the compact
4-bit entries for large fully connected layers (where bytes are many and MACs few) and the faster
8-bit entries for convolutions (where each weight is used once per group of pixels). Issue 16 plans
sparsity from the same functions.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["COSTS", "FLASH_WEIGHT", "LUT_NONZERO", "conv_cost", "conv_features", "cost", "depthwise_cost",
           "depthwise_features", "fast_channel", "fc_cost", "fc_features"]

FLASH_WEIGHT = 24.0
LUT_NONZERO = 4.0

# Instructions per counted item, by kernel (see the module docstring); :func:`conv_features` and the others give
# the counts, so that a fit (benchmarks/fit_cost.py) and the prediction use the same ones.
COSTS: dict[str, float] = {
    # dense convolution
    "dense_fill_word": 14.15, "dense_fill_block": 38.58, "dense_fill_row": 232.62, "dense_block": 15.22,
    "dense_channel_fast": 71.4, "dense_channel": 74.11,
    # sparse convolution
    "fill_quad": 22.1, "fill_byte": 13.32, "fill_row": 73.65, "sparse_channel_fast": 60.47, "sparse_channel": 58.94,
    "nonzero8": 11.0, "nonzero": 9.31, "checked_entry": 6.18, "lut_nonzero": LUT_NONZERO,
    # a generic channel's outputs after its first (groups not pooled)
    "requant": 45.27,
    # fully connected
    "fc_quad4": 6.59, "fc_dense_row": 42.17, "fc_quad": 9.71, "fc_row": 66.17, "fc_nonzero": 5.35,
    # depthwise (dw_tap counted by hand: the inner loop's 12 instructions; the others fitted)
    "dw_tap": 12.0, "dw_quad_pixel_fast": 60.03, "dw_quad_pixel": 110.66, "dw_quad_row": 29.08, "dw_quad": 360.54,
    "dw_slow_mac": 21.5, "dw_slow_output": 20.0, "dw_sparse_mac": 11.0, "dw_sparse_output": 30.0,
}


def fast_channel(shift: int) -> bool:
    """Whether a channel of this shift requantizes on the fast path (``ep_channel.fast`` in ep_conv_group.h: a
    right shift from 2 to 23)."""
    return -23 <= shift <= -2


def cost(features: dict[str, float]) -> float:
    """Predicted instructions of counted items: the sum of each count times its :data:`COSTS` entry."""
    return float(sum(COSTS[name] * count for name, count in features.items()))


def _checked(entries: int, bits: int) -> int:
    """Index entries the kernel tests for escapes: all 4-bit ones, no 8-bit one."""
    return entries if bits == 4 else 0


def conv_features(groups: int, out_c: int, k_h: int, k_w: int, in_c: int, pooled: bool, dil_w: int = 1,
                  multiplies: int | None = None, entries: int = 0, bits: int = 8, lut: bool = False,
                  full_range: bool = False, shifts: Sequence[int] | None = None, short: int = 0,
                  long_runs: bool = False) -> dict[str, float]:
    """The counted items of a convolution over ``groups`` groups of four output pixels (a fused 2x2 max pool's
    windows when ``pooled``; ``short`` > 0: the last group holds that many pixels, fewer than four): dense when
    ``multiplies`` is None, else sparse with that many stored values (non-zeros, and 8-bit fillers) and
    ``entries`` index entries of ``bits`` bits, the values as look-up-table codes when ``lut``, some run longer
    than 255 entries when ``long_runs``. ``full_range``: the layer's clamp is all of int8; ``shifts``: the
    channels' requantization shifts (default: every channel fast). A (group, channel) takes the fast path when
    the layer is clamped to all of int8, the group holds four pixels not pooled, the channel is fast and, sparse,
    the entries are 8-bit values and counts."""
    span, rows = (k_w * in_c, k_h) if dil_w == 1 else (in_c, k_h * k_w)
    quads, left = divmod(span, 4)
    fast_c = out_c if shifts is None else sum(fast_channel(int(v)) for v in shifts)
    eligible = full_range and not pooled and (multiplies is None or (bits == 8 and not lut and not long_runs))
    full_groups = groups - (short > 0)
    fast_gc = full_groups * fast_c if eligible else 0
    slow_gc = groups * out_c - fast_gc
    # a slow (group, channel)'s outputs after its first: three in a group of four pixels, short - 1 in the short one
    tail = {"requant": 0 if pooled else 3 * (full_groups * out_c - fast_gc) + out_c * max(short - 1, 0)}
    if multiplies is None:
        blocks = -(-k_h * k_w * in_c // 4)
        if dil_w == 1 and span % 4 == 0:
            fill = {"dense_fill_word": groups * 4 * blocks}
        else:
            fill = {"dense_fill_block": groups * blocks, "dense_fill_row": groups * rows}
        return {**fill, "dense_block": groups * out_c * blocks, "dense_channel_fast": fast_gc,
                "dense_channel": slow_gc, **tail}
    asm_run = bits == 8 and not lut
    return {"fill_quad": groups * rows * quads, "fill_byte": groups * rows * left, "fill_row": groups * rows,
            "sparse_channel_fast": fast_gc, "sparse_channel": slow_gc,
            "nonzero8" if asm_run else "nonzero": groups * multiplies, "lut_nonzero": groups * multiplies * lut,
            "checked_entry": groups * _checked(entries, bits), **tail}


def conv_cost(*args, **kwargs) -> float:
    """Predicted instructions of a convolution: :func:`conv_features`' counts priced by :data:`COSTS`."""
    return cost(conv_features(*args, **kwargs))


def fc_features(in_n: int, out_n: int, multiplies: int | None = None, entries: int = 0, bits: int = 8,
                lut: bool = False) -> dict[str, float]:
    """The counted items of a fully connected layer: dense when ``multiplies`` is None, else sparse with that many
    stored values (with look-up-table codes when ``lut``)."""
    if multiplies is None:
        quads, four = in_n // 4, out_n - out_n % 4
        return {"fc_quad4": four * quads, "fc_dense_row": four, "fc_quad": (out_n - four) * quads,
                "fc_row": out_n - four}
    return {"fc_nonzero": multiplies, "lut_nonzero": multiplies * lut, "checked_entry": _checked(entries, bits),
            "fc_row": out_n}


def fc_cost(*args, **kwargs) -> float:
    """Predicted instructions of a fully connected layer (:func:`fc_features`)."""
    return cost(fc_features(*args, **kwargs))


def depthwise_features(out_h: int, out_w: int, out_c: int, k_h: int, k_w: int, nonzeros: int | None = None,
                       multiplier: int = 1, full_range: bool = False,
                       shifts: Sequence[int] | None = None) -> dict[str, float]:
    """The counted items of a depthwise convolution: dense when ``nonzeros`` is None, else sparse (``nonzeros``
    the filter's non-zero weights); ``multiplier`` its depth multiplier; a group of four channels stores on the
    fast path when the clamp is all of int8 (``full_range``) and its four ``shifts`` are fast."""
    pixels, taps = out_h * out_w, k_h * k_w
    if nonzeros is not None:
        return {"dw_sparse_mac": pixels * nonzeros, "dw_sparse_output": pixels * out_c}
    quads = out_c // 4 if multiplier == 1 else 0
    fast = [full_range and (shifts is None or all(fast_channel(int(v)) for v in shifts[4 * q:4 * q + 4]))
            for q in range(quads)]
    slow = out_c - 4 * quads
    return {"dw_tap": quads * pixels * taps, "dw_quad_pixel_fast": sum(fast) * pixels,
            "dw_quad_pixel": (quads - sum(fast)) * pixels, "dw_quad_row": quads * out_h, "dw_quad": quads,
            "dw_slow_mac": pixels * slow * taps, "dw_slow_output": pixels * slow}


def depthwise_cost(*args, **kwargs) -> float:
    """Predicted instructions of a depthwise convolution (:func:`depthwise_features`)."""
    return cost(depthwise_features(*args, **kwargs))
