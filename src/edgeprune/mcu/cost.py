"""The engine's cost model (pure): predicted Cortex-M4 instructions of each weighted layer, dense or sparse.

These are instructions executed (as QEMU counts them with ``-icount``), not cycles. Each kernel's
cost is a sum of counts the exporter knows exactly (groups of output pixels, window bytes, kernel
rows, output channels, non-zeros, index entries) times a per-item cost, fitted by least squares on
102 layers (three CNNs, dense and 50-98 % sparse, 4- and 8-bit entries) compiled with
``arm-none-eabi-gcc -O2 -mcpu=cortex-m4`` and counted in QEMU (``mps2-an386``); the fit is within
6 % on every conv and FC layer but one (9 %). A group is four output pixels (a fused 2x2 max pool's
window, or four of a row):

* dense convolution (the four pixels' windows as 16-bit pairs, ``SMLAD`` with four weights at a
  time), per group: ``DENSE_FILL_BLOCK`` per four window bytes and ``DENSE_FILL_ROW`` per kernel row
  copied, ``DENSE_BLOCK`` per (output channel, four window bytes) and ``DENSE_CHANNEL`` per output
  channel (fitted separately on six layers, within 2 %), and ``FULL_RANGE_OUTPUT`` less per output as below
  (ResNet-8's reference file: 35 less per group and channel measured, 31.9-36 per layer);
* sparse convolution, per group: ``FILL_QUAD`` per four contiguous window bytes copied into the patch,
  ``FILL_BYTE`` per byte left over, ``FILL_ROW`` per kernel row, ``CHANNEL`` per output channel,
  ``NONZERO`` per multiplication (a non-zero weight, or an 8-bit filler's zero: four pixels'
  multiply-accumulates) and ``CHECKED_ENTRY`` per index entry where the kernel tests for escapes
  (4-bit entries; 8-bit ones have none, :mod:`edgeprune.mcu.sparse`); ``NONZERO`` and ``CHANNEL`` refitted
  (issue 22) when the 8-bit run came to walk to an end pointer and SXTB16 to take the rotation: within 11 % on
  each of ResNet-8's nine convolutions at uniform 90 % (3.1 % on the 3x3 ones; 10.1 % and 8.5 % over on the 1x1
  shortcuts, 15 % and 13 % before), SmallNet's within 6 % (tests/test_device_plan.py); ``FULL_RANGE_OUTPUT``
  less per output (8-bit entries, no look-up table) when the layer's clamp is all of int8 (no activation, or a ReLU onto zero point -128: one
  SSAT, the bounds off the spilled registers; issue 22, third session), fitted on the same nine layers (measured
  30 per group and channel less; with 35 they are within 8.3 %: the 1x1 shortcuts 8.3 % and 6.8 % over, the
  others within 3.8 %); a group with a fused 2x2 max pool stores one output, ``FULL_RANGE_POOLED_DENSE`` and
  ``FULL_RANGE_POOLED_SPARSE`` less per group and channel (SmallNet's two pooled layers: 16.9 and 4.7 measured);
* fully connected: dense, four rows at a time (issue 22: their weights interleaved, each input word split once for
  the four), ``FC_QUAD4`` per (row, four weights) (the inner loop's 26 instructions per four rows) and
  ``FC_DENSE_ROW`` per output, fitted on the autoencoder's ten layers (within 1 % on each); the ``out_n % 4`` rows
  left over two at a time, ``FC_QUAD`` per four weights and ``FC_ROW`` per output; sparse, ``FC_NONZERO`` per
  multiplication, ``CHECKED_ENTRY`` per tested entry and ``FC_ROW`` per output;
* dense depthwise with depth multiplier 1, four channels at a time (issue 22): ``DW_TAP`` per (tap, four channels,
  output pixel) (the inner loop's 12 instructions: one input word, two SXTB16, four SMLABB/SMLATT, the tap's
  table words and the loop), ``DW_QUAD_PIXEL`` per (four channels, output pixel) (four requantizations),
  ``DW_QUAD_ROW`` per (four channels, output row) and ``DW_QUAD`` per four channels (the split taps and the
  prepared requantization), fitted on VWW's and KWS's 3x3 layers (within 1 % on the four fitted, stride 1 and 2);
  the other channels (in_c % 4, or every channel for another multiplier) one at a time, ``DW_SLOW_MAC`` per MAC and
  ``REQUANT`` per output (the old kernel: 23.7 instructions per MAC on those layers);
* sparse depthwise: ``DW_SPARSE_MAC`` per non-zero MAC and ``DW_SPARSE_OUTPUT`` per output (from VWW's 3x3 layer
  run sparse, 14.2 instructions per non-zero MAC; one layer, so rough);
* ``LUT_NONZERO`` more per non-zero (per group) whose value is a look-up-table code;
* ``REQUANT`` per output requantized beyond one per (group, channel) (a group without a fused pool
  stores four outputs); refitted when the kernels came to prepare a channel's requantization once for
  its four pixels (issue 16): with 20, ResNet-8's dense layers are predicted within 2 % and its 90 %
  sparse ones within 12 % (BasicCNN's within 6 %).

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
    "dense_fill_word": 5.0, "dense_fill_block": 68.0, "dense_fill_row": 300.0, "dense_block": 17.5,
    "dense_channel_fast": 48.0, "dense_channel": 95.0,
    # sparse convolution
    "fill_quad": 22.0, "fill_byte": 20.0, "fill_row": 30.0, "sparse_channel_fast": 45.0, "sparse_channel": 95.0,
    "nonzero8": 10.5, "nonzero": 11.2, "checked_entry": 6.0, "lut_nonzero": LUT_NONZERO,
    # a generic channel's outputs after its first (groups of four pixels not pooled)
    "requant": 20.0,
    # fully connected
    "fc_quad4": 6.5, "fc_dense_row": 42.0, "fc_quad": 9.0, "fc_row": 50.0, "fc_nonzero": 6.0,
    # depthwise
    "dw_tap": 12.0, "dw_quad_pixel_fast": 46.0, "dw_quad_pixel": 100.0, "dw_quad_row": 44.0, "dw_quad": 394.0,
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
    windows when ``pooled``; ``short`` > 0: the last group holds that many pixels, fewer than four): dense when ``multiplies`` is None,
    else sparse with that many stored values (non-zeros, and 8-bit fillers) and ``entries`` index entries of
    ``bits`` bits, the values as look-up-table codes when ``lut``, some run longer than 255 entries when
    ``long_runs``. ``full_range``: the layer's clamp is all of int8; ``shifts``: the channels' requantization
    shifts (default: every channel fast). A (group, channel) takes the fast path when the layer is clamped to all
    of int8, the group holds four pixels not pooled, the channel is fast and, sparse, the entries are 8-bit
    values and counts."""
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
