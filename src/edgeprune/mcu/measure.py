"""A generated engine on an emulated Cortex-M: built, run on N inputs in QEMU, compared with TFLM, measured.

:func:`measure_tflite` takes inputs as the .tflite takes them (its input dtype, int8 or float32, and
shape), runs them through TFLite Micro's interpreter for the reference outputs, generates the C engine
(:func:`edgeprune.mcu.codegen.export_c`), builds it with the board's startup code, linker script and
harness (``board/``), runs all N inputs in one QEMU start, and writes ``mcu.json``. Any output that
differs from TFLM's is a failure (:class:`EngineMismatch`, after ``mcu.json`` is written).
:func:`measure_on_mcu` does the same for PyTorch-layout float images (quantized as TFLM's inputs),
:func:`random_inputs` makes seeded inputs for a file that comes with no data, and :func:`load_inputs`
reads a user's ``.npy`` of inputs safely. The counts are **instructions executed in emulation, not
cycles**: SysTick ticks under ``-icount shift=0`` times the instructions per tick (40 on the mps2
boards, 31.25 on mps3-an547), so each count is exact to one tick.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import torch

from ..export.c_source import fits_on
from ..export.int8_graph import INT8_MAX, INT8_MIN, Int8Graph, QTensor, quantize_activation
from ..export.tflite_read import load_tflite
from ..export.tflm import run_int8, tflite_layout
from ..files import npy_header, writable_folder, write_json_atomic
from .codegen import export_c
from .cycles import CycleRun, build_plugin, cycles_note, no_timing_reason, parse_cycles, plugin_arguments
from .qemu import GuestRun, run_guest
from .toolchain import (
    Target, board_dir, check_tools, compile_objects, get_target, link_firmware, link_relocatable, section_sizes,
)

__all__ = [
    "INSTRUCTIONS_NOTE", "MAX_INPUT_BYTES", "RESULT_FILE", "EngineMismatch", "build_harness", "engine_outputs", "engine_sizes",
    "header_dtypes", "header_macros", "load_inputs", "measure_engine", "measure_on_mcu", "measure_tflite", "mcu_table",
    "random_inputs",
]

RESULT_FILE = "mcu.json"
MAX_INPUT_BYTES = 1 << 30  # an --inputs or --labels file above this is refused before it is read
INSTRUCTIONS_NOTE = "instructions executed in emulation, not cycles"
_SIZE_TARGET = "cortex-m0"
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
                               build_dir / "board", include_dirs=[engine_dir], defines=["EP_SEMIHOSTING"])
    return link_firmware(objects, target, build_dir / "harness.elf")


def engine_sizes(engine_dir: str | os.PathLike, target: Target, build_dir: str | os.PathLike) -> dict[str, int]:
    """``text``, ``data`` and ``bss`` bytes of the engine as a user links it (no hook; only what edgeprune_invoke reaches)."""
    build_dir = Path(build_dir)
    objects = compile_objects(sorted(Path(engine_dir).glob("*.c")), target, build_dir / "objects")
    return section_sizes(link_relocatable(objects, target, build_dir / "edgeprune_model.o"))


def _default_timeout(macs: int, images: int) -> float:
    """Seconds for QEMU: a start, then 1 microsecond per MAC (QEMU runs about 150 M instructions a second)."""
    return 30.0 + images * macs * 1e-6


class EngineMismatch(RuntimeError):
    """The engine's outputs differ from TFLite Micro's: a bug in edgeprune (the message names the first difference)."""


_C_DTYPES = {"int8_t": np.dtype(np.int8), "float": np.dtype(np.float32)}


def header_dtypes(engine_dir: str | os.PathLike) -> tuple[np.dtype, np.dtype]:
    """The input and output element types of a generated engine (``EDGEPRUNE_INPUT_TYPE``, ``EDGEPRUNE_OUTPUT_TYPE``)."""
    text = (Path(engine_dir) / "edgeprune_model.h").read_text(errors="replace")
    types = dict(_MACRO.findall(text))
    try:
        return _C_DTYPES[types["EDGEPRUNE_INPUT_TYPE"]], _C_DTYPES[types["EDGEPRUNE_OUTPUT_TYPE"]]
    except KeyError:
        raise ValueError(f"{engine_dir}/edgeprune_model.h: no EDGEPRUNE_INPUT_TYPE / EDGEPRUNE_OUTPUT_TYPE of int8_t or "
                         "float; generate the engine again with export_c") from None


def _check_rows(name: str, rows: np.ndarray, count: int | None, size: int, dtype: np.dtype) -> None:
    if rows.ndim != 2 or (count is not None and len(rows) != count) or len(rows) < 1 or rows.shape[1] != size \
            or rows.dtype != dtype:
        want = f"{count if count is not None else 'N >= 1'} rows of {size} {dtype} values"
        raise ValueError(f"{name} must be {want}, got {rows.dtype} {tuple(rows.shape)}")


def measure_engine(engine_dir: str | os.PathLike, inputs: np.ndarray, expected: np.ndarray, labels: np.ndarray | None,
                   out_dir: str | os.PathLike, target: str = "cortex-m4", timeout: float | None = None) -> dict:
    """Run a generated engine on ``inputs`` (N x input elements, the engine's input dtype) in QEMU and measure it;
    writes ``out_dir/mcu.json``.

    ``expected`` are TFLM's outputs for the same inputs (N x output elements, the output dtype) and ``labels``
    the classes, or None (no accuracy). Raises ValueError (one line) after writing mcu.json with the inputs
    that did run when the guest hangs (``timeout`` seconds; default from the MACs), faults or fails, and
    :class:`EngineMismatch` when any output differs from TFLM's.
    """
    tgt = get_target(target, runnable=True)
    check_tools()
    engine_dir = Path(engine_dir)
    macros = header_macros(engine_dir)
    in_dtype, out_dtype = header_dtypes(engine_dir)
    layers = _layers(engine_dir, macros["EDGEPRUNE_NUM_LAYERS"])
    _check_rows("inputs", inputs, None, macros["EDGEPRUNE_INPUT_SIZE"], in_dtype)
    count = len(inputs)
    _check_rows("expected", expected, count, macros["EDGEPRUNE_OUTPUT_SIZE"], out_dtype)
    if labels is not None and len(labels) != count:
        raise ValueError(f"labels must be {count} classes, got {len(labels)}")

    out_dir = writable_folder(out_dir, f"out_dir {out_dir}")
    sizes = engine_sizes(engine_dir, tgt, out_dir / "build" / tgt.name)
    small = sizes if tgt.name == _SIZE_TARGET else engine_sizes(engine_dir, get_target(_SIZE_TARGET),
                                                                out_dir / "build" / _SIZE_TARGET)
    elf = build_harness(engine_dir, tgt, out_dir / "build" / f"{tgt.name}-harness")
    run_dir = out_dir / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "inputs.bin").write_bytes(np.ascontiguousarray(inputs).tobytes())
    (run_dir / "outputs.bin").unlink(missing_ok=True)
    cycles_file, extra = run_dir / "cycles.txt", []
    cycles_file.unlink(missing_ok=True)
    if cycles_note(tgt) is not None:
        extra = plugin_arguments(build_plugin(tgt), elf, cycles_file)
    if timeout is None:  # the estimator's per-instruction callbacks make QEMU a few times slower
        timeout = _default_timeout(sum(int(layer["macs"]) for layer in layers), count) * (4 if extra else 1)
    guest = run_guest(elf, tgt, run_dir, timeout, extra)
    cycle_run = parse_cycles(cycles_file, len(layers)) if extra else None

    result = _result(guest, tgt, macros, layers, sizes, small, run_dir / "outputs.bin", expected, labels, cycle_run)
    write_json_atomic(out_dir / RESULT_FILE, result)
    if guest.error is not None:
        raise ValueError(f"{guest.error}; the {result['images_run']} inputs that ran are in {out_dir / RESULT_FILE}")
    if result["equal_to_tflm"] != count:
        first = result["first_difference"]
        raise EngineMismatch(
            f"the engine differs from TFLite Micro on {count - result['equal_to_tflm']} of {count} inputs (first at input "
            f"{first['input']}, output {first['output']}: engine {first['engine']}, TFLM {first['tflm']}); this is a bug "
            f"in edgeprune, the files are in {out_dir}")
    return result


def _differences(outputs: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Per input and output value, whether the engine's differs from TFLM's (bytes compared, so a float NaN equals the
    same NaN): a (inputs run) x (output values) boolean array."""
    shape = (*outputs.shape, outputs.dtype.itemsize)  # explicit: an empty run has no -1 to infer
    return (outputs.view(np.uint8).reshape(shape) != expected.view(np.uint8).reshape(shape)).any(axis=2)


def _first_difference(differs: np.ndarray, outputs: np.ndarray, expected: np.ndarray) -> dict | None:
    """Where the first output differs from TFLM's (:func:`_differences`), with both values, or None."""
    where = np.argwhere(differs)
    if not len(where):
        return None
    i, j = (int(v) for v in where[0])
    return {"input": i, "output": j, "engine": outputs[i, j].item(), "tflm": expected[i, j].item()}


def _result(guest: GuestRun, target: Target, macros: dict[str, int], layers: list[dict], sizes: dict[str, int],
            small: dict[str, int], outputs_path: Path, expected: np.ndarray, labels: np.ndarray | None,
            cycle_run: CycleRun | None = None) -> dict:
    """mcu.json's content from a guest run (complete or not), the sizes, TFLM's outputs and the labels (or None), and
    the cycle estimator's counts (None: the target has no timing rules)."""
    per_tick = target.instructions_per_tick
    out_size = macros["EDGEPRUNE_OUTPUT_SIZE"]
    row_bytes = out_size * expected.dtype.itemsize
    raw = outputs_path.read_bytes() if outputs_path.is_file() else b""
    ran = min(len(raw) // row_bytes, len(guest.totals))
    outputs = np.frombuffer(raw[:ran * row_bytes], dtype=expected.dtype).reshape(ran, out_size)
    totals = np.array(guest.totals[:ran], dtype=np.float64) * per_tick
    per_layer = (np.array(guest.layer_ticks[:ran], dtype=np.float64).reshape(ran, len(layers)) * per_tick
                 if ran else np.zeros((0, len(layers))))
    differs = _differences(outputs, expected[:ran])
    timed = min(ran, len(cycle_run.cycles)) if cycle_run is not None else 0
    cycles = np.array(cycle_run.cycles[:timed], dtype=np.float64) if timed else None
    layer_cycles = np.array(cycle_run.layer_cycles[:timed], dtype=np.float64) if timed else None
    stack = guest.stack_bytes
    static_ram = sizes["data"] + sizes["bss"]
    scored = labels is not None
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
        "estimated_cycles": round(float(cycles.mean())) if timed else None,
        "cycles_note": cycles_note(target) or no_timing_reason(target),
        "cycles_per_instruction": (round(float(cycles.sum()) / sum(cycle_run.instructions[:timed]), 4)
                                   if timed else None),
        "layers": [
            {**{key: layer[key] for key in _LAYER_KEYS},
             "instructions": round(float(per_layer[:, i].mean())) if ran else None,
             "estimated_cycles": round(float(layer_cycles[:, i].mean())) if timed else None}
            for i, layer in enumerate(layers)
        ],
        "accuracy": 100.0 * float(np.mean(outputs.argmax(axis=1) == labels[:ran])) if scored and ran else None,
        "tflm_accuracy": 100.0 * float(np.mean(expected.argmax(axis=1) == labels)) if scored else None,
        "equal_to_tflm": int((~differs.any(axis=1)).sum()),
        "first_difference": _first_difference(differs, outputs, expected[:ran]),
        "fits_on": fits_on(small["text"] + small["data"], small["data"] + small["bss"] + (stack or 0)),
        "fits_on_build": f"{_SIZE_TARGET} (-mcpu={_SIZE_TARGET}, soft float; the build that runs on QEMU's microbit): "
                         "flash text + data, "
                         f"RAM data + bss + the stack measured on {target.name}",
    }


def _input_tensor(graph: Int8Graph) -> QTensor:
    return graph.tensors[graph.inputs[0]]


def random_inputs(tflite_path: str | os.PathLike, count: int, seed: int = 0) -> np.ndarray:
    """``count`` seeded random inputs for the .tflite, in its input dtype and shape (N x the shape without its batch):
    int8 uniform over [-128, 127]; float32 uniform over the range its QUANTIZE can represent, so that every code is hit."""
    graph = load_tflite(tflite_path)
    t = _input_tensor(graph)
    rng = np.random.default_rng(seed)
    shape = (count, *t.shape[1:])
    if t.dtype == "int8":
        return rng.integers(INT8_MIN, INT8_MAX + 1, size=shape, dtype=np.int8)
    quantize = next(op for op in graph.ops if op.op == "QUANTIZE" and op.inputs[0] == graph.inputs[0])
    scale, zero_point = graph.tensors[quantize.outputs[0]].qparams
    low, high = (INT8_MIN - 0.5 - zero_point) * scale, (INT8_MAX + 0.5 - zero_point) * scale
    return rng.uniform(low, high, size=shape).astype(np.float32)


def _npy(path: Path, what: str, max_bytes: int) -> np.ndarray:
    """An array from a ``.npy`` file, without pickle; its header's dtype and size are checked before any data is read."""
    if not path.is_file():
        raise ValueError(f"{what} {path}: no such file; give a .npy written with numpy.save")
    try:
        with open(path, "rb") as f:
            shape, dtype, _ = npy_header(f)
    except (ValueError, OSError, SyntaxError) as exc:
        raise ValueError(f"{what} {path}: not a .npy file ({exc}); write it with numpy.save") from None
    if dtype.kind not in "iuf":
        raise ValueError(f"{what} {path}: holds {dtype} values; give a numeric array (numpy.save of int8, float32 or ints)")
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if nbytes > max_bytes or nbytes > path.stat().st_size:
        raise ValueError(f"{what} {path}: its header claims shape {list(shape)} ({nbytes:,} bytes) in a "
                         f"{path.stat().st_size:,}-byte file; give the file numpy.save wrote")
    return np.load(path, allow_pickle=False)


def load_inputs(tflite_path: str | os.PathLike, inputs: str | os.PathLike,
                labels: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """A user's inputs (``.npy``, N x the model's input shape without its batch, in its input dtype; one input of the
    input's full shape is N = 1) and optional labels (``.npy``, N integer classes), checked against the .tflite."""
    t = _input_tensor(load_tflite(tflite_path))
    want = np.dtype(np.int8 if t.dtype == "int8" else np.float32)
    x = _npy(Path(inputs), "--inputs", MAX_INPUT_BYTES)
    if x.shape == t.shape:
        x = x.reshape(1, *t.shape[1:])
    if x.shape[1:] != t.shape[1:] or len(x) < 1 or x.dtype != want:
        raise ValueError(f"--inputs {inputs}: {x.dtype} of shape {list(x.shape)}, but {Path(tflite_path).name} takes "
                         f"{want} inputs of shape {list(t.shape)}: give N x {' x '.join(map(str, t.shape[1:]))} {want} values")
    if labels is None:
        return x, None
    y = _npy(Path(labels), "--labels", MAX_INPUT_BYTES)
    if y.shape != (len(x),) or y.dtype.kind not in "iu":
        raise ValueError(f"--labels {labels}: {y.dtype} of shape {list(y.shape)}; give {len(x)} integer classes, "
                         "one per input")
    return x, y.astype(np.int64)


def measure_tflite(tflite_path: str | os.PathLike, inputs: np.ndarray, labels: np.ndarray | None,
                   out_dir: str | os.PathLike, target: str = "cortex-m4", sparse: str = "auto",
                   timeout: float | None = None, weight_budget: int | None = None) -> dict:
    """Generate the C engine of ``tflite_path``, run ``inputs`` (N x the model's input shape without its batch, in its
    input dtype) through it in QEMU and through TFLM, measure it (see :func:`measure_engine`).

    Writes the engine to ``out_dir/engine``, the builds to ``out_dir/build``, the run's files to ``out_dir/run``
    and the results to ``out_dir/mcu.json``; the instruction counts are instructions executed in emulation,
    not cycles. ``labels`` (N classes, or None) give an accuracy. ``sparse`` is export_c's choice of kernels
    (auto, always, never), ``weight_budget`` its bytes of weights and index.
    """
    get_target(target, runnable=True)
    check_tools()
    tflite_path, out_dir = Path(tflite_path), writable_folder(out_dir, f"out_dir {out_dir}")
    if not tflite_path.is_file():
        raise ValueError(f"{tflite_path}: no such file; write it first with export_tflite")
    export_c(tflite_path, out_dir / "engine", sparse, weight_budget)  # first: it checks the file before TFLM reads it
    macros = header_macros(out_dir / "engine")
    inputs = np.asarray(inputs)
    if len(inputs) < 1 or inputs[0].size != macros["EDGEPRUNE_INPUT_SIZE"]:
        raise ValueError(f"inputs of shape {list(inputs.shape)}: {tflite_path.name} takes "
                         f"{macros['EDGEPRUNE_INPUT_SIZE']} values each; give N >= 1 inputs of the model's input shape")
    expected = run_int8(tflite_path.read_bytes(), inputs)
    return measure_engine(out_dir / "engine", inputs.reshape(len(inputs), -1), expected.reshape(len(inputs), -1),
                          labels, out_dir, target, timeout)


def measure_on_mcu(tflite_path: str | os.PathLike, images: torch.Tensor, labels: torch.Tensor | None,
                   out_dir: str | os.PathLike, target: str = "cortex-m4", sparse: str = "auto",
                   timeout: float | None = None, weight_budget: int | None = None) -> dict:
    """:func:`measure_tflite` for float ``images`` as PyTorch takes them (N x C x H x W images, N x C x T sequences or
    N x F features), laid out as the .tflite's input (:func:`~edgeprune.export.tflm.tflite_layout`) and quantized
    with its scale and zero point as TFLM's inputs."""
    get_target(target, runnable=True)
    check_tools()
    tflite_path = Path(tflite_path)
    if not tflite_path.is_file():
        raise ValueError(f"{tflite_path}: no such file; write it first with export_tflite")
    if images.dim() < 2 or len(images) < 1 or (labels is not None and len(images) != len(labels)):
        raise ValueError(f"images must be N x the sample shape with N >= 1 labels (or None), got {tuple(images.shape)} "
                         f"and {'no' if labels is None else len(labels)} labels")
    graph = load_tflite(tflite_path)
    t = _input_tensor(graph)
    if images[0].numel() != math.prod(t.shape[1:]):
        raise ValueError(f"images are {'x'.join(map(str, images.shape[1:]))} = {images[0].numel()} values each; "
                         f"{tflite_path.name} takes {math.prod(t.shape[1:])}: give images of the model's input shape")
    x = tflite_layout(images.detach().cpu().float().numpy()).reshape(len(images), *t.shape[1:])
    if t.dtype == "int8":
        x = quantize_activation(x, *t.qparams)
    return measure_tflite(tflite_path, x.astype(np.int8 if t.dtype == "int8" else np.float32),
                          None if labels is None else labels.cpu().numpy(), out_dir, target, sparse, timeout, weight_budget)


def engine_outputs(out_dir: str | os.PathLike, tflite_path: str | os.PathLike) -> np.ndarray:
    """The engine's outputs of the last run in ``out_dir`` (``run/outputs.bin``) as floats in PyTorch's layout: int8
    outputs dequantized with the .tflite's output scale and zero point, NHWC outputs laid back out as NCHW."""
    graph = load_tflite(tflite_path)
    t = graph.tensors[graph.outputs[0]]
    raw = np.fromfile(Path(out_dir) / "run" / "outputs.bin", np.int8 if t.dtype == "int8" else np.float32)
    values = raw.reshape(-1, *t.shape[1:]).astype(np.float32)
    if t.dtype == "int8":
        scale, zero_point = t.qparams
        values = (values - np.float32(zero_point)) * np.float32(scale)
    return values.transpose(0, 3, 1, 2) if values.ndim == 4 else values


def _count(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _clock(hz: float) -> str:
    return next(f"{hz / scale:g} {unit}" for scale, unit in ((1e9, "GHz"), (1e6, "MHz"), (1e3, "kHz"), (1, "Hz"))
                if hz >= scale or scale == 1)


def mcu_table(result: dict, clock_hz: float | None = None) -> str:
    """``mcu.json``'s content as a printable table: sizes, agreement with TFLM, instructions and estimated cycles per
    layer; with ``clock_hz``, the estimated milliseconds per inference at that core clock."""
    cycles = result.get("estimated_cycles")
    note = result.get("cycles_note") or "no estimate"
    lines = [
        f"{result['target']} on {result['board']}: {result['images_run']} of {result['images']} inputs"
        + ("" if result["complete"] else f" (stopped: {result['error']})"),
        f"  flash (text + rodata + data)  {_count(result['flash_bytes'])} B, of which weights "
        f"{_count(result['weight_bytes'])} B and indices {_count(result['index_bytes'])} B",
        f"  RAM (data + bss + stack)      {_count(result['ram_bytes'])} B: arena {_count(result['arena_bytes'])} B, "
        f"static {_count(result['static_ram_bytes'])} B, stack {_count(result['stack_bytes'])} B (measured)",
        *([f"  accuracy                      {'-' if result['accuracy'] is None else format(result['accuracy'], '.2f')} % "
           f"(TFLM {result['tflm_accuracy']:.2f} %)"] if result.get("tflm_accuracy") is not None else []),
        f"  outputs equal to TFLM         {result['equal_to_tflm']} / {result['images_run']}",
        f"  instructions per inference    {_count(result['instructions'])} ({result['instructions_unit']}; "
        f"resolution {result['instructions_resolution']:g})",
        f"  estimated cycles per inference {_count(cycles)} ({note})",
        *([f"  estimated time per inference  " + ("-" if cycles is None else f"{cycles / clock_hz * 1e3:.3f} ms")
           + f" at {_clock(clock_hz)} (estimated)"] if clock_hz else []),
        "",
        f"  {'layer':>5}  {'op':<20} {'engine':<7} {'MACs':>11} {'non-zero MACs':>14} {'instructions':>13} "
        f"{'est. cycles':>13} {'predicted':>11} {'instr/nz MAC':>12}",
    ]
    for i, layer in enumerate(result["layers"]):
        nonzero, instructions = layer["nonzero_macs"], layer["instructions"]
        ratio = f"{instructions / nonzero:.2f}" if nonzero and instructions is not None else "-"
        lines.append(f"  {i:>5}  {layer['op']:<20} {layer['engine']:<7} {layer['macs']:>11,} {nonzero:>14,} "
                     f"{_count(instructions):>13} {_count(layer.get('estimated_cycles')):>13} "
                     f"{_count(layer['predicted_instructions']):>11} {ratio:>12}")
    lines += ["", f"  fits on ({result['fits_on_build']}):"]
    lines += [f"    {'yes' if row['fits'] else 'no ':<4} {row['board']}: flash {row['flash_used']:.0%}, RAM {row['ram_used']:.0%}"
              for row in result["fits_on"]]
    return "\n".join(lines)
