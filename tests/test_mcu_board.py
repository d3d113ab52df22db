"""The generated C engine on emulated Cortex-M boards (QEMU): outputs against TFLM, instruction counts, failures.

Needs Debian's gcc-arm-none-eabi, libnewlib-arm-none-eabi and qemu-system-arm: without them
these tests fail (never skip), as ``make setup`` installs them.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import FASHION_SLICE
from edgeprune.data import DataConfig, load_data
from edgeprune.export.tflite import export_tflite
from edgeprune.mcu.codegen import export_c
from edgeprune.mcu.measure import EngineMismatch, build_harness, measure_engine, measure_on_mcu, mcu_table
from edgeprune.mcu.qemu import parse_harness_output, run_guest
from edgeprune.mcu.toolchain import DEBIAN_PACKAGES, board_dir, find_tool, get_target
from tflite_micro.python.tflite_micro import runtime  # a dependency: missing is a failure, never a skip


FIRMWARE_GUIDE = Path(__file__).parent.parent / "docs" / "firmware.md"


@pytest.fixture(scope="module")
def toolchain() -> None:
    for tool in ("arm-none-eabi-gcc", "arm-none-eabi-size", "qemu-system-arm"):
        try:
            find_tool(tool)
        except ValueError as exc:
            pytest.fail(str(exc), pytrace=False)


class SmallNet(nn.Module):
    """Two 3x3 convolutions with max pooling and a linear layer, for 28x28 Fashion-MNIST."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(8 * 7 * 7, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        return self.fc(x.flatten(1))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """SmallNet with 80 % of conv2's and fc's weights zeroed (smallest magnitudes), as an int8 .tflite, and 8 test images.

    The net is untrained: the tests compare outputs, not accuracy."""
    splits = load_data(DataConfig(name="fashion-mnist", data_dir=str(FASHION_SLICE), val_size=0))
    torch.manual_seed(0)
    model = SmallNet().eval()
    with torch.no_grad():
        for layer in (model.conv2, model.fc):
            w = layer.weight
            w[w.abs() <= w.abs().flatten().kthvalue(int(0.8 * w.numel())).values] = 0
    # pixels in [0, 1] (Normalize undone), so the input zero point is -128, not 0, and a forgotten one shows
    calibration = torch.stack([splits.train[i][0] for i in range(64)]) * 0.5 + 0.5
    path = export_tflite(model, tmp_path_factory.mktemp("model") / "small.tflite", calibration)
    images = torch.stack([splits.test[i][0] for i in range(8)]) * 0.5 + 0.5
    labels = torch.tensor([splits.test[i][1] for i in range(8)])
    return path, images, labels


def tflm_outputs(path: Path, q_nhwc: np.ndarray) -> np.ndarray:
    """TFLite Micro's int8 outputs for int8 NHWC inputs (the reference the engine must equal)."""
    interp = runtime.Interpreter.from_bytes(path.read_bytes(), arena_size=1 << 20)
    rows = []
    for image in q_nhwc:
        interp.set_input(image[None], 0)
        interp.invoke()
        rows.append(np.asarray(interp.get_output(0)).reshape(-1))
    return np.stack(rows).astype(np.int8)


def input_qparams(path: Path) -> tuple[float, int]:
    interp = runtime.Interpreter.from_bytes(path.read_bytes(), arena_size=1 << 20)
    qp = interp.get_input_details(0)["quantization_parameters"]
    return float(qp["scales"][0]), int(qp["zero_points"][0])


def quantize(path: Path, images: torch.Tensor) -> np.ndarray:
    """Images quantized as evaluate_tflite does (round half to even), NHWC int8."""
    scale, zero_point = input_qparams(path)
    return np.clip(np.round(images.numpy().transpose(0, 2, 3, 1) / scale) + zero_point, -128, 127).astype(np.int8)


def test_m4_engine_equals_tflm_and_layers_add_up(toolchain, model_file, tmp_path):
    path, images, labels = model_file
    result = measure_on_mcu(path, images, labels, tmp_path, target="cortex-m4")
    assert json.loads((tmp_path / "mcu.json").read_text()) == result
    # the outputs QEMU wrote, against TFLM run here on inputs quantized here
    q = quantize(path, images)
    outputs = np.fromfile(tmp_path / "run" / "outputs.bin", dtype=np.int8).reshape(len(images), -1)
    expected = tflm_outputs(path, q)
    np.testing.assert_array_equal(outputs, expected)
    assert result["equal_to_tflm"] == result["images_run"] == len(images) and result["complete"]
    assert result["accuracy"] == pytest.approx(100.0 * float(np.mean(expected.argmax(1) == labels.numpy())))
    # per-layer counts add up to the total within the timer's resolution (one SysTick tick = 40 instructions)
    assert result["instructions_resolution"] == 40
    per_layer = [layer["instructions"] for layer in result["layers"]]
    assert all(count >= 0 for count in per_layer) and result["instructions"] > 0
    assert abs(sum(per_layer) - result["instructions"]) <= 2 * 40
    # sizes: the weights are in flash; the stack was measured, not the whole painted region
    assert result["flash_bytes"] > result["weight_bytes"] + result["index_bytes"] > 0
    assert 0 < result["stack_bytes"] < 4096
    assert result["ram_bytes"] == result["static_ram_bytes"] + result["stack_bytes"] >= result["arena_bytes"]
    with pytest.raises(ValueError, match="1x14x14 = 196 values each; small.tflite takes 784"):
        measure_on_mcu(path, images[:, :, :14, :14], labels, tmp_path / "wrong")
    table = mcu_table(result)
    assert "instructions executed in emulation, not cycles" in table and "8 / 8" in table


@pytest.mark.parametrize("target", ["cortex-m7", "cortex-m55"])
def test_m7_and_m55_smoke(toolchain, model_file, tmp_path, target):
    """The real engine, built with the harness alone (no size builds), equals TFLM on two images."""
    path, images, _ = model_file
    export_c(path, tmp_path / "engine")
    tgt = get_target(target)
    elf = build_harness(tmp_path / "engine", tgt, tmp_path / "build")
    q = quantize(path, images[:2])
    (tmp_path / "inputs.bin").write_bytes(q.tobytes())
    run = run_guest(elf, tgt, tmp_path, timeout=60)
    assert run.error is None and run.done == 2 and min(run.totals) > 0
    outputs = np.fromfile(tmp_path / "outputs.bin", dtype=np.int8).reshape(2, -1)
    np.testing.assert_array_equal(outputs, tflm_outputs(path, q))


# A hand-written model library with the engine's API, for what the real engine must never do:
# layer 0 spins 2 x (input[4..7] as a 32-bit count) instructions, layer 1 likewise with input[8..11];
# input[0] == 127 hangs, input[0] == -128 faults (an undefined instruction), input[0] == 126 uses 40 KB
# of stack (more than the linker script keeps); outputs copy the inputs.
FIXTURE_HEADER = """#include <stdint.h>
#define EDGEPRUNE_INPUT_TYPE int8_t
#define EDGEPRUNE_OUTPUT_TYPE int8_t
#define EDGEPRUNE_INPUT_SIZE 12
#define EDGEPRUNE_OUTPUT_SIZE 12
#define EDGEPRUNE_ARENA_SIZE 0
#define EDGEPRUNE_NUM_LAYERS 2
#ifdef EDGEPRUNE_LAYER_DONE
void EDGEPRUNE_LAYER_DONE(int layer);
#else
#define EDGEPRUNE_LAYER_DONE(layer) ((void)0)
#endif
int edgeprune_invoke(const int8_t *input, int8_t *output);
"""
FIXTURE_SOURCE = r"""#include "edgeprune_model.h"
static void spin(const int8_t *count) {
    uint32_t n = (uint8_t)count[0] | (uint32_t)(uint8_t)count[1] << 8 | (uint32_t)(uint8_t)count[2] << 16 |
                 (uint32_t)(uint8_t)count[3] << 24;
    __asm__ volatile(".syntax unified\n1: subs %0, %0, #1\n\tbne 1b" : "+r"(n) : : "cc");
}
/* Its own frame, so that only the input that asks for it takes the 40 KB (16 KB is all the micro:bit has). */
static __attribute__((noinline)) void deep_stack(int8_t value) {
    volatile int8_t deep[40 * 1024];
    for (int i = 0; i < (int)sizeof deep; i += 64)
        deep[i] = value;
}
int edgeprune_invoke(const int8_t *input, int8_t *output) {
    if (input[0] == 127)
        for (;;) {
        }
    if (input[0] == -128)
        __builtin_trap();
    if (input[0] == 126)
        deep_stack(input[1]);
    spin(input + 4);
    EDGEPRUNE_LAYER_DONE(0);
    spin(input + 8);
    EDGEPRUNE_LAYER_DONE(1);
    for (int i = 0; i < EDGEPRUNE_OUTPUT_SIZE; i++)
        output[i] = input[i];
    return 0;
}
"""
FIXTURE_LAYERS = {"layers": [{"op": "SPIN", "engine": "dense", "macs": 1, "nonzero_macs": 1, "weight_bytes": 0,
                              "index_bytes": 0, "predicted_instructions": 200}] * 2}


def fixture_engine(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "edgeprune_model.h").write_text(FIXTURE_HEADER)
    (folder / "edgeprune_model.c").write_text(FIXTURE_SOURCE)
    (folder / "layers.json").write_text(json.dumps(FIXTURE_LAYERS))
    return folder


def spin_input(first: int, loops0: int, loops1: int) -> np.ndarray:
    """One input of the fixture: ``first``, three zeros, then the two loop counts as 32-bit little-endian numbers."""
    return np.frombuffer(bytes([first & 0xFF, 0, 0, 0]) + loops0.to_bytes(4, "little") + loops1.to_bytes(4, "little"),
                         np.int8)


@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m7", "cortex-m55", "cortex-m0"])
def test_counts_are_guest_instructions(toolchain, tmp_path, target):
    """A loop of 2 x n instructions reads as 2 x n instructions, to the tick (40 on mps2, 31.25 on an547, 62.5 on the
    micro:bit's nRF51).

    On the M4, one loop of 680 M instructions outlasts SysTick's 24-bit period (2^24 ticks = 671 M).
    """
    tgt = get_target(target)
    elf = build_harness(fixture_engine(tmp_path / "engine"), tgt, tmp_path / "build")
    loops = [(1_000, 20_000), (51_000, 30_000), (400_000, 1)] + [(340_000_000, 7)] * (target == "cortex-m4")
    (tmp_path / "inputs.bin").write_bytes(np.stack([spin_input(1, *n) for n in loops]).tobytes())
    run = run_guest(elf, tgt, tmp_path, timeout=60)
    assert run.error is None and run.done == len(loops) and run.layers == 2
    ticks = np.array(run.layer_ticks, dtype=float) * tgt.instructions_per_tick
    spun = 2 * np.array(loops, dtype=float)
    # the difference between two images is the loop's alone (call, hook and timer reads cancel)
    np.testing.assert_allclose(ticks[1:] - ticks[0], spun[1:] - spun[0], rtol=0, atol=2 * tgt.instructions_per_tick)
    assert np.all(np.abs(ticks - spun) < 100 + tgt.instructions_per_tick)  # the overhead is a few dozen
    assert 0 < run.stack_bytes < 256


@pytest.mark.parametrize("first, message", [(127, "did not finish within 3 s"), (-128, "EP fault"),
                                            (126, "used all of the stack region")])
def test_hung_crashed_or_overflowing_guest_gives_one_line_and_keeps_results(toolchain, tmp_path, first, message):
    engine = fixture_engine(tmp_path / "engine")
    inputs = np.stack([spin_input(i, 100, 100) for i in range(3)] + [spin_input(first, 100, 100)] * 2)
    with pytest.raises(ValueError) as caught:
        measure_engine(engine, inputs, inputs.copy(), np.zeros(5, dtype=int), tmp_path / "out", timeout=3)
    text = str(caught.value)
    assert "\n" not in text and message in text and "mcu.json" in text
    saved = json.loads((tmp_path / "out" / "mcu.json").read_text())
    assert saved["images_run"] == 3 and saved["equal_to_tflm"] == 3 and not saved["complete"]
    assert saved["error"] in text and len(saved["layers"]) == 2 and saved["instructions"] > 0
    assert f"3 of 5 inputs (stopped: {saved['error']})" in mcu_table(saved)


def test_an_output_that_differs_from_tflm_is_a_failure(toolchain, tmp_path):
    """The fixture copies its inputs: a reference that differs in one byte of the third input is an EngineMismatch
    naming it, after mcu.json records the count."""
    engine = fixture_engine(tmp_path / "engine")
    inputs = np.stack([spin_input(i, 10, 10) for i in range(4)])
    expected = inputs.copy()
    expected[2, 9] += 1
    with pytest.raises(EngineMismatch) as caught:
        measure_engine(engine, inputs, expected, None, tmp_path / "out")
    text = str(caught.value)
    assert text.startswith("the engine differs from TFLite Micro on 1 of 4 inputs (first at input 2, output 9: engine "
                           f"{inputs[2, 9]}, TFLM {expected[2, 9]}); this is a bug in edgeprune, the files are in ")
    saved = json.loads((tmp_path / "out" / "mcu.json").read_text())
    assert saved["equal_to_tflm"] == 3 and saved["complete"] and saved["accuracy"] is None
    assert saved["first_difference"] == {"input": 2, "output": 9, "engine": int(inputs[2, 9]), "tflm": int(expected[2, 9])}
    assert measure_engine(engine, inputs, inputs.copy(), None, tmp_path / "same")["equal_to_tflm"] == 4


def test_report_ends_at_a_garbled_line():
    text = "EP layers 2\nqemu noise\nEP image 0 total 9 layers 4 5\nEP image 1 total 9 layers 4 x5\nEP done 2\n"
    run = parse_harness_output(text)
    assert run.totals == [9] and run.layer_ticks == [[4, 5]] and run.done is None
    assert run.error == "the guest's report has an unreadable line: 'EP image 1 total 9 layers 4 x5'"


def test_missing_toolchain_names_the_debian_packages(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no compiler, no QEMU
    inputs = np.zeros((1, 8), dtype=np.int8)
    with pytest.raises(ValueError) as caught:
        measure_engine(fixture_engine(tmp_path / "engine"), inputs, inputs, np.zeros(1, dtype=int), tmp_path / "out")
    text = str(caught.value)
    assert "\n" not in text and DEBIAN_PACKAGES in text and "arm-none-eabi-gcc" in text
    with pytest.raises(ValueError, match=DEBIAN_PACKAGES):
        measure_on_mcu(tmp_path / "model.tflite", torch.zeros(1, 1, 2, 2), torch.zeros(1), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def guide_examples() -> dict[str, str]:
    """The files that docs/firmware.md shows after a ``<!-- example: NAME -->`` line."""
    return dict(re.findall(r"<!-- example: (\S+) -->\n```\w*\n(.*?)```", FIRMWARE_GUIDE.read_text(), re.S))


def test_firmware_guide_example_builds_and_runs(toolchain, model_file, tmp_path):
    path, images, _ = model_file
    examples = guide_examples()
    assert sorted(examples) == ["Makefile", "main.c"]
    for name, text in examples.items():
        (tmp_path / name).write_text(text)
    export_c(path, tmp_path / "model")
    image = images[3].numpy().transpose(1, 2, 0).astype(np.float32)  # NHWC, as the guide says
    image.tofile(tmp_path / "image.bin")
    done = subprocess.run(["make", "--no-print-directory", "run", "MODEL=model", f"BOARD={board_dir()}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    logits = [int(v) for v in re.search(r"^logits((?: -?\d+)+)$", done.stdout, re.M).group(1).split()]
    label = int(re.search(r"^class (\d+)$", done.stdout, re.M).group(1))
    # main.c quantizes with lroundf (half away from zero) in float32: the same here, then TFLM
    scale, zero_point = input_qparams(path)
    x = image.reshape(1, *image.shape) / np.float32(scale)
    q = np.clip(np.sign(x) * np.floor(np.abs(x) + np.float32(0.5)) + zero_point, -128, 127).astype(np.int8)
    expected = tflm_outputs(path, q)[0]
    assert logits == expected.tolist() and label == int(np.argmax(expected))
