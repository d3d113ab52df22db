"""The one bit packer and the one escape-gap coder, worked by hand in both bit orders, and each format that uses
them unchanged (the .epz codes and relative indices, the engine's 4-bit entries, TFLM's look-up-table indices)."""

from __future__ import annotations

import numpy as np
import pytest

from edgeprune.export.bitpack import escape_gaps, pack_bits, unpack_bits
from edgeprune.export.epz import encode_relative, pack_codes
from edgeprune.mcu.sparse import gap_entries, pack_entries


def test_pack_bits_by_hand():
    # big: 01 10 11 -> 0b01101100; little, 4 bits: codes 1, 2, 3 -> 0x21 (1 low, 2 high), 0x03
    assert pack_bits([1, 2, 3], 2, "big").tolist() == [0b01101100]
    assert pack_bits([5, 7], 3, "big").tolist() == [0b10111100]
    assert pack_bits([1, 2, 3], 4, "little").tolist() == [0x21, 0x03]
    assert pack_bits([1, 2, 3], 2, "little").tolist() == [0b00111001]
    assert pack_bits([200, 7], 8, "little").tolist() == pack_bits([200, 7], 8, "big").tolist() == [200, 7]
    with pytest.raises(ValueError, match="codes from 0 to 16 do not fit 4 bits"):
        pack_bits([0, 16], 4)
    rng = np.random.default_rng(0)
    for bits in range(1, 9):
        for order in ("big", "little"):
            codes = rng.integers(0, 1 << bits, 37)
            assert unpack_bits(pack_bits(codes, bits, order), 37, bits, order).tolist() == codes.tolist()


def test_escape_gaps_by_hand():
    """Positions 20 and 39 with escape 15: 20 = 15 + 5, then 18 zeros = 15 + 3. With 255: one byte each."""
    assert escape_gaps(np.array([20, 39]), 15).tolist() == [15, 5, 15, 3]
    assert escape_gaps(np.array([0, 15, 31]), 15).tolist() == [0, 14, 15, 0]
    assert escape_gaps(np.array([255, 256]), 255).tolist() == [255, 0, 0]
    assert escape_gaps(np.array([], np.int64), 15).tolist() == []


def test_the_formats_keep_their_bytes():
    """The same bytes as the three former packers and two former gap coders wrote (their code, inlined here)."""
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 32, 41)
    shifts = np.arange(4, -1, -1, dtype=np.uint8)
    assert pack_codes(codes, 5) == np.packbits(((codes.astype(np.uint8)[:, None] >> shifts) & 1).ravel()).tobytes()
    entries = rng.integers(0, 16, 9).tolist()
    e = np.asarray(entries + [0], np.uint8)
    assert pack_entries(entries, 4).tolist() == (e[0::2] | (e[1::2] << 4)).tolist()
    mask = rng.random(3000) < 0.01
    positions = np.flatnonzero(mask)
    gaps = np.diff(positions, prepend=-1) - 1
    expected = b"".join(bytes([255] * (g // 255) + [g % 255]) for g in gaps.tolist())
    assert encode_relative(mask) == expected
    assert gap_entries(positions, 4)[0] == [x for g in gaps.tolist() for x in [15] * (g // 15) + [g % 15]]
