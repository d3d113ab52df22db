"""A generated engine on an emulated Cortex-M: built, run on N images in QEMU, compared with TFLM, measured.

:func:`measure_on_mcu` quantizes the images as TFLM's inputs (the .tflite's input scale and zero
point, NHWC), runs them through TFLite Micro's interpreter for the reference outputs, generates
the C engine (:func:`edgeprune.mcu.codegen.export_c`), builds it with the board's startup code,
linker script and harness (``board/``), runs all N images in one QEMU start, and writes
``mcu.json``. The counts are **instructions executed in emulation, not cycles**: SysTick ticks
under ``-icount shift=0`` times the instructions per tick (40 on the mps2 boards, 31.25 on
mps3-an547), so each count is exact to one tick.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import torch

from ..export.c_source import fits_on
from ..export.int8_graph import quantize_activation
from ..export.tflm import make_interpreter, run_int8
from ..files import writable_folder, write_json_atomic
from .codegen import export_c
from .qemu import GuestRun, run_guest
from .toolchain import (
    Target, board_dir, check_tools, compile_objects, get_target, link_firmware, link_relocatable, section_sizes,
)

__all__ = [
    "INSTRUCTIONS_NOTE", "RESULT_FILE", "build_harness", "engine_sizes", "header_macros", "measure_engine",
    "measure_on_mcu", "mcu_table",
]

RESULT_FILE = "mcu.json"
INSTRUCTIONS_NOTE = "instructions executed in emulation, not cycles"
_SIZE_TARGET = "cortex-m0plus"
_MACRO = re.compile(r"^\s*#define\s+(EDGEPRUNE_[A-Z0-9_]+)\s+(.+?)\s*$", re.MULTILINE)
_NEEDED_MACROS = ("EDGEPRUNE_INPUT_SIZE", "EDGEPRUNE_OUTPUT_SIZE", "EDGEPRUNE_ARENA_SIZE", "EDGEPRUNE_NUM_LAYERS")
_LAYER_KEYS = ("op", "engine", "macs", "nonzero_macs", "weight_bytes", "index_bytes", "predicted_instructions")


def header_macros(engine_dir: str | os.PathLike) -> dict[str, int]:
    """The plain integer ``EDGEPRUNE_*`` macros of ``engine_dir/edgeprune_model.h`` (the sizes and the layer count)."""
    header = Path(engine_dir) / "edgeprune_model.h"
    if not header.is_file():
        raise ValueError(f"{header}: no such file; generate the engine first with export_c")
    macros = {name: int(value) for name, value in _MACRO.findall(header.read_text(errors="replace"))
              if re.fullmatch(r"-?\d+", value)}
    missing = [name for name in _NEEDED_MACROS if name not in macros]
    if missing:
        raise ValueError(f"{header}: no integer {', '.join(missing)}; is it a header written by export_c?")
    return macros


def _layers(engine_dir: Path, count: int) -> list[dict]:
    """The per-layer entries of ``engine_dir/layers.json`` (export_c's report), checked against the header's count."""
    path = engine_dir / "layers.json"
    try:
        layers = json.loads(path.read_text())["layers"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: cannot read its layers ({exc}); generate the engine again with export_c") from None
    if not isinstance(layers, list) or len(layers) != count or not all(
            isinstance(layer, dict) and all(key in layer for key in _LAYER_KEYS) for layer in layers):
        raise ValueError(f"{path}: not {count} layers with {', '.join(_LAYER_KEYS)}; generate the engine again")
    return layers


def build_harness(engine_dir: str | os.PathLike, target: Target, build_dir: str | os.PathLike) -> Path:
    """Build the harness firmware for ``target``: the engine (with the per-layer hook), startup code and harness."""
    engine_dir, build_dir = Path(engine_dir), Path(build_dir)
    objects = compile_objects(sorted(engine_dir.glob("*.c")), target, build_dir / "engine",
                              defines=["EDGEPRUNE_LAYER_DONE=ep_layer_done"])
    objects += compile_objects([board_dir() / "startup.c", board_dir() / "harness.c"], target,
                               build_dir / "board", include_dirs=[engine_dir])
    return link_firmware(objects, target, build_dir / "harness.elf")


def engine_sizes(engine_dir: str | os.PathLike, target: Target, build_dir: str | os.PathLike) -> dict[str, int]:
    """``text``, ``data`` and ``bss`` bytes of the engine as a user links it (no hook; only what edgeprune_invoke reaches)."""
    build_dir = Path(build_dir)
    objects = compile_objects(sorted(Path(engine_dir).glob("*.c")), target, build_dir / "objects")
    return section_sizes(link_relocatable(objects, target, build_dir / "edgeprune_model.o"))


def _default_timeout(macs: int, images: int) -> float:
    """Seconds for QEMU: a start, then 1 microsecond per MAC (QEMU runs about 150 M instructions a second)."""
    return 30.0 + images * macs * 1e-6


def measure_engine(engine_dir: str | os.PathLike, inputs: np.ndarray, expected: np.ndarray, labels: np.ndarray,
                   out_dir: str | os.PathLike, target: str = "cortex-m4", timeout: float | None = None) -> dict:
    """Run a generated engine on ``inputs`` (N x input bytes, int8) in QEMU and measure it; writes ``out_dir/mcu.json``.

    ``expected`` are TFLM's int8 outputs for the same inputs (N x output bytes) and ``labels`` the
    classes. Raises ValueError (one line) after writing mcu.json with the images that did run
    when the guest hangs (``timeout`` seconds; default from the MACs), faults or fails.
    """
    tgt = get_target(target, runnable=True)
    check_tools()
    engine_dir = Path(engine_dir)
    macros = header_macros(engine_dir)
    layers = _layers(engine_dir, macros["EDGEPRUNE_NUM_LAYERS"])
    count = len(inputs)
    if count < 1 or inputs.shape[1:] != (macros["EDGEPRUNE_INPUT_SIZE"],) or inputs.dtype != np.int8:
        raise ValueError(f"inputs must be N >= 1 rows of {macros['EDGEPRUNE_INPUT_SIZE']} int8 values, "
                         f"got {inputs.dtype} {tuple(inputs.shape)}")
    if expected.shape != (count, macros["EDGEPRUNE_OUTPUT_SIZE"]) or len(labels) != count:
        raise ValueError(f"expected must be {count} x {macros['EDGEPRUNE_OUTPUT_SIZE']} TFLM outputs and labels "
                         f"{count} classes, got {tuple(expected.shape)} and {len(labels)}")

    out_dir = writable_folder(out_dir, f"out_dir {out_dir}")
    sizes = engine_sizes(engine_dir, tgt, out_dir / "build" / tgt.name)
    small = engine_sizes(engine_dir, get_target(_SIZE_TARGET), out_dir / "build" / _SIZE_TARGET)
    elf = build_harness(engine_dir, tgt, out_dir / "build" / f"{tgt.name}-harness")
    run_dir = out_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "inputs.bin").write_bytes(inputs.tobytes())
    (run_dir / "outputs.bin").unlink(missing_ok=True)
    if timeout is None:
        timeout = _default_timeout(sum(int(layer["macs"]) for layer in layers), count)
    guest = run_guest(elf, tgt, run_dir, timeout)

    result = _result(guest, tgt, macros, layers, sizes, small, run_dir / "outputs.bin", expected, labels)
    write_json_atomic(out_dir / RESULT_FILE, result)
    if guest.error is not None:
        raise ValueError(f"{guest.error}; the {result['images_run']} images that ran are in {out_dir / RESULT_FILE}")
    return result


def _result(guest: GuestRun, target: Target, macros: dict[str, int], layers: list[dict], sizes: dict[str, int],
            small: dict[str, int], outputs_path: Path, expected: np.ndarray, labels: np.ndarray) -> dict:
    """mcu.json's content from a guest run (complete or not), the sizes, TFLM's outputs and the labels."""
    per_tick = target.instructions_per_tick
    out_bytes = macros["EDGEPRUNE_OUTPUT_SIZE"]
    raw = outputs_path.read_bytes() if outputs_path.is_file() else b""
    ran = min(len(raw) // out_bytes, len(guest.totals))
    outputs = np.frombuffer(raw[:ran * out_bytes], dtype=np.int8).reshape(ran, out_bytes)
    totals = np.array(guest.totals[:ran], dtype=np.float64) * per_tick
    per_layer = (np.array(guest.layer_ticks[:ran], dtype=np.float64).reshape(ran, len(layers)) * per_tick
                 if ran else np.zeros((0, len(layers))))
    stack = guest.stack_bytes
    static_ram = sizes["data"] + sizes["bss"]
    return {
        "target": target.name,
        "board": f"QEMU {target.machine}",
        "images": len(expected),
        "images_run": ran,
        "complete": guest.error is None,
        "error": guest.error,
        "flash_bytes": sizes["text"] + sizes["data"],
        "weight_bytes": sum(int(layer["weight_bytes"]) for layer in layers),
        "index_bytes": sum(int(layer["index_bytes"]) for layer in layers),
        "arena_bytes": macros["EDGEPRUNE_ARENA_SIZE"],
        "static_ram_bytes": static_ram,
        "stack_bytes": stack,
        "ram_bytes": static_ram + stack if stack is not None else None,
        "instructions_unit": INSTRUCTIONS_NOTE,
        "instructions_resolution": per_tick,
        "instructions": round(float(totals.mean())) if ran else None,
        "instructions_min": round(float(totals.min())) if ran else None,
        "instructions_max": round(float(totals.max())) if ran else None,
        "layers": [
            {**{key: layer[key] for key in _LAYER_KEYS},
             "instructions": round(float(per_layer[:, i].mean())) if ran else None}
            for i, layer in enumerate(layers)
        ],
        "accuracy": 100.0 * float(np.mean(outputs.argmax(axis=1) == labels[:ran])) if ran else None,
        "tflm_accuracy": 100.0 * float(np.mean(expected.argmax(axis=1) == labels)),
        "equal_to_tflm": int(np.all(outputs == expected[:ran], axis=1).sum()),
        "fits_on": fits_on(small["text"] + small["data"], small["data"] + small["bss"] + (stack or 0)),
        "fits_on_build": f"{_SIZE_TARGET} (-mcpu={_SIZE_TARGET}, soft float): flash text + data, "
                         f"RAM data + bss + the stack measured on {target.name}",
    }


def _tflm_reference(model_bytes: bytes, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Inputs quantized as for TFLM (the input tensor's scale and zero point, NHWC) and TFLM's outputs, one row each."""
    qp = make_interpreter(model_bytes).get_input_details(0)["quantization_parameters"]
    q = quantize_activation(images.numpy().transpose(0, 2, 3, 1), float(qp["scales"][0]), int(qp["zero_points"][0]))
    return q.reshape(len(q), -1), run_int8(model_bytes, q).reshape(len(q), -1)


def measure_on_mcu(tflite_path: str | os.PathLike, images: torch.Tensor, labels: torch.Tensor,
                   out_dir: str | os.PathLike, target: str = "cortex-m4", sparse: str = "auto",
                   timeout: float | None = None, weight_budget: int | None = None) -> dict:
    """Generate the C engine of ``tflite_path``, run ``images`` (N x C x H x W floats) through it in QEMU, measure it.

    Writes the engine to ``out_dir/engine``, the builds to ``out_dir/build``, the run's files to
    ``out_dir/run`` and the results to ``out_dir/mcu.json`` (see :func:`measure_engine`; the
    instruction counts are instructions executed in emulation, not cycles). ``sparse`` is
    export_c's choice of kernels (auto, always, never), ``weight_budget`` its bytes of weights and index.
    """
    get_target(target, runnable=True)
    check_tools()
    tflite_path, out_dir = Path(tflite_path), writable_folder(out_dir, f"out_dir {out_dir}")
    if not tflite_path.is_file():
        raise ValueError(f"{tflite_path}: no such file; write it first with export_tflite")
    if images.dim() != 4 or len(images) != len(labels) or len(images) < 1:
        raise ValueError(f"images must be N x C x H x W with N >= 1 labels, got {tuple(images.shape)} "
                         f"and {len(labels)} labels")
    export_c(tflite_path, out_dir / "engine", sparse, weight_budget)  # first: it checks the file before TFLM reads it
    size = header_macros(out_dir / "engine")["EDGEPRUNE_INPUT_SIZE"]
    if images[0].numel() != size:
        raise ValueError(f"images are {'x'.join(map(str, images.shape[1:]))} = {images[0].numel()} values each; "
                         f"{tflite_path.name} takes {size}: give images of the model's input shape")
    inputs, expected = _tflm_reference(tflite_path.read_bytes(), images.detach().cpu().float())
    return measure_engine(out_dir / "engine", inputs, expected, labels.cpu().numpy(), out_dir, target, timeout)


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def mcu_table(result: dict) -> str:
    """``mcu.json``'s content as a printable table: sizes, agreement with TFLM, and instructions per layer."""
    lines = [
        f"{result['target']} on {result['board']}: {result['images_run']} of {result['images']} images"
        + ("" if result["complete"] else f" (stopped: {result['error']})"),
        f"  flash (text + rodata + data)  {_count(result['flash_bytes'])} B, of which weights "
        f"{_count(result['weight_bytes'])} B and indices {_count(result['index_bytes'])} B",
        f"  RAM (data + bss + stack)      {_count(result['ram_bytes'])} B: arena {_count(result['arena_bytes'])} B, "
        f"static {_count(result['static_ram_bytes'])} B, stack {_count(result['stack_bytes'])} B (measured)",
        f"  accuracy                      {'-' if result['accuracy'] is None else format(result['accuracy'], '.2f')} % "
        f"(TFLM {result['tflm_accuracy']:.2f} %)",
        f"  outputs equal to TFLM         {result['equal_to_tflm']} / {result['images_run']}",
        f"  instructions per inference    {_count(result['instructions'])} ({result['instructions_unit']}; "
        f"resolution {result['instructions_resolution']:g})",
        "",
        f"  {'layer':>5}  {'op':<20} {'engine':<7} {'MACs':>11} {'non-zero MACs':>14} {'instructions':>13} "
        f"{'predicted':>11} {'instr/nz MAC':>12}",
    ]
    for i, layer in enumerate(result["layers"]):
        nonzero, instructions = layer["nonzero_macs"], layer["instructions"]
        ratio = f"{instructions / nonzero:.2f}" if nonzero and instructions is not None else "-"
        lines.append(f"  {i:>5}  {layer['op']:<20} {layer['engine']:<7} {layer['macs']:>11,} {nonzero:>14,} "
                     f"{_count(instructions):>13} {_count(layer['predicted_instructions']):>11} {ratio:>12}")
    lines += ["", f"  fits on ({result['fits_on_build']}):"]
    lines += [f"    {'yes' if row['fits'] else 'no ':<4} {row['board']}: flash {row['flash_used']:.0%}, RAM {row['ram_used']:.0%}"
              for row in result["fits_on"]]
    return "\n".join(lines)
