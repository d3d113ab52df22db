"""Training the baseline, the sensitivity scan and the plan, pruning (fine-grained and whole channels) and fine-tuning."""

from __future__ import annotations

import copy
import itertools
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn

from .. import distributed
from ..analyze.channel_scan import channel_sensitivity_scan, check_fraction, prune_along_plans
from ..analyze.latency import latency_ratio
from ..analyze.metrics import count_macs
from ..analyze.plan import make_plan
from ..analyze.plots import plot_tradeoff
from ..analyze.scan import ScanResult, sensitivity_scan
from ..checkpoint import load_checkpoint
from ..data import DataSplits, make_loaders
from ..files import write_json_atomic, write_text_atomic
from ..models import ModelSpec, prunable_parameters
from ..prune.channels import channel_counts, prune_channels
from ..prune.global_magnitude import global_magnitude_sparsity
from ..prune.pruner import FineGrainedPruner
from ..prune.settings import load_layer_settings
from ..task import Task, task_named
from ..training import Teacher, TrainHistory, batchnorm_layers, finetune, prune_gradually, recalibrate_batchnorm, train
from .common import BATCHNORM_BATCHES, TAYLOR_BATCHES, check_fits, model_for_data

__all__ = [
    "BelowLimit", "build_baseline", "channels_summary", "check_collapse", "choose_sparsity", "default_max_loss", "final_quality",
    "finetune_pruned", "prune_channels_step", "prune_copy", "prune_while_training", "recalibration_batches", "scan_model", "taylor_batches",
    "train_baseline", "worst_layer_loss",
]


def build_baseline(name: str, splits: DataSplits, weights: str | None = None, seed: int = 0,
                   width: float | None = None) -> tuple[nn.Module, ModelSpec]:
    """The model to start from: loaded from ``weights`` (checked against the data), else freshly built (seeded; ``width``
    for a built-in model that has a width multiplier)."""
    spec = model_for_data(name, splits, width)
    if weights:
        model, spec, _, _ = load_checkpoint(weights, spec)
        check_fits(spec, splits)
        return model, spec
    return spec.build(seed=seed), spec


def train_baseline(
    model: nn.Module, splits: DataSplits, epochs: int, lr: float = 1e-3, device: str | torch.device | None = None, seed: int = 0,
    teacher: Teacher | None = None, lr_schedule: str = "constant",
) -> TrainHistory:
    """Train with Adam (the seed's recipe); keep the best epoch on the validation split when there is one.

    The shuffling is seeded afresh for this step, so the step gives the same model however the run got here.
    With a ``teacher`` the loss also distils its outputs (the channel step's fine-tuning uses it).
    """
    train_loader, val_loader, _ = make_loaders(splits, splits.info.get("batch_size", 64), seed)
    return train(model, train_loader, epochs, val_loader, lr, device, seed, keep_best=val_loader is not None, teacher=teacher,
                 lr_schedule=lr_schedule, task=splits.task)


def scan_model(
    model: nn.Module, splits: DataSplits, split: str = "val", start: float = 0.0, step: float = 0.05, end: float = 1.0,
    method: str = "auto", device: str | torch.device | None = None,
) -> ScanResult:
    """The sensitivity scan on the validation split (the test set only when asked for by name), by the splits' task's metric.

    Under ``torchrun`` the layers are shared out across the processes, and the parts gathered on every process."""
    _, val_loader, test_loader = make_loaders(splits, splits.info.get("batch_size", 64))
    if split == "val" and val_loader is None:
        raise ValueError("scanning on the validation split needs --val-size > 0 (or scan on the test split)")
    loader = val_loader if split == "val" else test_loader
    names = list(prunable_parameters(model))
    # under torchrun each process scans every world_size-th layer; all of them then hold the whole, identical result
    mine = names[distributed.rank()::distributed.world_size()]
    part = None
    if mine:
        part = sensitivity_scan(model, loader, scan_step=step, scan_start=start, scan_end=end, layers=mine, method=method,
                                device=device, progress=distributed.is_main(),
                                recalibration=recalibration_batches(model, splits), task=splits.task)
    parts = [p for p in distributed.gather(part) if p is not None]
    accuracies = {name: acc for p in parts for name, acc in p.accuracies.items()}
    sizes = {name: n for p in parts for name, n in p.layer_sizes.items()}
    scan = replace(parts[0], accuracies={name: accuracies[name] for name in names},  # the model's order, whoever scanned
                   layer_sizes={name: sizes[name] for name in names if name in sizes}, meta=dict(parts[0].meta))
    naive = [name for p in parts for name in p.meta.get("naive_layers", [])]
    if naive:
        scan.meta["naive_layers"] = naive
    scan.meta.update(split=split, images=len(loader.dataset), processes=len(parts),
                     layers_per_process=[len(p.accuracies) for p in parts])
    return scan


def choose_sparsity(
    model: nn.Module, scan: ScanResult | None, sparsity: str | Mapping | None = None,
    target_sparsity: float | None = 0.8, max_drop: float | None = None, target_bytes: int | None = None,
    plan: str = "scan", budget: str = "params", input_shape: tuple[int, ...] | None = None,
    bytes_per_nonzero: Mapping[str, float] | None = None,
) -> tuple[dict, dict]:
    """The sparsity dict: the user's (``sparsity``), one global magnitude ranking (``plan="global"``),
    or the planner's from the scan in ``budget`` (see :func:`~edgeprune.analyze.plan.plan_by_budget`); returns
    (dict, plan info)."""
    if sparsity is not None:
        return load_layer_settings(sparsity), {"method": "given"}
    if plan == "global":
        chosen = global_magnitude_sparsity(prunable_parameters(model), target_sparsity)
        return chosen, {"method": "global magnitude", "target": target_sparsity}
    if scan is None:
        raise ValueError("no sparsity dict given and no scan to plan one from; give --sparsity or run a scan")
    target = target_sparsity if max_drop is None and target_bytes is None else None
    planned = make_plan(scan, model, target_sparsity=target, target_bytes=target_bytes, max_drop=max_drop, budget=budget,
                        input_shape=input_shape, bytes_per_nonzero=bytes_per_nonzero)
    return dict(planned.sparsity_dict), planned.to_dict()


def worst_layer_loss(scan: ScanResult, plan_info: Mapping) -> tuple[str, float] | None:
    """(layer, drop) of the planned layer whose scan predicts the largest loss alone at its planned sparsity, in the
    scan's task's drop (:meth:`~edgeprune.task.Task.drop`); None for a plan without predictions (given, global).
    Pruning the layers together usually costs more: this is a lower bound on what the plan loses."""
    predicted = plan_info.get("predicted_accuracy")
    if not predicted:
        return None
    task = task_named(scan.task)
    name = max(predicted, key=lambda n: task.drop(scan.dense_accuracy, predicted[n]))
    return name, float(task.drop(scan.dense_accuracy, predicted[name]))


def check_collapse(model: nn.Module, scan: ScanResult, plan_info: Mapping, max_loss: float, out: Path,
                   budget: str = "params", input_shape: tuple[int, ...] | None = None) -> dict | None:
    """Stop a plan that the scan predicts will collapse the model: when one layer alone, at its planned sparsity, loses
    more than ``max_loss`` (:func:`worst_layer_loss`), write the trade-off the scan gives (``out/tradeoff.json``,
    ``.md`` and ``.png``: removed fraction in ``budget`` against the worst layer's predicted metric) and raise a
    one-line ValueError naming the layer, the loss and the largest target within ``max_loss``. Returns the check
    (layer, predicted loss, limit) when the plan passes, None for a plan without predictions."""
    worst = worst_layer_loss(scan, plan_info)
    if worst is None:
        return None
    layer, loss = worst
    check = {"layer": layer, "predicted_loss": loss, "max_loss": max_loss}
    if loss <= max_loss:
        return check
    task = task_named(scan.task)
    rows = []
    for step in range(1, 20):
        fraction = step / 20
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plan = make_plan(scan, model, target_sparsity=fraction, budget=budget, input_shape=input_shape).to_dict()
        name, drop = worst_layer_loss(scan, plan)
        rows.append({"fraction": fraction, "layer": name, "predicted": float(plan["predicted_accuracy"][name]),
                     "loss": drop})
    within = [r["fraction"] for r in rows if r["loss"] <= max_loss]
    write_json_atomic(out / "tradeoff.json", {"budget": budget, "dense": scan.dense_accuracy, "max_loss": max_loss,
                                              "metric": task.metric, "rows": rows})
    lines = [f"| {budget} removed | worst layer alone | predicted {task.metric} | loss ({task.drop_unit}) |",
             "|---|---|---|---|"]
    lines += [f"| {r['fraction']:.2f} | {r['layer']} | {task.format(r['predicted'])} | {r['loss']:.2f} |" for r in rows]
    write_text_atomic(out / "tradeoff.md", "\n".join(lines) + "\n")
    plot_tradeoff(rows, scan.dense_accuracy, task.floor(scan.dense_accuracy, max_loss), task.column, budget,
                  out / "tradeoff.png")
    best = f"the largest {budget} fraction within it is {max(within):.2f}" if within else "no fraction is within it"
    raise ValueError(
        f"the plan would collapse the model: the scan predicts {layer} alone loses {loss:.2f} "
        f"({task.drop_unit}; dense {task.format(scan.dense_accuracy)}) at its planned sparsity "
        f"{plan_info['sparsity_dict'][layer]:.3f}, more than --max-loss {max_loss:g}; {best} "
        f"(table and plot: {out / 'tradeoff.md'}, tradeoff.png); ask for less, raise --max-loss, or pass --force")


class BelowLimit(RuntimeError):
    """The run finished, but its final model lost more than ``--max-loss`` against the dense one (the report marks it)."""


def default_max_loss(task: Task) -> float:
    """The collapse guard's default limit: 5 accuracy points (a few points is what separates MLPerf Tiny's quality
    targets from its reference models), or for a reconstruction an MSE 50 % above the dense one (the seed's 1.5x)."""
    return 5.0 if task.higher_is_better else 50.0


def final_quality(dense: float, final: float, task: Task, max_loss: float | None) -> dict | None:
    """The final model's loss against the dense model on the test set, in the task's drop, and whether it is within
    ``max_loss`` (None without a limit)."""
    if max_loss is None:
        return None
    loss = float(task.drop(dense, final))
    return {"dense": dense, "final": final, "loss": loss, "max_loss": max_loss, "within": loss <= max_loss}


def prune_copy(model: nn.Module, sparsity: Mapping[str, object],
               recalibration: Iterable | None = None) -> tuple[nn.Module, FineGrainedPruner]:
    """A pruned copy of ``model`` (the original is untouched) and the pruner that holds its masks; with
    ``recalibration`` (training batches, :func:`recalibration_batches`) its BatchNorm statistics re-estimated."""
    if not sparsity:
        raise ValueError("the sparsity dict is empty, so it prunes no layer; name layers or use '_default' (e.g. {\"_default\": 0.5})")
    pruned = copy.deepcopy(model)
    pruner = FineGrainedPruner(pruned, sparsity)
    if not pruner.masks:
        raise ValueError("the sparsity dict prunes no layer; name at least one layer (or use '_default')")
    if recalibration is not None:
        recalibrate_batchnorm(pruned, recalibration)
    return pruned, pruner


def finetune_pruned(
    model: nn.Module, pruner: FineGrainedPruner, splits: DataSplits, epochs: int, lr: float = 1e-3,
    device: str | torch.device | None = None, seed: int = 0, lr_schedule: str = "constant", teacher: Teacher | None = None,
) -> TrainHistory:
    """Fine-tune with the masks kept; the best epoch on the validation split is kept (shuffling seeded afresh).
    With a ``teacher`` (e.g. ``Teacher(baseline)``) the loss also distils its outputs."""
    train_loader, val_loader, _ = make_loaders(splits, splits.info.get("batch_size", 64), seed)
    return finetune(model, pruner, train_loader, epochs, val_loader, lr, device, seed, lr_schedule, teacher, splits.task)


def prune_while_training(
    model: nn.Module, sparsity: Mapping[str, object] | float, splits: DataSplits, epochs: int, schedule: str = "agp",
    lr: float = 1e-3, device: str | torch.device | None = None, seed: int = 0, lr_schedule: str = "constant",
    teacher: Teacher | None = None,
) -> tuple[FineGrainedPruner, TrainHistory]:
    """Prune ``model`` gradually to ``sparsity`` (a dict per layer, or one fraction ranked globally) while training it
    ``epochs`` epochs (AGP or iterative rounds)."""
    train_loader, val_loader, _ = make_loaders(splits, splits.info.get("batch_size", 64), seed)
    return prune_gradually(model, train_loader, sparsity, epochs, schedule, val_loader, lr, device, seed,
                           lr_schedule=lr_schedule, teacher=teacher, task=splits.task)


def _training_batches(splits: DataSplits, count: int, seed: int) -> list:
    """The first ``count`` shuffled training batches."""
    return list(itertools.islice(make_loaders(splits, splits.info.get("batch_size", 64), seed)[0], count))


def taylor_batches(splits: DataSplits, seed: int = 0) -> list:
    """The first :data:`TAYLOR_BATCHES` shuffled training batches, whose gradients rank channels for ``importance="taylor"``."""
    return _training_batches(splits, TAYLOR_BATCHES, seed)


def recalibration_batches(model: nn.Module, splits: DataSplits, seed: int = 0) -> list | None:
    """The first :data:`BATCHNORM_BATCHES` shuffled training batches, on which ``model``'s BatchNorm statistics are
    re-estimated once it is pruned (the scan's pruned models and :func:`prune_copy`'s); None for a model without
    BatchNorm, which needs none."""
    return _training_batches(splits, BATCHNORM_BATCHES, seed) if batchnorm_layers(model) else None


def prune_channels_step(
    model: nn.Module, spec: ModelSpec, ratios: Mapping[str, object] | None = None, target_macs: float | None = None,
    importance: str = "l2", loader: Iterable | None = None, device: str | torch.device | None = None,
    target_latency: float | None = None, batches: Iterable | None = None,
) -> tuple[nn.Module, dict]:
    """A smaller dense copy of ``model`` with whole channels removed: by ``ratios``, or until the MACs are at most
    ``target_macs`` of the dense model's, or until its latency at batch 64 on ``device``, timed against the dense
    model here, is at most ``target_latency`` of the dense model's. With a validation ``loader`` a target is reached
    with the least predicted accuracy loss (a channel sensitivity scan, then the earliest plan of its greedy sequence
    that meets the target); without one, or when the scanned ratios cannot reach it, one ratio for every layer is
    bisected. ``batches`` (a few training batches) feed ``importance="taylor"``. Returns (model, info)."""
    if sum(x is not None for x in (ratios, target_macs, target_latency)) != 1:
        raise ValueError("give exactly one of channel ratios, a MACs target or a latency target")
    example = torch.zeros(1, *spec.sample_shape, device=next(model.parameters()).device)
    shape = spec.sample_shape
    dense_macs = count_macs(model, shape)["total"]
    measured: dict[int, float] = {}  # latency fraction of each candidate timed, by id
    if target_macs is not None:
        target, what = check_fraction(target_macs, "MACs"), "MACs"

        def meets(small: nn.Module) -> bool:
            return count_macs(small, shape)["total"] <= target_macs * dense_macs
    elif target_latency is not None:
        target, what = check_fraction(target_latency, "latency"), "latency"

        def meets(small: nn.Module) -> bool:
            # timed by rank 0 alone and shared: under torchrun every process must choose the same (same-shaped) model
            mine = latency_ratio(small, model, example, 64, device) if distributed.is_main() else None
            measured[id(small)] = distributed.gather(mine)[0]
            return measured[id(small)] <= target_latency

    scan_info = None
    if ratios is None and loader is not None:
        channel_scan = channel_sensitivity_scan(model, loader, example, importance=importance, device=device, batches=batches)
        scan_info = channel_scan.to_dict()
        found = prune_along_plans(model, channel_scan, meets, example, importance, batches)
        if found is not None:
            small, ratios = found
        else:
            warnings.warn(f"the scanned ratios do not reach the {what} target {target}; "
                          "removing one share of channels from every layer instead", stacklevel=2)
    if ratios is None:
        low, high, best = 0.0, 0.95, None
        for _ in range(12):
            middle = (low + high) / 2
            small = prune_channels(model, {"_default": middle}, example, importance, batches)
            if meets(small):
                best, high = (middle, small), middle
            else:
                low = middle
        if best is None:
            flag = "--target-macs" if what == "MACs" else "--target-latency"
            raise ValueError(f"removing 95 % of every layer's channels still leaves more than {target} of the {what}; raise {flag}")
        ratios, small = {"_default": round(best[0], 4)}, best[1]
    elif scan_info is None:
        small = prune_channels(model, ratios, example, importance, batches)
    macs = count_macs(small, shape)["total"]
    info = {"channel_ratios": dict(ratios), "channel_importance": importance, "macs_dense": dense_macs, "macs": macs,
            "macs_fraction": macs / dense_macs, "channels": channel_counts(small), "channel_scan": scan_info}
    if target_latency is not None:
        info["latency_fraction_b64"] = measured[id(small)]  # as timed when it was chosen
    return small, info


def channels_summary(info: Mapping | None) -> dict | None:
    """The channel step's info for results.json: the scan itself is replaced by whether one ran."""
    if info is None:
        return None
    return {**{k: v for k, v in info.items() if k != "channel_scan"}, "scanned": info.get("channel_scan") is not None}
