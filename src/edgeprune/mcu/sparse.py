"""The sparse weight formats of the C engine (pure functions): only non-zero int8 weights are stored.

**Nibble gaps** (convolution and fully connected). The non-zeros of one run of weights (a kernel row
``k_w * in_c`` of one output channel of a convolution, laid out as the input window's row is, or one
row of a fully connected weight) are coded as 4-bit entries, two to a byte, low nibble first, in one
stream over all runs, plus a count of entries per run and the int8 values in the same order:

* an entry ``g`` in 1..15 moves the position ``g`` places forward (from one before the run's start)
  and multiplies the input there by the next value;
* an entry 0 moves 15 places forward and multiplies nothing (a gap longer than 15).

At 90 % sparsity the mean gap is 10, so about one entry in five is an escape: index bytes are about
0.6 per non-zero, and weight + index bytes about 0.16x the dense int8 weights (0.1x at 95 %).

**Taps** (depthwise): per output channel a uint8 count, then per non-zero its tap ``ky * k_w + kx``
(uint8) and its int8 value; depthwise kernels are small, so their bytes matter little.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SparseWeights", "encode_conv", "encode_depthwise", "encode_fc", "gap_entries", "pack_nibbles"]

ESCAPE_GAP = 15  # the distance an entry 0 moves; entries 1..15 are gaps that multiply


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
    """The 4-bit entries that reach the sorted ``positions`` from position -1 (see the module docstring)."""
    entries, previous = [], -1
    for p in positions.tolist():
        gap = p - previous
        while gap > ESCAPE_GAP:
            entries.append(0)
            gap -= ESCAPE_GAP
        entries.append(gap)
        previous = p
    return entries


def pack_nibbles(entries: list[int]) -> np.ndarray:
    """4-bit entries two to a uint8, low nibble first (a trailing odd entry in a low nibble)."""
    e = np.asarray(entries + [0] * (len(entries) % 2), np.uint8)
    return (e[0::2] | (e[1::2] << 4)).astype(np.uint8)


def _encode_runs(runs: np.ndarray) -> SparseWeights:
    """Nibble-gap code of each row of ``runs`` (a 2-D int8 array), one run after another."""
    counts, entries, values = [], [], []
    for run in runs:
        positions = np.flatnonzero(run)
        run_entries = gap_entries(positions)
        counts.append(len(run_entries))
        entries += run_entries
        values.append(run[positions])
    if max(counts, default=0) > np.iinfo(np.uint16).max:
        raise ValueError(f"a run of {max(counts):,} entries does not fit the 16-bit counts of the sparse format")
    return SparseWeights(np.asarray(counts, np.uint16), pack_nibbles(entries), np.concatenate(values).astype(np.int8))


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
