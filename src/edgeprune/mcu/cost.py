"""The engine's cost model (pure): predicted Cortex-M4 instructions of each weighted layer, dense or sparse.

These are instructions executed (as QEMU counts them with ``-icount``), not cycles. Each kernel's
cost is a sum of counts the exporter knows exactly (outputs, groups of pixels, index entries,
non-zeros) times a per-item cost fitted on the kernels compiled with ``arm-none-eabi-gcc -O2
-mcpu=cortex-m4`` and counted in QEMU (see ``docs/benchmarks.md``):

* dense convolution (two output channels per input load, ``SMLAD`` on four bytes at a time):
  ``DENSE_MAC`` per MAC and ``DENSE_ROW`` per (pixel, output channel, kernel row);
* sparse convolution, per group of four output pixels: ``FILL`` per window value copied into the
  patch, ``CHANNEL`` per output channel, ``ENTRY[bits]`` per index entry decoded and ``MAC4`` per
  non-zero (four pixels' multiply-accumulates);
* fully connected: ``DENSE_MAC`` per MAC and ``ROW`` per output dense; ``ENTRY[bits]`` per entry,
  ``MAC1`` per non-zero and ``ROW`` per output sparse;
* depthwise: ``DW_DENSE_MAC`` per MAC dense, ``DW_SPARSE_MAC`` per non-zero MAC sparse;
* ``REQUANT`` per output requantized (a fused 2x2 max pool requantizes one output per four pixels).

:func:`layer_cost` adds ``FLASH_WEIGHT`` instructions per byte of weights and index: the exporter
(``sparse="auto"``) runs each layer in the variant of lowest layer cost, so a variant that saves
flash may cost up to ``FLASH_WEIGHT`` instructions per byte saved. Issue 16 plans sparsity from the
same functions.
"""

from __future__ import annotations

__all__ = ["FLASH_WEIGHT", "conv_cost", "depthwise_cost", "fc_cost", "layer_cost"]

FLASH_WEIGHT = 8.0
DENSE_MAC = 2.2
DENSE_ROW = 10.0
REQUANT = 20.0
FILL = 13.0
CHANNEL = 25.0
ENTRY = {4: 7.0, 8: 5.0}
MAC4 = 7.0
MAC1 = 3.0
ROW = 20.0
DW_DENSE_MAC = 5.0
DW_SPARSE_MAC = 7.0


def layer_cost(instructions: float, weight_bytes: int) -> float:
    """What the exporter minimizes per layer: predicted instructions plus ``FLASH_WEIGHT`` per byte of weights and index."""
    return instructions + FLASH_WEIGHT * weight_bytes


def conv_cost(groups: int, out_c: int, k_h: int, k_w: int, in_c: int, entries: int | None = None,
              nonzeros: int | None = None, bits: int = 4, pooled: bool = False) -> float:
    """Predicted instructions of a convolution over ``groups`` groups of four output pixels (a fused 2x2
    max pool's windows when ``pooled``): dense when ``entries`` is None, else sparse with that many index
    entries of ``bits`` bits (escapes included) and ``nonzeros`` weights."""
    window = k_h * k_w * in_c
    requant = groups * out_c * (1 if pooled else 4) * REQUANT
    if entries is None:
        return groups * 4 * out_c * (window * DENSE_MAC + k_h * DENSE_ROW) + requant
    return groups * (window * FILL + out_c * CHANNEL + entries * ENTRY[bits] + nonzeros * MAC4) + requant


def fc_cost(in_n: int, out_n: int, entries: int | None = None, nonzeros: int | None = None, bits: int = 4) -> float:
    """Predicted instructions of a fully connected layer: dense when ``entries`` is None, else sparse."""
    if entries is None:
        return out_n * (in_n * DENSE_MAC + ROW + REQUANT)
    return entries * ENTRY[bits] + nonzeros * MAC1 + out_n * (ROW + REQUANT)


def depthwise_cost(out_h: int, out_w: int, out_c: int, k_h: int, k_w: int, nonzeros: int | None = None) -> float:
    """Predicted instructions of a depthwise convolution: dense when ``nonzeros`` is None, else sparse."""
    pixels = out_h * out_w
    if nonzeros is None:
        return pixels * out_c * (k_h * k_w * DW_DENSE_MAC + REQUANT)
    return pixels * (nonzeros * DW_SPARSE_MAC + out_c * REQUANT)
