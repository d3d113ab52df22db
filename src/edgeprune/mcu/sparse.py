"""The sparse weight formats of the C engine (pure functions): only non-zero int8 weights are stored.

**Nibble gaps** (convolution and fully connected). The non-zeros of one run of weights (a kernel row
``k_w * in_c`` of one output channel of a convolution, laid out as the input window's row is, or one
row of a fully connected weight) are coded as 4-bit entries, two to a byte, low nibble first, each
run starting on a byte, plus a count of entries per run and the int8 values in the same order.
A cursor starts at the run's first position:

* an entry ``g`` in 0..14 moves the cursor ``g`` places, multiplies the input there by the next value
  and steps one place on (so ``g`` is the number of zeros skipped);
* an entry 15 moves the cursor 15 places and multiplies nothing (a run of 15 zeros more).

At 90 % sparsity about one gap in five is 15 zeros or longer, so index bytes are about 0.6 per
non-zero and weight + index bytes about 0.16x the dense int8 weights (0.1x at 95 %). The kernel reads
a byte per two entries, and the cursor's post-increment is the input load's own, so an entry costs
a shift or mask, an add, a compare and the loads and multiplies of its pixels.

**Taps** (depthwise): per output channel a uint8 count, then per non-zero its tap ``ky * k_w + kx``
(uint8) and its int8 value; depthwise kernels are small, so their bytes matter little.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SparseWeights", "encode_conv", "encode_depthwise", "encode_fc", "gap_entries", "pack_nibbles"]

ESCAPE = 15  # the entry that skips 15 zeros and multiplies nothing


@dataclass(frozen=True)
class SparseWeights:
    """One layer's sparse weights: ``counts`` (entries per run, or taps per channel), ``index`` (packed
    nibbles, or uint8 taps) and ``values`` (int8 non-zeros, in the order the kernel reads them)."""

    counts: np.ndarray
    index: np.ndarray
    values: np.ndarray

    @property
    def entries(self) -> int:
        """Index entries the kernel decodes (non-zeros plus escapes)."""
        return int(self.counts.sum())

    @property
    def index_bytes(self) -> int:
        """Bytes of counts and index."""
        return self.counts.nbytes + self.index.nbytes


def gap_entries(positions: np.ndarray) -> list[int]:
    """The 4-bit entries that reach the sorted ``positions`` of a run (see the module docstring)."""
    entries, cursor = [], 0
    for p in positions.tolist():
        skip = p - cursor
        while skip >= ESCAPE:
            entries.append(ESCAPE)
            skip -= ESCAPE
        entries.append(skip)
        cursor = p + 1
    return entries


def pack_nibbles(entries: list[int]) -> np.ndarray:
    """4-bit entries two to a uint8, low nibble first (an odd last entry in a low nibble, the high one 0)."""
    e = np.asarray(entries + [0] * (len(entries) % 2), np.uint8)
    return (e[0::2] | (e[1::2] << 4)).astype(np.uint8)


def _encode_runs(runs: np.ndarray) -> SparseWeights:
    """Nibble-gap code of each row of ``runs`` (a 2-D int8 array), one run after another."""
    counts, packed, values = [], [], []
    for run in runs:
        positions = np.flatnonzero(run)
        entries = gap_entries(positions)
        counts.append(len(entries))
        packed.append(pack_nibbles(entries))
        values.append(run[positions])
    if max(counts, default=0) > np.iinfo(np.uint16).max:
        raise ValueError(f"a run of {max(counts):,} entries does not fit the 16-bit counts of the sparse format")
    return SparseWeights(np.asarray(counts, np.uint16), np.concatenate(packed).astype(np.uint8),
                         np.concatenate(values).astype(np.int8))


def encode_conv(weight: np.ndarray) -> SparseWeights:
    """Sparse code of a convolution filter ``[O, kh, kw, I]``: one run per (output channel, kernel row)."""
    o, kh, kw, i = weight.shape
    return _encode_runs(weight.reshape(o * kh, kw * i))


def encode_fc(weight: np.ndarray) -> SparseWeights:
    """Sparse code of a fully connected weight ``[O, I]``: one run per output row."""
    return _encode_runs(weight)


def encode_depthwise(weight: np.ndarray) -> SparseWeights:
    """Sparse taps of a depthwise filter ``[1, kh, kw, C]``: per channel its count, taps and values."""
    _, kh, kw, c = weight.shape
    if kh * kw > 64:
        raise ValueError(f"a {kh}x{kw} depthwise kernel has more than the 64 taps of the sparse format")
    per_channel = weight.reshape(kh * kw, c).T
    taps = [np.flatnonzero(row) for row in per_channel]
    return SparseWeights(np.asarray([len(t) for t in taps], np.uint8),
                         np.concatenate(taps).astype(np.uint8) if taps else np.zeros(0, np.uint8),
                         np.concatenate([row[t] for row, t in zip(per_channel, taps)]).astype(np.int8))
