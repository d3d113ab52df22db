"""A .tflite file as C++ source for a TensorFlow Lite Micro firmware, and whether a model fits common boards."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..files import write_text_atomic

__all__ = ["BOARDS", "fits_on", "write_c_source"]

BOARDS = (
    {"board": "STM32L476RG (Nucleo-L476RG, Cortex-M4F)", "flash_bytes": 1024 * 1024, "ram_bytes": 128 * 1024},
    {"board": "nRF52840 (Cortex-M4F)", "flash_bytes": 1024 * 1024, "ram_bytes": 256 * 1024},
    {"board": "ESP32-S3 (Xtensa LX7, 8 MB flash module)", "flash_bytes": 8 * 1024 * 1024, "ram_bytes": 512 * 1024},
    {"board": "SAMD21G18 (Arduino Zero, Cortex-M0+)", "flash_bytes": 256 * 1024, "ram_bytes": 32 * 1024},
)
"""Flash and on-chip SRAM of common microcontroller boards (vendor data sheets), in bytes."""

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def write_c_source(tflite_path: str | os.PathLike, out_dir: str | os.PathLike, name: str = "g_model",
                   basename: str = "model_data") -> tuple[Path, Path]:
    """Write ``<basename>.h`` and ``<basename>.cc`` holding the bytes of ``tflite_path`` as a 16-byte aligned array.

    The header declares ``const unsigned char <name>[]`` and ``const unsigned int <name>_len``.
    Returns the (.cc, .h) paths.
    """
    tflite_path = Path(tflite_path)
    if not tflite_path.is_file():
        raise FileNotFoundError(f"{tflite_path}: no such file; write it first with export_tflite")
    for label, ident in (("name", name), ("basename", basename)):
        if not _IDENTIFIER.fullmatch(ident):
            raise ValueError(f"{label} {ident!r} is not a C identifier; use letters, digits and underscores")
    data = tflite_path.read_bytes()
    guard = f"EDGEPRUNE_{basename.upper()}_H_"
    header = (
        f"// {basename}.h: {tflite_path.name} ({len(data)} bytes) as a C array, written by edgeprune.\n"
        f"#ifndef {guard}\n#define {guard}\n\n"
        f"extern const unsigned char {name}[];\n"
        f"extern const unsigned int {name}_len;\n\n"
        f"#endif  // {guard}\n"
    )
    rows = [", ".join(f"0x{b:02x}" for b in data[i:i + 12]) for i in range(0, len(data), 12)]
    source = (
        f"// {basename}.cc: {tflite_path.name} ({len(data)} bytes) as a C array, written by edgeprune.\n"
        f'#include "{basename}.h"\n\n'
        "// TFLM reads tensors in place: keep the flatbuffer 16-byte aligned.\n"
        f"alignas(16) const unsigned char {name}[] = {{\n    " + ",\n    ".join(rows) + "\n};\n"
        f"const unsigned int {name}_len = {len(data)};\n"
    )
    out_dir = Path(out_dir)
    cc, h = out_dir / f"{basename}.cc", out_dir / f"{basename}.h"
    write_text_atomic(h, header)
    write_text_atomic(cc, source)
    return cc, h


def fits_on(flash_bytes: int, arena_bytes: int, boards: tuple[dict, ...] = BOARDS) -> list[dict]:
    """For each board: the model's flash and tensor-arena bytes, the board's, and whether both fit.

    ``flash_bytes`` is the model (the .tflite size) and ``arena_bytes`` the arena TFLM allocates; the
    firmware's own code, the TFLM runtime and the stack come on top and are not counted here.
    """
    if flash_bytes < 0 or arena_bytes < 0:
        raise ValueError(f"flash_bytes and arena_bytes must be non-negative, got {flash_bytes} and {arena_bytes}")
    return [
        {**board, "model_flash_bytes": flash_bytes, "arena_bytes": arena_bytes,
         "flash_used": flash_bytes / board["flash_bytes"], "ram_used": arena_bytes / board["ram_bytes"],
         "fits": flash_bytes <= board["flash_bytes"] and arena_bytes <= board["ram_bytes"]}
        for board in boards
    ]
