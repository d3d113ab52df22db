"""Sizes and device targets as the user writes them, read and checked (pure: no torch, no toolchain): the run's
config validates its flags with these before any work."""

from __future__ import annotations

import math
import re

__all__ = ["BYTE_UNITS", "HZ_UNITS", "check_device_targets", "parse_bytes", "parse_hz"]

BYTE_UNITS = {"": 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2}
"""Units of a flash size (case-insensitive): decimal kB/MB, binary KiB/MiB."""
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_bytes(text: str | int | float) -> int:
    """A number of bytes from ``32768``, ``"32KB"`` (32,000), ``"32 KiB"`` (32,768) or ``"0.03MB"``; one-line ValueError otherwise."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        match = _SIZE.match(str(text))
        value, unit = (float(match[1]), match[2].lower()) if match else (math.nan, "?")
    if unit not in BYTE_UNITS or not math.isfinite(value) or value <= 0:
        raise ValueError(f"cannot read {text!r} as a flash size: give a positive number with B, kB, KiB, MB or MiB "
                         "(kB = 1000 B, KiB = 1024 B), e.g. 32KiB")
    return round(value * BYTE_UNITS[unit])


HZ_UNITS = {"": 1, "hz": 1, "khz": 1000, "mhz": 1000**2, "ghz": 1000**3}
"""Units of a core clock (case-insensitive)."""


def parse_hz(text: str | int | float) -> int:
    """A clock in Hz from ``120000000``, ``"120MHz"``, ``"48000 kHz"`` or ``"1e6Hz"``; one-line ValueError otherwise."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        match = _SIZE.match(str(text))
        value, unit = (float(match[1]), match[2].lower()) if match else (math.nan, "?")
    if unit not in HZ_UNITS or not math.isfinite(value) or value <= 0 or round(value * HZ_UNITS[unit]) < 1:
        raise ValueError(f"cannot read {text!r} as a clock: give a positive number with Hz, kHz, MHz or GHz, e.g. 120MHz")
    return round(value * HZ_UNITS[unit])


def check_device_targets(target_instructions: float | None, target_flash: str | int | None,
                         target_cycles: float | None = None) -> tuple[float | None, int | None, float | None]:
    """(instructions fraction, flash bytes, estimated-cycles fraction), checked: at most one given, a fraction in
    (0, 1], the flash a size :func:`parse_bytes` reads. One-line ValueError otherwise."""
    given = [flag for flag, value in (("--target-instructions", target_instructions), ("--target-flash", target_flash),
                                      ("--target-cycles", target_cycles)) if value is not None]
    if len(given) > 1:
        raise ValueError(f"give one device target: {' and '.join(given)} were both given")
    for flag, value, what in (("--target-instructions", target_instructions, "instructions"),
                              ("--target-cycles", target_cycles, "estimated cycles")):
        if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1):
            raise ValueError(f"{flag} is a fraction of the dense engine's {what} in (0, 1], e.g. 0.3; got {value!r}")
    return target_instructions, None if target_flash is None else parse_bytes(target_flash), target_cycles
