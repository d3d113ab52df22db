"""Benchmark: compressed file size and accuracy of a pruned BasicCNN on Fashion-MNIST.

Trains ``BasicCNN(in_channels=1, image_size=28)`` (Adam, lr 1e-3, batch 64, seeded; the
weights are cached), prunes it with two sparsity dicts, fine-tunes each keeping the masks,
then exports it in every value mode and measures each decoded model on the 10k test images.
k-means modes are also shown after Deep Compression's centroid fine-tuning.

    python benchmarks/bench_compress.py            # about 7 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import copy
import gzip
import shutil
import tempfile
import time
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader, TensorDataset

from edgeprune.compress import load_compressed, save_compressed
from edgeprune.masks import fine_grained_prune
from edgeprune.models import BasicCNN
from edgeprune.quantize import finetune_centroids, kmeans_quantize, quantize_state_dict
from edgeprune.train import evaluate

SPARSITY_DICTS = {
    "seed": {"conv1.weight": 0.4, "conv2.weight": 0.6, "fc1.weight": 0.67, "fc2.weight": 0.5},
    "strong": {"conv1.weight": 0.5, "conv2.weight": 0.8, "fc1.weight": 0.9, "fc2.weight": 0.7},
}
MODES = [("fp32", None), ("fp16", None), ("int8", None)] + [("kmeans", bits) for bits in (8, 6, 5, 4, 3, 2)]
FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def load_fashion_mnist(data_dir: Path, cache_dir: Path, train: bool) -> TensorDataset:
    """Fashion-MNIST normalized to [-1, 1] as ``ToTensor()`` then ``Normalize((0.5,), (0.5,))`` would."""
    raw = cache_dir / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        if not (raw / name).exists():
            with gzip.open(data_dir / f"{name}.gz") as source, open(raw / name, "wb") as target:
                shutil.copyfileobj(source, target)
    dataset = torchvision.datasets.FashionMNIST(str(cache_dir), train=train, download=False)
    images = (dataset.data.unsqueeze(1).float() / 255 - 0.5) / 0.5
    return TensorDataset(images, dataset.targets)


def train_epochs(model, loader, epochs: int, masks: dict[str, torch.Tensor] | None = None) -> None:
    """Adam (lr 1e-3) on cross-entropy; with ``masks``, pruned weights are zeroed after every step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    params = dict(model.named_parameters())
    model.train()
    for _ in range(epochs):
        for images, labels in loader:
            optimizer.zero_grad()
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
            with torch.no_grad():
                for name, mask in (masks or {}).items():
                    params[name].mul_(mask)


def cached_model(path: Path, build) -> BasicCNN:
    """The model whose weights are cached at ``path``, else ``build()``'s, cached there."""
    model = BasicCNN(in_channels=1, image_size=28)
    if path.exists():
        model.load_state_dict(safetensors.torch.load_file(path))
        return model
    model = build()
    safetensors.torch.save_file(model.state_dict(), path)
    return model


def pth_bytes(state_dict, folder: Path) -> int:
    torch.save(state_dict, folder / "model.pth")
    return (folder / "model.pth").stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "edgeprune-bench")
    parser.add_argument("--epochs", type=int, default=3, help="dense training epochs")
    parser.add_argument("--finetune-epochs", type=int, default=1, help="fine-tuning epochs after pruning")
    parser.add_argument("--centroid-samples", type=int, default=16000, help="training images for centroid fine-tuning")
    parser.add_argument("--centroid-lr", type=float, default=1e-4)
    parser.add_argument("--level", type=int, default=19, help="zstd level")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.time()
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    train_set = load_fashion_mnist(args.data_dir, args.cache_dir, train=True)
    test_loader = DataLoader(load_fashion_mnist(args.data_dir, args.cache_dir, train=False), batch_size=1000)

    def loader(dataset, seed: int) -> DataLoader:
        return DataLoader(dataset, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed))

    def train_dense() -> BasicCNN:
        torch.manual_seed(args.seed)
        model = BasicCNN(in_channels=1, image_size=28)
        train_epochs(model, loader(train_set, args.seed), args.epochs)
        return model

    def accuracy(state_dict) -> float:
        model = BasicCNN(in_channels=1, image_size=28)
        model.load_state_dict(state_dict)
        return evaluate(model, test_loader, device="cpu")

    tag = f"basiccnn-fmnist-seed{args.seed}-e{args.epochs}"
    dense = cached_model(args.cache_dir / f"{tag}.safetensors", train_dense)
    dense_acc = accuracy(dense.state_dict())
    centroid_set = torch.utils.data.Subset(train_set, range(args.centroid_samples))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        dense_pth = pth_bytes(dense.state_dict(), folder)
        rows.append(("dense", "`.pth` (torch.save)", dense_pth, dense_acc))
        for dict_name, sparsities in SPARSITY_DICTS.items():

            def prune_and_finetune() -> BasicCNN:
                model = copy.deepcopy(dense)
                params = dict(model.named_parameters())
                masks = {name: fine_grained_prune(params[name].data, s) for name, s in sparsities.items()}
                train_epochs(model, loader(train_set, args.seed + 1), args.finetune_epochs, masks)
                return model

            pruned = cached_model(
                args.cache_dir / f"{tag}-{dict_name}-ft{args.finetune_epochs}.safetensors", prune_and_finetune
            ).state_dict()
            rows.append((dict_name, "`.pth` (torch.save)", pth_bytes(pruned, folder), accuracy(pruned)))
            for values, bits in MODES:
                label = values if bits is None else f"{values} {bits}-bit"
                size = save_compressed(pruned, folder / "m.ep", values=values, bits=bits, level=args.level)
                rows.append((dict_name, label, size, accuracy(load_compressed(folder / "m.ep"))))
                if values != "kmeans":
                    continue
                model = BasicCNN(in_channels=1, image_size=28)
                model.load_state_dict(quantize_state_dict(pruned, values, bits))
                codebooks = {name: kmeans_quantize(p, bits)[0] for name, p in model.named_parameters() if p.dim() > 1}
                torch.manual_seed(args.seed)
                finetune_centroids(model, codebooks, loader(centroid_set, args.seed + 2), epochs=1, lr=args.centroid_lr)
                size = save_compressed(model.state_dict(), folder / "m.ep", values=values, bits=bits, level=args.level)
                tuned_acc = accuracy(load_compressed(folder / "m.ep"))
                rows.append((dict_name, f"{label} + centroid fine-tuning", size, tuned_acc))
                print(f"[{time.time() - start:5.0f} s] {dict_name} {label} done", flush=True)

    print(f"\nBasicCNN on Fashion-MNIST, dense test accuracy {dense_acc:.2f} %, {time.time() - start:.0f} s in all\n")
    print("| sparsity | stored as | bytes | smaller than dense .pth | test accuracy | vs dense |")
    print("|---|---|---:|---:|---:|---:|")
    for dict_name, label, size, acc in rows:
        print(f"| {dict_name} | {label} | {size:,} | {dense_pth / size:.1f}x | {acc:.2f} % | {acc - dense_acc:+.2f} |")


if __name__ == "__main__":
    main()
