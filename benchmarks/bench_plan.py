"""Does the budget planner beat simple rules at the same size? BasicCNN on Fashion-MNIST, 80 % pruned.

Trains BasicCNN (Adam, lr 1e-3, batch 64, seeded; weights cached in the temp folder), scans it on
a validation split held out from the training set, then removes 80 % of the prunable weights three
ways and compares test accuracy before any fine-tuning:

* the budget plan (plan_by_budget on the scan),
* uniform: sparsity 0.8 in every layer,
* global magnitude: the same number of smallest |w| across all prunable layers together.

Run:

    python benchmarks/bench_plan.py
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from bench_scan import fashion_mnist, train_briefly
from edgeprune.masks import fine_grained_prune
from edgeprune.models import BasicCNN, prunable_parameters
from edgeprune.plan import plan_by_budget
from edgeprune.scan import sensitivity_scan
from edgeprune.train import evaluate


def prune_copy(model: BasicCNN, sparsity: dict[str, float]) -> BasicCNN:
    """A copy of ``model`` with each named parameter pruned to its sparsity."""
    pruned = BasicCNN(in_channels=1, image_size=28)
    pruned.load_state_dict(model.state_dict())
    params = prunable_parameters(pruned)
    for name, s in sparsity.items():
        fine_grained_prune(params[name], s)
    return pruned


def global_magnitude_copy(model: BasicCNN, num_zeros: int) -> BasicCNN:
    """A copy of ``model`` with the ``num_zeros`` smallest |w| of all prunable weights together set to zero."""
    pruned = BasicCNN(in_channels=1, image_size=28)
    pruned.load_state_dict(model.state_dict())
    params = list(prunable_parameters(pruned).values())
    flat = torch.cat([p.detach().abs().flatten() for p in params])
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[torch.sort(flat, stable=True).indices[:num_zeros]] = False
    with torch.no_grad():
        for p, mask in zip(params, torch.split(keep, [p.numel() for p in params])):
            p.mul_(mask.view_as(p))
    return pruned


def zero_fraction(model: BasicCNN) -> tuple[int, float]:
    params = prunable_parameters(model).values()
    zeros = sum(int((p == 0).sum()) for p in params)
    return zeros, zeros / sum(p.numel() for p in params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--val-images", type=int, default=5000, help="held out from the training set for the scan")
    parser.add_argument("--target", type=float, default=0.8, help="fraction of prunable weights removed")
    parser.add_argument("--scan-start", type=float, default=0.0)
    parser.add_argument("--scan-step", type=float, default=0.05)
    parser.add_argument("--scan-end", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    images, labels = fashion_mnist(train=True)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))
    val, fit = order[: args.val_images], order[args.val_images:]
    test_x, test_y = fashion_mnist(train=False)
    test = DataLoader(TensorDataset(test_x, test_y), batch_size=256)

    model = BasicCNN(in_channels=1, image_size=28)
    cache = Path(tempfile.gettempdir()) / f"edgeprune_bench_plan_e{args.epochs}_v{args.val_images}_s{args.seed}.pt"
    if cache.exists():
        model.load_state_dict(torch.load(cache, weights_only=True))
    else:
        torch.manual_seed(args.seed)
        model = BasicCNN(in_channels=1, image_size=28)
        train_briefly(model, images[fit], labels[fit], epochs=args.epochs, seed=args.seed)
        torch.save(model.state_dict(), cache)
    model.eval()

    scan = sensitivity_scan(model, DataLoader(TensorDataset(images[val], labels[val]), batch_size=256),
                            scan_step=args.scan_step, scan_start=args.scan_start, scan_end=args.scan_end,
                            progress=False)
    plan = plan_by_budget(scan, model, target_sparsity=args.target)
    budget = prune_copy(model, plan.sparsity_dict)
    num_zeros, _ = zero_fraction(budget)
    candidates = {
        "budget plan": budget,
        f"uniform {args.target}": prune_copy(model, {name: args.target for name in prunable_parameters(model)}),
        "global magnitude": global_magnitude_copy(model, num_zeros),
    }
    print(f"dense: validation {scan.dense_accuracy:.2f} % ({len(val)} images), "
          f"test {evaluate(model, test):.2f} % ({len(test_x)} images)")
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
