"""The generated engine where firmware lives: called from C++, linked without semihosting, run on a Cortex-M0.

Needs Debian's gcc-arm-none-eabi, libnewlib-arm-none-eabi and qemu-system-arm (``make setup``): without
them these tests fail, never skip.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import FASHION_SLICE
from edgeprune.data import DataConfig, load_data
from edgeprune.export.tflite import export_tflite
from edgeprune.export.tflm import run_int8
from edgeprune.mcu.codegen import export_c
from edgeprune.mcu.measure import measure_tflite
from edgeprune.mcu.toolchain import (
    board_dir, compile_objects, find_tool, get_target, link_firmware, runtime_functions,
)
from test_mcu_board import guide_examples, model_file, quantize, toolchain  # noqa: F401 (fixtures)

# A C++17 program around the engine: reads N inputs from inputs.bin (semihosting), writes the outputs to
# outputs.bin, prints "ran N". A static object's constructor must have run (startup.c's __libc_init_array).
MAIN_CPP = r"""#include <array>
#include <cstdint>
#include <cstdio>

#include "edgeprune_model.h"

namespace {

class Classifier {
public:
    Classifier() : ready_(true) {}  // a static constructor: runs only if the startup code runs them
    bool ready() const { return ready_; }
    int run(const std::array<EDGEPRUNE_INPUT_TYPE, EDGEPRUNE_INPUT_SIZE> &in,
            std::array<EDGEPRUNE_OUTPUT_TYPE, EDGEPRUNE_OUTPUT_SIZE> &out) const {
        return edgeprune_invoke(in.data(), out.data());
    }

private:
    bool ready_ = false;
};

Classifier classifier;
std::array<EDGEPRUNE_INPUT_TYPE, EDGEPRUNE_INPUT_SIZE> input;
std::array<EDGEPRUNE_OUTPUT_TYPE, EDGEPRUNE_OUTPUT_SIZE> output;

}  // namespace

int main() {
    static_assert(sizeof(input) == EDGEPRUNE_INPUT_SIZE * sizeof(EDGEPRUNE_INPUT_TYPE), "packed input");
    if (!classifier.ready())
        return 3;
    std::FILE *in = std::fopen("inputs.bin", "rb");
    std::FILE *out = std::fopen("outputs.bin", "wb");
    if (in == nullptr || out == nullptr)
        return 2;
    unsigned count = 0;
    while (std::fread(input.data(), sizeof input, 1, in) == 1) {
        if (classifier.run(input, output) != 0 || std::fwrite(output.data(), sizeof output, 1, out) != 1)
            return 1;
        count++;
    }
    std::fclose(out);
    std::fclose(in);
    std::printf("ran %u\n", count);
    return 0;
}
"""
CXXFLAGS = ("-O2", "-std=c++17", "-Wall", "-Wextra", "-fno-exceptions", "-fno-rtti", "-ffunction-sections",
            "-fdata-sections")


def qemu_command(machine: str, elf: Path, semihosting: bool = True) -> list[str]:
    return [find_tool("qemu-system-arm"), "-M", machine, "-display", "none", "-serial", "none",
            *(["-monitor", "none", "-semihosting-config", "enable=on,target=native"] if semihosting
              else ["-monitor", "stdio"]),
            "-icount", "shift=0,align=off,sleep=off", "-kernel", str(elf)]


def build_cpp(engine: Path, build: Path, main_cpp: str) -> Path:
    """main.cpp by arm-none-eabi-g++, the engine and the startup code by arm-none-eabi-gcc, linked by g++."""
    target = get_target("cortex-m4")
    objects = compile_objects(sorted(engine.glob("*.c")), target, build / "engine")
    objects += compile_objects([board_dir() / "startup.c"], target, build / "board", defines=["EP_SEMIHOSTING"])
    (build / "main.cpp").write_text(main_cpp)
    done = subprocess.run([find_tool("arm-none-eabi-g++"), *target.cflags, *CXXFLAGS, f"-I{engine}", "-c",
                           str(build / "main.cpp"), "-o", str(build / "main.o")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return link_firmware([build / "main.o", *objects], target, build / "main.elf", linker="arm-none-eabi-g++")


def test_cpp_program_links_the_engine_and_equals_tflm(toolchain, model_file, tmp_path):
    path, images, _ = model_file
    engine = export_c(path, tmp_path / "engine") and tmp_path / "engine"
    elf = build_cpp(engine, tmp_path / "build", MAIN_CPP)
    q = quantize(path, images)
    (tmp_path / "inputs.bin").write_bytes(q.tobytes())
    done = subprocess.run(qemu_command("mps2-an386", elf), cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"ran {len(q)}", done.stdout + done.stderr
    outputs = np.fromfile(tmp_path / "outputs.bin", dtype=np.int8).reshape(len(q), -1)
    np.testing.assert_array_equal(outputs, run_int8(path, q).reshape(len(q), -1))
    # the control: the same program against a header without its extern "C" block does not link
    bare = tmp_path / "bare"
    bare.mkdir()
    for file in engine.iterdir():
        text = file.read_text()
        if file.name.endswith(".h"):
            text = text.replace('extern "C" {', "").replace("#ifdef __cplusplus\n}\n#endif", "")
        (bare / file.name).write_text(text)
    with pytest.raises(ValueError, match=r"undefined reference to `edgeprune_invoke\(signed char const\*, signed char\*\)'"):
        build_cpp(bare, tmp_path / "bare-build", MAIN_CPP)


def monitor_registers(command: list[str], cwd: Path, symbol_addresses: dict[str, int], timeout: float = 20) -> dict:
    """Run QEMU with its monitor on stdin until the guest's PC stays put (a loop), then read the registers and the
    32-bit words at ``symbol_addresses``; returns ``{"R15": ..., "R00": ..., "mode": ..., name: word}``."""
    previous = None
    deadline = time.monotonic() + timeout
    with subprocess.Popen(command, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as qemu:
        try:
            while time.monotonic() < deadline:
                time.sleep(0.5)
                qemu.stdin.write("info registers\n")
                for name, address in symbol_addresses.items():
                    qemu.stdin.write(f"xp /1wx {address:#x}\n")
                qemu.stdin.write("info registers\n")  # the end of this round's answers
                qemu.stdin.flush()
                text = ""
                while text.count("R15=") < 2:
                    text += qemu.stdout.readline()
                first = text[:text.rfind("R00=")]
                state = dict(re.findall(r"(R\d\d)=([0-9a-f]{8})", first))
                state = {k: int(v, 16) for k, v in state.items()}
                xpsr = re.search(r"XPSR=[0-9a-f]{8} \S+ \S+ (\S+)", first)  # ... T priv-thread, or T handler
                words = {name: re.search(rf"{address:016x}: 0x([0-9a-f]{{8}})", first) for name, address in
                         symbol_addresses.items()}
                assert len(state) == 16 and xpsr and all(words.values()), f"unreadable QEMU monitor output: {first!r}"
                state["mode"] = xpsr.group(1)
                state.update({name: int(word.group(1), 16) for name, word in words.items()})
                if previous is not None and previous == state:
                    return state
                previous = state
        finally:
            qemu.kill()
    raise AssertionError(f"the guest did not settle in a loop within {timeout} s: {previous}")


def symbols(elf: Path) -> dict[str, int]:
    out = subprocess.run([find_tool("arm-none-eabi-nm"), str(elf)], capture_output=True, text=True, check=True).stdout
    return {words[2]: int(words[0], 16) for words in map(str.split, out.splitlines()) if len(words) == 3}


def test_firmware_guide_example_builds_without_semihosting(toolchain, model_file, tmp_path):
    """docs/firmware.md's Makefile with SEMIHOSTING=0 (newlib-nano, nosys): it links, holds no semihosting call, and in
    QEMU with no semihosting it starts, runs main (whose fopen finds no file system: status 2) and ends in _exit's loop,
    in thread mode, with no fault recorded."""
    path, _, _ = model_file
    for name, text in guide_examples().items():
        (tmp_path / name).write_text(text)
    export_c(path, tmp_path / "model")
    done = subprocess.run(["make", "--no-print-directory", "MODEL=model", f"BOARD={board_dir()}", "SEMIHOSTING=0"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "--specs=nosys.specs" in done.stdout and "EP_SEMIHOSTING" not in done.stdout
    elf = tmp_path / "firmware.elf"
    names = symbols(elf)
    assert "edgeprune_invoke" in names and "main" in names and "_exit" in names
    assert not {"initialise_monitor_handles", "_swiwrite", "_swiread"} & set(names)
    disassembly = subprocess.run([find_tool("arm-none-eabi-objdump"), "-d", str(elf)], capture_output=True,
                                 text=True, check=True).stdout
    # BKPT 0xAB is the halfword beab, as an instruction or as data in the code (not a b.w's second half)
    assert "edgeprune_invoke>:" in disassembly and not re.search(r":\s+beab\s+\t", disassembly)
    state = monitor_registers(qemu_command("mps2-an386", elf, semihosting=False), tmp_path,
                              {"ep_fault_exception": names["ep_fault_exception"]})
    assert state["R15"] == names["_exit"] and state["R00"] == 2, state
    assert state["mode"] == "priv-thread" and state["ep_fault_exception"] == 0, state


class M0Net(nn.Module):
    """A small CNN for 28x28 images with every kind of layer the engine has a kernel for in it: a dense 3x3
    convolution, max pooling, a depthwise 3x3 and a (sparse) pointwise convolution, average pooling, a sparse
    linear layer. Its engine fits the micro:bit's 16 KB of RAM."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.pw = nn.Conv2d(4, 8, 1)
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AvgPool2d(2)
        self.fc = nn.Linear(8 * 7 * 7, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.avg(torch.relu(self.pw(torch.relu(self.dw(x)))))
        return self.fc(x.flatten(1))


SOFT_FLOAT = re.compile(r"__aeabi_[fd]|__aeabi_[iul]\d?2[fd]|[sd]f\d$|[sd]f$")


def test_cortex_m0_engine_equals_tflm_on_100_inputs(toolchain, tmp_path):
    """The portable kernels (no DSP instructions) on QEMU's micro:bit (nRF51, Cortex-M0): 100 seeded inputs, every
    output equal to TFLM's; instructions from SysTick at 16 MHz (62.5 instructions a tick); no soft-float helper."""
    splits = load_data(DataConfig(name="fashion-mnist", data_dir=str(FASHION_SLICE), val_size=0))
    torch.manual_seed(0)
    model = M0Net().eval()
    with torch.no_grad():
        for layer in (model.pw, model.fc):
            w = layer.weight
            w[w.abs() <= w.abs().flatten().kthvalue(int(0.8 * w.numel())).values] = 0
    calibration = torch.stack([splits.train[i][0] for i in range(64)]) * 0.5 + 0.5
    path = export_tflite(model, tmp_path / "m0.tflite", calibration)
    inputs = np.random.default_rng(0).integers(-128, 128, size=(100, 28, 28, 1), dtype=np.int8)
    result = measure_tflite(path, inputs, None, tmp_path / "out", target="cortex-m0")
    assert result["board"] == "QEMU microbit" and result["complete"]
    assert result["equal_to_tflm"] == result["images_run"] == 100
    assert {"dense", "sparse"} <= {layer["engine"] for layer in result["layers"]}
    assert result["instructions_resolution"] == 62.5 and result["instructions"] > 100_000
    assert abs(sum(layer["instructions"] for layer in result["layers"]) - result["instructions"]) <= 2 * 62.5
    assert result["flash_bytes"] < 256 * 1024 and result["ram_bytes"] < 16 * 1024
    assert "cortex-m0 " in result["fits_on_build"]
    # the harness that ran is an ARMv6-M image
    elf = tmp_path / "out" / "build" / "cortex-m0-harness" / "harness.elf"
    attributes = subprocess.run([find_tool("arm-none-eabi-readelf"), "-A", str(elf)], capture_output=True,
                                text=True, check=True).stdout
    assert re.search(r"Tag_CPU_arch: v6S?-M", attributes)
    # what the int8 engine takes from libgcc and the C library on the M0: integer helpers only
    objects = sorted((tmp_path / "out" / "build" / "cortex-m0" / "objects").glob("*.o"))
    helpers = runtime_functions(objects, get_target("cortex-m0"), tmp_path / "runtime.elf")
    assert helpers and "memcpy" in helpers and not [h for h in helpers if SOFT_FLOAT.search(h)], helpers
