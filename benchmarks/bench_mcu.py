"""The generated C engine on an emulated Cortex-M: BasicCNN (3x32x32) dense and magnitude-pruned, in QEMU.

For each sparsity (every weight tensor pruned uniformly by magnitude; 0 = dense with
``--sparse never``), exports the int8 .tflite (calibrated on Fashion-MNIST training images as
3x32x32), runs ``--images`` test images through the generated engine in QEMU
(:func:`edgeprune.mcu.measure_on_mcu`) and prints one Markdown row: instructions per inference
(instructions executed in emulation, not cycles), per MAC, weight + index bytes, flash, RAM,
outputs equal to TFLM. The weights are the untrained initialisation: instruction counts and
sizes depend on the sparsity pattern, not on training. Writes each run's mcu.json under ``--out``.

    .venv/bin/python benchmarks/bench_mcu.py --images 20 --sparsities 0 0.8 0.9 0.95
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from edgeprune.data import DataConfig, load_data
from edgeprune.export.tflite import export_tflite
from edgeprune.mcu import mcu_table, measure_on_mcu
from edgeprune.mcu.measure import INSTRUCTIONS_NOTE
from edgeprune.models import BasicCNN

CMSIS_NN_INSTRUCTIONS = 11_156_835
"""Arm's CMSIS-NN (commit 99f736a, -O2, Cortex-M4, mps2-an386, -icount shift=0), dense BasicCNN 3x32x32 (issue 15)."""


def prune_uniform(model: torch.nn.Module, sparsity: float) -> None:
    """Zero the ``sparsity`` fraction of smallest-magnitude weights of every conv and linear layer."""
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)) and sparsity > 0:
                w = layer.weight
                k = int(sparsity * w.numel())
                w[w.abs() <= w.abs().flatten().kthvalue(k).values] = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.0, 0.8, 0.9, 0.95])
    parser.add_argument("--target", default="cortex-m4")
    parser.add_argument("--out", default="runs/bench_mcu")
    args = parser.parse_args()

    splits = load_data(DataConfig(data_dir=args.data_dir, channels=3, image_size=32, val_size=0))
    calibration = torch.stack([splits.train[i][0] for i in range(200)])
    images = torch.stack([splits.test[i][0] for i in range(args.images)])
    labels = torch.tensor([splits.test[i][1] for i in range(args.images)])
    print(f"Instructions per inference on {args.target} in QEMU: {INSTRUCTIONS_NOTE}.\n")
    print("| sparsity | kernels | instructions | x CMSIS-NN | per MAC | weight + index B | flash B | RAM B | = TFLM |")
    print("|---|---|---|---|---|---|---|---|---|")
    for sparsity in args.sparsities:
        torch.manual_seed(0)
        model = BasicCNN().eval()
        prune_uniform(model, sparsity)
        out = Path(args.out) / f"{args.target}-{sparsity:g}"
        tflite = export_tflite(model, out / "model.tflite", calibration)
        result = measure_on_mcu(tflite, images, labels, out, target=args.target,
                                sparse="never" if sparsity == 0 else "auto")
        macs = sum(layer["macs"] for layer in result["layers"])
        stored = result["weight_bytes"] + result["index_bytes"]
        print(f"| {sparsity:.0%} | {', '.join(layer['engine'] for layer in result['layers'] if layer['macs'])} "
              f"| {result['instructions']:,} | {result['instructions'] / CMSIS_NN_INSTRUCTIONS:.2f} "
              f"| {result['instructions'] / macs:.2f} | {stored:,} | {result['flash_bytes']:,} | {result['ram_bytes']:,} "
              f"| {result['equal_to_tflm']}/{result['images_run']} |", flush=True)
        (out / "table.txt").write_text(mcu_table(result) + "\n")


if __name__ == "__main__":
    main()
