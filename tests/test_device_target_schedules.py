"""A device target with gradual pruning and distillation, end to end: the run plans to ``--target-instructions``
from the scan, AGP ramps every layer of a BatchNorm model (ResNet-8 at a quarter width) to that plan while it trains
with the dense model as teacher, and the final engine still meets the target in QEMU. (0.75: at a quarter width and
28x28 the sparsest plan reaches about 0.66 of the dense engine, whose convolutions run 15 instructions per 16 MACs.)"""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from edgeprune.cli import main
from test_mcu_board import toolchain  # noqa: F401 (a fixture)


def test_agp_with_distillation_meets_the_device_target(toolchain, tmp_path, fashion_slice):
    out = tmp_path / "run"
    argv = ["run", "--model", "resnet8", "--width", "0.25", "--data-dir", fashion_slice, "--limit", "300",
            "--val-size", "100", "--epochs", "1", "--finetune-epochs", "2", "--scan-step", "0.45",
            "--target-instructions", "0.75", "--budget", "macs", "--schedule", "agp", "--distill", "0.5", "--force",
            "--device-exports", "final", "--mcu", "cortex-m4", "--mcu-images", "2", "--export-bits", "4", "--out", str(out)]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["schedule"] == "agp" and results["config"]["distill"] == 0.5

    # the gradual ramp ends exactly at the plan the device target chose, layer by layer
    planned = json.loads((out / "sparsity.json").read_text())
    masks = load_file(out / "finetuned.masks.safetensors")
    assert set(masks) == set(planned) and any(s > 0.3 for s in planned.values())
    for name, sparsity in planned.items():
        mask = masks[name]
        assert int((mask == 0).sum()) == round(sparsity * mask.numel()), name

    # BatchNorm kept learning its statistics while the masks tightened: they are not the one-shot pruned copy's
    pruned, finetuned = load_file(out / "pruned.safetensors"), load_file(out / "finetuned.safetensors")
    stats = [k for k in finetuned if k.endswith("running_mean")]
    assert stats and all(not finetuned[k].equal(pruned[k]) for k in stats)

    # planned in QEMU and checked again on the final, gradually pruned model
    device = results["device_target"]
    assert device["met"] and device["final"]["met"], device
    final = next(m for m in results["mcu"] if m["model"] == "Fine-tuned + pruned")
    assert final["instructions"] == device["final"]["instructions"]
    assert final["instructions"] <= 0.75 * device["dense"]["instructions"]
    assert final["equal_to_tflm"] == final["images_run"] == 2
