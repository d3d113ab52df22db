"""The Cortex-M4 cycle estimator (mcu/cycles.py and its QEMU plugin) against sequences timed by hand from the TRM.

Each snippet is a loop in inline assembly, built into a hand-written engine run under the real harness in QEMU
with the plugin loaded: layer 0 runs the snippet n times. Two loop counts differ by exactly 1000 iterations, so the
difference in the layer's estimated cycles is 1000 x the loop body's cycles, computed here from the rules of ARM
DDI 0439B (Cortex-M4 TRM r0p1), Table 3-1 and section 3.3.2 "Load/store timings", zero wait states.

Needs Debian's gcc-arm-none-eabi, libnewlib-arm-none-eabi, qemu-system-arm and a host cc: a missing one fails.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeprune.mcu.cycles import CYCLES_NOTE, build_plugin, parse_cycles, plugin_arguments
from edgeprune.mcu.measure import build_harness, measure_engine, mcu_table
from edgeprune.mcu.qemu import run_guest
from edgeprune.mcu.toolchain import find_tool, get_target
from edgeprune.mcu.units import parse_hz

# The Cortex-M4's timings (ARM DDI 0439B, Table 3-1; 3.3.2), as the test charges them by hand.
DP = 1             # data processing, MOV, CMP, IT not folded
MAC = 1            # MUL, MLA, SMLAD, SMLABB (single cycle on the M4)
DIV = 12           # UDIV/SDIV: "2 to 12", the estimator charges the worst case
LDR = 2            # a single load or store, not pipelined
PIPELINED = 1      # a single load/store right after a single load whose result is not its address
STALL = 1          # extra: an address from the data-processing result just before
P = 2              # pipeline refill of a taken branch (Table 3-1: 1 to 3; the estimator's assumption)
TAKEN = 1 + P
NOT_TAKEN = 1
LDM = lambda n: 1 + n  # noqa: E731  LDM/STM/PUSH/POP of n registers
LOOP = DP + TAKEN  # subs r1, r1, #1; bne 1b (taken on every iteration the difference counts)

# name: (loop body; cycles of one iteration by hand; instructions of one iteration)
SNIPPETS = {
    "spin": ("", LOOP, 2),
    # TRM 3.3.2: "LDR R0,[R1]; LDR R1,[R2] - normally three cycles total"
    "back-to-back loads": ("ldr r2, [r0]\n ldr r3, [r0, #4]", LDR + PIPELINED + LOOP, 4),
    "three loads": ("ldr r2, [r0]\n ldr r3, [r0, #4]\n ldr r4, [r0, #8]", LDR + PIPELINED + PIPELINED + LOOP, 5),
    # the second load's address is the first one's result: not pipelined
    "load then dependent load": ("ldr r2, [r0]\n ldr r3, [r2]", LDR + LDR + LOOP, 4),
    # a data-processing use of a load's result waits for nothing in the TRM
    "load then use": ("ldr r2, [r0]\n adds r3, r2, #1", LDR + DP + LOOP, 4),
    # TRM 3.3.2: "LDR R0,[R1,R2]; STR R0,[R3,#20] - normally three cycles total"
    "load then store": ("ldr r2, [r0, r5]\n str r2, [r0, #20]", LDR + PIPELINED + LOOP, 4),
    # "nothing can be pipelined after the store"
    "store then load": ("str r2, [r0, #20]\n ldr r3, [r0]", LDR + LDR + LOOP, 4),
    "address from data processing": ("adds r2, r0, #4\n ldr r3, [r2]", DP + LDR + STALL + LOOP, 4),
    "SMLAD chain": ("smlad r2, r3, r4, r2\n smlad r2, r3, r4, r2\n smlad r2, r3, r4, r2\n smlad r2, r3, r4, r2",
                    4 * MAC + LOOP, 6),
    "MLA and SMLABB": ("mla r2, r3, r4, r2\n smlabb r2, r3, r4, r2", 2 * MAC + LOOP, 4),
    "UDIV": ("udiv r2, r3, r4", DIV + LOOP, 3),
    "LDM of four": ("ldm r0, {r2, r3, r4, r5}", LDM(4) + LOOP, 3),
    "PUSH then POP": ("push {r2, r3, r4, r5}\n pop {r2, r3, r4, r5}", LDM(4) + LDM(4) + LOOP, 4),
    "unaligned word, odd address": ("ldr r2, [r0, #1]", LDR + 2 + LOOP, 3),
    "unaligned word, halfword address": ("ldr r2, [r0, #2]", LDR + 1 + LOOP, 3),
    "taken branch forward": ("b 2f\n nop\n 2:", TAKEN + LOOP, 3),
    "conditional branch not taken": ("cmp r1, #0\n beq 2f\n 2:", DP + NOT_TAKEN + LOOP, 4),
    # IT folded onto the 16-bit CMP before it (Table 3-1, note on IT): 0 cycles
    "IT folded": ("cmp r1, #0\n it ne\n movne r2, #1", DP + 0 + DP + LOOP, 5),
}
N0, N1 = 100, 1100

HEADER = """#include <stdint.h>
#define EDGEPRUNE_INPUT_TYPE int8_t
#define EDGEPRUNE_OUTPUT_TYPE int8_t
#define EDGEPRUNE_INPUT_SIZE 8
#define EDGEPRUNE_OUTPUT_SIZE 8
#define EDGEPRUNE_ARENA_SIZE 0
#define EDGEPRUNE_NUM_LAYERS 2
#ifdef EDGEPRUNE_LAYER_DONE
void EDGEPRUNE_LAYER_DONE(int layer);
#else
#define EDGEPRUNE_LAYER_DONE(layer) ((void)0)
#endif
int edgeprune_invoke(const int8_t *input, int8_t *output);
"""


def engine_source(names=tuple(SNIPPETS)) -> str:
    """edgeprune_invoke: input[0] picks a snippet, input[4..7] is its loop count; r0 points at 8 aligned words whose
    first holds its own address (for the dependent load), r3 = 100, r4 = 7, r5 = 0."""
    cases = []
    for i, body in enumerate(SNIPPETS[name][0] for name in names):
        asm = "\\n".join([".syntax unified", "mov r0, %[cells]", "mov r1, %[n]", "movs r3, #100", "movs r4, #7",
                          "movs r5, #0", "1:", *body.split("\n"), "subs r1, r1, #1", "bne 1b"])
        cases.append(f'    case {i}: __asm__ volatile("{asm}" : : [cells] "r"(cells), [n] "r"(n) '
                     ': "r0", "r1", "r2", "r3", "r4", "r5", "cc", "memory"); break;')
    return "\n".join([
        '#include "edgeprune_model.h"',
        "static uint32_t cells[8] __attribute__((aligned(8)));",
        "int edgeprune_invoke(const int8_t *input, int8_t *output) {",
        "    uint32_t n = (uint8_t)input[4] | (uint32_t)(uint8_t)input[5] << 8 | (uint32_t)(uint8_t)input[6] << 16 |",
        "                 (uint32_t)(uint8_t)input[7] << 24;",
        "    cells[0] = (uint32_t)cells;",
        "    switch (input[0]) {", *cases, "    default: return 1;", "    }",
        "    EDGEPRUNE_LAYER_DONE(0);",
        "    EDGEPRUNE_LAYER_DONE(1);",
        "    for (int i = 0; i < EDGEPRUNE_OUTPUT_SIZE; i++)",
        "        output[i] = input[i];",
        "    return 0;", "}", ""])


LAYERS = {"layers": [{"op": "SNIPPET", "engine": "dense", "macs": 1, "nonzero_macs": 1, "weight_bytes": 0,
                      "index_bytes": 0, "predicted_instructions": 1}] * 2}


def snippet_engine(folder: Path, names=tuple(SNIPPETS)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "edgeprune_model.h").write_text(HEADER)
    (folder / "edgeprune_model.c").write_text(engine_source(names))
    (folder / "layers.json").write_text(json.dumps(LAYERS))
    return folder


def snippet_input(index: int, loops: int) -> np.ndarray:
    return np.frombuffer(bytes([index, 0, 0, 0]) + loops.to_bytes(4, "little"), np.int8)


@pytest.fixture(scope="module")
def snippet_runs(tmp_path_factory):
    """One QEMU run of every snippet at N0 and N1 iterations: the plugin's counts and the harness's."""
    for tool in ("arm-none-eabi-gcc", "arm-none-eabi-nm", "qemu-system-arm"):
        find_tool(tool)
    folder = tmp_path_factory.mktemp("snippets")
    target = get_target("cortex-m4")
    elf = build_harness(snippet_engine(folder / "engine"), target, folder / "build")
    plugin = build_plugin(target, folder / "cache")
    inputs = [snippet_input(i, n) for i in range(len(SNIPPETS)) for n in (N0, N1)]
    (folder / "inputs.bin").write_bytes(np.stack(inputs).tobytes())
    guest = run_guest(elf, target, folder, 60, plugin_arguments(plugin, elf, folder / "cycles.txt"))
    assert guest.error is None and guest.done == len(inputs)
    return parse_cycles(folder / "cycles.txt", 2), guest


@pytest.mark.parametrize("index, name", list(enumerate(SNIPPETS)))
def test_snippet_cycles_equal_the_hand_timing(snippet_runs, index, name):
    cycles, guest = snippet_runs
    _, per_iteration, instructions = SNIPPETS[name]
    a, b = 2 * index, 2 * index + 1
    assert cycles.layer_cycles[b][0] - cycles.layer_cycles[a][0] == (N1 - N0) * per_iteration
    assert cycles.layer_instructions[b][0] - cycles.layer_instructions[a][0] == (N1 - N0) * instructions
    # the plugin's instructions are QEMU's: the harness's SysTick count moves by the same, to its 40-instruction tick
    ticks = (guest.layer_ticks[b][0] - guest.layer_ticks[a][0]) * 40
    assert abs(ticks - (N1 - N0) * instructions) <= 40
    # layer 1 is the call of the hook alone (movs r0, #1; bl ep_layer_done): the hook's own instructions are not
    # counted, nor the refill of its return
    assert cycles.layer_cycles[a][1] == cycles.layer_cycles[b][1] == DP + TAKEN
    assert cycles.layer_instructions[a][1] == 2
    assert cycles.cycles[a] >= sum(cycles.layer_cycles[a])


def test_plugin_built_once_and_a_clear_error_without_a_compiler(tmp_path):
    target = get_target("cortex-m4")
    first = build_plugin(target, tmp_path)
    assert first.is_file() and build_plugin(target, tmp_path) == first and first.stat().st_size > 1000
    with pytest.raises(ValueError, match=r"^cannot build the cycle-estimating QEMU plugin: no host C compiler "
                                         r"'no-such-cc' on PATH \(install gcc"):
        build_plugin(target, tmp_path / "other", compiler="no-such-cc")
    fake = tmp_path / "bin" / "fakecc"  # a compiler that fails: its error line is the message's end
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'fakecc: error: cannot compile' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(ValueError, match=r"^cannot build the cycle-estimating QEMU plugin with .*fakecc: "
                                         r"fakecc: error: cannot compile$"):
        build_plugin(target, tmp_path / "third", compiler=str(fake))
    with pytest.raises(ValueError, match="Arm publishes no per-instruction cycle table for the Cortex-M7"):
        build_plugin(get_target("cortex-m7"), tmp_path)
    assert shutil.which("cc")


def test_parse_cycles_keeps_whole_inferences_only(tmp_path):
    path = tmp_path / "cycles.txt"
    path.write_text("EPC layer 0 0 cycles 10 instructions 7\nEPC layer 0 1 cycles 5 instructions 4\n"
                    "EPC image 0 cycles 20 instructions 13\nEPC layer 1 0 cycles 11 instructions 8\n")
    run = parse_cycles(path, 2)
    assert run.cycles == [20] and run.instructions == [13] and run.layer_cycles == [[10, 5]]
    assert run.layer_instructions == [[7, 4]]
    assert parse_cycles(path, 3).cycles == []  # a layer count that does not match reads nothing
    assert parse_cycles(tmp_path / "none.txt", 2).cycles == []


def test_parse_hz():
    assert parse_hz("120MHz") == 120_000_000 and parse_hz("120 mhz") == 120_000_000
    assert parse_hz("48000kHz") == 48_000_000 and parse_hz("1e6 Hz") == 1_000_000 and parse_hz(16_000_000) == 16_000_000
    assert parse_hz("0.5GHz") == 500_000_000
    for bad in ("fast", "120MB", "-3MHz", "0Hz"):
        with pytest.raises(ValueError, match="cannot read .* as a clock: give a positive number with Hz, kHz, MHz or GHz"):
            parse_hz(bad)


def test_mcu_json_and_table_carry_the_estimate(snippet_runs, tmp_path):
    """measure_engine on the snippet engine (spin, 1000 iterations): mcu.json has the estimate per inference and per
    layer with its note; the table shows it next to instructions, and in milliseconds at a clock; the M7 shows '-'."""
    engine = snippet_engine(tmp_path / "engine", ["spin"])  # also built for the Cortex-M0 (sizes): no Thumb-2
    inputs = np.stack([snippet_input(0, 1000)] * 2)
    result = measure_engine(engine, inputs, inputs.copy(), None, tmp_path / "m4")
    spin_cycles = 1000 * LOOP - (TAKEN - NOT_TAKEN)  # the last bne falls through
    assert result["cycles_note"] == CYCLES_NOTE == \
        "estimated cycles, Cortex-M4 timings (ARM DDI 0439B, Table 3-1), zero wait states"
    layer0 = result["layers"][0]["estimated_cycles"]
    assert spin_cycles < layer0 < spin_cycles + 100  # the loop plus the call's and the switch's few instructions
    assert result["layers"][1]["estimated_cycles"] == DP + TAKEN
    assert result["estimated_cycles"] >= layer0 + result["layers"][1]["estimated_cycles"]
    assert 1.9 < result["cycles_per_instruction"] < 2.1  # 4 cycles per 2 instructions, almost all of it
    assert json.loads((tmp_path / "m4" / "mcu.json").read_text()) == result
    table = mcu_table(result, clock_hz=parse_hz("100MHz"))
    assert f"estimated cycles per inference {result['estimated_cycles']:,}" in table
    assert f"({CYCLES_NOTE})" in table
    assert f"{result['estimated_cycles'] / 1e5:.3f} ms at 100 MHz (estimated)" in table
    row = next(line for line in table.splitlines() if line.startswith("      0  SNIPPET"))
    assert row.split()[-3] == f"{layer0:,}"  # estimated cycles, right after the instructions
    m7 = measure_engine(engine, inputs, inputs.copy(), None, tmp_path / "m7", target="cortex-m7")
    assert m7["estimated_cycles"] is None and m7["layers"][0]["estimated_cycles"] is None
    assert m7["cycles_note"].startswith("no estimate: Arm publishes no per-instruction cycle table")
    assert "estimated cycles per inference -" in mcu_table(m7, clock_hz=10**8)


def test_report_table_shows_estimated_cycles_next_to_instructions():
    from edgeprune.report import mcu_markdown

    def row(model, instructions, cycles, note=CYCLES_NOTE):
        return {"model": model, "target": "cortex-m4", "board": "QEMU mps2-an386", "images": 4, "images_run": 4,
                "sample": None, "instructions_resolution": 40, "equal_to_tflm": 4, "accuracy": 50.0,
                "instructions": instructions, "estimated_cycles": cycles, "cycles_note": note, "flash_bytes": 1000,
                "weight_bytes": 600, "index_bytes": 0, "ram_bytes": 900, "layers": []}

    text = mcu_markdown({"mcu": [row("Baseline", 2_000_000, 2_700_000), row("Pruned", 1_000_000, 1_485_000)]})
    assert f"Cycles are an estimate: {CYCLES_NOTE}." in text
    assert "| Instructions per inference | vs first row | Estimated cycles | vs first row |" in text
    assert "| 2,000,000 | 1.00x | 2,700,000 | 1.00x |" in text and "| 1,000,000 | 0.50x | 1,485,000 | 0.55x |" in text
    old = row("Old", 1_000_000, None, None)  # a target without timing rules, or a result from before the estimate
    assert "| 1,000,000 | 1.00x | - | – |" in mcu_markdown({"mcu": [old]})
