"""Running a harness firmware (board/harness.c) in qemu-system-arm and reading what it reported.

QEMU runs with ``-icount shift=0,align=off,sleep=off``: every guest instruction advances the
virtual clock by exactly 1 ns, so the SysTick ticks the harness prints convert to instructions
executed in emulation (not cycles) at a fixed resolution of one tick (:attr:`Target.instructions_per_tick`).
Semihosting gives the guest the host's files in QEMU's working folder and its console on stdout.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .toolchain import Target, find_tool

__all__ = ["GuestRun", "parse_harness_output", "run_guest"]


@dataclass
class GuestRun:
    """What a harness run reported: per image, the SysTick ticks in total and per layer; and how it ended.

    ``error`` is None when the guest ran every image and exited with status 0; otherwise one line
    saying what went wrong (a timeout, a fault, an error the harness reported). The images reported
    before that are kept.
    """

    layers: int | None = None
    totals: list[int] = field(default_factory=list)
    layer_ticks: list[list[int]] = field(default_factory=list)
    stack_bytes: int | None = None
    done: int | None = None
    error: str | None = None


def parse_harness_output(text: str) -> GuestRun:
    """Read the ``EP ...`` lines the harness prints (see board/harness.c) into a :class:`GuestRun`; other lines are ignored.

    A line that does not read as the harness writes it (say, cut off by a timeout) ends the report there.
    """
    run = GuestRun()
    for line in text.splitlines():
        words = line.split()
        if len(words) < 2 or words[0] != "EP":
            continue
        if words[1] == "error:":
            run.error = f"the guest reported: {line[3:].strip()}"
            continue
        numbers = [int(w) for w in words[2:] if w.isdigit()]
        one = len(words) == 3 and len(numbers) == 1
        if words[1] == "layers" and one:
            run.layers = numbers[0]
        elif words[1] == "stack" and one:
            run.stack_bytes = numbers[0]
        elif words[1] == "done" and one:
            run.done = numbers[0]
        elif (words[1] == "image" and run.layers is not None and len(words) == 6 + run.layers
              and words[3:6:2] == ["total", "layers"] and len(numbers) == 2 + run.layers):
            run.totals.append(numbers[1])
            run.layer_ticks.append(numbers[2:])
        else:
            run.error = f"the guest's report has an unreadable line: {line[:80]!r}"
            break
    return run


def run_guest(elf: str | os.PathLike, target: Target, workdir: str | os.PathLike, timeout: float,
              extra_args: Sequence[str] = ()) -> GuestRun:
    """Run the firmware ``elf`` on the target's QEMU board in ``workdir`` for at most ``timeout`` seconds;
    ``extra_args`` go to QEMU as they are (the cycle estimator's ``-plugin``, :mod:`edgeprune.mcu.cycles`).

    Never raises for what the guest does: a hang, a fault or a failure status comes back as
    ``GuestRun.error`` (one line), with the images reported until then.
    """
    if target.machine is None:
        raise ValueError(f"target {target.name} is built for its size only and runs on no board")
    command = [find_tool("qemu-system-arm"), "-M", target.machine, "-display", "none", "-monitor", "none",
               "-serial", "none", "-semihosting-config", "enable=on,target=native",
               "-icount", "shift=0,align=off,sleep=off", *extra_args, "-kernel", str(Path(elf).resolve())]
    try:
        done = subprocess.run(command, cwd=workdir, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        text = (exc.stdout or b"").decode(errors="replace")
        run = parse_harness_output(text[:text.rfind("\n") + 1])  # a line cut off by the kill is dropped
        run.error = (f"the guest on {target.machine} did not finish within {timeout:g} s "
                     f"(hung after {len(run.totals)} images); raise the timeout if the model is that slow")
        return run
    run = parse_harness_output(done.stdout.decode(errors="replace"))
    if run.error is None and done.returncode != 0:
        stderr = done.stderr.decode(errors="replace").strip().splitlines()
        run.error = f"qemu-system-arm exited with status {done.returncode}" + (f": {stderr[-1]}" if stderr else "")
    elif run.error is None and run.done is None:
        run.error = "the guest exited without reporting 'EP done'; is the firmware built with board/harness.c?"
    return run
