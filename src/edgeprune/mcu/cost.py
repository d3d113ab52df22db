"""The engine's cost model (pure): predicted Cortex-M4 instructions of each weighted layer, dense or sparse.

These are instructions executed (as QEMU counts them with ``-icount``), not cycles. Each kernel's cost
is a sum of terms, each a count the exporter knows exactly times a per-item cost read off the
kernel's compiled inner loops (``arm-none-eabi-gcc -O2 -mcpu=cortex-m4``) and fitted on BasicCNN's
layers in QEMU:

* dense convolution / fully connected (DSP ``SMLAD``, two output channels per input load):
  ``DENSE_MAC`` per MAC, ``DENSE_ROW`` per (output, kernel row) for the loop set-up and the
  odd bytes of a row, ``REQUANT`` per output;
* sparse convolution (four output pixels share each decoded entry and value):
  per pixel block and decoded entry ``SPARSE_ENTRY`` plus ``SPARSE_MAC`` per pixel in the block,
  ``SPARSE_RUN`` per (pixel block, output channel, kernel row) and ``REQUANT`` per output;
* sparse fully connected: ``FC_ENTRY`` per entry plus ``SPARSE_MAC`` per non-zero, ``REQUANT`` per output;
* depthwise: ``DW_DENSE_MAC`` per MAC dense, ``DW_SPARSE_MAC`` per non-zero MAC sparse, ``REQUANT`` per output.

The exporter runs the cheaper one per layer; issue 16 plans sparsity from the same functions.
"""

from __future__ import annotations

__all__ = ["conv_cost", "depthwise_cost", "fc_cost"]

DENSE_MAC = 0.85
DENSE_ROW = 12.0
REQUANT = 22.0
SPARSE_ENTRY = 5.0
SPARSE_MAC = 2.0
SPARSE_RUN = 8.0
FC_ENTRY = 7.0
DW_DENSE_MAC = 5.0
DW_SPARSE_MAC = 7.0


def _pixel_blocks(out_h: int, out_w: int) -> int:
    """Blocks of four output pixels along a row (and single pixels for a row's remainder)."""
    return out_h * (out_w // 4 + out_w % 4)


def conv_cost(out_h: int, out_w: int, out_c: int, k_h: int, k_w: int, in_c: int,
              entries: int | None = None, nonzeros: int | None = None) -> float:
    """Predicted instructions of a convolution: dense when ``entries`` is None, else sparse with that many
    index entries (escapes included) and ``nonzeros`` weights."""
    outputs = out_h * out_w * out_c
    if entries is None:
        return outputs * (k_h * k_w * in_c * DENSE_MAC + k_h * DENSE_ROW + REQUANT)
    blocks = _pixel_blocks(out_h, out_w)
    pixels_per_block = out_h * out_w / blocks
    return (blocks * (entries * SPARSE_ENTRY + nonzeros * pixels_per_block * SPARSE_MAC + out_c * k_h * SPARSE_RUN)
            + outputs * REQUANT)


def fc_cost(in_n: int, out_n: int, entries: int | None = None, nonzeros: int | None = None) -> float:
    """Predicted instructions of a fully connected layer: dense when ``entries`` is None, else sparse."""
    if entries is None:
        return out_n * (in_n * DENSE_MAC + DENSE_ROW + REQUANT)
    return entries * FC_ENTRY + nonzeros * SPARSE_MAC + out_n * REQUANT


def depthwise_cost(out_h: int, out_w: int, out_c: int, k_h: int, k_w: int, nonzeros: int | None = None) -> float:
    """Predicted instructions of a depthwise convolution: dense when ``nonzeros`` is None, else sparse."""
    pixels = out_h * out_w
    if nonzeros is None:
        return pixels * out_c * (k_h * k_w * DW_DENSE_MAC + REQUANT)
    return pixels * (nonzeros * DW_SPARSE_MAC + out_c * REQUANT)
