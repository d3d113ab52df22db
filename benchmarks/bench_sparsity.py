"""Accuracy against sparsity: one-shot planned, one-shot global, AGP and iterative, same training budget.

BasicCNN on real Fashion-MNIST (``edgeprune.data.load_data``: 55 000 training images, 5 000 held
out for validation, the 10 000 test images for the table). The dense baseline is trained
``--epochs`` epochs (``edgeprune.training.train``: Adam, lr 1e-3, batch 64, seeded, best
validation epoch kept; cached under ``cache_dir()/bench``). Then, at each sparsity, every method
gets the same ``--budget`` epochs of training after the baseline:

* ``planned``: today's one-shot run: ``sensitivity_scan`` (validation split, grid 0..0.95 step
  0.05, as ``edgeprune run``), ``make_plan`` to the target, prune, ``finetune``;
* ``global``: one-shot global magnitude (``global_magnitude_sparsity``), prune, ``finetune``;
* ``agp``: ``prune_gradually(schedule="agp")`` to the global target (cubic ramp, then fixed masks);
* ``iterative``: ``prune_gradually(schedule="iterative")``, one round per epoch;
* ``uniform`` (only when asked for with ``--methods``): every layer at the target, one-shot, then
  ``finetune``; what the planner gave before it was seeded from the global ranking whenever the
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

from edgeprune.analyze.plan import make_plan
from edgeprune.analyze.plots import pyplot, save_figure
from edgeprune.analyze.scan import sensitivity_scan
from edgeprune.checkpoint import load_checkpoint, save_checkpoint
from edgeprune.data import DataConfig, cache_dir, load_data, make_loaders
from edgeprune.files import write_json_atomic
from edgeprune.models import ModelSpec, prunable_parameters
from edgeprune.pipeline import fit_data_to_model, model_for_data
from edgeprune.prune.global_magnitude import global_magnitude_sparsity
from edgeprune.prune.pruner import FineGrainedPruner
from edgeprune.training import LR_SCHEDULES, Teacher, evaluate, finetune, prune_gradually, train

__all__: list[str] = []

METHODS = ("planned", "global", "agp", "iterative", "uniform")
RESULTS = Path(__file__).resolve().parent / "results"


def baseline(spec: ModelSpec, train_loader, val_loader, epochs: int, seed: int, tag: str) -> nn.Module:
    """The dense model trained ``epochs`` epochs (best validation epoch), cached on disk."""
    cache = cache_dir() / "bench" / f"sparsity-{spec.name}-{tag}-e{epochs}.safetensors"
    if cache.exists():
        return load_checkpoint(cache)[0]
    model = spec.build(seed=seed)
    train(model, train_loader, epochs, val_loader, seed=seed, keep_best=True)
    save_checkpoint(cache, model, spec)
    return model


def zero_fraction(model: nn.Module) -> float:
    """Fraction of the prunable weights that are exactly zero."""
    params = prunable_parameters(model).values()
    return sum(int((p == 0).sum()) for p in params) / sum(p.numel() for p in params)


def run_method(
    method: str, dense: nn.Module, target: float, scan, data, budget: int, seed: int, lr_schedule: str, distill: float
) -> nn.Module:
    """A copy of ``dense`` pruned to ``target`` by ``method`` with ``budget`` epochs of training (fresh loaders)."""
    train_loader, val_loader, _ = make_loaders(data, 64, seed)
    model = copy.deepcopy(dense)
    teacher = Teacher(copy.deepcopy(dense), distill) if distill else None
    if method in ("planned", "global", "uniform"):
        if method == "planned":
            sparsity = make_plan(scan, model, target_sparsity=target).sparsity_dict
        elif method == "global":
            sparsity = global_magnitude_sparsity(prunable_parameters(model), target)
        else:
            sparsity = {"_default": target}
        pruner = FineGrainedPruner(model, sparsity)
        finetune(model, pruner, train_loader, budget, val_loader, seed=seed, lr_schedule=lr_schedule, teacher=teacher)
    else:
        prune_gradually(model, train_loader, target, budget, schedule=method, eval_loader=val_loader, seed=seed,
                        lr_schedule=lr_schedule, teacher=teacher)
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
    spec = model_for_data(args.model, data)
    # Fresh loaders for every training: the shuffling never depends on what ran before (or on the cache).
    train_loader, val_loader, test_loader = make_loaders(data, 64, args.seed)
    tag = f"seed{args.seed}-val{args.val_size}" + (f"-limit{args.limit}" if args.limit else "")
    start = time.time()
    dense = baseline(spec, train_loader, val_loader, args.epochs, args.seed, tag)
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
        scan = sensitivity_scan(dense, val_loader, scan_start=0.0, scan_end=1.0, scan_step=0.05, progress=False)

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
