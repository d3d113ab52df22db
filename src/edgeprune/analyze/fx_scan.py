"""The fast engine of the sensitivity scan: run the traced graph once per batch, re-run only what depends on the pruned layer.

Pruning a layer changes only the ``torch.fx`` graph nodes that depend on it (its downstream
nodes). Each batch goes through the whole graph once with the dense weights; then, for each
layer and sparsity, only that layer's downstream nodes run again, reusing the values they
read from the rest of the graph, so every accuracy is bit-for-bit the naive loop's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx
from torch import nn
from torch.fx.node import Node, map_arg
from torch.utils._pytree import tree_leaves
from tqdm.auto import tqdm

from ..prune.masks import num_pruned
from ..task import Task
from ..training import evaluate

__all__ = ["trace", "fast_scan"]



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
    totals: list[float] = field(default_factory=list)  # the task's batch sums so far (e.g. correct predictions), per sparsity


def trace(model: nn.Module) -> tuple[torch.fx.Graph | None, str]:
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


def fast_scan(model, graph, loader, params, originals, sparsities, device, progress, task: Task):
    """The fast method. Returns (dense metric, metrics, {layer: why it needs the naive loop}); the metric is ``task``'s."""
    nodes = list(graph.nodes)
    position = {node: i for i, node in enumerate(nodes)}
    free_after = _last_uses(nodes)
    runs: list[_LayerRun] | None = None
    naive_layers: dict[str, str] = {}
    dense_total, count = 0.0, 0
    for images, labels in tqdm(loader, desc="scan (fast)", disable=not progress):
        images, labels = images.to(device), labels.to(device)
        if runs is None:  # first batch: decide, per layer, how to re-run it
            uses, changes, faithful = _probe(model, nodes, images)
            if not faithful:
                naive_layers = {name: "the traced graph does not reproduce the model's output" for name in params}
                return evaluate(model, loader, device=device, task=task), {}, naive_layers
            runs = []
            for name, param in params.items():
                run = _plan_layer(model, nodes, position, uses, changes, name, param)
                if isinstance(run, str):
                    naive_layers[name] = run
                else:
                    run.masks = _masks(originals[name], sparsities)
                    run.totals = [0.0] * len(sparsities)
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
            batch_total, batch_count = task.batch_total(dense_output, images, labels)
            dense_total += batch_total
            count += batch_count
            for run in runs:
                _rerun(model, run, cached.pop(run.name), dense_output, images, labels, originals[run.name], task)
    if count == 0:
        raise ValueError("sensitivity_scan: the data loader yielded no samples")
    metrics = {run.name: [task.finish(t, count) for t in run.totals] for run in runs}
    return task.finish(dense_total, count), metrics, naive_layers


def _rerun(model, run: _LayerRun, cached, dense_output, images, labels, original, task: Task) -> None:
    """For each sparsity: prune the layer, re-run its downstream nodes on one batch, add its ``task`` sum."""
    output_node = run.downstream[-1] if run.downstream[-1].op == "output" else None
    for i, mask in enumerate(run.masks):
        run.param.copy_(original).masked_fill_(~mask, 0.0)  # the same values fine_grained_prune writes
        env = {a: v.clone() if a in run.copied else v for a, v in cached.items()}
        for node in run.downstream:
            env[node] = _run_node(model, node, env, images)
            for done in run.free_after.get(node, ()):
                del env[done]
        run.totals[i] += task.batch_total(dense_output if output_node is None else env[output_node], images, labels)[0]
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
