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

__all__ = ["FLASH_WEIGHT", "LUT_NONZERO", "conv_cost", "depthwise_cost", "fc_cost"]

FLASH_WEIGHT = 24.0
DENSE_FILL_BLOCK, DENSE_FILL_ROW, DENSE_BLOCK, DENSE_CHANNEL = 68.0, 300.0, 22.5, 80.0
FILL_QUAD, FILL_BYTE, FILL_ROW, CHANNEL = 36.0, 20.0, 30.0, 95.0
NONZERO, CHECKED_ENTRY = 11.2, 6.0
FULL_RANGE_OUTPUT, FULL_RANGE_POOLED_DENSE, FULL_RANGE_POOLED_SPARSE = 8.75, 17.0, 5.0
LUT_NONZERO = 4.0
FC_QUAD, FC_ROW, FC_NONZERO = 9.0, 50.0, 6.0
FC_QUAD4, FC_DENSE_ROW = 6.5, 42.0
REQUANT = 20.0
DW_TAP, DW_QUAD_PIXEL, DW_QUAD_ROW, DW_QUAD = 12.0, 100.0, 44.0, 394.0
DW_SLOW_MAC = 21.5
DW_SPARSE_MAC, DW_SPARSE_OUTPUT = 11.0, 30.0


def _checked(entries: int, bits: int) -> int:
    """Index entries the kernel tests for escapes: all 4-bit ones, no 8-bit one."""
    return entries if bits == 4 else 0


def conv_cost(groups: int, out_c: int, k_h: int, k_w: int, in_c: int, pooled: bool, dil_w: int = 1,
              multiplies: int | None = None, entries: int = 0, bits: int = 8, lut: bool = False,
              full_range: bool = False) -> float:
    """Predicted instructions of a convolution over ``groups`` groups of four output pixels (a fused 2x2
    max pool's windows when ``pooled``): dense when ``multiplies`` is None, else sparse with that many
    stored values (non-zeros, and 8-bit fillers) and ``entries`` index entries of ``bits`` bits, the values
    as look-up-table codes when ``lut``; ``full_range`` when the layer's clamp is all of int8 (the dense kernel
    and the sparse one with 8-bit entries and no look-up table then clamp with SSAT, ``FULL_RANGE_OUTPUT`` less per
    output)."""
    span, rows = (k_w * in_c, k_h) if dil_w == 1 else (in_c, k_h * k_w)
    quads, left = divmod(span, 4)
    extra = 0 if pooled else groups * out_c * 3 * REQUANT
    if full_range and not lut and (multiplies is None or bits == 8):
        pooled_saving = FULL_RANGE_POOLED_DENSE if multiplies is None else FULL_RANGE_POOLED_SPARSE
        extra -= groups * out_c * (pooled_saving if pooled else 4 * FULL_RANGE_OUTPUT)
    if multiplies is None:
        blocks = -(-k_h * k_w * in_c // 4)
        return groups * (blocks * DENSE_FILL_BLOCK + rows * DENSE_FILL_ROW + out_c * (blocks * DENSE_BLOCK + DENSE_CHANNEL)) + extra
    fill = rows * (quads * FILL_QUAD + left * FILL_BYTE + FILL_ROW)
    run = multiplies * (NONZERO + LUT_NONZERO * lut) + _checked(entries, bits) * CHECKED_ENTRY
    return groups * (fill + out_c * CHANNEL + run) + extra


def fc_cost(in_n: int, out_n: int, multiplies: int | None = None, entries: int = 0, bits: int = 8,
            lut: bool = False) -> float:
    """Predicted instructions of a fully connected layer: dense when ``multiplies`` is None, else sparse with
    that many stored values (with look-up-table codes when ``lut``)."""
    if multiplies is None:
        quads, four = in_n // 4, out_n - out_n % 4
        return four * (quads * FC_QUAD4 + FC_DENSE_ROW) + (out_n - four) * (quads * FC_QUAD + FC_ROW)
    return multiplies * (FC_NONZERO + LUT_NONZERO * lut) + _checked(entries, bits) * CHECKED_ENTRY + out_n * FC_ROW


def depthwise_cost(out_h: int, out_w: int, out_c: int, k_h: int, k_w: int, nonzeros: int | None = None,
                   multiplier: int = 1) -> float:
    """Predicted instructions of a depthwise convolution: dense when ``nonzeros`` is None, else sparse (``nonzeros``
    the filter's non-zero weights); ``multiplier`` its depth multiplier."""
    pixels, taps = out_h * out_w, k_h * k_w
    if nonzeros is not None:
        return pixels * (nonzeros * DW_SPARSE_MAC + out_c * DW_SPARSE_OUTPUT)
    quads = out_c // 4 if multiplier == 1 else 0
    slow = out_c - 4 * quads
    return (quads * (pixels * (taps * DW_TAP + DW_QUAD_PIXEL) + out_h * DW_QUAD_ROW + DW_QUAD)
            + pixels * slow * (taps * DW_SLOW_MAC + REQUANT))
