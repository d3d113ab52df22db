"""Sparsity budgeted in what the device pays: BasicCNN 3x32x32 on Fashion-MNIST, planned from one scan, run in QEMU.

From a trained checkpoint: one sensitivity scan on the validation split (a model with BatchNorm re-estimates its
statistics after each pruning, as the run does), then for each plan
(``--budget params`` and ``--budget macs`` at ``--target-sparsity``, and ``--target-instructions``
with each budget) prune, measure the int8 engine in QEMU (instructions executed in emulation, not
cycles) with its test accuracy; then fine-tune each ``--epochs`` with the masks kept and measure it again,
with its test accuracy. Prints one Markdown row per plan, then (``--epochs`` > 0) one per plan fine-tuned, in the same order;
with several ``--seeds`` each plan is fine-tuned once per seed (the data order) and the row gives each accuracy, their
mean and standard deviation. ``--plans`` keeps the plans whose label contains one of its words.

    .venv/bin/python benchmarks/bench_device_plan.py --checkpoint /work/bench/basiccnn32.safetensors
    .venv/bin/python benchmarks/bench_device_plan.py --epochs 3 --seeds 0 1 2 --plans 0.9   # the two 0.9 plans, 3 seeds
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from edgeprune import steps
from edgeprune.analyze.scan import ScanResult
from edgeprune.data import DataConfig
from edgeprune.export.tflite import calibration_images, export_tflite
from edgeprune.mcu import measure_on_mcu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="/work/bench/basiccnn32.safetensors")
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--target-sparsity", type=float, default=0.9)
    parser.add_argument("--target-instructions", type=float, default=0.3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="fine-tuning seeds (data order), one run each")
    parser.add_argument("--plans", nargs="+", help="only the plans whose label contains one of these words")
    parser.add_argument("--out", default="runs/bench_device_plan")
    args = parser.parse_args()

    out = Path(args.out)
    splits = steps.load_splits(DataConfig(data_dir=args.data_dir, channels=3, image_size=32))
    model, spec, _, _ = steps.load_model(args.checkpoint, device="cpu")
    shape = (spec.in_channels, spec.image_size, spec.image_size)
    scan_file = out / "scan.json"
    if scan_file.is_file():
        scan = ScanResult.from_json(scan_file)
    else:
        scan = steps.scan_model(model, splits, "val", 0.0, 0.05, 1.0, device="cpu")
        out.mkdir(parents=True, exist_ok=True)
        scan.to_json(scan_file)
    calibration = calibration_images(splits.train, steps.CALIBRATION_IMAGES)
    recalibration = steps.recalibration_batches(model, splits)  # BatchNorm statistics of each pruned model (ResNet-8)
    images = torch.stack([splits.test[i][0] for i in range(args.images)])
    labels = torch.tensor([splits.test[i][1] for i in range(args.images)])

    def measure(m: torch.nn.Module, name: str) -> dict:
        tflite = export_tflite(m, out / name / "model.tflite", calibration)
        return measure_on_mcu(tflite, images, labels, out / name)

    dense = measure(model, "dense")
    print(f"Dense engine: {dense['instructions']:,} instructions, {dense['flash_bytes']:,} B flash; "
          f"dense accuracy {steps.accuracy_on_test(model, splits, 'cpu'):.2f} %\n")
    print("| plan | sparsity per layer | instructions | x dense | flash B | accuracy pruned | QEMU checks |")
    print("|---|---|---|---|---|---|---|")
    runs = [(f"budget {b}, {args.target_sparsity:g}", b, None) for b in ("params", "macs")]
    runs += [(f"budget {b}, target instructions {args.target_instructions:g}", b, args.target_instructions)
             for b in ("macs", "params")]
    if args.plans:
        runs = [run for run in runs if any(word in run[0] for word in args.plans)]
    rows = []
    for label, budget, target in runs:
        name = label.replace(" ", "_").replace(",", "")
        checks = "-"
        if target is None:
            sparsity, _ = steps.choose_sparsity(model, scan, None, args.target_sparsity, budget=budget, input_shape=shape)
        else:
            sparsity, info = steps.plan_for_device_target(model, scan, splits, out / name / "search", budget,
                                                          target_instructions=target)
            device = info["device"]
            ratios = ", ".join(f"{c['measured'] / dense['instructions']:.3f}" for c in device["checks"])
            checks = f"{len(device['checks'])} ({ratios}), {'met' if device['met'] else 'not met'}"
        pruned, pruner = steps.prune_copy(model, sparsity, recalibration)
        result = measure(pruned, name + "/pruned")
        row = {"plan": label, "name": name, "sparsity": sparsity, "instructions": result["instructions"],
               "flash": result["flash_bytes"], "accuracy_pruned": steps.accuracy_on_test(pruned, splits, "cpu"),
               "checks": checks}
        rows.append(row)
        layers = ", ".join(f"{k.removesuffix('.weight')} {v:.3f}" for k, v in sparsity.items())
        print(f"| {label} | {layers} | {row['instructions']:,} | {row['instructions'] / dense['instructions']:.3f} "
              f"| {row['flash']:,} | {row['accuracy_pruned']:.2f} | {checks} |", flush=True)
    if args.epochs:
        print(f"\n| plan | accuracy after {args.epochs} epoch(s) of fine-tuning | instructions fine-tuned | x dense |")
        print("|---|---|---|---|")
    for row in rows if args.epochs else []:
        accuracies = []
        for seed in args.seeds:
            pruned, pruner = steps.prune_copy(model, row["sparsity"], recalibration)
            steps.finetune_pruned(pruned, pruner, splits, args.epochs, device="cpu", seed=seed)
            accuracies.append(steps.accuracy_on_test(pruned, splits, "cpu"))
        after = measure(pruned, row["name"] + "/finetuned")  # the last seed's model (same masks; int8 rounding may differ)
        spread = torch.tensor(accuracies).std().item() if len(accuracies) > 1 else 0.0
        row.update(accuracy=sum(accuracies) / len(accuracies), accuracies=accuracies, accuracy_std=spread,
                   seeds=args.seeds, finetuned_instructions=after["instructions"])
        each = f" ({', '.join(f'{a:.2f}' for a in accuracies)}; sd {spread:.2f})" if len(accuracies) > 1 else ""
        print(f"| {row['plan']} | {row['accuracy']:.2f}{each} | {after['instructions']:,} "
              f"| {after['instructions'] / dense['instructions']:.3f} |", flush=True)
    (out / "rows.json").write_text(json.dumps({"dense": dense["instructions"], "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
