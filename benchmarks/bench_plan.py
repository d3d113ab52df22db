"""Does the budget planner beat simple rules at the same size? BasicCNN on Fashion-MNIST, 80 % pruned.

Trains BasicCNN (``edgeprune.training.train``: Adam, lr 1e-3, batch 64, seeded; the weights are cached),
scans it on the validation split ``load_data`` holds out of the training set, then removes 80 % of
the prunable weights three ways and compares test accuracy before any fine-tuning:

* the budget plan (plan_by_budget on the scan),
* uniform: sparsity 0.8 in every layer,
* global magnitude: the same number of smallest |w| across all prunable layers together.

Run:

    python benchmarks/bench_plan.py
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch import nn

from edgeprune.data import DataConfig, cache_dir, load_data, make_loader
from edgeprune.checkpoint import load_checkpoint, save_checkpoint
from edgeprune.models import ModelSpec
from edgeprune.models import prunable_parameters
from edgeprune.analyze.plan import plan_by_budget
from edgeprune.prune.pruner import FineGrainedPruner
from edgeprune.analyze.scan import sensitivity_scan
from edgeprune.training import evaluate, train

__all__: list[str] = []

SPEC = ModelSpec("basiccnn", in_channels=1, num_classes=10, image_size=28)


def pruned_copy(model: nn.Module, sparsity: dict[str, float]) -> nn.Module:
    """A copy of ``model`` with each named parameter pruned to its sparsity."""
    pruned = copy.deepcopy(model)
    FineGrainedPruner(pruned, sparsity)
    return pruned


def global_magnitude_copy(model: nn.Module, num_zeros: int) -> nn.Module:
    """A copy of ``model`` with the ``num_zeros`` smallest |w| of all prunable weights together set to zero."""
    pruned = copy.deepcopy(model)
    params = list(prunable_parameters(pruned).values())
    flat = torch.cat([p.detach().abs().flatten() for p in params])
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[torch.sort(flat, stable=True).indices[:num_zeros]] = False
    with torch.no_grad():
        for p, mask in zip(params, torch.split(keep, [p.numel() for p in params])):
            p.mul_(mask.view_as(p))
    return pruned


def zero_fraction(model: nn.Module) -> tuple[int, float]:
    params = prunable_parameters(model).values()
    zeros = sum(int((p == 0).sum()) for p in params)
    return zeros, zeros / sum(p.numel() for p in params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--val-images", type=int, default=5000, help="held out from the training set for the scan")
    parser.add_argument("--limit", type=int, help="use at most this many images of each split (quick trials)")
    parser.add_argument("--target", type=float, default=0.8, help="fraction of prunable weights removed")
    parser.add_argument("--scan-start", type=float, default=0.0)
    parser.add_argument("--scan-step", type=float, default=0.05)
    parser.add_argument("--scan-end", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = load_data(DataConfig(val_size=args.val_images, seed=args.seed, limit=args.limit))
    val, test = make_loader(data.val, 256), make_loader(data.test, 256)

    tag = f"basiccnn-fmnist-seed{args.seed}-e{args.epochs}-val{args.val_images}"
    if args.limit:
        tag += f"-limit{args.limit}"
    cache = cache_dir() / "bench" / f"{tag}.safetensors"
    if cache.exists():
        model = load_checkpoint(cache)[0]
    else:
        torch.manual_seed(args.seed)
        model = SPEC.build()
        train(model, make_loader(data.train, 64, shuffle=True, seed=args.seed), args.epochs, seed=args.seed)
        save_checkpoint(cache, model, SPEC)
    model.eval()

    scan = sensitivity_scan(model, val, scan_step=args.scan_step, scan_start=args.scan_start,
                            scan_end=args.scan_end, progress=False)
    plan = plan_by_budget(scan, model, target_sparsity=args.target)
    budget = pruned_copy(model, plan.sparsity_dict)
    num_zeros, _ = zero_fraction(budget)
    candidates = {
        "budget plan": budget,
        f"uniform {args.target}": pruned_copy(model, {name: args.target for name in prunable_parameters(model)}),
        "global magnitude": global_magnitude_copy(model, num_zeros),
    }
    print(f"dense: validation {scan.dense_accuracy:.2f} % ({len(data.val)} images), "
          f"test {evaluate(model, test):.2f} % ({len(data.test)} images)")
    print(f"scan: {scan.method}, sparsities {scan.sparsities[0]}..{scan.sparsities[-1]} step {args.scan_step}")
    print(f"\n{'method':18s} {'zeros':>8s} {'sparsity':>9s} {'test acc':>9s}  per-layer sparsity")
    for label, pruned in candidates.items():
        zeros, fraction = zero_fraction(pruned)
        per_layer = {name: round(1 - int(torch.count_nonzero(p)) / p.numel(), 3)
                     for name, p in prunable_parameters(pruned).items()}
        print(f"{label:18s} {zeros:8d} {fraction:9.4f} {evaluate(pruned, test):8.2f} %  {per_layer}")
    print(f"\nbudget plan predicted (one layer pruned at a time): {plan.predicted_accuracy}")


if __name__ == "__main__":
    main()
