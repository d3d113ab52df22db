"""Benchmark: compressed file size and accuracy of a pruned BasicCNN on Fashion-MNIST.

Trains ``BasicCNN(in_channels=1, image_size=28)`` (Adam, lr 1e-3, batch 64, seeded; the
weights are cached), prunes it with two sparsity dicts, fine-tunes each keeping the masks,
then exports it in every value mode and measures each decoded model on the 10k test images.
k-means modes are also shown after Deep Compression's centroid fine-tuning.

    python benchmarks/bench_compress.py
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from edgeprune.export.epz import load_compressed, save_compressed
from edgeprune.data import DataConfig, cache_dir, load_data, make_loader
from edgeprune.checkpoint import load_checkpoint, save_checkpoint
from edgeprune.models import ModelSpec
from edgeprune.prune.pruner import FineGrainedPruner
from edgeprune.export.centroids import share_weights
from edgeprune.training import evaluate, finetune, train

SPEC = ModelSpec("basiccnn", in_channels=1, num_classes=10, image_size=28)
DEVICE = "cpu"  # the table is a CPU measurement
SPARSITY_DICTS = {
    "seed": {"conv1.weight": 0.4, "conv2.weight": 0.6, "fc1.weight": 0.67, "fc2.weight": 0.5},
    "strong": {"conv1.weight": 0.5, "conv2.weight": 0.8, "fc1.weight": 0.9, "fc2.weight": 0.7},
}
MODES = [("fp32", None), ("fp16", None), ("int8", None)] + [("kmeans", bits) for bits in (8, 6, 5, 4, 3, 2)]


def train_dense(train_set, epochs: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = SPEC.build()
    train(model, make_loader(train_set, 64, shuffle=True, seed=seed), epochs, device=DEVICE, seed=seed)
    return model


def prune_and_finetune(dense: nn.Module, sparsities: dict, train_set, epochs: int, seed: int) -> nn.Module:
    model = copy.deepcopy(dense)
    pruner = FineGrainedPruner(model, sparsities)
    finetune(model, pruner, make_loader(train_set, 64, shuffle=True, seed=seed + 1), epochs, device=DEVICE, seed=seed)
    return model


def cached(path: Path, build, *args) -> nn.Module:
    """The model checkpointed at ``path``, else ``build(*args)``, checkpointed there."""
    if path.exists():
        return load_checkpoint(path)[0]
    model = build(*args)
    save_checkpoint(path, model, SPEC)
    return model


def fp32_bound(state_dict: dict[str, torch.Tensor], pruned_names) -> int:
    """Non-zeros at 4 bytes, plus 1 bit per weight of each pruned tensor, plus 4 KiB."""
    nonzeros = sum(int(t.count_nonzero()) for t in state_dict.values())
    return nonzeros * 4 + sum(state_dict[name].numel() for name in pruned_names) // 8 + 4096


def pth_bytes(state_dict, folder: Path) -> int:
    torch.save(state_dict, folder / "model.pth")
    return (folder / "model.pth").stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="Fashion-MNIST folder (default: found automatically)")
    parser.add_argument("--epochs", type=int, default=3, help="dense training epochs")
    parser.add_argument("--finetune-epochs", type=int, default=1, help="fine-tuning epochs after pruning")
    parser.add_argument("--centroid-samples", type=int, default=16000, help="training images for centroid fine-tuning")
    parser.add_argument("--centroid-lr", type=float, default=1e-4)
    parser.add_argument("--level", type=int, default=19, help="zstd level")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.time()
    data = load_data(DataConfig(data_dir=args.data_dir, val_size=0))
    test_loader = make_loader(data.test, 1000)
    centroid_loader = make_loader(data.train, 64, shuffle=True, seed=args.seed + 2, limit=args.centroid_samples)

    def accuracy(state_dict) -> float:
        model = SPEC.build()
        model.load_state_dict(state_dict)
        return evaluate(model, test_loader, device=DEVICE)

    cache = cache_dir() / "bench"
    tag = f"basiccnn-fmnist-seed{args.seed}-e{args.epochs}"
    dense = cached(cache / f"{tag}.safetensors", train_dense, data.train, args.epochs, args.seed)
    dense_acc = accuracy(dense.state_dict())
    rows, checks = [], []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        dense_pth = pth_bytes(dense.state_dict(), folder)
        rows.append(("dense", "`.pth` (torch.save)", dense_pth, dense_acc))
        for dict_name, sparsities in SPARSITY_DICTS.items():
            path = cache / f"{tag}-{dict_name}-ft{args.finetune_epochs}.safetensors"
            pruned = cached(path, prune_and_finetune, dense, sparsities, data.train, args.finetune_epochs, args.seed)
            state = pruned.state_dict()
            rows.append((dict_name, "`.pth` (torch.save)", pth_bytes(state, folder), accuracy(state)))
            for values, bits in MODES:
                label = values if bits is None else f"{values} {bits}-bit"
                size = save_compressed(state, folder / "m.ep", values=values, bits=bits, level=args.level)
                rows.append((dict_name, label, size, accuracy(load_compressed(folder / "m.ep"))))
                if values == "fp32":
                    checks.append((dict_name, size, fp32_bound(state, sparsities)))
                if values != "kmeans":
                    continue
                model = copy.deepcopy(pruned)
                share_weights(model, bits, centroid_loader, epochs=1, lr=args.centroid_lr)
                size = save_compressed(model.state_dict(), folder / "m.ep", values=values, bits=bits, level=args.level)
                rows.append((dict_name, f"{label} + centroid fine-tuning", size, accuracy(load_compressed(folder / "m.ep"))))
                print(f"[{time.time() - start:5.0f} s] {dict_name} {label} done", flush=True)

    print(f"\nBasicCNN on Fashion-MNIST, dense test accuracy {dense_acc:.2f} %, {time.time() - start:.0f} s in all\n")
    print("| sparsity | stored as | bytes | smaller than dense .pth | test accuracy | vs dense |")
    print("|---|---|---:|---:|---:|---:|")
    for dict_name, label, size, acc in rows:
        print(f"| {dict_name} | {label} | {size:,} | {dense_pth / size:.1f}x | {acc:.2f} % | {acc - dense_acc:+.2f} |")
    print()
    for dict_name, size, bound in checks:
        verdict = "within" if size <= bound else "OVER"
        print(f"{dict_name} fp32: {size:,} bytes, bound (non-zeros x 4 + pruned weights / 8 + 4096) {bound:,}: {verdict}")


if __name__ == "__main__":
    main()
