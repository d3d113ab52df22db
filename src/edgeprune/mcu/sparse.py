"""The sparse weight formats of the C engine (pure functions): only non-zero int8 weights are stored.

**Gap runs** (convolution and fully connected). Each output channel's weights, in the filter's own
order (``ky, kx, ci`` for a convolution, the input vector for fully connected), are one run: its
non-zeros are coded as entries of 4 bits (two to a byte, low nibble first) or 8 bits, each run
starting on a byte, plus a count of entries per run (uint8 when every run of the layer has at most
255 entries, else uint16) and the values in the kernel's order. A cursor starts at the run's first
weight; an entry ``g`` moves it ``g`` places, multiplies the input there by the next value and steps
one place on (so ``g`` is the number of zeros skipped). A gap longer than one entry holds is bridged
differently by the two widths:

* 4-bit entries: the entry ``15`` is an **escape**: it moves the cursor 15 places and multiplies
  nothing, so the kernel tests every entry;
* 8-bit entries have no escape: a gap of 256 zeros or more is bridged by **fillers**, entries ``255``
  whose value is a stored 0 (a multiplication by zero), so the kernel never tests an entry. In a random
  mask at 90 % sparsity such a gap is vanishingly rare (0.9**256); trained masks have a few, and each
  costs one multiplication instead of switching the whole layer to a loop that tests every entry.

4-bit entries are the compact choice at moderate sparsity: at 90 % about one gap in five is 15
zeros or longer, so index bytes are about 0.6 per non-zero and weight + index bytes about 0.16x the
dense int8 weights. 8-bit entries cost one byte per non-zero but are faster, and at 95 % hardly larger
(about 0.1x the dense bytes either way). The exporter weighs the two per layer (:mod:`edgeprune.mcu.cost`).

Loop order (convolution): for each group of four output pixels (a fused 2x2 max pool's window, or
four of a row), the kernel copies the four input windows into a patch in the filter's order, one
word of four int8 pixels per position, so a run never breaks at a kernel row; then for each output
channel it walks the channel's run, and each non-zero costs one patch word (``SXTB16`` twice) and
four 16-bit multiply-accumulates (``SMLABB``/``SMLATB``), one per pixel. Each weight and index byte
is read once per group of four pixels; a zero weight is never read.

**Look-up-table values** (convolution and fully connected, for weights the .tflite stores as TFLM
look-up tables): each run's values are 4-bit codes instead, two to a byte (low nibble first, each run
starting on a byte), into a table of the run's distinct int8 values (0 among them only for fillers); the
tables are one row of ``S`` values per run (``S`` the most any run has, at most 16). The kernel reads a code byte every
second non-zero and never expands the weights. Values are the same int8 numbers, so the outputs are.

**Taps** (depthwise): per output channel a uint8 count, then per non-zero its tap ``ky * k_w + kx``
(uint8) and its int8 value; depthwise kernels are small, so their bytes matter little.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..export.bitpack import escape_gaps, pack_bits

__all__ = ["CODE_BITS", "ENTRY_BITS", "ESCAPE_4BIT", "SparseWeights", "encode_conv", "encode_depthwise", "encode_fc", "gap_entries",
           "pack_entries"]

ENTRY_BITS = (4, 8)
ESCAPE_4BIT = 15  # a 4-bit entry 15 moves the cursor 15 places and multiplies nothing
CODE_BITS = 4  # look-up-table codes: 16 values a run


@dataclass(frozen=True)
class SparseWeights:
    """One layer's sparse weights: ``counts`` (entries per run as uint8 or uint16, or taps per channel), ``index``
    (packed entries, or uint8 taps), ``values`` (int8, one per multiplication, in the order the kernel reads
    them: the non-zeros and the fillers' zeros), the entries' ``bits`` (4 or 8; 8 for taps) and whether these are
    depthwise ``taps``. With a ``table`` (int8, one row per run), ``values`` are packed 4-bit codes into the run's
    row instead, and ``multiplies`` says how many there are."""

    counts: np.ndarray
    index: np.ndarray
    values: np.ndarray
    multiplies: int
    bits: int = 8
    taps: bool = False
    table: np.ndarray | None = None

    @property
    def format(self) -> str:
        """``"4-bit"`` or ``"8-bit"`` (gap runs; ``+ lut`` with look-up-table values), or ``"taps"`` (depthwise)."""
        return "taps" if self.taps else f"{self.bits}-bit" + (" + lut" if self.table is not None else "")

    @property
    def value_bytes(self) -> int:
        """Bytes of the values: int8 values, or codes and tables."""
        return self.values.nbytes + (0 if self.table is None else self.table.nbytes)

    @property
    def entries(self) -> int:
        """Index entries the kernel decodes (non-zeros, plus escapes or fillers)."""
        return int(self.counts.sum())

    @property
    def index_bytes(self) -> int:
        """Bytes of counts and index."""
        return self.counts.nbytes + self.index.nbytes


def gap_entries(positions: np.ndarray, bits: int = 4) -> tuple[list[int], list[int]]:
    """The entries of ``bits`` bits that reach the sorted ``positions`` of a run, and the positions the kernel
    multiplies at (``positions`` plus the 8-bit fillers'; see the module docstring)."""
    if bits == 4:  # the escape 15 (edgeprune.export.bitpack's escape-gap code)
        return escape_gaps(positions, ESCAPE_4BIT).tolist(), np.asarray(positions).tolist()
    entries, touched, cursor = [], [], 0
    for p in positions.tolist():
        skip = p - cursor
        for _ in range(skip // 256):  # a filler: 255 places, then a multiplication by a stored 0
            entries.append(255)
            cursor += 256
            touched.append(cursor - 1)
        entries.append(skip % 256)
        touched.append(p)
        cursor = p + 1
    return entries, touched


def pack_entries(entries: list[int], bits: int = 4) -> np.ndarray:
    """Entries as uint8: 8-bit ones as they are, 4-bit ones two to a byte, low nibble first (an odd last
    entry in a low nibble, the high one 0)."""
    return pack_bits(entries, bits, "little")


def _lut_codes(runs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Each run's values as packed 4-bit codes into a table row of its distinct values: (codes, tables)."""
    rows = [np.unique(values) for values in runs]
    size = max((len(row) for row in rows), default=1) or 1
    if size > 1 << CODE_BITS:
        raise ValueError(f"a run has {size} distinct values; {CODE_BITS}-bit codes hold {1 << CODE_BITS}")
    tables = np.zeros((len(rows), size), np.int8)
    codes = []
    for k, (row, values) in enumerate(zip(rows, runs)):
        tables[k, :len(row)] = row
        codes.append(pack_entries(np.searchsorted(row, values).tolist(), CODE_BITS))
    return np.concatenate(codes).astype(np.uint8) if codes else np.zeros(0, np.uint8), tables


def _encode_runs(runs: np.ndarray, bits: int, lut: bool) -> SparseWeights:
    """Gap-run code of each row of ``runs`` (a 2-D int8 array), one run after another; ``lut``: values as codes."""
    if bits not in ENTRY_BITS:
        raise ValueError(f"sparse entries are 4 or 8 bits, not {bits}")
    counts, packed, values = [], [], []
    for run in runs:
        entries, touched = gap_entries(np.flatnonzero(run), bits)
        counts.append(len(entries))
        packed.append(pack_entries(entries, bits))
        values.append(run[touched])
    longest = max(counts, default=0)
    if longest > np.iinfo(np.uint16).max:
        raise ValueError(f"a run of {longest:,} entries does not fit the 16-bit counts of the sparse format")
    multiplies = sum(len(v) for v in values)
    codes, table = _lut_codes(values) if lut else (np.concatenate(values).astype(np.int8), None)
    return SparseWeights(np.asarray(counts, np.uint8 if longest <= 255 else np.uint16),
                         np.concatenate(packed).astype(np.uint8), codes, multiplies, bits, table=table)


def encode_conv(weight: np.ndarray, bits: int = 4, lut: bool = False) -> SparseWeights:
    """Sparse code of a convolution filter ``[O, kh, kw, I]``: one run per output channel (``lut``: values as codes)."""
    return _encode_runs(weight.reshape(len(weight), -1), bits, lut)


def encode_fc(weight: np.ndarray, bits: int = 4, lut: bool = False) -> SparseWeights:
    """Sparse code of a fully connected weight ``[O, I]``: one run per output row (``lut``: values as codes)."""
    return _encode_runs(weight, bits, lut)


def encode_depthwise(weight: np.ndarray) -> SparseWeights:
    """Sparse taps of a depthwise filter ``[1, kh, kw, C]``: per channel its count, taps and values."""
    _, kh, kw, c = weight.shape
    if kh * kw > 64:
        raise ValueError(f"a {kh}x{kw} depthwise kernel has more than the 64 taps of the sparse format")
    per_channel = weight.reshape(kh * kw, c).T
    taps = [np.flatnonzero(row) for row in per_channel]
    values = np.concatenate([row[t] for row, t in zip(per_channel, taps)]).astype(np.int8)
    return SparseWeights(np.asarray([len(t) for t in taps], np.uint8),
                         np.concatenate(taps).astype(np.uint8) if taps else np.zeros(0, np.uint8), values, len(values),
                         taps=True)
