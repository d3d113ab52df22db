"""Benchmark: BasicCNN exported to int8 TFLite (scored in TensorFlow Lite Micro) and to ONNX (scored in onnxruntime).

For each geometry (Fashion-MNIST 1x28x28, and the same images as 3x32x32) a seeded BasicCNN
(the run's ``build_baseline`` step) is trained with the package's ``train`` (Adam, lr 1e-3, batch 64)
on the first ``--train-images`` shuffled training images (a subset, to fit a shared 2-core CPU);
the run's device-export step (``edgeprune.steps.export_for_devices``) writes the int8 TFLite file calibrated on
``--calibration`` other training images, scores the FULL test set one image at a time in TFLM and reports its
arena, and writes, checks, scores and times (``onnx_latency``, batch 1 and 256) the ONNX file. At
1x28x28 a channel-pruned copy (the run's channel step: 50 % of the output channels of conv1, conv2, fc1),
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
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import Subset

from edgeprune import steps
from edgeprune.data import DataConfig, load_data, make_loader
from edgeprune.device import pick_device
from edgeprune.export.c_source import fits_on
from edgeprune.export.centroids import share_weights
from edgeprune.prune.pruner import FineGrainedPruner
from edgeprune.training import finetune, train

__all__: list[str] = []


def score(model: torch.nn.Module, splits, folder: Path, tag: str, lut_bits: int | None = None) -> dict:
    """PyTorch fp32, and the run's device exports (``export_for_devices``): TFLM int8 and onnxruntime accuracy on the
    full test set, sizes, arena and latencies."""
    model = model.cpu().eval()
    row = {"model": tag, "fp32": steps.accuracy_on_test(model, splits, "cpu")}
    start = time.perf_counter()
    result = steps.export_for_devices(model, splits, folder / f"{tag}.onnx", folder / f"{tag}.tflite", calibration=len(splits.train),
                                      lut_bits=lut_bits, latency_batches=(1, 256))
    row.update(tflite=result["tflite_accuracy"], arena=result["tflite_arena_bytes"], flash=result["tflite_bytes"],
               export_s=time.perf_counter() - start, count=result["test_images"], onnx=result["onnx_accuracy"],
               onnx_max_abs_diff=result["onnx_max_abs_diff"], latency_1=result["onnx_latency"][1],
               latency_256=result["onnx_latency"][256])
    return row


def print_rows(title: str, rows: list[dict]) -> None:
    print(f"\n### {title}\n")
    print("| model | PyTorch fp32 | TFLM int8 | int8 - fp32 | ONNX (onnxruntime) | ONNX max abs logit diff | .tflite bytes (flash) | TFLM arena bytes (RAM) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['fp32']:.2f} % | {r['tflite']:.2f} % | {r['tflite'] - r['fp32']:+.2f} | {r['onnx']:.2f} % | "
              f"{r['onnx_max_abs_diff']:.1e} | {r['flash']:,} | {r['arena']:,} |")
    print("\nLatency, median ms per call, 1 thread each (onnx_latency):\n")
    print("| model | onnxruntime ms (batch 1) | PyTorch ms (batch 1) | onnxruntime ms (batch 256) | PyTorch ms (batch 256) | both exports, scored on the full test set, s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        a, b = r["latency_1"], r["latency_256"]
        print(f"| {r['model']} | {a['onnx_ms']:.3f} | {a['torch_ms']:.3f} | {b['onnx_ms']:.2f} | {b['torch_ms']:.2f} | {r['export_s']:.0f} |")


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
            # calibrated on training images the model was not trained on; scored on the full test set
            scored = replace(splits, train=Subset(splits.train, order[args.train_images:args.train_images + args.calibration]))
            model, spec = steps.build_baseline("basiccnn", splits, seed=0)
            start = time.perf_counter()
            train(model, train_loader, args.epochs, device=device, seed=0)
            print(f"trained {args.epochs} epochs on {args.train_images} images in {time.perf_counter() - start:.0f} s")
            rows = [score(model, scored, folder, f"basiccnn-{geometry}")]
            if args.lut_bits:
                shared = copy.deepcopy(model).cpu()
                share_weights(shared, args.lut_bits)
                rows.append(score(shared, scored, folder, f"kmeans{args.lut_bits}-lut-{geometry}", args.lut_bits))
            if geometry == "28" and args.pruned:
                small, _ = steps.prune_channels_step(model.cpu(), spec, {"conv1": 0.5, "conv2": 0.5, "fc1": 0.5})
                train(small, train_loader, 1, device=device, seed=0)
                pruner = FineGrainedPruner(small, {"_default": 0.5})
                finetune(small, pruner, train_loader, 1, device=device, seed=0)
                rows.append(score(small, scored, folder, "channel50+fine50-28"))
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
