"""Per-step cost of training with masks attached (gradient hooks + optimizer step hook) against dense training.

BasicCNN(in_channels=1, image_size=28) on real Fashion-MNIST batches (batch 64), Adam lr 1e-3, as
``edgeprune.training.train`` does. The two models start from the same weights; one is pruned by
``FineGrainedPruner`` with the default run's sparsity dict (masks attached). They train the same
batches for the same number of steps in alternating blocks (dense first in even repeats, pruned
first in odd ones), each step timed alone. Reported: median per-step time of each, their ratio,
the fastest step of each (least disturbed by other processes), and the median of the per-repeat
ratios of block medians. The batches are tensors in memory, so
data loading costs neither side. Run:

    python benchmarks/bench_mask_overhead.py
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from edgeprune.data import DataConfig, load_data, make_loader
from edgeprune.models import BasicCNN
from edgeprune.prune.pruner import FineGrainedPruner

__all__: list[str] = []

# The sparsity dict `edgeprune run` planned with its defaults (docs/benchmarks.md, issue 2).
DEFAULT_RUN_SPARSITY = {"conv1.weight": 0.1, "conv2.weight": 0.55, "fc1.weight": 0.823, "fc2.weight": 0.1}


def timed_steps(model: nn.Module, optimizer: torch.optim.Optimizer, batches: list) -> list[float]:
    """Train one step per batch; return each step's wall time in seconds (zero_grad to optimizer.step)."""
    seconds = []
    for images, labels in batches:
        start = time.perf_counter()
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="steps per block (one block = one model)")
    parser.add_argument("--repeats", type=int, default=20, help="blocks of each model, alternating")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps of each model first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = load_data(DataConfig(val_size=0))
    loader = make_loader(data.train, 64, shuffle=True, seed=args.seed, limit=args.steps * 64)
    batches = [(images, labels) for images, labels in loader if len(labels) == 64]
    torch.manual_seed(args.seed)
    dense = BasicCNN(in_channels=1, image_size=28)
    pruned = copy.deepcopy(dense)
    pruner = FineGrainedPruner(pruned, DEFAULT_RUN_SPARSITY)
    runs = {
        "dense": (dense, torch.optim.Adam(dense.parameters(), lr=1e-3)),
        "pruned": (pruned, torch.optim.Adam(pruned.parameters(), lr=1e-3)),
    }
    for model, optimizer in runs.values():
        model.train()
        timed_steps(model, optimizer, (batches * (args.warmup // len(batches) + 1))[: args.warmup])

    times: dict[str, list[float]] = {name: [] for name in runs}
    ratios = []
    for repeat in range(args.repeats):
        block = {}
        for name in ("dense", "pruned") if repeat % 2 == 0 else ("pruned", "dense"):
            block[name] = timed_steps(*runs[name], batches)
            times[name].extend(block[name])
        ratios.append(statistics.median(block["pruned"]) / statistics.median(block["dense"]))

    revived = sum(int((~mask & (dict(pruned.named_parameters())[name] != 0)).sum()) for name, mask in pruner.masks.items())
    pruned_count = sum(int((~mask).sum()) for mask in pruner.masks.values())
    dense_ms, pruned_ms = (1e3 * statistics.median(times[name]) for name in ("dense", "pruned"))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 64, "
          f"{args.repeats} x {len(batches)} timed steps per model, alternating")
    print(f"median per step: dense {dense_ms:.3f} ms, pruned with masks {pruned_ms:.3f} ms, "
          f"ratio {pruned_ms / dense_ms:.4f} ({100 * (pruned_ms / dense_ms - 1):+.2f} %)")
    dense_min, pruned_min = (1e3 * min(times[name]) for name in ("dense", "pruned"))
    print(f"fastest step: dense {dense_min:.3f} ms, pruned with masks {pruned_min:.3f} ms, ratio {pruned_min / dense_min:.4f}")
    print(f"median of per-repeat ratios: {statistics.median(ratios):.4f}; "
          f"per repeat: {' '.join(f'{r:.3f}' for r in ratios)}")
    print(f"pruned weights non-zero after training: {revived} of {pruned_count}")


if __name__ == "__main__":
    main()
