"""Benchmark: compressed file size and accuracy of a pruned BasicCNN on Fashion-MNIST.

Every step that ``edgeprune run`` also takes is the pipeline's own function
(``edgeprune.steps``): the baseline is built by ``build_baseline`` and trained by
``train_baseline`` (Adam, lr 1e-3, batch 64, seeded), pruned with two sparsity dicts by
``prune_copy``, fine-tuned with the masks kept by ``finetune_pruned``, then, for every value
mode, exported by ``export_compressed``, read back and evaluated on the test images by
``compare_models``. k-means modes are also shown after Deep Compression's centroid
fine-tuning (``share_weights``). What is the benchmark's own: the sweep over export modes,
the ``torch.save`` reference size, the fp32 size bound, and the cache of trained weights.

    python benchmarks/bench_compress.py
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from edgeprune.checkpoint import load_checkpoint, save_checkpoint
from edgeprune.data import DataConfig, DataSplits, cache_dir, load_data, make_loader, make_loaders
from edgeprune.device import pick_device
from edgeprune.export.centroids import share_weights
from edgeprune.models import ModelSpec
from edgeprune.steps import build_baseline, compare_models, finetune_pruned, model_for_data, prune_copy, train_baseline
from edgeprune.training import evaluate

__all__: list[str] = []

LR = 1e-3
SPARSITY_DICTS = {
    "seed": {"conv1.weight": 0.4, "conv2.weight": 0.6, "fc1.weight": 0.67, "fc2.weight": 0.5},
    "strong": {"conv1.weight": 0.5, "conv2.weight": 0.8, "fc1.weight": 0.9, "fc2.weight": 0.7},
}
MODES = [("fp32", None), ("fp16", None), ("int8", None)] + [("kmeans", bits) for bits in (8, 6, 5, 4, 3, 2)]
CACHE_TAG = "pipeline"  # weights trained by the pipeline's steps; older cache files are not reused


def cached(path: Path, spec: ModelSpec, build: Callable[[], nn.Module]) -> nn.Module:
    """The model checkpointed at ``path``; when missing, ``build()`` makes it and it is checkpointed first.

    The model is always read back from the file, so a cold and a warm run measure the same weights.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(path, build(), spec)
    return load_checkpoint(path, spec)[0]


def fp32_bound(state_dict: dict[str, torch.Tensor], pruned_names) -> int:
    """Non-zeros at 4 bytes, plus 1 bit per weight of each pruned tensor, plus 4 KiB."""
    nonzeros = sum(int(t.count_nonzero()) for t in state_dict.values())
    return nonzeros * 4 + sum(state_dict[name].numel() for name in pruned_names) // 8 + 4096


def pth_bytes(state_dict: dict[str, torch.Tensor], folder: Path) -> int:
    """Size of ``torch.save(state_dict)``, the reference every ratio is against."""
    torch.save(state_dict, folder / "model.pth")
    return (folder / "model.pth").stat().st_size


def trained_baseline(splits: DataSplits, epochs: int, device: torch.device, seed: int) -> nn.Module:
    """The pipeline's baseline step: a seeded BasicCNN fitted to the data, trained ``epochs``."""
    model, _ = build_baseline("basiccnn", splits, seed=seed)
    train_baseline(model, splits, epochs, LR, device, seed)
    return model


def pruned_finetuned(
    dense: nn.Module, sparsity: dict, splits: DataSplits, epochs: int, device: torch.device, seed: int
) -> nn.Module:
    """The pipeline's prune and fine-tune steps on a copy of ``dense``."""
    pruned, pruner = prune_copy(dense, sparsity)
    finetune_pruned(pruned, pruner, splits, epochs, LR, device, seed)
    return pruned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="Fashion-MNIST folder (default: found automatically)")
    parser.add_argument("--limit", type=int, help="use at most this many images of each split (quick trials)")
    parser.add_argument("--epochs", type=int, default=3, help="dense training epochs")
    parser.add_argument("--finetune-epochs", type=int, default=1, help="fine-tuning epochs after pruning")
    parser.add_argument("--centroid-samples", type=int, default=16000, help="training images for centroid fine-tuning")
    parser.add_argument("--centroid-lr", type=float, default=1e-4)
    parser.add_argument("--device", help="cpu or cuda (default: CUDA when present)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    device = pick_device(args.device)
    splits = load_data(DataConfig(data_dir=args.data_dir, val_size=0, limit=args.limit))
    spec = model_for_data("basiccnn", splits)
    test_loader = make_loaders(splits, 64)[2]
    centroid_loader = make_loader(splits.train, 64, shuffle=True, seed=args.seed + 2, limit=args.centroid_samples)

    cache = cache_dir() / "bench"
    tag = f"{CACHE_TAG}-basiccnn-fmnist-seed{args.seed}-e{args.epochs}" + (f"-limit{args.limit}" if args.limit else "")
    dense = cached(cache / f"{tag}.safetensors", spec, partial(trained_baseline, splits, args.epochs, device, args.seed))
    dense_acc = evaluate(dense, test_loader, device)
    pruned: dict[str, tuple[nn.Module, Path]] = {}
    for name, sparsity in SPARSITY_DICTS.items():
        path = cache / f"{tag}-{name}-ft{args.finetune_epochs}.safetensors"
        build = partial(pruned_finetuned, dense, sparsity, splits, args.finetune_epochs, device, args.seed)
        pruned[name] = cached(path, spec, build), path
    print(f"[{time.time() - start:5.0f} s] models ready on {device}, {torch.get_num_threads()} threads", flush=True)

    rows: dict[str, list[tuple[str, int, float, float]]] = {name: [] for name in pruned}
    checks = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        dense_pth = pth_bytes(dense.state_dict(), folder)
        for name, (model, _) in pruned.items():
            acc = evaluate(model, test_loader, device)
            rows[name].append(("`.pth` (torch.save)", pth_bytes(model.state_dict(), folder), acc, acc))
        for values, bits in MODES:
            label = values if bits is None else f"{values} {bits}-bit"
            compared = [(name, model, path, label) for name, (model, path) in pruned.items()]
            if values == "kmeans":
                for name, (model, _) in pruned.items():
                    shared = copy.deepcopy(model)
                    torch.manual_seed(args.seed)
                    share_weights(shared, bits, centroid_loader, epochs=1, lr=args.centroid_lr)
                    shared_path = save_checkpoint(folder / f"{name}-shared.safetensors", shared, spec)
                    compared.append((name, shared, shared_path, f"{label} + centroid fine-tuning"))
            results = compare_models([(n, m, p) for n, m, p, _ in compared], test_loader, device, folder, values, bits)
            for (name, model, _, row_label), result in zip(compared, results):
                size, decoded = result["compressed_bytes"], result["decoded_accuracy"]
                rows[name].append((row_label, size, result["accuracy"], decoded))
                if values == "fp32" and row_label == label:
                    checks.append((name, size, fp32_bound(model.state_dict(), SPARSITY_DICTS[name])))
            print(f"[{time.time() - start:5.0f} s] {label} done", flush=True)

    print(f"\nBasicCNN on Fashion-MNIST ({len(splits.test)} test images), dense test accuracy {dense_acc:.2f} %, "
          f"{time.time() - start:.0f} s in all\n")
    print("| sparsity | stored as | bytes | smaller than dense .pth | accuracy before export | test accuracy decoded | vs dense |")
    print("|---|---|---:|---:|---:|---:|---:|")
    print(f"| dense | `.pth` (torch.save) | {dense_pth:,} | 1.0x | {dense_acc:.2f} % | {dense_acc:.2f} % | +0.00 |")
    for name, table in rows.items():
        for label, size, before, acc in table:
            print(f"| {name} | {label} | {size:,} | {dense_pth / size:.1f}x | {before:.2f} % | {acc:.2f} % | {acc - dense_acc:+.2f} |")
    print()
    for name, size, bound in checks:
        verdict = "within" if size <= bound else "OVER"
        print(f"{name} fp32: {size:,} bytes, bound (non-zeros x 4 + pruned weights / 8 + 4096) {bound:,}: {verdict}")


if __name__ == "__main__":
    main()
