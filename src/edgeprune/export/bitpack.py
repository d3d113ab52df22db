"""Bit packing and escape-gap coding (pure), the one implementation of each behind every format that uses them.

* :func:`pack_bits` / :func:`unpack_bits`: integer codes at ``bits`` bits each, in one of two orders. ``"big"``
  puts the first code in the high bits of the first byte, each code's most significant bit first (the ``.epz``
  value codes, TFLM's look-up-table indices); ``"little"`` puts the first code in the low bits, least significant
  bit first (the C engine's 4-bit gap entries and look-up-table codes: two to a byte, low nibble first). The last
  byte is padded with zero bits.
* :func:`escape_gaps`: sorted positions as the zeros skipped before each, where a gap ``g`` of ``escape`` or more
  is written as ``g // escape`` escapes (each skips ``escape`` places and marks nothing) then ``g % escape``
  (the ``.epz`` relative indices with escape 255, the engine's 4-bit entries with escape 15).
"""

from __future__ import annotations

import numpy as np

__all__ = ["BIT_ORDERS", "escape_gaps", "pack_bits", "unpack_bits"]

BIT_ORDERS = ("big", "little")


def _shifts(bits: int, order: str) -> np.ndarray:
    if order not in BIT_ORDERS:
        raise ValueError(f"bit order must be one of {', '.join(BIT_ORDERS)}, got {order!r}")
    if not 1 <= bits <= 8:
        raise ValueError(f"codes are packed at 1 to 8 bits, not {bits}")
    shifts = np.arange(bits, dtype=np.int64)
    return shifts[::-1] if order == "big" else shifts


def pack_bits(codes: np.ndarray, bits: int, order: str = "big") -> np.ndarray:
    """Integer ``codes`` in ``[0, 2**bits)`` packed at ``bits`` bits each in ``order`` (see the module docstring);
    a uint8 array of ``ceil(len * bits / 8)`` bytes."""
    shifts = _shifts(bits, order)
    codes = np.asarray(codes, np.int64).reshape(-1)
    if len(codes) and (codes.min() < 0 or codes.max() >= 1 << bits):
        raise ValueError(f"codes from {int(codes.min())} to {int(codes.max())} do not fit {bits} bits")
    planes = ((codes[:, None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(planes.reshape(-1), bitorder=order)


def unpack_bits(data: bytes | np.ndarray, count: int, bits: int, order: str = "big") -> np.ndarray:
    """The ``count`` int64 codes that ``pack_bits(codes, bits, order)`` wrote at the start of ``data``."""
    shifts = _shifts(bits, order)
    planes = np.unpackbits(np.frombuffer(bytes(data), np.uint8), count=count * bits, bitorder=order)
    return planes.reshape(count, bits).astype(np.int64) @ (np.int64(1) << shifts)


def escape_gaps(positions: np.ndarray, escape: int) -> np.ndarray:
    """The escape-gap code (int64) of sorted ``positions`` counted from 0: per position the zeros skipped since the
    previous one, a gap of ``escape`` or more as escapes first (see the module docstring)."""
    gaps = np.diff(np.asarray(positions, np.int64).reshape(-1), prepend=-1) - 1
    lengths = gaps // escape + 1
    stream = np.full(int(lengths.sum()), escape, np.int64)
    stream[np.cumsum(lengths) - 1] = gaps % escape
    return stream
