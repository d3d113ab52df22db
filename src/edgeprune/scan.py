"""Sensitivity scan: prune one layer at a time at several sparsities and measure the accuracy.

This is the seed's ``sensitivity_scan``. Two methods give exactly the same numbers:

* ``naive``: for each layer and sparsity, prune the layer, run :func:`~edgeprune.train.evaluate`
  over the whole loader, restore the weights.
* ``fast``: trace the model with ``torch.fx``. Pruning a layer changes only the graph nodes that
  depend on it (its *downstream* nodes). Each batch goes through the whole graph once with the
  dense weights; then, for each layer and sparsity, only that layer's downstream nodes are run
  again, reusing the values they read from the rest of the graph. The same operations run on the
  same batches, so every accuracy is bit-for-bit the one the naive loop measures.

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
import torch.fx
from torch import nn
from torch.fx.node import Node, map_arg
from torch.utils._pytree import tree_leaves
from tqdm.auto import tqdm

from .fileio import write_json_atomic
from .masks import fine_grained_prune, num_pruned
from .models import prunable_parameters
from .train import evaluate, pick_device

__all__ = ["ScanResult", "sensitivity_scan", "scan_sparsities", "SCAN_FORMAT"]

SCAN_FORMAT = "edgeprune.scan/1"
METHODS = ("auto", "fast", "naive")


@dataclass
class ScanResult:
    """Accuracy (%) of the model with one layer pruned, per layer and per sparsity.

    ``accuracies[name][i]`` is the accuracy with only parameter ``name`` pruned to
    ``sparsities[i]``; ``dense_accuracy`` is the unpruned model's. ``method`` is the method
    that ran (``fast`` or ``naive``); ``layer_sizes`` holds each scanned parameter's element
    count; ``meta`` is free-form (number of samples, data split, layers scanned naively, ...).
    """

    sparsities: list[float]
    accuracies: dict[str, list[float]]
    dense_accuracy: float
    method: str = "naive"
    meta: dict = field(default_factory=dict)
    layer_sizes: dict[str, int] = field(default_factory=dict)

    @property
    def lower_bound(self) -> float:
        """The seed's accuracy floor: ``100 - 1.5 * (100 - dense_accuracy)``."""
        return 100.0 - 1.5 * (100.0 - self.dense_accuracy)

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
        """Save a PNG with one panel per layer: accuracy vs sparsity, the seed's lower bound, the chosen sparsity."""
        from .plots import grid_shape, save_figure  # matplotlib is only needed here
        import matplotlib.pyplot as plt

        names = list(self.accuracies)
        rows, cols = grid_shape(len(names))
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
        for ax, name in zip(axes.flat, names):
            ax.plot(self.sparsities, self.accuracies[name], "o-", label="accuracy after pruning")
            ax.axhline(self.lower_bound, color="r", linestyle="--", label=f"lower bound {self.lower_bound:.1f} %")
            if chosen is not None and name in chosen:
                ax.axvline(chosen[name], color="g", linestyle=":", label=f"chosen {chosen[name]:.2f}")
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("sparsity")
            ax.set_ylabel("top-1 accuracy (%)")
            ax.grid(axis="x")
            ax.legend(fontsize=7)
        for ax in axes.flat[len(names):]:
            ax.set_visible(False)
        fig.suptitle(f"Sensitivity scan (dense accuracy {self.dense_accuracy:.2f} %)")
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
) -> ScanResult:
    """Accuracy of ``model`` on ``dataloader`` with each layer alone pruned at each sparsity.

    ``layers`` are parameter names (default: all of :func:`~edgeprune.models.prunable_parameters`).
    ``method`` is ``naive``, ``fast`` or ``auto`` (fast when ``torch.fx`` can trace the model,
    else naive with a warning). Both give identical numbers for a loader that yields the same
    batches each pass (no shuffling or random augmentation). The model's weights are restored
    bit for bit afterwards; the model is left on ``device`` like :func:`~edgeprune.train.evaluate` does.
    """
    if method not in METHODS:
        raise ValueError(f"unknown scan method {method!r}; use one of {', '.join(METHODS)}")
    sparsities = scan_sparsities(scan_start, scan_end, scan_step)
    params = _select_layers(model, layers)
    device = pick_device(device)
    was_training = model.training
    model.eval().to(device)
    originals = {name: p.detach().clone() for name, p in params.items()}
    meta = {"scan_start": scan_start, "scan_end": scan_end, "scan_step": scan_step}
    try:
        graph = None
        if method != "naive":
            graph, why = _trace(model)
            if graph is None and method == "fast":
                raise ValueError(f"method='fast': the model cannot be traced by torch.fx ({why}); use method='naive'")
            if graph is None:
                warnings.warn(f"sensitivity_scan: torch.fx cannot trace the model ({why}); "
                              "falling back to the naive loop (same numbers, slower)", stacklevel=2)
        if graph is None:
            dense, accuracies = _naive_scan(model, dataloader, params, originals, sparsities, device, progress)
            used = "naive"
        else:
            dense, accuracies, naive_layers = _fast_scan(
                model, graph, dataloader, params, originals, sparsities, device, progress
            )
            if naive_layers:
                warnings.warn("sensitivity_scan: scanning these layers with the naive loop: "
                              + "; ".join(f"{n} ({why})" for n, why in naive_layers.items()), stacklevel=2)
                rest = {name: params[name] for name in naive_layers}
                _, slow = _naive_scan(model, dataloader, rest, originals, sparsities, device, progress, dense)
                accuracies.update(slow)
                meta["naive_layers"] = naive_layers
            accuracies = {name: accuracies[name] for name in params}  # the caller's order
            used = "fast"
    finally:
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(originals[name])
        model.train(was_training)
    return ScanResult(
        sparsities=sparsities,
        accuracies=accuracies,
        dense_accuracy=dense,
        method=used,
        meta=meta,
        layer_sizes={name: p.numel() for name, p in params.items()},
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


def _naive_scan(model, loader, params, originals, sparsities, device, progress, dense=None):
    """The seed's loop: prune one layer, evaluate on the whole loader, restore. Returns (dense, accuracies)."""
    if dense is None:
        dense = evaluate(model, loader, device=device)
    accuracies: dict[str, list[float]] = {}
    bar = tqdm(total=len(params) * len(sparsities), desc="scan (naive)", disable=not progress)
    for name, param in params.items():
        accuracies[name] = []
        for sparsity in sparsities:
            fine_grained_prune(param, sparsity)
            accuracies[name].append(evaluate(model, loader, device=device))
            with torch.no_grad():
                param.copy_(originals[name])
            bar.update()
    bar.close()
    return dense, accuracies


# ----------------------------------------------------------------------------------------------
# The fast method: run the graph once per batch, re-run only what depends on the pruned layer.
# ----------------------------------------------------------------------------------------------


@dataclass
class _LayerRun:
    """How to re-run the part of the graph that depends on one parameter, and what it counted."""

    name: str
    param: nn.Parameter
    downstream: list[Node]  # nodes that depend on the parameter, in graph order
    inputs: list[Node]  # other nodes whose values the downstream nodes read
    copied: set[Node]  # inputs that downstream nodes change in place: given a fresh copy for each run
    free_after: dict[Node, list[Node]]  # values the re-run no longer needs after each node
    masks: list[torch.Tensor] = field(default_factory=list)  # one keep-mask per sparsity
    correct: list[int] = field(default_factory=list)  # correct predictions so far, per sparsity


def _trace(model: nn.Module) -> tuple[torch.fx.Graph | None, str]:
    """The model's ``torch.fx`` graph, or (None, why not)."""
    try:
        graph = torch.fx.Tracer().trace(model)
    except Exception as exc:  # tracing fails in many ways (control flow on values, unsupported ops)
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if not placeholders or any(not n.args for n in placeholders[1:]):
        return None, "forward() must take exactly one tensor (other arguments need defaults)"
    return graph, ""


def _get_attr(model: nn.Module, target: str):
    obj = model
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _run_node(model: nn.Module, node: Node, env: dict[Node, object], images: torch.Tensor):
    """Execute one graph node, reading its arguments from ``env``."""
    if node.op == "placeholder":
        return images if node.prev.op == "root" else node.args[0]  # the first one, else its default
    if node.op == "get_attr":
        return _get_attr(model, node.target)
    args = map_arg(node.args, lambda n: env[n])
    kwargs = map_arg(node.kwargs, lambda n: env[n])
    if node.op == "call_module":
        return model.get_submodule(node.target)(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)
    if node.op == "call_method":
        return getattr(args[0], node.target)(*args[1:], **kwargs)
    return args[0]  # output


def _storages(value) -> set[int]:
    """Addresses of the storages of the tensors in ``value`` (a tensor or a nest of them)."""
    return {t.untyped_storage().data_ptr() for t in tree_leaves(value) if isinstance(t, torch.Tensor)}


def _probe(model, nodes, images):
    """Run the graph once, watching storages: which storages each node's value uses and which it changes in place.

    Runs under ``no_grad`` rather than ``inference_mode`` because only ordinary tensors have the
    version counters that reveal in-place changes. Also returns whether the graph's output equals
    the model's own output exactly.
    """
    env: dict[Node, object] = {}
    uses: dict[Node, set[int]] = {}
    changes: dict[Node, set[int]] = {}
    with torch.no_grad():
        for node in nodes:
            inputs = [t for t in tree_leaves(map_arg((node.args, node.kwargs), lambda n: env[n]))
                      if isinstance(t, torch.Tensor)]
            versions = [t._version for t in inputs]
            env[node] = _run_node(model, node, env, images)
            changes[node] = {t.untyped_storage().data_ptr() for t, v in zip(inputs, versions) if t._version != v}
            uses[node] = _storages(env[node])
        faithful = torch.equal(env[nodes[-1]], model(images))
    return uses, changes, faithful


def _readers(model: nn.Module, nodes: list[Node], param: nn.Parameter) -> list[Node]:
    """Graph nodes that read ``param``: calls of a module holding it, and ``get_attr`` of it (or its module)."""
    found = []
    for node in nodes:
        if node.op == "call_module":
            holder = model.get_submodule(node.target)
        elif node.op == "get_attr":
            holder = _get_attr(model, node.target)
        else:
            continue
        if holder is param or (isinstance(holder, nn.Module) and any(p is param for p in holder.parameters())):
            found.append(node)
    return found


def _plan_layer(model, nodes, position, uses, changes, name, param) -> _LayerRun | str:
    """Work out what to re-run for one parameter, or say why the fast method cannot scan it exactly."""
    readers = _readers(model, nodes, param)
    if not readers:
        return "its weight is not used by a module call or attribute in the traced graph"
    down: set[Node] = set()
    dirty: set[int] = set()  # storages that downstream nodes changed in place
    for node in nodes:  # a node reading such a storage afterwards depends on the layer too
        if node in readers or any(a in down or uses[a] & dirty for a in node.all_input_nodes):
            down.add(node)
            dirty |= changes[node]
    downstream = [n for n in nodes if n in down]
    inputs = list(dict.fromkeys(a for n in downstream for a in n.all_input_nodes if a not in down))
    for a in inputs:  # a cached value must not change after it is made, except by the re-run nodes
        if any(changes[n] & uses[a] for n in nodes[position[a] + 1:] if n not in down):
            return "a later operation changes, in place, a value its downstream part reads"
    read = set().union(*(uses[a] for a in inputs))
    changed_by_down = set().union(*(changes[n] for n in downstream)) & read
    copied = {a for a in inputs if uses[a] & changed_by_down}
    if any(len([a for a in inputs if s in uses[a]]) > 1 for s in changed_by_down):
        return "its downstream part changes, in place, a tensor shared by several cached values"
    return _LayerRun(name, param, downstream, inputs, copied, _last_uses(downstream))


def _fast_scan(model, graph, loader, params, originals, sparsities, device, progress):
    """The fast method. Returns (dense accuracy, accuracies, {layer: why it needs the naive loop})."""
    nodes = list(graph.nodes)
    position = {node: i for i, node in enumerate(nodes)}
    free_after = _last_uses(nodes)
    runs: list[_LayerRun] | None = None
    naive_layers: dict[str, str] = {}
    dense_correct = total = 0
    for images, labels in tqdm(loader, desc="scan (fast)", disable=not progress):
        images, labels = images.to(device), labels.to(device)
        if runs is None:  # first batch: decide, per layer, how to re-run it
            uses, changes, faithful = _probe(model, nodes, images)
            if not faithful:
                naive_layers = {name: "the traced graph does not reproduce the model's output" for name in params}
                return evaluate(model, loader, device=device), {}, naive_layers
            runs = []
            for name, param in params.items():
                run = _plan_layer(model, nodes, position, uses, changes, name, param)
                if isinstance(run, str):
                    naive_layers[name] = run
                else:
                    run.masks = _masks(originals[name], sparsities)
                    run.correct = [0] * len(sparsities)
                    runs.append(run)
            wanted: dict[Node, list[_LayerRun]] = {}
            for run in runs:
                for a in run.inputs:
                    wanted.setdefault(a, []).append(run)
        with torch.inference_mode():
            env: dict[Node, object] = {}
            cached: dict[str, dict[Node, object]] = {run.name: {} for run in runs}
            for node in nodes:
                env[node] = _run_node(model, node, env, images)
                for run in wanted.get(node, ()):  # keep what the layers' downstream parts read
                    cached[run.name][node] = env[node].clone() if node in run.copied else env[node]
                for done in free_after.get(node, ()):  # free memory early: reusing it is much faster
                    del env[done]
            dense_output = env[nodes[-1]]
            dense_correct += _num_correct(dense_output, labels)
            total += labels.numel()
            for run in runs:
                _rerun(model, run, cached.pop(run.name), dense_output, images, labels, originals[run.name])
    if total == 0:
        raise ValueError("sensitivity_scan: the data loader yielded no samples")
    accuracies = {run.name: [100.0 * c / total for c in run.correct] for run in runs}
    return 100.0 * dense_correct / total, accuracies, naive_layers


def _rerun(model, run: _LayerRun, cached, dense_output, images, labels, original) -> None:
    """For each sparsity: prune the layer, re-run its downstream nodes on one batch, count correct predictions."""
    output_node = run.downstream[-1] if run.downstream[-1].op == "output" else None
    for i, mask in enumerate(run.masks):
        run.param.copy_(original).masked_fill_(~mask, 0.0)  # the same values fine_grained_prune writes
        env = {a: v.clone() if a in run.copied else v for a, v in cached.items()}
        for node in run.downstream:
            env[node] = _run_node(model, node, env, images)
            for done in run.free_after.get(node, ()):
                del env[done]
        run.correct[i] += _num_correct(dense_output if output_node is None else env[output_node], labels)
    run.param.copy_(original)


def _last_uses(nodes: list[Node]) -> dict[Node, list[Node]]:
    """For each node, the values (among ``nodes`` and their inputs) that nothing after it reads."""
    last: dict[Node, Node] = {}
    for node in nodes:
        for arg in node.all_input_nodes:
            last[arg] = node
    free_after: dict[Node, list[Node]] = {}
    for value, node in last.items():
        free_after.setdefault(node, []).append(value)
    return free_after


def _masks(weight: torch.Tensor, sparsities: list[float]) -> list[torch.Tensor]:
    """``fine_grained_mask(weight, s)`` for each ``s``, from a single sort of ``|weight|``."""
    n = weight.numel()
    order = torch.sort(weight.abs().flatten(), stable=True).indices
    masks = []
    for sparsity in sparsities:
        mask = torch.ones(n, dtype=torch.bool, device=weight.device)
        mask[order[: num_pruned(n, sparsity)]] = False
        masks.append(mask.view_as(weight))
    return masks


def _num_correct(logits: torch.Tensor, labels: torch.Tensor) -> int:
    return int((logits.argmax(dim=1) == labels).sum())
