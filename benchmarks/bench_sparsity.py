"""Accuracy against sparsity: one-shot planned, one-shot global, AGP and iterative, same training budget.

BasicCNN on real Fashion-MNIST (``edgeprune.data.load_data``: 55 000 training images, 5 000 held
out for validation, the 10 000 test images for the table). Every step is the run's own
(``edgeprune.steps``). The dense baseline is ``build_baseline`` trained ``--epochs`` epochs by
``train_baseline`` (Adam, lr 1e-3, batch 64, seeded, best validation epoch kept; cached under
``cache_dir()/bench``). Then, at each sparsity, every method gets the same ``--budget`` epochs of
training after the baseline:

* ``planned``: ``edgeprune run``'s one-shot path: ``scan_model`` (validation split, grid 0..0.95 step
  0.05, as the run), ``choose_sparsity`` to the target, ``prune_copy``, ``finetune_pruned``;
* ``global``: ``choose_sparsity(plan="global")`` (one global magnitude ranking), ``prune_copy``, ``finetune_pruned``;
* ``agp``: ``prune_while_training(schedule="agp")`` to the global target (cubic ramp, then fixed masks),
  as ``run --plan global --schedule agp``;
* ``iterative``: ``prune_while_training(schedule="iterative")``, one round per epoch;
* ``uniform`` (only when asked for with ``--methods``): every layer at the target, ``prune_copy``, then
  ``finetune_pruned``; what the planner gave before it was seeded from the global ranking whenever the
  target was the scan grid's last sparsity (0.95).

A dense model trained ``--epochs + --budget`` epochs is measured too: the pruned models have
had that much training. Writes ``benchmarks/results/bench_sparsity.json`` and ``.png``.

Run:

    python benchmarks/bench_sparsity.py --epochs 3 --budget 3 --sparsities 0.8 0.9 0.95 0.97
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
from torch import nn

from edgeprune import steps
from edgeprune.analyze.plots import pyplot, save_figure
from edgeprune.checkpoint import load_checkpoint, save_checkpoint
from edgeprune.config import fit_data_to_model
from edgeprune.data import DataConfig, DataSplits, cache_dir, load_data, make_loaders
from edgeprune.files import write_json_atomic
from edgeprune.models import ModelSpec, prunable_parameters
from edgeprune.training import LR_SCHEDULES, Teacher, evaluate, train

__all__: list[str] = []

METHODS = ("planned", "global", "agp", "iterative", "uniform")
RESULTS = Path(__file__).resolve().parent / "results"


def baseline(spec: ModelSpec, splits: DataSplits, epochs: int, seed: int, tag: str) -> nn.Module:
    """The run's baseline step: ``spec`` built seeded and trained ``epochs`` epochs (best validation epoch), cached on disk."""
    cache = cache_dir() / "bench" / f"sparsity-{spec.name}-{tag}-e{epochs}.safetensors"
    if cache.exists():
        return load_checkpoint(cache)[0]
    model, spec = steps.build_baseline(spec.name, splits, seed=seed)
    steps.train_baseline(model, splits, epochs, seed=seed)
    save_checkpoint(cache, model, spec)
    return model


def zero_fraction(model: nn.Module) -> float:
    """Fraction of the prunable weights that are exactly zero."""
    params = prunable_parameters(model).values()
    return sum(int((p == 0).sum()) for p in params) / sum(p.numel() for p in params)


def run_method(
    method: str, dense: nn.Module, target: float, scan, data, budget: int, seed: int, lr_schedule: str, distill: float
) -> nn.Module:
    """A copy of ``dense`` pruned to ``target`` by ``method`` with ``budget`` epochs of training, by the run's steps."""
    teacher = Teacher(copy.deepcopy(dense), distill) if distill else None
    if method in ("planned", "global", "uniform"):
        if method == "uniform":
            sparsity = {"_default": target}
        else:
            sparsity, _ = steps.choose_sparsity(dense, scan, None, target, plan="scan" if method == "planned" else "global")
        model, pruner = steps.prune_copy(dense, sparsity)
        steps.finetune_pruned(model, pruner, data, budget, seed=seed, lr_schedule=lr_schedule, teacher=teacher)
    else:
        model = copy.deepcopy(dense)
        steps.prune_while_training(model, target, data, budget, method, seed=seed, lr_schedule=lr_schedule, teacher=teacher)
    return model


def plot(rows: list[dict], dense: dict[str, float], path: Path, title: str) -> None:
    """Test accuracy against sparsity, one line per method, the dense references as horizontal lines."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in METHODS:
        points = sorted((r["target"], r["test_accuracy"]) for r in rows if r["method"] == method)
        if points:
            ax.plot([100 * s for s, _ in points], [a for _, a in points], "o-", label=method)
    for (label, acc), style in zip(dense.items(), (":", "--")):
        ax.axhline(acc, color="grey", linestyle=style, label=label)
    ax.set_xlabel("sparsity of the prunable weights (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="basiccnn", help="basiccnn (1x28x28) or a torchvision model (3x32x32)")
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant",
                        help="of every training after the baseline (dense continuation included)")
    parser.add_argument("--distill", type=float, default=0.0, help="every method also distils the dense baseline (weight)")
    parser.add_argument("--epochs", type=int, default=3, help="dense baseline training epochs")
    parser.add_argument("--budget", type=int, default=3, help="training epochs each method gets after the baseline")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.8, 0.9, 0.95])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS[:4]))
    parser.add_argument("--limit", type=int, help="use at most this many images of each split (quick trials)")
    parser.add_argument("--val-size", type=int, default=5000, help="images held out of the training set for scan and epoch choice")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_sparsity")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = load_data(fit_data_to_model(args.model, DataConfig(name="fashion-mnist", val_size=args.val_size, seed=args.seed, limit=args.limit)))
    spec = steps.model_for_data(args.model, data)
    # Fresh loaders for every training: the shuffling never depends on what ran before (or on the cache).
    _, val_loader, test_loader = make_loaders(data, 64, args.seed)
    tag = f"seed{args.seed}-val{args.val_size}" + (f"-limit{args.limit}" if args.limit else "")
    start = time.time()
    dense = baseline(spec, data, args.epochs, args.seed, tag)
    longer = copy.deepcopy(dense)
    train_loader = make_loaders(data, 64, args.seed)[0]
    train(longer, train_loader, args.budget, val_loader, seed=args.seed + 1, keep_best=True, lr_schedule=args.lr_schedule)
    references = {
        f"dense, {args.epochs} epochs": evaluate(dense, test_loader),
        f"dense, {args.epochs}+{args.budget} epochs": evaluate(longer, test_loader),
    }
    print(f"{data.info['train_images']} training, {data.info['val_images']} validation, "
          f"{data.info['test_images']} test images; dense: {references} ({time.time() - start:.0f} s)")
    scan = None  # only the planned method needs the scan (it costs 20 evaluations per layer)
    if "planned" in args.methods:
        scan = steps.scan_model(dense, data, "val", 0.0, 0.05, 1.0)

    rows = []
    for target in args.sparsities:
        for method in args.methods:
            began = time.time()
            model = run_method(method, dense, target, scan, data, args.budget, args.seed, args.lr_schedule, args.distill)
            row = {"method": method, "target": target, "sparsity": zero_fraction(model),
                   "test_accuracy": evaluate(model, test_loader), "seconds": round(time.time() - began, 1)}
            rows.append(row)
            print(f"{method:10s} target {target:.2f}: sparsity {row['sparsity']:.4f}, "
                  f"test {row['test_accuracy']:.2f} %, {row['seconds']} s", flush=True)
            write_json_atomic(args.out.with_suffix(".json"), {"args": {**vars(args), "out": str(args.out)},
                                                             "data": data.info, "dense": references, "rows": rows})
    plot(rows, references, args.out.with_suffix(".png"), f"{args.model} on Fashion-MNIST: same training budget per method")
    print(f"\n| sparsity | {' | '.join(args.methods)} |\n|---|{'---|' * len(args.methods)}")
    for target in args.sparsities:
        accs = [next(r["test_accuracy"] for r in rows if r["method"] == m and r["target"] == target) for m in args.methods]
        print(f"| {100 * target:g} % | " + " | ".join(f"{a:.2f} %" for a in accs) + " |")
    print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
