"""Estimated cycles of the engine on a Cortex-M4, next to the instructions QEMU counts exactly.

A QEMU TCG plugin (``plugin/cortex_m4_cycles.c``, package data) decodes every Thumb/Thumb-2 instruction the guest
executes and charges the Cortex-M4 TRM's timing (ARM DDI 0439B, Table 3-1 and the load/store timings of section
3.3.2; the rules and their sources are listed at the top of the C file), with zero wait states. edgeprune compiles it
with the host's C compiler (``cc -shared -fPIC``) on first use into a cache folder (:func:`build_plugin`); QEMU loads
it next to the harness (:func:`plugin_arguments`), and it writes per inference and per layer the estimated cycles and
the instructions it charged (:func:`parse_cycles`). The cycles are an **estimate**; the instructions stay the exact
count. A target without timing rules has no estimate (:func:`no_timing_reason` says why).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .toolchain import Target, find_tool

__all__ = [
    "CYCLES_NOTE", "CycleRun", "build_plugin", "cycles_note", "no_timing_reason", "parse_cycles", "plugin_arguments",
    "plugin_source",
]

CYCLES_NOTE = "estimated cycles, Cortex-M4 timings (ARM DDI 0439B, Table 3-1), zero wait states"
"""How mcu.json and the tables name the estimate: the core's timing source and the memory assumption."""
_PLUGINS = {"cortex-m4": "cortex_m4_cycles.c"}
_NO_TIMING = {
    "cortex-m7": "no estimate: Arm publishes no per-instruction cycle table for the Cortex-M7 (dual-issue, "
                 "its TRM gives none)",
    "cortex-m55": "no estimate: no per-instruction timing rules implemented for the Cortex-M55",
    "cortex-m0": "no estimate: no per-instruction timing rules implemented for the Cortex-M0",
}
HOOK = "ep_layer_done"
"""The harness's per-layer hook: entering it ends a layer; it and the functions it calls are not counted."""
_HOOK_CALLEES = ("timer_now",)


def cycles_note(target: Target) -> str | None:
    """The estimate's note for a target with timing rules, or None."""
    return CYCLES_NOTE if target.name in _PLUGINS else None


def no_timing_reason(target: Target) -> str:
    """Why a target has no cycle estimate (one line)."""
    return _NO_TIMING.get(target.name, f"no estimate: no timing rules for {target.name}")


def plugin_source(target: Target) -> Path:
    """The plugin's C source for the target (package data); ValueError for a target without timing rules."""
    if target.name not in _PLUGINS:
        raise ValueError(no_timing_reason(target))
    return Path(str(resources.files("edgeprune.mcu") / "plugin" / _PLUGINS[target.name]))


def _cache_dir() -> Path:
    base = os.environ.get("EDGEPRUNE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgeprune")
    return Path(base) / "qemu-plugins"


def build_plugin(target: Target, cache_dir: str | os.PathLike | None = None, compiler: str = "cc") -> Path:
    """The plugin's shared object for ``target``, compiled from its source with the host's ``compiler``
    (``cc -shared -fPIC -O2``) into ``cache_dir`` (default ``$EDGEPRUNE_CACHE`` or ``~/.cache/edgeprune``, under
    ``qemu-plugins/``) the first time, named by the source's hash; later calls reuse it. One-line ValueError when it
    cannot be built."""
    source = plugin_source(target)
    text = source.read_bytes()
    folder = Path(cache_dir) if cache_dir is not None else _cache_dir()
    built = folder / f"{source.stem}-{hashlib.sha256(text).hexdigest()[:16]}.so"
    if built.is_file():
        return built
    cc = shutil.which(compiler)
    if cc is None:
        raise ValueError(f"cannot build the cycle-estimating QEMU plugin: no host C compiler {compiler!r} on PATH "
                         "(install gcc: sudo apt-get install -y gcc)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(suffix=".so", dir=folder)
        os.close(handle)
    except OSError as exc:
        raise ValueError(f"cannot build the cycle-estimating QEMU plugin: cache folder {folder}: {exc.strerror}") from None
    done = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", partial, str(source)], capture_output=True, text=True)
    if done.returncode != 0:
        Path(partial).unlink(missing_ok=True)
        lines = [line.strip() for line in done.stderr.splitlines() if "error" in line.lower()] or \
            done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        raise ValueError(f"cannot build the cycle-estimating QEMU plugin with {compiler}: {lines[0]}")
    os.replace(partial, built)
    return built


def _symbols(elf: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """Function symbols of an ELF: name -> (address without the Thumb bit, size)."""
    done = subprocess.run([find_tool("arm-none-eabi-nm"), "-S", "--defined-only", str(elf)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise ValueError(f"cannot list the symbols of {Path(elf).name}: {done.stderr.strip()[:200]}")
    symbols = {}
    for words in map(str.split, done.stdout.splitlines()):
        if len(words) == 4 and words[2] in "tTwW":
            symbols[words[3]] = (int(words[0], 16) & ~1, int(words[1], 16))
    return symbols


def plugin_arguments(plugin: str | os.PathLike, elf: str | os.PathLike, out: str | os.PathLike,
                     start: str = "edgeprune_invoke") -> list[str]:
    """QEMU's ``-plugin`` option for a harness firmware: the inference starts at ``start``; the hook
    (``ep_layer_done``, and ``timer_now`` if the compiler kept it out of line) ends layers; the plugin writes ``out``."""
    symbols = _symbols(elf)
    missing = [name for name in (start, HOOK) if name not in symbols]
    if missing:
        raise ValueError(f"{Path(elf).name} has no function {' or '.join(missing)}; is it built with board/harness.c?")
    hooks = [HOOK, *(name for name in _HOOK_CALLEES if name in symbols)]
    options = [f"file={Path(plugin).resolve()}", f"out={Path(out).resolve()}", f"start={symbols[start][0]:#x}",
               *(f"hook={symbols[name][0]:#x}:{symbols[name][1]:#x}" for name in hooks)]
    return ["-plugin", ",".join(options)]


@dataclass
class CycleRun:
    """What the plugin wrote: per inference, estimated cycles and instructions in all and per layer."""

    cycles: list[int] = field(default_factory=list)
    instructions: list[int] = field(default_factory=list)
    layer_cycles: list[list[int]] = field(default_factory=list)
    layer_instructions: list[list[int]] = field(default_factory=list)


def parse_cycles(path: str | os.PathLike, layers: int) -> CycleRun:
    """The plugin's file: ``EPC layer I J cycles C instructions N`` lines then ``EPC image I cycles C instructions N``.
    An inference is kept when its image line came and it has ``layers`` layer lines (a run cut off keeps the ones before)."""
    run = CycleRun()
    cycles: list[int] = []
    insns: list[int] = []
    text = Path(path).read_text() if Path(path).is_file() else ""
    for words in map(str.split, text.splitlines()):
        if words[:2] == ["EPC", "layer"] and len(words) == 8 and int(words[2]) == len(run.cycles) \
                and int(words[3]) == len(cycles):
            cycles.append(int(words[5]))
            insns.append(int(words[7]))
        elif words[:2] == ["EPC", "image"] and len(words) == 7 and int(words[2]) == len(run.cycles):
            if len(cycles) != layers:
                break
            run.cycles.append(int(words[4]))
            run.instructions.append(int(words[6]))
            run.layer_cycles.append(cycles)
            run.layer_instructions.append(insns)
            cycles, insns = [], []
    return run
