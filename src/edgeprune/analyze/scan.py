"""Sensitivity scan: prune one layer at a time at several sparsities and measure the task's metric (accuracy, MSE).

This is the seed's ``sensitivity_scan``. Two methods give exactly the same numbers:

* ``naive``: for each layer and sparsity, prune the layer, run :func:`~edgeprune.training.evaluate`
  over the whole loader, restore the weights.
* ``fast``: trace the model with ``torch.fx``. Pruning a layer changes only the graph nodes that
  depend on it (its *downstream* nodes). Each batch goes through the whole graph once with the
  dense weights; then, for each layer and sparsity, only that layer's downstream nodes are run
  again, reusing the values they read from the rest of the graph. The same operations run on the
  same batches, so every accuracy is bit-for-bit the one the naive loop measures.

With BatchNorm statistics re-estimated after pruning (``recalibration``), the naive loop re-estimates
every BatchNorm of each pruned model on the recalibration batches; the fast method re-estimates only
those downstream of the pruned layer, the same way, on the recalibration batches' values the dense
pass computed (the upstream ones get back their dense values bit for bit): see
:mod:`~edgeprune.analyze.fx_scan`.

A layer the fast method cannot handle safely (its weight is not reached through the traced
graph, or in-place operations make cached values unreliable) is scanned with the naive loop.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..device import pick_device
from ..files import write_json_atomic
from ..models import prunable_parameters
from ..prune.masks import fine_grained_prune
from ..task import CLASSIFICATION, Task, task_named
from ..training import batchnorm_layers, evaluate, recalibrate_batchnorm
from .fx_scan import fast_scan, trace
from .plots import panel_grid, save_figure

__all__ = ["ScanResult", "sensitivity_scan", "scan_sparsities", "SCAN_FORMAT"]

SCAN_FORMAT = "edgeprune.scan/1"
METHODS = ("auto", "fast", "naive")


@dataclass
class ScanResult:
    """The task's metric (accuracy in %, or MSE) of the model with one layer pruned, per layer and per sparsity.

    ``accuracies[name][i]`` is the metric with only parameter ``name`` pruned to
    ``sparsities[i]``; ``dense_accuracy`` is the unpruned model's; ``task`` names the task
    (:mod:`edgeprune.task`) whose metric they are (the names say accuracy, as scan files always have). ``method`` is the method
    that ran (``fast`` or ``naive``); ``layer_sizes`` holds each scanned parameter's element
    count; ``meta`` is free-form (number of samples, data split, layers scanned naively, ...).
    """

    sparsities: list[float]
    accuracies: dict[str, list[float]]
    dense_accuracy: float
    method: str = "naive"
    meta: dict = field(default_factory=dict)
    layer_sizes: dict[str, int] = field(default_factory=dict)
    task: str = "classification"

    def __post_init__(self) -> None:
        task_named(self.task)

    @property
    def metric_task(self) -> Task:
        """The :class:`~edgeprune.task.Task` that :attr:`task` names."""
        return task_named(self.task)

    @property
    def lower_bound(self) -> float:
        """The seed's bound: accuracy ``100 - 1.5 * (100 - dense_accuracy)``, or MSE ``1.5 * dense`` (the task's)."""
        return self.metric_task.lower_bound(self.dense_accuracy)

    def to_dict(self) -> dict:
        """A JSON-ready dict, tagged with :data:`SCAN_FORMAT`."""
        return {"format": SCAN_FORMAT, **asdict(self)}

    def to_json(self, path: str | os.PathLike) -> None:
        """Write the result to ``path`` as JSON, atomically (a reader never sees half a file)."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "ScanResult":
        """Read a result written by :meth:`to_json`; raise ``ValueError`` naming the file if it is not one."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not valid JSON ({exc}); re-run the scan to rewrite it") from exc
        if not isinstance(data, dict) or data.get("format") != SCAN_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{path}: not an edgeprune scan result (expected format {SCAN_FORMAT!r}, found {found!r})")
        try:
            result = cls(
                sparsities=[float(s) for s in data["sparsities"]],
                accuracies={str(k): [float(a) for a in v] for k, v in data["accuracies"].items()},
                dense_accuracy=float(data["dense_accuracy"]),
                method=str(data.get("method", "naive")),
                meta=dict(data.get("meta", {})),
                layer_sizes={str(k): int(v) for k, v in data.get("layer_sizes", {}).items()},
                task=str(data.get("task", "classification")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{path}: scan result is damaged ({type(exc).__name__}: {exc}); re-run the scan") from exc
        for name, accs in result.accuracies.items():
            if len(accs) != len(result.sparsities):
                raise ValueError(
                    f"{path}: layer {name!r} has {len(accs)} accuracies for {len(result.sparsities)} sparsities; "
                    "re-run the scan"
                )
        return result

    def plot(self, path: str | os.PathLike, chosen: dict[str, float] | None = None, show: bool = False) -> None:
        """Save a PNG with one panel per layer: the metric vs sparsity, the seed's lower bound, the chosen sparsity."""
        names = list(self.accuracies)
        task = self.metric_task
        label = "top-1 accuracy (%)" if task.unit == "%" else task.column
        bound = f"{self.lower_bound:.1f} %" if task.unit == "%" else f"{self.lower_bound:.3g}"
        fig, axes = panel_grid(len(names))
        for ax, name in zip(axes, names):
            ax.plot(self.sparsities, self.accuracies[name], "o-", label=f"{task.metric} after pruning")
            ax.axhline(self.lower_bound, color="r", linestyle="--", label=f"lower bound {bound}")
            if chosen is not None and name in chosen:
                ax.axvline(chosen[name], color="g", linestyle=":", label=f"chosen {chosen[name]:.2f}")
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("sparsity")
            ax.set_ylabel(label)
            ax.grid(axis="x")
            ax.legend(fontsize=7)
        fig.suptitle(f"Sensitivity scan (dense {task.metric} {task.format(self.dense_accuracy)})")
        fig.tight_layout()
        save_figure(fig, path, show=show)


def scan_sparsities(scan_start: float = 0.4, scan_end: float = 1.0, scan_step: float = 0.1) -> list[float]:
    """The seed's grid ``np.arange(scan_start, scan_end, scan_step)``, rounded to 10 decimals, values above 1 dropped."""
    if not scan_step > 0:
        raise ValueError(f"scan_step must be positive, got {scan_step}")
    if not 0.0 <= scan_start <= 1.0:
        raise ValueError(f"scan_start must be between 0 and 1, got {scan_start}")
    grid = [round(float(s), 10) for s in np.arange(scan_start, scan_end, scan_step)]
    grid = [s for s in grid if s <= 1.0]
    if not grid:
        raise ValueError(f"no sparsity in [scan_start={scan_start}, scan_end={scan_end}); make scan_end larger")
    return grid


def sensitivity_scan(
    model: nn.Module,
    dataloader: Iterable,
    scan_step: float = 0.1,
    scan_start: float = 0.4,
    scan_end: float = 1.0,
    layers: Sequence[str] | None = None,
    method: str = "auto",
    device: str | torch.device | None = None,
    progress: bool = True,
    recalibration: Sequence | None = None,
    task: Task = CLASSIFICATION,
) -> ScanResult:
    """The ``task``'s metric (by default accuracy) of ``model`` on ``dataloader`` with each layer alone pruned at each
    sparsity.

    ``layers`` are parameter names (default: all of :func:`~edgeprune.models.prunable_parameters`).
    ``method`` is ``naive``, ``fast`` or ``auto`` (fast when ``torch.fx`` can trace the model,
    else naive with a warning). Both give identical numbers for a loader that yields the same
    batches each pass (no shuffling or random augmentation). With ``recalibration`` (a few training
    batches) and a model with BatchNorm, each pruned model's BatchNorm statistics are re-estimated on
    them before it is evaluated (:func:`~edgeprune.training.recalibrate_batchnorm`), as the pruned model
    will be, and so are the dense model's for ``dense_accuracy``; the fast method then re-estimates only
    the BatchNorms downstream of the pruned layer, with the same numbers. The model's weights and
    BatchNorm buffers are restored bit for bit afterwards; the model is left on ``device`` like
    :func:`~edgeprune.training.evaluate` does.
    """
    if method not in METHODS:
        raise ValueError(f"unknown scan method {method!r}; use one of {', '.join(METHODS)}")
    recalibrate = bool(recalibration) and bool(batchnorm_layers(model))
    sparsities = scan_sparsities(scan_start, scan_end, scan_step)
    params = _select_layers(model, layers)
    device = pick_device(device)
    was_training = model.training
    model.eval().to(device)
    originals = {name: p.detach().clone() for name, p in params.items()}
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    meta = {"scan_start": scan_start, "scan_end": scan_end, "scan_step": scan_step}

    def after_pruning() -> None:
        if recalibrate:
            recalibrate_batchnorm(model, recalibration, device)

    def restore_buffers() -> None:
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])

    try:
        graph = None
        if recalibrate:
            meta["batchnorm_recalibrated_on"] = sum(len(labels) for _, labels in recalibration)
        if method != "naive":
            graph, why = trace(model)
            if graph is None and method == "fast":
                raise ValueError(f"method='fast': the model cannot be traced by torch.fx ({why}); use method='naive'")
            if graph is None:
                warnings.warn(f"sensitivity_scan: torch.fx cannot trace the model ({why}); "
                              "falling back to the naive loop (same numbers, slower)", stacklevel=2)
        if graph is None:
            dense, accuracies = _naive_scan(model, dataloader, params, originals, sparsities, device, progress, task,
                                            after_pruning=after_pruning, restore=restore_buffers)
            used = "naive"
        else:
            dense, accuracies, naive_layers = fast_scan(
                model, graph, dataloader, params, originals, sparsities, device, progress, task,
                recalibration=recalibration if recalibrate else None,
            )
            if naive_layers:
                warnings.warn("sensitivity_scan: scanning these layers with the naive loop: "
                              + "; ".join(f"{n} ({why})" for n, why in naive_layers.items()), stacklevel=2)
                rest = {name: params[name] for name in naive_layers}
                dense, slow = _naive_scan(model, dataloader, rest, originals, sparsities, device, progress, task,
                                          dense, after_pruning=after_pruning, restore=restore_buffers)
                accuracies.update(slow)
                meta["naive_layers"] = naive_layers
            accuracies = {name: accuracies[name] for name in params}  # the caller's order
            used = "fast"
    finally:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(originals[name])
        restore_buffers()
        model.train(was_training)
    return ScanResult(
        sparsities=sparsities,
        accuracies=accuracies,
        dense_accuracy=dense,
        method=used,
        meta=meta,
        layer_sizes={name: p.numel() for name, p in params.items()},
        task=task.name,
    )


def _select_layers(model: nn.Module, layers: Sequence[str] | None) -> dict[str, nn.Parameter]:
    """The parameters to scan, by name; unknown names raise ``ValueError`` listing the valid ones."""
    prunable = prunable_parameters(model)
    if layers is None:
        return prunable
    unknown = [name for name in layers if name not in prunable]
    if unknown:
        raise ValueError(f"unknown layer(s) {', '.join(map(repr, unknown))}; valid names: {', '.join(prunable)}")
    return {name: prunable[name] for name in layers}


def _naive_scan(model, loader, params, originals, sparsities, device, progress, task, dense=None,
                after_pruning=lambda: None, restore=lambda: None):
    """The seed's loop: prune one layer (then ``after_pruning()``), evaluate on the whole loader, restore (and
    ``restore()``). Returns (dense, accuracies); the dense model is evaluated after ``after_pruning()`` too, so that
    its accuracy compares with theirs."""
    if dense is None:
        after_pruning()
        dense = evaluate(model, loader, device=device, task=task)
        restore()
    accuracies: dict[str, list[float]] = {}
    bar = tqdm(total=len(params) * len(sparsities), desc="scan (naive)", disable=not progress)
    for name, param in params.items():
        accuracies[name] = []
        for sparsity in sparsities:
            fine_grained_prune(param, sparsity)
            after_pruning()
            accuracies[name].append(evaluate(model, loader, device=device, task=task))
            with torch.no_grad():
                param.copy_(originals[name])
            restore()
            bar.update()
    bar.close()
    return dense, accuracies
