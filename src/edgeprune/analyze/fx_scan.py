"""The fast engine of the sensitivity scan: run the traced graph once per batch, re-run only what depends on the pruned layer.

Pruning a layer changes only the ``torch.fx`` graph nodes that depend on it (its downstream
nodes). Each batch goes through the whole graph once with the dense weights; then, for each
layer and sparsity, only that layer's downstream nodes run again, reusing the values they
read from the rest of the graph, so every accuracy is bit-for-bit the naive loop's.

With BatchNorm statistics re-estimated after pruning (``recalibration`` batches, as
:func:`~edgeprune.training.recalibrate_batchnorm` does it), the same holds in two passes:

1. Over the recalibration batches, BatchNorms in train mode with a cumulative average
   (``momentum=None``): the whole graph once per batch, accumulating the dense model's statistics;
   then, per layer and sparsity, only the downstream nodes up to the last BatchNorm they call,
   accumulating *that* pruned model's statistics of its downstream BatchNorms in tensors of its own
   (put in place of the modules' buffers for the call). A BatchNorm upstream of the pruned layer
   sees exactly the inputs it sees in the dense model, in the same batches and order, so the naive
   loop re-estimates it to the dense model's re-estimated values bit for bit; in train mode its
   output uses the batch's statistics, not the running ones, so the values the downstream part
   reads are the dense pass's too. Only the downstream BatchNorms get new statistics, and they are
   accumulated by the same module call on the same values in the same order as in the naive loop.
2. Over the evaluation batches, everything in eval mode: the whole graph with the dense model's
   re-estimated statistics (which upstream BatchNorms keep), then each layer's downstream part
   with its sparsity's re-estimated statistics in place.

Before trusting the graph, the model's own :func:`~edgeprune.training.recalibrate_batchnorm` runs
once on the dense model; the graph's outputs in pass 1 and its dense statistics must equal it
exactly, else every layer is left to the naive loop. Nothing is cached across batches: memory
is that of one batch's activations, plus a few statistics vectors per layer and sparsity.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.fx
from torch import nn
from torch.fx.node import Node, map_arg
from torch.utils._pytree import tree_leaves
from tqdm.auto import tqdm

from ..prune.masks import num_pruned
from ..task import Task
from ..training import batchnorm_layers, recalibrate_batchnorm

__all__ = ["trace", "fast_scan"]

_STATISTICS = ("running_mean", "running_var", "num_batches_tracked")  # the buffers re-estimation changes


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
    norms: list[nn.Module] = field(default_factory=list)  # the BatchNorms the downstream nodes call: re-estimated
    calibrate: list[Node] = field(default_factory=list)  # downstream nodes up to the last such call: what re-estimates
    calibrate_inputs: set[Node] = field(default_factory=set)  # the other nodes whose values those read
    calibrate_free_after: dict[Node, list[Node]] = field(default_factory=dict)
    states: list[dict[nn.Module, tuple]] = field(default_factory=list)  # per sparsity, the norms' re-estimated statistics


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


def _plan_layer(model, nodes, position, uses, changes, name, param, norms=()) -> _LayerRun | str:
    """Work out what to re-run for one parameter, or say why the fast method cannot scan it exactly.

    ``norms`` are the BatchNorms whose statistics are re-estimated after pruning (none: they are not)."""
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
    run = _LayerRun(name, param, downstream, inputs, copied, _last_uses(downstream))
    calls = _norm_calls(model, nodes, norms)
    mine = [n for n in downstream if n in calls]
    if mine:
        run.norms = list(dict.fromkeys(calls[n] for n in mine))
        if any(calls[n] in run.norms for n in calls if n not in down):
            return "a BatchNorm its downstream part calls is also called upstream of it (shared statistics)"
        last = position[mine[-1]]
        run.calibrate = [n for n in downstream if position[n] <= last]
        run.calibrate_inputs = {a for n in run.calibrate for a in n.all_input_nodes if a not in down}
        run.calibrate_free_after = _last_uses(run.calibrate)
    return run


def _norm_calls(model: nn.Module, nodes: list[Node], norms) -> dict[Node, nn.Module]:
    """The graph's calls of the modules ``norms``, each with its module."""
    wanted = {id(m) for m in norms}
    calls = {}
    for node in nodes:
        if node.op == "call_module" and id(module := model.get_submodule(node.target)) in wanted:
            calls[node] = module
    return calls


def fast_scan(model, graph, loader, params, originals, sparsities, device, progress, task: Task, recalibration=None):
    """The fast method. Returns (dense metric, metrics, {layer: why it needs the naive loop}); the metric is ``task``'s.

    With ``recalibration`` (training batches) every BatchNorm's statistics are re-estimated on them, for the dense
    model and after each pruning, as :func:`~edgeprune.training.recalibrate_batchnorm` does; the dense model's are left
    in the model. The dense metric is None when every layer is left to the naive loop (the caller measures it)."""
    nodes = list(graph.nodes)
    position = {node: i for i, node in enumerate(nodes)}
    free_after = _last_uses(nodes)
    batches = iter(loader)
    first = next(batches, None)
    if first is None:
        raise ValueError("sensitivity_scan: the data loader yielded no samples")
    uses, changes, faithful = _probe(model, nodes, first[0].to(device))  # decide, per layer, how to re-run it
    if not faithful:
        return None, {}, {name: "the traced graph does not reproduce the model's output" for name in params}
    norms = batchnorm_layers(model) if recalibration else []
    runs: list[_LayerRun] = []
    naive_layers: dict[str, str] = {}
    for name, param in params.items():
        run = _plan_layer(model, nodes, position, uses, changes, name, param, norms)
        if isinstance(run, str):
            naive_layers[name] = run
        else:
            run.masks = _masks(originals[name], sparsities)
            run.totals = [0.0] * len(sparsities)
            runs.append(run)
    if norms:
        why = _recalibrate(model, nodes, free_after, runs, norms, recalibration, originals, device, progress)
        if why:
            return None, {}, {name: why for name in params}
    wanted = _wanted(runs)
    dense_total, count = 0.0, 0
    total = len(loader) if hasattr(loader, "__len__") else None
    for images, labels in tqdm(itertools.chain([first], batches), desc="scan (fast)", total=total, disable=not progress):
        images, labels = images.to(device), labels.to(device)
        with torch.inference_mode():
            dense_output, cached = _graph_pass(model, nodes, free_after, wanted, images)
            batch_total, batch_count = task.batch_total(dense_output, images, labels)
            dense_total += batch_total
            count += batch_count
            for run in runs:
                _rerun(model, run, cached.pop(run.name), dense_output, images, labels, originals[run.name], task)
    if count == 0:
        raise ValueError("sensitivity_scan: the data loader yielded no samples")
    metrics = {run.name: [task.finish(t, count) for t in run.totals] for run in runs}
    return task.finish(dense_total, count), metrics, naive_layers


def _wanted(runs: list[_LayerRun]) -> dict[Node, list[_LayerRun]]:
    """For each node, the runs whose downstream part reads its value."""
    wanted: dict[Node, list[_LayerRun]] = {}
    for run in runs:
        for a in run.inputs:
            wanted.setdefault(a, []).append(run)
    return wanted


def _graph_pass(model, nodes, free_after, wanted, images):
    """Run the whole graph on one batch; return its output and, per run, the values its downstream part reads."""
    env: dict[Node, object] = {}
    cached: dict[str, dict[Node, object]] = {run.name: {} for runs in wanted.values() for run in runs}
    for node in nodes:
        env[node] = _run_node(model, node, env, images)
        for run in wanted.get(node, ()):  # keep what the layers' downstream parts read
            cached[run.name][node] = env[node].clone() if node in run.copied else env[node]
        for done in free_after.get(node, ()):  # free memory early: reusing it is much faster
            del env[done]
    return env[nodes[-1]], cached


def _fresh_statistics(norm: nn.Module) -> tuple[torch.Tensor, ...]:
    """New running statistics for ``norm``, as ``reset_running_stats`` leaves them (mean 0, variance 1, no batch)."""
    return (torch.zeros_like(norm.running_mean), torch.ones_like(norm.running_var),
            torch.zeros_like(norm.num_batches_tracked))


@contextmanager
def _statistics(states: dict[nn.Module, tuple]):
    """Put each BatchNorm's ``states`` (mean, variance, batches) in place of its running statistics buffers for the
    block (a call in train mode then updates those tensors), then its own buffers back."""
    own = {norm: tuple(getattr(norm, k) for k in _STATISTICS) for norm in states}
    try:
        for norm, state in states.items():
            for key, tensor in zip(_STATISTICS, state):
                setattr(norm, key, tensor)
        yield
    finally:
        for norm, state in own.items():
            for key, tensor in zip(_STATISTICS, state):
                setattr(norm, key, tensor)


def _recalibrate(model, nodes, free_after, runs, norms, batches, originals, device, progress) -> str:
    """Pass 1: re-estimate the dense model's BatchNorm statistics (left in the model) and, per run and sparsity, those
    of the run's downstream BatchNorms (in ``run.states``), as :func:`recalibrate_batchnorm` would on the pruned model.

    The model's own ``recalibrate_batchnorm`` runs first; returns why the graph cannot stand in for it (its outputs
    or dense statistics differ in any bit), or ''."""
    expected: list[torch.Tensor] = []
    hook = model.register_forward_hook(lambda module, args, output: expected.append(output.detach().clone()))
    try:
        recalibrate_batchnorm(model, batches, device)
    finally:
        hook.remove()
    dense = {norm: _fresh_statistics(norm) for norm in norms}
    active = [run for run in runs if run.norms]
    for run in active:
        run.states = [{norm: _fresh_statistics(norm) for norm in run.norms} for _ in run.masks]
    wanted = _wanted(active)
    momenta = [norm.momentum for norm in norms]
    for norm in norms:  # the modes recalibrate_batchnorm sets: the model in eval mode, its BatchNorms in train mode
        norm.momentum = None
        norm.train()
    seen = 0
    try:
        with torch.no_grad():
            for images, _ in tqdm(batches, desc="scan (fast): BatchNorm statistics", disable=not progress):
                images = images.to(device)
                with _statistics(dense):
                    output, cached = _graph_pass(model, nodes, free_after, wanted, images)
                if seen >= len(expected) or not _same(output, expected[seen]):
                    return "the traced graph does not reproduce the model's output while BatchNorm statistics are re-estimated"
                seen += 1
                for run in active:
                    _calibrate_run(model, run, cached.pop(run.name), images, originals[run.name])
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
            norm.eval()
    if seen != len(expected) or not all(_same(a, getattr(norm, key)) for norm in norms
                                        for key, a in zip(_STATISTICS, dense[norm])):
        return "the traced graph does not reproduce the model's re-estimated BatchNorm statistics"
    return ""


def _same(a, b) -> bool:
    """Whether two tensors are equal bit for bit in value (same shape and dtype, same numbers)."""
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)


def _calibrate_run(model, run: _LayerRun, cached, images, original) -> None:
    """For each sparsity: prune the layer, re-run its downstream nodes up to its last BatchNorm (in train mode) on one
    recalibration batch, accumulating that sparsity's statistics."""
    for i, mask in enumerate(run.masks):
        run.param.copy_(original).masked_fill_(~mask, 0.0)  # the same values fine_grained_prune writes
        env = {a: v.clone() if a in run.copied else v for a, v in cached.items() if a in run.calibrate_inputs}
        with _statistics(run.states[i]):
            for node in run.calibrate:
                env[node] = _run_node(model, node, env, images)
                for done in run.calibrate_free_after.get(node, ()):
                    del env[done]
    run.param.copy_(original)


def _rerun(model, run: _LayerRun, cached, dense_output, images, labels, original, task: Task) -> None:
    """For each sparsity: prune the layer, re-run its downstream nodes on one batch (with that sparsity's re-estimated
    BatchNorm statistics, if any), add its ``task`` sum."""
    output_node = run.downstream[-1] if run.downstream[-1].op == "output" else None
    for i, mask in enumerate(run.masks):
        run.param.copy_(original).masked_fill_(~mask, 0.0)  # the same values fine_grained_prune writes
        env = {a: v.clone() if a in run.copied else v for a, v in cached.items()}
        with _statistics(run.states[i] if run.states else {}):
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
