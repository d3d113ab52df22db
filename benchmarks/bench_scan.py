"""Time the naive and the fast sensitivity scan in one run, and check they give identical numbers.

(a) BasicCNN(in_channels=1, image_size=28), trained 1 epoch, scanned on the Fashion-MNIST test set.
(b) torchvision resnet18(num_classes=10) on 3 x 32 x 32 input. There is no CIFAR-10 on this machine,
    so the input is Fashion-MNIST as ``fit_data_to_model("resnet18", DataConfig())`` gives it to a
    torchvision model (resized to 32 x 32 and repeated to 3 channels).

Every step ``edgeprune run`` also takes is the pipeline's own function (``edgeprune.steps``): data
from ``load_data``, the model from ``build_baseline``, training by ``train_baseline`` and the scan,
timed once per method, by ``scan_model``. What is the benchmark's own: the timing, the comparison
of the two results, and holding the resized resnet18 images in memory as tensors, so the loader
costs both methods the same little. Run:

    python benchmarks/bench_scan.py
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import torch
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

from edgeprune.analyze.scan import ScanResult
from edgeprune.data import DataConfig, DataSplits, load_data
from edgeprune.device import pick_device
from edgeprune.config import fit_data_to_model
from edgeprune.steps import build_baseline, scan_model, train_baseline

__all__: list[str] = []


def in_memory(dataset: Dataset) -> TensorDataset:
    """Every (image, label) of ``dataset`` transformed once and stacked, so a pass reads tensors, not PIL images."""
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    return TensorDataset(torch.stack(images), torch.tensor(labels))


def first(dataset: Dataset, count: int) -> Dataset:
    """The first ``count`` samples of ``dataset`` (all of them when it is smaller)."""
    return Subset(dataset, range(min(count, len(dataset))))


def trained(name: str, splits: DataSplits, device: torch.device, seed: int) -> nn.Module:
    """The pipeline's baseline step: model ``name`` fitted to the data, seeded, trained 1 epoch."""
    model, _ = build_baseline(name, splits, seed=seed)
    train_baseline(model, splits, 1, 1e-3, device, seed)
    return model


def time_both(title: str, model: nn.Module, splits: DataSplits, device: torch.device, start: float, step: float,
              split: str = "test") -> None:
    """Run the naive then the fast scan of ``split``; print wall and CPU times, their ratios, and whether all numbers
    are identical (and, for a model with BatchNorm, the images that re-estimated it)."""
    results: dict[str, ScanResult] = {}
    seconds: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for method in ("naive", "fast"):
        began, began_cpu = time.perf_counter(), time.process_time()
        results[method] = scan_model(model, splits, split, start, step, 1.0, method, device)
        seconds[method], cpu[method] = time.perf_counter() - began, time.process_time() - began_cpu
    naive, fast = results["naive"], results["fast"]
    identical = (naive.dense_accuracy == fast.dense_accuracy and naive.accuracies == fast.accuracies
                 and naive.sparsities == fast.sparsities)
    print(f"\n== {title}")
    recalibrated = fast.meta.get("batchnorm_recalibrated_on")
    print(f"layers {len(naive.accuracies)}, sparsities {naive.sparsities}, {split} images {naive.meta['images']}"
          + (f", BatchNorm re-estimated on {recalibrated} training images" if recalibrated else "")
          + f"; methods {naive.method}, {fast.method}; dense accuracy {naive.dense_accuracy:.2f} %")
    print(f"naive {seconds['naive']:.1f} s, fast {seconds['fast']:.1f} s, "
          f"naive/fast {seconds['naive'] / seconds['fast']:.2f}x, all numbers identical: {identical}")
    print(f"process CPU time (all threads): naive {cpu['naive']:.1f} s, fast {cpu['fast']:.1f} s, "
          f"naive/fast {cpu['naive'] / cpu['fast']:.2f}x", flush=True)
    if "naive_layers" in fast.meta:
        print(f"layers the fast method scanned naively: {fast.meta['naive_layers']}")
    for name, accs in naive.accuracies.items():
        print(f"  {name:28s} " + " ".join(f"{a:6.2f}" for a in accs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, help="use at most this many images of each split (quick trials)")
    parser.add_argument("--start", type=float, default=0.4, help="first sparsity of the BasicCNN scan")
    parser.add_argument("--step", type=float, default=0.1, help="sparsity step of the BasicCNN scan")
    parser.add_argument("--resnet-images", type=int, default=2000, help="3x32x32 test images resnet18 is scanned on")
    parser.add_argument("--resnet-train-images", type=int, default=5000, help="images resnet18 is trained on (1 epoch)")
    parser.add_argument("--resnet-start", type=float, default=0.5)
    parser.add_argument("--resnet-step", type=float, default=0.2)
    parser.add_argument("--device", help="cpu or cuda (default: CUDA when present)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", choices=["basiccnn", "resnet18"], help="leave one benchmark out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {device}")

    if args.skip != "basiccnn":
        splits = load_data(DataConfig(val_size=0, limit=args.limit))
        model = trained("basiccnn", splits, device, args.seed)
        time_both(f"BasicCNN, 1 epoch on {len(splits.train)} images, Fashion-MNIST test set ({len(splits.test)} images)",
                  model, splits, device, args.start, args.step)

    if args.skip != "resnet18":
        train_count, test_count = args.resnet_train_images, args.resnet_images
        if args.limit is not None:
            train_count, test_count = min(train_count, args.limit), min(test_count, args.limit)
        splits = load_data(fit_data_to_model("resnet18", DataConfig(val_size=0, limit=max(train_count, test_count))))
        splits = replace(splits, train=first(splits.train, train_count), test=in_memory(first(splits.test, test_count)))
        model = trained("resnet18", splits, device, args.seed)
        time_both(f"resnet18, {len(splits.test)} Fashion-MNIST test images as 3x32x32 (no CIFAR-10 here), "
                  f"trained 1 epoch on {len(splits.train)}", model, splits, device, args.resnet_start, args.resnet_step)


if __name__ == "__main__":
    main()
