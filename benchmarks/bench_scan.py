"""Time the naive and the fast sensitivity scan in one run, and check they give identical numbers.

(a) BasicCNN(in_channels=1, image_size=28), trained briefly, scanned on the Fashion-MNIST test set.
(b) torchvision resnet18(num_classes=10) on 3 x 32 x 32 input. There is no CIFAR-10 on this machine,
    so the input is Fashion-MNIST as ``DataConfig(channels=3, image_size=32)`` gives it (resized to
    32 x 32 and repeated to 3 channels).

Data and training come from the package (``edgeprune.data.load_data``, ``edgeprune.training.train``).
The scanned images are held in memory as tensors, so the loader costs both methods the same little.
Run:

    python benchmarks/bench_scan.py
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from edgeprune.data import DataConfig, load_data, make_loader
from edgeprune.models import BasicCNN
from edgeprune.analyze.scan import ScanResult, sensitivity_scan
from edgeprune.training import train

__all__: list[str] = []


def in_memory(dataset: Dataset) -> TensorDataset:
    """Every (image, label) of ``dataset`` transformed once and stacked, so a pass reads tensors, not PIL images."""
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    return TensorDataset(torch.stack(images), torch.tensor(labels))


def time_both(title: str, model: nn.Module, loader: DataLoader, **scan_args) -> None:
    """Run the naive then the fast scan; print times, their ratio, and whether all numbers are identical."""
    results: dict[str, ScanResult] = {}
    seconds: dict[str, float] = {}
    for method in ("naive", "fast"):
        start = time.perf_counter()
        results[method] = sensitivity_scan(model, loader, method=method, progress=False, **scan_args)
        seconds[method] = time.perf_counter() - start
    naive, fast = results["naive"], results["fast"]
    identical = (naive.dense_accuracy == fast.dense_accuracy and naive.accuracies == fast.accuracies
                 and naive.sparsities == fast.sparsities)
    print(f"\n== {title}")
    print(f"layers {len(naive.accuracies)}, sparsities {naive.sparsities}, dense accuracy {naive.dense_accuracy:.2f} %")
    print(f"naive {seconds['naive']:.1f} s, fast {seconds['fast']:.1f} s, "
          f"naive/fast {seconds['naive'] / seconds['fast']:.2f}x, all numbers identical: {identical}")
    if "naive_layers" in fast.meta:
        print(f"layers the fast method scanned naively: {fast.meta['naive_layers']}")
    for name, accs in naive.accuracies.items():
        print(f"  {name:28s} " + " ".join(f"{a:6.2f}" for a in accs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-images", type=int, default=60000, help="training images for BasicCNN (1 epoch)")
    parser.add_argument("--test-images", type=int, default=10000, help="Fashion-MNIST test images BasicCNN is scanned on")
    parser.add_argument("--resnet-images", type=int, default=2000, help="3x32x32 test images resnet18 is scanned on")
    parser.add_argument("--resnet-train-images", type=int, default=5000, help="images resnet18 is trained on (1 epoch)")
    parser.add_argument("--resnet-start", type=float, default=0.5)
    parser.add_argument("--resnet-step", type=float, default=0.2)
    parser.add_argument("--batch-size", type=int, default=256, help="evaluation batch size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", choices=["basiccnn", "resnet18"], help="leave one benchmark out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    if args.skip != "basiccnn":
        data = load_data(DataConfig(val_size=0))
        torch.manual_seed(args.seed)
        model = BasicCNN(in_channels=1, image_size=28)
        train(model, make_loader(data.train, 64, shuffle=True, seed=args.seed, limit=args.train_images), 1,
              seed=args.seed)
        loader = make_loader(data.test, args.batch_size, limit=args.test_images)
        time_both(f"BasicCNN, Fashion-MNIST test set ({len(loader.dataset)} images), default scan 0.4..0.9",
                  model, loader)

    if args.skip != "resnet18":
        def cifar_sized(limit: int):
            return load_data(DataConfig(channels=3, image_size=32, val_size=0, limit=limit))

        train_set, test_set = cifar_sized(args.resnet_train_images).train, cifar_sized(args.resnet_images).test
        torch.manual_seed(args.seed)
        model = torchvision.models.resnet18(num_classes=10)
        train(model, make_loader(train_set, 64, shuffle=True, seed=args.seed), 1, seed=args.seed)
        loader = make_loader(in_memory(test_set), args.batch_size)
        time_both(f"resnet18, {len(test_set)} Fashion-MNIST test images as 3x32x32 (no CIFAR-10 here), "
                  f"trained 1 epoch on {len(train_set)}", model, loader,
                  scan_start=args.resnet_start, scan_step=args.resnet_step)


if __name__ == "__main__":
    main()
