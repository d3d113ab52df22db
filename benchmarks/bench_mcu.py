"""The generated C engine on an emulated Cortex-M: BasicCNN and ResNet-8 (3x32x32) dense and magnitude-pruned, in QEMU.

For each sparsity (every weight tensor pruned uniformly by magnitude; 0 = dense with
``--sparse never``), exports the int8 .tflite (calibrated on Fashion-MNIST training images as
3x32x32), runs ``--images`` test images through the generated engine in QEMU
(:func:`edgeprune.mcu.measure_on_mcu`) and prints one Markdown row: instructions per inference
(instructions executed in emulation, not cycles), per MAC, weight + index bytes, flash, RAM,
outputs equal to TFLM. The weights are the untrained initialisation: instruction counts and
sizes depend on the sparsity pattern, not on training. Writes each run's mcu.json under ``--out``.
"x CMSIS-NN" compares with Arm's CMSIS-NN running the same dense model (issues 15 and 16).
With ``--lut-bits 4`` each pruned model is first k-means shared (``share_weights``, 16 values a layer)
and measured twice: exported plain (int8 values) and with ``lut_bits`` (TFLM look-up tables, which the
engine keeps as 4-bit codes inside its sparse kernels); the rows say ``int8`` or ``lut4``.

    .venv/bin/python benchmarks/bench_mcu.py --images 20 --sparsities 0 0.8 0.9 0.95 --models basiccnn resnet8
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from edgeprune.data import DataConfig, load_data
from edgeprune.export.centroids import share_weights
from edgeprune.export.tflite import export_tflite
from edgeprune.mcu import mcu_table, measure_on_mcu
from edgeprune.mcu.measure import INSTRUCTIONS_NOTE
from edgeprune.models import BasicCNN, ResNet8

MODELS = {"basiccnn": BasicCNN, "resnet8": ResNet8}
CMSIS_NN_INSTRUCTIONS = {"basiccnn": 11_156_835, "resnet8": 29_839_315}
"""Arm's CMSIS-NN (commit 99f736a, -O2, Cortex-M4, mps2-an386, -icount shift=0), one dense inference at 3x32x32
(BasicCNN: issue 15; ResNet-8: issue 16)."""


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
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["basiccnn", "resnet8"])
    parser.add_argument("--target", default="cortex-m4")
    parser.add_argument("--lut-bits", type=int, default=None, help="k-means share and compare int8 with LUT values")
    parser.add_argument("--out", default="runs/bench_mcu")
    args = parser.parse_args()

    splits = load_data(DataConfig(data_dir=args.data_dir, channels=3, image_size=32, val_size=0))
    calibration = torch.stack([splits.train[i][0] for i in range(200)])
    images = torch.stack([splits.test[i][0] for i in range(args.images)])
    labels = torch.tensor([splits.test[i][1] for i in range(args.images)])
    print(f"Instructions per inference on {args.target} in QEMU: {INSTRUCTIONS_NOTE}.\n")
    print("| model | sparsity | values | kernels | instructions | x CMSIS-NN | per MAC | weight + index B | x dense "
          "| flash B | RAM B | = TFLM |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        for sparsity in args.sparsities:
            torch.manual_seed(0)
            model = MODELS[name]().eval()
            prune_uniform(model, sparsity)
            if args.lut_bits:
                share_weights(model, args.lut_bits)
            dense_bytes = sum(layer.weight.numel() for layer in model.modules()
                              if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)))
            for lut in ([None, args.lut_bits] if args.lut_bits else [None]):
                values = "int8" if lut is None else f"lut{lut}"
                out = Path(args.out) / f"{name}-{args.target}-{sparsity:g}-{values}"
                tflite = export_tflite(model, out / "model.tflite", calibration, lut_bits=lut)
                result = measure_on_mcu(tflite, images, labels, out, target=args.target,
                                        sparse="never" if sparsity == 0 else "auto")
                print(_row(name, sparsity, values, result, dense_bytes), flush=True)
                (out / "table.txt").write_text(mcu_table(result) + "\n")


def _row(name: str, sparsity: float, values: str, result: dict, dense_bytes: int) -> str:
    """One Markdown row of the table for a measured model (``dense_bytes``: its int8 weights stored dense)."""
    macs = sum(layer["macs"] for layer in result["layers"])
    engines = [layer["engine"] for layer in result["layers"] if layer["macs"]]
    kernels = ", ".join(f"{engine} x {engines.count(engine)}" for engine in sorted(set(engines)))
    stored = result["weight_bytes"] + result["index_bytes"]
    return (f"| {name} | {sparsity:.0%} | {values} | {kernels} | {result['instructions']:,} "
            f"| {result['instructions'] / CMSIS_NN_INSTRUCTIONS[name]:.2f} | {result['instructions'] / macs:.2f} "
            f"| {stored:,} | {stored / dense_bytes:.3f} | {result['flash_bytes']:,} | {result['ram_bytes']:,} "
            f"| {result['equal_to_tflm']}/{result['images_run']} |")


if __name__ == "__main__":
    main()
