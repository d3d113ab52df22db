"""Does the budget planner beat simple rules at the same size? BasicCNN on Fashion-MNIST, 80 % pruned.

Every step ``edgeprune run`` also takes is the pipeline's own function (``edgeprune.steps``):
the baseline is built by ``build_baseline`` and trained by ``train_baseline`` (Adam, lr 1e-3,
batch 64, seeded, best epoch on the validation split ``load_data`` holds out of the training set;
the weights are cached), scanned on that validation split by ``scan_model``, and pruned by
``prune_copy``. 80 % of the prunable weights are removed three ways and test accuracy is
compared before any fine-tuning:

* the budget plan (``choose_sparsity`` on the scan, as ``edgeprune run`` plans),
* uniform: sparsity 0.8 in every layer,
* global magnitude: the same number of smallest |w| across all prunable layers together
  (``edgeprune.prune.global_magnitude.global_magnitude_sparsity``).

Run:

    python benchmarks/bench_plan.py
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from edgeprune.checkpoint import load_checkpoint, save_checkpoint
from edgeprune.data import DataConfig, cache_dir, load_data, make_loaders
from edgeprune.device import pick_device
from edgeprune.models import prunable_parameters
from edgeprune.steps import build_baseline, choose_sparsity, prune_copy, scan_model, train_baseline
from edgeprune.prune.global_magnitude import global_magnitude_sparsity
from edgeprune.training import evaluate

__all__: list[str] = []

CACHE_TAG = "pipeline"  # weights trained by the pipeline's steps; older cache files are not reused


def zero_count(model: nn.Module) -> tuple[int, int]:
    """(zeros, size) over all prunable weights of ``model``."""
    params = prunable_parameters(model).values()
    return sum(int((p == 0).sum()) for p in params), sum(p.numel() for p in params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--val-images", type=int, default=5000, help="held out from the training set for the scan")
    parser.add_argument("--limit", type=int, help="use at most this many images of each split (quick trials)")
    parser.add_argument("--target", type=float, default=0.8, help="fraction of prunable weights removed")
    parser.add_argument("--scan-start", type=float, default=0.0)
    parser.add_argument("--scan-step", type=float, default=0.05)
    parser.add_argument("--scan-end", type=float, default=1.0)
    parser.add_argument("--device", help="cpu or cuda (default: CUDA when present)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = pick_device(args.device)

    splits = load_data(DataConfig(val_size=args.val_images, seed=args.seed, limit=args.limit))
    test = make_loaders(splits, 64, args.seed)[2]

    tag = f"{CACHE_TAG}-basiccnn-fmnist-seed{args.seed}-e{args.epochs}-val{args.val_images}"
    if args.limit:
        tag += f"-limit{args.limit}"
    cache = cache_dir() / "bench" / f"{tag}.safetensors"
    if cache.exists():
        model, spec, _, _ = load_checkpoint(cache)
    else:
        model, spec = build_baseline("basiccnn", splits, seed=args.seed)
        train_baseline(model, splits, args.epochs, 1e-3, device, args.seed)
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(cache, model, spec)
    model.eval()

    scan = scan_model(model, splits, "val", args.scan_start, args.scan_step, args.scan_end, "auto", device)
    sparsity, plan = choose_sparsity(model, scan, None, target_sparsity=args.target)
    budget = prune_copy(model, sparsity)[0]
    num_zeros, total = zero_count(budget)
    global_dict = global_magnitude_sparsity(prunable_parameters(model), num_zeros / total)
    candidates = {
        "budget plan": budget,
        f"uniform {args.target}": prune_copy(model, {"_default": args.target})[0],
        "global magnitude": prune_copy(model, global_dict)[0],
    }
    print(f"dense: validation {scan.dense_accuracy:.2f} % ({len(splits.val)} images), "
          f"test {evaluate(model, test, device):.2f} % ({len(splits.test)} images)")
    print(f"scan: {scan.method}, sparsities {scan.sparsities[0]}..{scan.sparsities[-1]} step {args.scan_step}")
    print(f"\n{'method':18s} {'zeros':>8s} {'sparsity':>9s} {'test acc':>9s}  per-layer sparsity")
    for label, pruned in candidates.items():
        zeros, size = zero_count(pruned)
        per_layer = {name: round(1 - int(torch.count_nonzero(p)) / p.numel(), 3)
                     for name, p in prunable_parameters(pruned).items()}
        print(f"{label:18s} {zeros:8d} {zeros / size:9.4f} {evaluate(pruned, test, device):8.2f} %  {per_layer}")
    print(f"\nbudget plan predicted (one layer pruned at a time): {plan['predicted_accuracy']}")


if __name__ == "__main__":
    main()
