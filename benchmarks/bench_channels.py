"""Channel pruning benchmark: BasicCNN (or resnet18) on real Fashion-MNIST, edgeprune against Torch-Pruning's MetaPruner.

Trains a baseline, prunes whole channels with the run's channel step (``edgeprune.steps.prune_channels_step``)
at each ``--ratios`` value (uniform ``_default``), plans the same MACs with the same step from a channel
sensitivity scan on the validation split (``prune_channels_step(target_macs=...)``, exactly what
``edgeprune run --target-macs`` does, its fallback to one bisected ratio included: "edgeprune planned"), and prunes the same baseline with Torch-Pruning's own
``MetaPruner`` + ``MagnitudeImportance`` (uniform and global), each at the pruning ratio whose MACs
come closest to edgeprune's. Every pruned model (and a copy of the dense one, the reference for
accuracy lost) is fine-tuned for the same epochs with the same seed and shuffling; test accuracy,
MACs, parameters and CPU latency (batch 1 and 64; dense and pruned models timed in the same
process, interleaved round-robin by ``time_models``; the median over rounds and the fastest round) are printed
as a Markdown table.

    .venv/bin/python benchmarks/bench_channels.py --epochs 10 --finetune-epochs 5 --ratios 0.5 --lr-schedule cosine
    .venv/bin/python benchmarks/bench_channels.py --model resnet18 --epochs 0 --finetune-epochs 0 --limit 500
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch_pruning as tp
from torch import nn

from edgeprune import steps
from edgeprune.analyze.latency import time_models
from edgeprune.analyze.metrics import count_macs
from edgeprune.data import DataConfig, load_data, make_loaders
from edgeprune.files import write_json_atomic
from edgeprune.models import ModelSpec
from edgeprune.prune.channels import output_layer_names
from edgeprune.training import LR_SCHEDULES, evaluate, train

from bench_sparsity import baseline  # this folder is on sys.path when the script runs

def tp_prune(model: nn.Module, shape: tuple[int, ...], ratio: float, global_pruning: bool) -> nn.Module:
    """Torch-Pruning's own pruner: MetaPruner with L2 MagnitudeImportance, the classes layer ignored."""
    pruned = copy.deepcopy(model).eval()
    example = torch.zeros(1, *shape)
    pruner = tp.pruner.MetaPruner(
        pruned,
        example,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio,
        global_pruning=global_pruning,
        ignored_layers=[pruned.get_submodule(name) for name in output_layer_names(pruned, example)],
    )
    pruner.step()
    return pruned


def tp_at_macs(model: nn.Module, shape: tuple[int, ...], target: int, global_pruning: bool) -> tuple[nn.Module, float]:
    """Torch-Pruning's model whose MACs are closest to ``target``, by bisection on its pruning ratio."""
    low, high, best = 0.0, 0.9, None
    for _ in range(12):
        ratio = (low + high) / 2
        pruned = tp_prune(model, shape, ratio, global_pruning)
        macs = count_macs(pruned, shape)["total"]
        if best is None or abs(macs - target) < abs(best[2] - target):
            best = (pruned, ratio, macs)
        if macs > target:
            low = ratio
        else:
            high = ratio
    return best[0], best[1]


def latency_rounds(models: dict[str, nn.Module], shape: tuple[int, ...], rounds: int, number: int | None) -> dict[str, dict[str, dict[int, float]]]:
    """Per model and batch size, the median over rounds and the fastest round (ms per call) on the CPU.

    ``time_models`` times the models interleaved, round-robin, so a slow spell of the shared machine hits them all.
    """
    timings = time_models(list(models.values()), torch.zeros(1, *shape), (1, 64), "cpu", rounds=rounds, number=number)
    return {name: {"median": t["latency_ms"], "min": {b: min(ms) for b, ms in t["rounds_ms"].items()}}
            for name, t in zip(models, timings)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="basiccnn", help="basiccnn or a torchvision classifier such as resnet18 (3x32x32)")
    parser.add_argument("--epochs", type=int, default=3, help="baseline training epochs")
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--lr-schedule", default="constant", choices=LR_SCHEDULES, help="of every fine-tuning (dense + epochs too)")
    parser.add_argument("--ratios", default="0.3,0.5", help="uniform channel ratios for edgeprune (comma-separated)")
    parser.add_argument("--importance", default="l2", choices=["l1", "l2", "taylor"])
    parser.add_argument("--limit", type=int, default=None, help="images per split (quick trials)")
    parser.add_argument("--rounds", type=int, default=5, help="latency rounds (models alternate within a round)")
    parser.add_argument("--number", type=int, default=None, help="calls per model, batch size and round (default: "
                        "enough for the slowest model's block to last about 20 ms)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadiest on a shared CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    geometry = {} if args.model == "basiccnn" else {"channels": 3, "image_size": 32}
    config = DataConfig(name="fashion-mnist", limit=args.limit, seed=args.seed, **geometry)
    splits = load_data(config)
    shape = (splits.in_channels, splits.image_size, splits.image_size)
    _, val_loader, test_loader = make_loaders(splits, 64, seed=args.seed)
    # the dense baseline of bench_sparsity.py (best validation epoch; cached, so the two benchmarks share it)
    spec = ModelSpec(args.model, splits.in_channels, splits.num_classes, splits.image_size)
    tag = f"seed{args.seed}-val{config.val_size}" + (f"-limit{args.limit}" if args.limit else "")
    dense = baseline(spec, splits, args.epochs, args.seed, tag).cpu()
    dense_macs = count_macs(dense, shape)["total"]
    rows = [{"name": "dense", "ratio": 0.0, "macs": dense_macs, "params": sum(p.numel() for p in dense.parameters()),
             "acc_pruned": None, "acc": evaluate(dense, test_loader, "cpu")}]
    models = {"dense": dense}
    # the reference for accuracy lost: the dense model trained for the same extra epochs as every pruned one
    dense_more = copy.deepcopy(dense)
    train(dense_more, make_loaders(splits, 64, seed=args.seed)[0], args.finetune_epochs, val_loader, device="cpu", seed=args.seed,
          lr_schedule=args.lr_schedule)
    rows.append({"name": "dense + fine-tune epochs", "ratio": 0.0, "macs": dense_macs, "params": rows[0]["params"],
                 "acc_pruned": None, "acc": evaluate(dense_more, test_loader, "cpu")})
    models["dense + fine-tune epochs"] = dense_more
    batches = steps.taylor_batches(splits, args.seed) if args.importance == "taylor" else None
    for ratio in (float(r) for r in args.ratios.split(",")):
        ours, _ = steps.prune_channels_step(dense, spec, {"_default": ratio}, importance=args.importance, batches=batches)
        target = count_macs(ours, shape)["total"]
        candidates = {f"edgeprune {args.importance} {ratio}": (ours, ratio)}
        planned, info = steps.prune_channels_step(dense, spec, target_macs=target / dense_macs, importance=args.importance,
                                                  loader=val_loader, device="cpu", batches=batches)
        candidates[f"edgeprune planned @{ratio}"] = (planned, max(info["channel_ratios"].values()))
        print(f"planned @{ratio}: {info['channel_ratios']}", flush=True)
        for global_pruning in (False, True):
            pruned, tp_ratio = tp_at_macs(dense, shape, target, global_pruning)
            candidates[f"TP {'global' if global_pruning else 'uniform'} @{ratio}"] = (pruned, tp_ratio)
        for name, (model, used_ratio) in candidates.items():
            acc_pruned = evaluate(model, test_loader, "cpu")
            fresh_order, _, _ = make_loaders(splits, 64, seed=args.seed)  # the same shuffling for every candidate
            train(model, fresh_order, args.finetune_epochs, val_loader, device="cpu", seed=args.seed, lr_schedule=args.lr_schedule)
            rows.append({"name": name, "ratio": round(used_ratio, 4), "macs": count_macs(model, shape)["total"],
                         "params": sum(p.numel() for p in model.parameters()), "acc_pruned": acc_pruned,
                         "acc": evaluate(model, test_loader, "cpu")})
            models[name] = model
    latency = latency_rounds(models, shape, args.rounds, args.number)
    print(f"{args.model} {shape}, threads: {torch.get_num_threads()}; train/val/test images {splits.info['train_images']}/"
          f"{splits.info['val_images']}/{splits.info['test_images']}")
    print("| model | ratio | MACs | params | acc pruned (%) | acc fine-tuned (%) | ms b1 median / min | ms b64 median / min "
          "| speedup b1 median / min | speedup b64 median / min |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    dense_ms = latency["dense"]
    for row in rows:
        row["latency_ms"], row["latency_min_ms"] = latency[row["name"]]["median"], latency[row["name"]]["min"]
        ms = latency[row["name"]]
        cells = [f"{ms['median'][b]:.3f} / {ms['min'][b]:.3f}" for b in (1, 64)]
        cells += [f"{dense_ms['median'][b] / ms['median'][b]:.2f}x / {dense_ms['min'][b] / ms['min'][b]:.2f}x" for b in (1, 64)]
        pruned_acc = "" if row["acc_pruned"] is None else f"{row['acc_pruned']:.2f}"
        print(f"| {row['name']} | {row['ratio']} | {row['macs']:,} | {row['params']:,} | {pruned_acc} | {row['acc']:.2f} | "
              + " | ".join(cells) + " |")
    if args.json:
        write_json_atomic(args.json, {"args": vars(args), "threads": torch.get_num_threads(), "rows": rows})


if __name__ == "__main__":
    main()
