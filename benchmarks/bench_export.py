"""Benchmark: BasicCNN exported to int8 TFLite (scored in TensorFlow Lite Micro) and to ONNX (scored in onnxruntime).

For each geometry (Fashion-MNIST 1x28x28, and the same images as 3x32x32) a seeded BasicCNN
(the pipeline's ``build_baseline``) is trained with the package's ``train`` (Adam, lr 1e-3, batch 64)
on the first ``--train-images`` shuffled training images (a subset, to fit a shared 2-core CPU);
``export_tflite`` writes the int8 file calibrated on ``--calibration`` other training images;
``evaluate_tflite`` scores the FULL test set one image at a time in TFLM and reports its arena;
``export_onnx`` / ``evaluate_onnx`` / ``compare_onnx`` / ``onnx_latency`` do the same for ONNX. At
1x28x28 a channel-pruned copy (``prune_channels``: 50 % of the output channels of conv1, conv2, fc1),
fine-tuned one epoch, then fine-grained pruned (50 % of every weight tensor) and fine-tuned one
epoch with the masks kept, goes through both formats too, with the ``fits_on`` board table. With
``--lut-bits N`` a copy of the dense model has its weights k-means shared (``share_weights``, N bits,
no centroid fine-tuning) and is written with ``export_tflite(..., lut_bits=N)``: TFLM look-up tables.

    python benchmarks/bench_export.py [--epochs 2] [--train-images 12000] [--calibration 500] [--lut-bits 4] [--no-pruned]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import Subset

from edgeprune.data import DataConfig, load_data, make_loader
from edgeprune.device import pick_device
from edgeprune.export.c_source import fits_on
from edgeprune.export.centroids import share_weights
from edgeprune.export.onnx import compare_onnx, evaluate_onnx, export_onnx, onnx_latency
from edgeprune.export.tflite import calibration_images, export_tflite
from edgeprune.export.tflm import evaluate_tflite
from edgeprune.pipeline import build_baseline
from edgeprune.prune.channels import prune_channels
from edgeprune.prune.pruner import FineGrainedPruner
from edgeprune.training import evaluate, finetune, train

__all__: list[str] = []


def score(model: torch.nn.Module, splits, calib: torch.Tensor, folder: Path, tag: str, lut_bits: int | None = None) -> dict:
    """PyTorch fp32, TFLM int8 and onnxruntime accuracy on the full test set, sizes, arena and latencies."""
    model = model.cpu().eval()
    test_loader = make_loader(splits.test, 256)
    row = {"model": tag, "fp32": evaluate(model, test_loader, "cpu")}
    start = time.perf_counter()
    tfl = export_tflite(model, folder / f"{tag}.tflite", calib, lut_bits=lut_bits)
    result = evaluate_tflite(tfl, test_loader)
    row.update(tflite=result["accuracy"], arena=result["arena_bytes"], flash=result["model_bytes"],
               tflm_s=time.perf_counter() - start, count=result["count"])
    onx = export_onnx(model, folder / f"{tag}.onnx", calib[:1])
    row["onnx"] = evaluate_onnx(onx, test_loader)["accuracy"]
    row["onnx_check"] = compare_onnx(model, onx, test_loader, batches=3)
    row["latency_1"] = onnx_latency(model, onx, calib[:1], repeats=50)
    row["latency_256"] = onnx_latency(model, onx, calib[:256], repeats=10)
    return row


def print_rows(title: str, rows: list[dict]) -> None:
    print(f"\n### {title}\n")
    print("| model | PyTorch fp32 | TFLM int8 | int8 - fp32 | ONNX (onnxruntime) | ONNX max abs logit diff | .tflite bytes (flash) | TFLM arena bytes (RAM) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['fp32']:.2f} % | {r['tflite']:.2f} % | {r['tflite'] - r['fp32']:+.2f} | {r['onnx']:.2f} % | "
              f"{r['onnx_check']['max_abs_diff']:.1e} | {r['flash']:,} | {r['arena']:,} |")
    print("\nLatency, median ms per call, 1 thread each (onnx_latency):\n")
    print("| model | onnxruntime ms (batch 1) | PyTorch ms (batch 1) | onnxruntime ms (batch 256) | PyTorch ms (batch 256) | TFLM export + full test set, s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        a, b = r["latency_1"], r["latency_256"]
        print(f"| {r['model']} | {a['onnx_ms']:.3f} | {a['torch_ms']:.3f} | {b['onnx_ms']:.2f} | {b['torch_ms']:.2f} | {r['tflm_s']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--calibration", type=int, default=500)
    parser.add_argument("--train-images", type=int, default=12000, help="training images used (the first of a seeded shuffle)")
    parser.add_argument("--lut-bits", type=int, default=4, help="also k-means share the dense model's weights with this many bits "
                        "and store them as TFLM look-up tables (0: skip)")
    parser.add_argument("--pruned", action=argparse.BooleanOptionalAction, default=True, help="the channel + fine-grained pruned row")
    parser.add_argument("--geometries", default="28,32", help="comma-separated: 28 (1x28x28) and/or 32 (3x32x32)")
    args = parser.parse_args()
    device = pick_device(None)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for geometry in args.geometries.split(","):
            geo = {} if geometry == "28" else {"channels": 3, "image_size": 32}
            cfg = DataConfig(name="fashion-mnist", val_size=0, **geo)
            splits = load_data(cfg)
            order = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(0)).tolist()
            train_loader = make_loader(Subset(splits.train, order[: args.train_images]), 64, shuffle=True, seed=0)
            calib = calibration_images(Subset(splits.train, order[args.train_images:]), args.calibration)
            model, _ = build_baseline("basiccnn", splits, seed=0)
            start = time.perf_counter()
            train(model, train_loader, args.epochs, device=device, seed=0)
            print(f"trained {args.epochs} epochs on {args.train_images} images in {time.perf_counter() - start:.0f} s")
            rows = [score(model, splits, calib, folder, f"basiccnn-{geometry}")]
            if args.lut_bits:
                shared = copy.deepcopy(model).cpu()
                share_weights(shared, args.lut_bits)
                rows.append(score(shared, splits, calib, folder, f"kmeans{args.lut_bits}-lut-{geometry}", args.lut_bits))
            if geometry == "28" and args.pruned:
                small = prune_channels(model.cpu(), {"conv1": 0.5, "conv2": 0.5, "fc1": 0.5}, calib[:2])
                train(small, train_loader, 1, device=device, seed=0)
                pruner = FineGrainedPruner(small, {"_default": 0.5})
                finetune(small, pruner, train_loader, 1, device=device, seed=0)
                rows.append(score(small, splits, calib, folder, "channel50+fine50-28"))
            print_rows(f"{cfg.channels or 1}x{cfg.image_size or 28}x{cfg.image_size or 28}, {args.epochs} epochs on {args.train_images} images", rows)
            for r in rows:
                print(f"\nfits_on({r['flash']:,}, {r['arena']:,}) for {r['model']}:\n")
                print("| board | flash | RAM | model flash used | arena RAM used | fits |")
                print("|---|---:|---:|---:|---:|---|")
                for b in fits_on(r["flash"], r["arena"]):
                    print(f"| {b['board']} | {b['flash_bytes'] // 1024} KB | {b['ram_bytes'] // 1024} KB | "
                          f"{100 * b['flash_used']:.1f} % | {100 * b['ram_used']:.1f} % | {'yes' if b['fits'] else 'no'} |")


if __name__ == "__main__":
    main()
