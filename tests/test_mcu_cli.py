"""The microcontroller from the command line: `export --format c` and `mcu`, from a checkpoint or a .tflite."""

import json
import re
import subprocess
from pathlib import Path

import pytest
from torch import nn

from edgeprune.cli import main

SLICE = str(Path(__file__).parent / "data" / "fashion-mnist")  # the shipped slice (conftest's fashion_slice)
M4_FLAGS = ["-mcpu=cortex-m4", "-mthumb", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard", "-O2", "-c"]  # the exact command


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A BasicCNN for 3x32x32 images trained one epoch on 200 images of the shipped Fashion-MNIST slice, pruned to 80 %."""
    folder = tmp_path_factory.mktemp("mcu_cli")
    data = ["--data-dir", SLICE, "--limit", "200", "--val-size", "50", "--channels", "3", "--image-size", "32"]
    assert main(["train", *data, "--epochs", "1", "--out", str(folder / "base.safetensors")]) == 0
    assert main(["prune", *data, str(folder / "base.safetensors"), "--sparsity", '{"_default": 0.8}',
                 "--out", str(folder / "pruned.safetensors")]) == 0
    return folder, data


def test_export_c_from_a_checkpoint_and_from_its_tflite_compiles_for_cortex_m4(trained, tmp_path, capsys):
    folder, data = trained
    engine = tmp_path / "engine"
    assert main(["export", *data, str(folder / "pruned.safetensors"), "--format", "c", "--out", str(engine)]) == 0
    printed = capsys.readouterr().out
    assert "| FULLY_CONNECTED | sparse |" in printed and "wrote the C engine" in printed
    layers = json.loads((engine / "layers.json").read_text())
    assert any(layer["engine"] == "sparse" for layer in layers["layers"])
    sources = sorted(engine.glob("*.c"))
    assert {"edgeprune_model.c", "edgeprune_model.h"} <= {p.name for p in engine.iterdir()}
    subprocess.run(["arm-none-eabi-gcc", *M4_FLAGS, *map(str, sources)], cwd=tmp_path, check=True)
    # the .tflite is the single source of the engine: generating from the file written above gives the same C
    again = tmp_path / "again"
    assert main(["export", str(engine / "model.tflite"), "--format", "c", "--out", str(again)]) == 0
    assert (again / "edgeprune_model.c").read_text() == (engine / "edgeprune_model.c").read_text()
    never = tmp_path / "dense"
    assert main(["export", str(engine / "model.tflite"), "--format", "c", "--sparse", "never", "--out", str(never)]) == 0
    assert {layer["engine"] for layer in json.loads((never / "layers.json").read_text())["layers"]} <= {"dense", "-"}


def test_mcu_runs_a_checkpoint_and_a_bare_tflite_equal_to_tflm(trained, tmp_path, capsys):
    folder, data = trained
    out = tmp_path / "m4"
    assert main(["mcu", *data, str(folder / "pruned.safetensors"), "--images", "6", "--clock", "120MHz", "--out", str(out)]) == 0
    result = json.loads((out / "mcu.json").read_text())
    assert result["equal_to_tflm"] == result["images_run"] == 6 and result["target"] == "cortex-m4"
    printed = capsys.readouterr().out
    assert "instructions executed in emulation, not cycles" in printed
    # the estimated cycles (Cortex-M4 TRM timings) next to them, and as milliseconds at --clock, marked as estimates
    assert result["estimated_cycles"] > result["instructions"] and result["clock_hz"] == 120_000_000
    assert result["estimated_ms"] == round(result["estimated_cycles"] / 120e6 * 1e3, 6)
    assert f"{result['estimated_ms']:.3f} ms at 120 MHz (estimated)" in printed
    assert main(["mcu", str(out / "model.tflite"), "--clock", "fast", "--out", str(tmp_path / "x")]) == 2
    assert "cannot read 'fast' as a clock" in capsys.readouterr().err and not (tmp_path / "x" / "mcu.json").exists()
    # a .tflite alone runs seeded random inputs: data flags are not needed (and not used), there is no accuracy
    bare = tmp_path / "bare"
    assert main(["mcu", "--data-dir", SLICE, "--val-size", "50", str(out / "model.tflite"), "--images", "3", "--target", "cortex-m7",
                 "--out", str(bare)]) == 0
    again = json.loads((bare / "mcu.json").read_text())
    assert again["equal_to_tflm"] == 3 and again["board"] == "QEMU mps2-an500" and again["accuracy"] is None


def test_bad_engine_input_is_one_line(trained, tmp_path, capsys):
    folder, data = trained
    engine = tmp_path / "engine"
    assert main(["export", *data, str(folder / "base.safetensors"), "--format", "c", "--out", str(engine)]) == 0
    capsys.readouterr()
    tflite = engine / "model.tflite"
    assert main(["export", str(tflite), "--format", "tflite", "--out", str(tmp_path / "x.tflite")]) == 2
    assert "exports only to the C engine (--format c)" in capsys.readouterr().err
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(tflite.read_bytes()[:200])
    assert main(["mcu", str(cut), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgeprune mcu: error:") and len(err.strip().splitlines()) == 1
    assert main(["mcu", str(tmp_path / "missing.tflite"), "--out", str(tmp_path / "m2")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_weight_budget_trades_instructions_for_bytes(trained, tmp_path, capsys):
    """A budget between the most compact formats and the fastest ones: the engine fits it, predicted slower; one line
    for a budget below the most compact formats, an unreadable one, or one given with a fixed kernel choice."""
    folder, data = trained
    tflite = tmp_path / "fast" / "model.tflite"
    assert main(["export", *data, str(folder / "pruned.safetensors"), "--format", "c", "--out", str(tmp_path / "fast")]) == 0

    def totals(name: str) -> tuple[int, float, list[str]]:
        report = json.loads((tmp_path / name / "layers.json").read_text())
        weighted = [layer for layer in report["layers"] if layer["engine"] != "-"]
        return (sum(layer["weight_bytes"] + layer["index_bytes"] for layer in weighted),
                sum(layer["predicted_instructions"] for layer in weighted), [layer["format"] for layer in weighted])

    fast_bytes, fast_instructions, fast_formats = totals("fast")
    capsys.readouterr()
    budget = fast_bytes - 64
    assert main(["export", str(tflite), "--format", "c", "--weight-budget", f"{budget}B", "--out", str(tmp_path / "small")]) == 0
    small_bytes, small_instructions, small_formats = totals("small")
    assert small_bytes <= budget and small_instructions > fast_instructions and small_formats != fast_formats
    assert "to meet the weight budget" in capsys.readouterr().out
    assert main(["export", str(tflite), "--format", "c", "--weight-budget", f"{fast_bytes}", "--out", str(tmp_path / "same")]) == 0
    assert totals("same") == (fast_bytes, fast_instructions, fast_formats)  # a budget already met changes nothing
    capsys.readouterr()
    for flags, message in ((["--weight-budget", "100"], "the most compact formats take"),
                           (["--weight-budget", "12 parsecs"], "cannot read '12 parsecs' as a weight budget"),
                           (["--weight-budget", "1MB", "--sparse", "never"], "use it with --sparse auto")):
        assert main(["export", str(tflite), "--format", "c", *flags, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def too_wide() -> nn.Module:
    """627,200 weights: more int8 bytes than the cortex-m4 board's 512 KB of flash."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 800), nn.ReLU(), nn.Linear(800, 10))


def wide_maps() -> nn.Module:
    """Few weights, but 32 channels of 28 x 28 (25,088 B in, 25,088 B out): no arena for the micro:bit's 16 KB."""
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.Flatten(),
                         nn.Linear(32 * 28 * 28, 10))


@pytest.mark.parametrize("factory, target, message", [
    ("too_wide", "cortex-m4", r"needs 6\d\d,\d\d\d B of flash on the microcontroller .* but the cortex-m4 board has 524,288 B"),
    ("wide_maps", "cortex-m0", r"needs an arena of \d\d,\d\d\d B on the microcontroller .* but the cortex-m0 board has "
                               r"12,288 B of RAM beside its stack")])
def test_a_model_that_cannot_fit_the_board_is_refused_before_training(tmp_path, capsys, factory, target, message):
    out = tmp_path / "run"
    argv = ["run", "--data-dir", SLICE, "--val-size", "50", "--model", f"{__name__}:{factory}", "--mcu", target, "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(message, err) and err.endswith("pass --mcu none to skip the microcontroller, or choose a smaller model")
    assert not (out / "baseline.safetensors").exists()
