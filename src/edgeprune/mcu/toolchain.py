"""Cross-compiling for Cortex-M: the tools, the targets, and compiling, linking and sizing with them.

The tools are Debian's ``gcc-arm-none-eabi`` (with ``libnewlib-arm-none-eabi``) and
``qemu-system-arm``. Four targets run on a QEMU board: the Cortex-M4, M7 and M55 on Arm's MPS2/MPS3
boards (``board/cortex_m.ld``), and the Cortex-M0 (ARMv6-M: no DSP instructions, no divide, no unaligned
access) on the BBC micro:bit's nRF51 (``microbit``: 256 KB of flash, 16 KB of RAM; ``board/microbit.ld``).
``cortex-m0plus`` is built only to be sized (QEMU has no Cortex-M0+ board). Firmware links the startup
code, linker script and harness in ``board/`` (package data) with newlib's semihosting library
(``-DEP_SEMIHOSTING``), or without any semihosting for a board on its own (:func:`link_firmware`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = [
    "DEBIAN_PACKAGES", "NOSYS_SPECS", "SEMIHOSTING_SPECS", "TARGETS", "Target", "board_dir", "board_memory", "check_tools",
    "compile_objects", "find_tool", "get_target", "link_firmware", "link_relocatable", "runtime_functions",
    "section_sizes",
]

DEBIAN_PACKAGES = "gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm"
"""The Debian packages that hold the cross compiler, newlib and QEMU (``make setup`` installs them)."""


@dataclass(frozen=True)
class Target:
    """A Cortex-M core: its compiler flags, and the QEMU board, SysTick clock and linker script (in ``board/``)
    it runs with (machine None: size only)."""

    name: str
    cflags: tuple[str, ...]
    machine: str | None = None
    systick_hz: int | None = None
    linker_script: str = "cortex_m.ld"
    nano: bool = False
    """Link the harness with newlib-nano's semihosting (``--specs=nano.specs --specs=rdimon.specs``): about 2.4 KB less
    RAM than newlib's, for the micro:bit's 16 KB."""

    @property
    def instructions_per_tick(self) -> float:
        """Guest instructions per SysTick tick under ``-icount shift=0`` (1 ns each): the count's resolution."""
        if self.systick_hz is None:
            raise ValueError(f"target {self.name} is built for its size only and runs on no board")
        return 1e9 / self.systick_hz


TARGETS = {
    t.name: t for t in (
        Target("cortex-m4", ("-mcpu=cortex-m4", "-mthumb", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"),
               "mps2-an386", 25_000_000),
        Target("cortex-m7", ("-mcpu=cortex-m7", "-mthumb", "-mfpu=fpv5-d16", "-mfloat-abi=hard"),
               "mps2-an500", 25_000_000),
        Target("cortex-m55", ("-mcpu=cortex-m55", "-mthumb", "-mfloat-abi=hard"), "mps3-an547", 32_000_000),
        Target("cortex-m0", ("-mcpu=cortex-m0", "-mthumb", "-mfloat-abi=soft"), "microbit", 16_000_000,
               "microbit.ld", nano=True),
        Target("cortex-m0plus", ("-mcpu=cortex-m0plus", "-mthumb", "-mfloat-abi=soft")),
    )
}
"""The cores edgeprune builds for, by name; the SysTick clocks are QEMU's (25 MHz on mps2, 32 MHz on mps3-an547,
16 MHz on the micro:bit's nRF51)."""

SEMIHOSTING_SPECS = ("--specs=rdimon.specs",)
"""newlib with semihosting: stdio and exit reach the host through QEMU or a debugger (compile board/ with EP_SEMIHOSTING)."""
NOSYS_SPECS = ("--specs=nano.specs", "--specs=nosys.specs")
"""newlib-nano with stub system calls: a firmware for a board on its own, with no semihosting call in it."""

_CFLAGS = ("-O2", "-std=c99", "-Wall", "-ffunction-sections", "-fdata-sections")


def get_target(name: str, runnable: bool = False) -> Target:
    """The :class:`Target` called ``name``; ``runnable`` refuses the size-only ones."""
    choices = [n for n, t in TARGETS.items() if t.machine or not runnable]
    if name not in choices:
        raise ValueError(f"unknown target {name!r}; choose one of {', '.join(choices)}")
    return TARGETS[name]


_SIZE = re.compile(r"^\s*(\d+)\s*([KM]?)\s*$")
_REGION = re.compile(r"^\s*(FLASH|RAM)\s*\([a-z]+\)\s*:\s*ORIGIN\s*=\s*\S+\s*,\s*LENGTH\s*=\s*(\w+)", re.M)
_STACK = re.compile(r"^EP_STACK_SIZE\s*=.*:\s*(\w+)\s*;", re.M)


def _bytes(text: str) -> int:
    number, unit = _SIZE.match(text).groups()
    return int(number) << {"": 0, "K": 10, "M": 20}[unit]


def board_memory(target: Target) -> dict[str, int]:
    """The bytes of flash and RAM the target's board gives the program (its linker script's FLASH and RAM regions),
    and the stack it keeps at the top of RAM (``EP_STACK_SIZE``'s default): ``{"flash", "ram", "stack"}``."""
    text = (board_dir() / target.linker_script).read_text()
    regions = {name: _bytes(length) for name, length in _REGION.findall(text)}
    return {"flash": regions["FLASH"], "ram": regions["RAM"], "stack": _bytes(_STACK.search(text).group(1))}


def find_tool(name: str) -> str:
    """The path of the program ``name`` (``arm-none-eabi-gcc``, ``qemu-system-arm``...) on PATH."""
    path = shutil.which(name)
    if path is None:
        raise ValueError(f"{name} is not on PATH; install the Debian packages {DEBIAN_PACKAGES} "
                         f"(sudo apt-get install -y {DEBIAN_PACKAGES}, or make setup)")
    return path


def check_tools() -> None:
    """One line naming the Debian packages if the cross compiler, its size tool or QEMU is missing."""
    for tool in ("arm-none-eabi-gcc", "arm-none-eabi-size", "qemu-system-arm"):
        find_tool(tool)


def board_dir() -> Path:
    """The folder of startup.c, harness.c and cortex_m.ld, as installed with the package."""
    return Path(str(resources.files("edgeprune.mcu") / "board"))


def _first_error(lines: list[str]) -> str:
    """The line that says what went wrong: the compiler's or the linker's own (an undefined reference, a linker
    script's ASSERT), not collect2's summary; the linker's path is cut to ``ld:``."""
    for line in lines:
        line = line.strip()
        if "warning" in line.lower() or line.startswith("collect2") or line.endswith(":"):
            continue  # a warning, the summary, or a context line ("...: in function `main':")
        if "/ld: " in line or line.startswith("ld: "):
            return "ld: " + line.split("ld: ", 1)[1]
        if "undefined reference" in line or "error" in line.lower():
            return line
    return next((line.strip() for line in lines if "error" in line.lower()), lines[0].strip())


def _run(command: Sequence[str], what: str) -> str:
    """Run a tool; its stdout, or a ValueError with ``what`` and the first error line it printed."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        raise ValueError(f"{what} failed: {_first_error(lines)}")
    return done.stdout


def compile_objects(sources: Iterable[str | os.PathLike], target: Target, out_dir: str | os.PathLike,
                    include_dirs: Iterable[str | os.PathLike] = (), defines: Iterable[str] = ()) -> list[Path]:
    """Compile each C file to ``out_dir/<stem>.o`` with ``-O2`` and the target's flags; returns the objects."""
    gcc = find_tool("arm-none-eabi-gcc")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    flags = [*target.cflags, *_CFLAGS, *(f"-I{d}" for d in include_dirs), *(f"-D{d}" for d in defines)]
    objects = []
    for source in map(Path, sources):
        obj = out_dir / f"{source.stem}.o"
        _run([gcc, *flags, "-c", str(source), "-o", str(obj)], f"compiling {source.name} for {target.name}")
        objects.append(obj)
    return objects


def link_relocatable(objects: Iterable[str | os.PathLike], target: Target, out: str | os.PathLike,
                     root: str = "edgeprune_invoke") -> Path:
    """Link ``objects`` into one relocatable object holding only what ``root`` reaches (a library's real size)."""
    gcc = find_tool("arm-none-eabi-gcc")
    _run([gcc, *target.cflags, "-nostdlib", "-r", "-Wl,--gc-sections", f"-Wl,--entry={root}",
          *map(str, objects), "-o", str(out)], f"linking the objects for {target.name}")
    return Path(out)


def runtime_functions(objects: Iterable[str | os.PathLike], target: Target, elf: str | os.PathLike,
                      root: str = "edgeprune_invoke") -> list[str]:
    """The functions that the C library and libgcc add to ``objects`` (an engine) linked as the target's firmware
    links them: sorted names, such as ``memcpy`` or, on a core without a divide or a long multiply, libgcc's
    ``__aeabi_idiv`` and ``__aeabi_lmul``.

    Links ``elf``, an image holding only what ``root`` reaches, against newlib-nano and libgcc (the unused
    code is dropped before the names are read, so a helper that only dead code calls is not listed).
    """
    objects = [str(o) for o in objects]
    nm = find_tool("arm-none-eabi-nm")
    _run([find_tool("arm-none-eabi-gcc"), *target.cflags, *NOSYS_SPECS, "-nostartfiles", "-Wl,--gc-sections",
          f"-Wl,--entry={root}", *objects, "-o", str(elf)], f"linking the engine with its run-time library for {target.name}")

    def functions(path: str) -> set[str]:
        lines = _run([nm, "--defined-only", path], f"listing the symbols of {Path(path).name}").splitlines()
        return {words[2] for words in map(str.split, lines) if len(words) == 3 and words[1] in "TW"}

    own = set().union(*(functions(o) for o in objects))
    return sorted(functions(str(elf)) - own)


def link_firmware(objects: Iterable[str | os.PathLike], target: Target, elf: str | os.PathLike,
                  semihosting: bool = True, linker: str = "arm-none-eabi-gcc") -> Path:
    """Link ``objects`` (which include the board's startup and a main) into an ELF for the target's board, with its
    linker script: with newlib's semihosting (startup.c compiled with ``-DEP_SEMIHOSTING``) or, ``semihosting=False``,
    with newlib-nano and no system calls (:data:`NOSYS_SPECS`). ``linker`` is the driver (``arm-none-eabi-g++`` for C++)."""
    driver = find_tool(linker)
    specs = (("--specs=nano.specs",) if target.nano else ()) + SEMIHOSTING_SPECS if semihosting else NOSYS_SPECS
    _run([driver, *target.cflags, *specs, "-nostartfiles",
          "-Wl,--gc-sections", "-T", str(board_dir() / target.linker_script), *map(str, objects), "-o", str(elf)],
         f"linking the firmware for {target.name}")
    return Path(elf)


def section_sizes(path: str | os.PathLike) -> dict[str, int]:
    """``arm-none-eabi-size`` of an object or ELF: ``text`` (code and read-only data), ``data`` and ``bss`` bytes."""
    out = _run([find_tool("arm-none-eabi-size"), "--format=berkeley", str(path)], f"sizing {Path(path).name}")
    values = out.splitlines()[1].split()
    return {"text": int(values[0]), "data": int(values[1]), "bss": int(values[2])}
