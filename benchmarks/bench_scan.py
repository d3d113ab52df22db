"""Time the naive and the fast sensitivity scan in one run, and check they give identical numbers.

(a) BasicCNN(in_channels=1, image_size=28), trained briefly, scanned on the Fashion-MNIST test set.
(b) torchvision resnet18(num_classes=10) on 3 x 32 x 32 input. There is no CIFAR-10 on this machine,
    so the input is Fashion-MNIST resized to 32 x 32 (bilinear) and repeated to 3 channels.

The images are decoded and normalized once into memory (as ToTensor + Normalize((0.5,), (0.5,))
would), so the loader costs the same little for both methods. Run:

    python benchmarks/bench_scan.py
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from edgeprune.models import BasicCNN
from edgeprune.scan import ScanResult, sensitivity_scan

__all__ = ["fashion_mnist", "train_briefly"]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def fashion_mnist(train: bool, source: Path = FASHION_MNIST_DIR) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST images normalized to [-1, 1] as (N, 1, 28, 28) floats, and labels, read by torchvision."""
    with tempfile.TemporaryDirectory() as root:
        raw = Path(root) / "FashionMNIST" / "raw"
        raw.mkdir(parents=True)
        for f in source.glob("*-ubyte.gz"):  # torchvision looks for the unpacked files
            with gzip.open(f) as packed, open(raw / f.stem, "wb") as unpacked:
                shutil.copyfileobj(packed, unpacked)
        data = torchvision.datasets.FashionMNIST(root, train=train, download=False)
        images = data.data.unsqueeze(1).float().div(255).sub(0.5).div(0.5)
        return images, data.targets.clone()


def train_briefly(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int) -> None:
    """Adam, lr 1e-3, batch 64, shuffled with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(TensorDataset(images, labels), batch_size=64, shuffle=True, generator=generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    model.eval()


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
    parser.add_argument("--resnet-images", type=int, default=2000, help="3x32x32 images resnet18 is scanned on")
    parser.add_argument("--resnet-train-images", type=int, default=5000, help="images resnet18 is trained on (1 epoch)")
    parser.add_argument("--resnet-start", type=float, default=0.5)
    parser.add_argument("--resnet-step", type=float, default=0.2)
    parser.add_argument("--batch-size", type=int, default=256, help="evaluation batch size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", choices=["basiccnn", "resnet18"], help="leave one benchmark out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train_x, train_y = fashion_mnist(train=True)
    test_x, test_y = fashion_mnist(train=False)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    if args.skip != "basiccnn":
        torch.manual_seed(args.seed)
        model = BasicCNN(in_channels=1, image_size=28)
        train_briefly(model, train_x[: args.train_images], train_y[: args.train_images], epochs=1, seed=args.seed)
        loader = DataLoader(TensorDataset(test_x[: args.test_images], test_y[: args.test_images]),
                            batch_size=args.batch_size)
        time_both(f"BasicCNN, Fashion-MNIST test set ({len(loader.dataset)} images), default scan 0.4..0.9",
                  model, loader)

    if args.skip != "resnet18":
        def as_cifar(x: torch.Tensor) -> torch.Tensor:
            return F.interpolate(x, size=32, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)

        torch.manual_seed(args.seed)
        model = torchvision.models.resnet18(num_classes=10)
        n = args.resnet_train_images
        train_briefly(model, as_cifar(train_x[:n]), train_y[:n], epochs=1, seed=args.seed)
        m = args.resnet_images
        loader = DataLoader(TensorDataset(as_cifar(test_x[:m]), test_y[:m]), batch_size=args.batch_size)
        time_both(f"resnet18, {m} Fashion-MNIST test images resized to 3x32x32 (no CIFAR-10 here), "
                  f"trained 1 epoch on {n}", model, loader, scan_start=args.resnet_start, scan_step=args.resnet_step)


if __name__ == "__main__":
    main()
