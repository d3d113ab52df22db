"""Per-step cost of training with masks attached (gradient hooks + optimizer step hook) against dense training.

BasicCNN(in_channels=1, image_size=28) on real Fashion-MNIST batches (batch 64), Adam lr 1e-3, as
``edgeprune.training.train`` does (``--optimizer sgd``: SGD lr 1e-2, momentum 0.9; ``adam-fused``:
the same Adam with ``fused=True``). Three models start from the same weights: dense; pruned by
``FineGrainedPruner`` with the default run's sparsity dict, masks attached ("masked"); and pruned
the same way with the masks then removed ("unhooked": same zeros, ordinary parameters, so
pruned weights revive), which separates the cost of the masks from that of the pruned values.
They train the same batches for the same number of steps in blocks whose order rotates every
repeat, each step timed alone, by the wall clock and by the CPU time of this process
(``time.process_time``: on a shared machine it leaves out the time other processes hold the cores;
with ``--threads 1`` it is the step's own work). Reported for each clock: the median per-step time
of each model, its ratio to dense, and the median of the per-repeat ratios of block medians. The batches
are tensors in memory, so data loading costs neither side. Run:

    python benchmarks/bench_mask_overhead.py             # 2 threads
    python benchmarks/bench_mask_overhead.py --threads 1 # CPU time is the steps' own work
    python benchmarks/bench_mask_overhead.py --threads 1 --optimizer sgd
    python benchmarks/bench_mask_overhead.py --threads 1 --optimizer adam-fused
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
from edgeprune.prune.pruner import FineGrainedPruner, remove

__all__: list[str] = []

# The sparsity dict `edgeprune run` planned with its defaults (docs/benchmarks.md, issue 2).
DEFAULT_RUN_SPARSITY = {"conv1.weight": 0.1, "conv2.weight": 0.55, "fc1.weight": 0.823, "fc2.weight": 0.1}


OPTIMIZERS = {
    "adam": lambda params: torch.optim.Adam(params, lr=1e-3),
    "adam-fused": lambda params: torch.optim.Adam(params, lr=1e-3, fused=True),
    "sgd": lambda params: torch.optim.SGD(params, lr=1e-2, momentum=0.9),
}
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def timed_steps(model: nn.Module, optimizer: torch.optim.Optimizer, batches: list) -> dict[str, list[float]]:
    """Train one step per batch; return each step's seconds (zero_grad to optimizer.step) by each clock."""
    seconds: dict[str, list[float]] = {clock: [] for clock in CLOCKS}
    for images, labels in batches:
        start = {clock: read() for clock, read in CLOCKS.items()}
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
        for clock, read in CLOCKS.items():
            seconds[clock].append(read() - start[clock])
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="steps per block (one block = one model)")
    parser.add_argument("--repeats", type=int, default=20, help="blocks of each model, alternating")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps of each model first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = load_data(DataConfig(val_size=0))
    loader = make_loader(data.train, 64, shuffle=True, seed=args.seed, limit=args.steps * 64)
    batches = [(images, labels) for images, labels in loader if len(labels) == 64]
    torch.manual_seed(args.seed)
    dense = BasicCNN(in_channels=1, image_size=28)
    pruned, unhooked = copy.deepcopy(dense), copy.deepcopy(dense)
    pruner = FineGrainedPruner(pruned, DEFAULT_RUN_SPARSITY)
    FineGrainedPruner(unhooked, DEFAULT_RUN_SPARSITY)
    remove(unhooked)
    models = {"dense": dense, "masked": pruned, "unhooked": unhooked}
    runs = {name: (model, OPTIMIZERS[args.optimizer](model.parameters())) for name, model in models.items()}
    for model, optimizer in runs.values():
        model.train()
        timed_steps(model, optimizer, (batches * (args.warmup // len(batches) + 1))[: args.warmup])

    times = {(name, clock): [] for name in runs for clock in CLOCKS}
    ratios = {(name, clock): [] for name in runs for clock in CLOCKS}
    names = list(runs)
    for repeat in range(args.repeats):
        order = names[repeat % len(names):] + names[: repeat % len(names)]
        block = {name: timed_steps(*runs[name], batches) for name in order}
        for clock in CLOCKS:
            for name in runs:
                times[name, clock].extend(block[name][clock])
                ratios[name, clock].append(statistics.median(block[name][clock]) / statistics.median(block["dense"][clock]))

    def revived(model: nn.Module) -> int:
        params = dict(model.named_parameters())
        return sum(int((~mask & (params[name] != 0)).sum()) for name, mask in pruner.masks.items())

    pruned_count = sum(int((~mask).sum()) for mask in pruner.masks.values())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.optimizer}, batch 64, "
          f"{args.repeats} x {len(batches)} timed steps per model, alternating")
    for clock in CLOCKS:
        dense_ms = 1e3 * statistics.median(times["dense", clock])
        print(f"{clock} clock, median per step: dense {dense_ms:.3f} ms")
        for name in ("masked", "unhooked"):
            ms = 1e3 * statistics.median(times[name, clock])
            print(f"  {name:8s} {ms:.3f} ms, ratio to dense {ms / dense_ms:.4f} ({100 * (ms / dense_ms - 1):+.2f} %); "
                  f"median of per-repeat ratios {statistics.median(ratios[name, clock]):.4f}; "
                  f"per repeat: {' '.join(f'{r:.3f}' for r in ratios[name, clock])}")
    print(f"pruned weights non-zero after training: masked {revived(pruned)}, unhooked {revived(unhooked)} "
          f"of {pruned_count}")


if __name__ == "__main__":
    main()
