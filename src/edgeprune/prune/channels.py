"""Channel pruning into a physically smaller dense model, on any graph Torch-Pruning can trace.

Coupled channels (a conv and its BatchNorm, the next conv's or linear's inputs, the
flatten→linear block, residual adds, depthwise convs) are found by Torch-Pruning's
``DependencyGraph``; which channels go is decided by :mod:`edgeprune.prune.importance`
(pure arithmetic) from the weights of each whole coupled group.

Exception to Torch-Pruning, measured: its ``DependencyGraph`` slices a grouped conv that is
not depthwise (1 < groups < in_channels) wrongly (the pruned model no longer runs), so a
coupled group that touches such a conv is left whole, with a warning.
"""

from __future__ import annotations

import copy
import re
import warnings
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..models import resize_to_state_dict
from .importance import CRITERIA, channel_scores, channels_to_remove, check_ratio
from .settings import REGEX_PREFIX, load_layer_settings, resolve_layer_settings

__all__ = ["prune_channels", "output_layer_names", "channel_counts", "resize_to_state_dict", "load_channel_pruned"]

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)


def _forward(model: nn.Module, example_inputs: torch.Tensor) -> torch.Tensor:
    return model(example_inputs)


def output_layer_names(model: nn.Module, example_inputs: torch.Tensor) -> list[str]:
    """Names of the Conv2d/Linear modules whose output is the model's output (else the last one run): the classes."""
    ran: list[tuple[str, torch.Tensor]] = []
    hooks = [
        module.register_forward_hook(lambda _m, _i, out, name=name: ran.append((name, out)))
        for name, module in model.named_modules()
        if isinstance(module, PRUNABLE_TYPES)
    ]
    try:
        with torch.no_grad():
            out = _forward(model, example_inputs)
    finally:
        for hook in hooks:
            hook.remove()
    if not ran:
        raise ValueError("the model runs no Conv2d or Linear layer on the example inputs; there are no channels to prune")
    names = [name for name, value in ran if value is out]
    return names or [ran[-1][0]]


def _specificity(spec: Mapping[str, object], name: str) -> int:
    """2 when ``name`` is a key of ``spec``, 1 when a ``re:`` key matches it, 0 otherwise (``_default``)."""
    if name in spec:
        return 2
    regexes = (key[len(REGEX_PREFIX):] for key in spec if key.startswith(REGEX_PREFIX))
    return 1 if any(re.fullmatch(pattern, name) for pattern in regexes) else 0


def _group_ratio(members: list[str], resolved: Mapping[str, float], spec: Mapping[str, object]) -> float | None:
    """The ratio of a coupled group: its members' ratio by the most specific key that names one; conflicts are errors."""
    named = [m for m in members if m in resolved]
    if not named:
        return None
    top = max(_specificity(spec, m) for m in named)
    chosen = {m: resolved[m] for m in named if _specificity(spec, m) == top}
    if len(set(chosen.values())) > 1:
        listing = ", ".join(f"{m}={v}" for m, v in chosen.items())
        raise ValueError(f"layers {listing} share their output channels (coupled), so they need one ratio; give them the same value")
    return next(iter(chosen.values()))


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def _is_grouped(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and not _is_depthwise(module)


def _group_rows(graph, group, criterion: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The rows (tensor slice per pruned index, root channel per index) of every weight a Torch-Pruning group removes.

    ``taylor`` rows are weight × gradient; ``bn_scale`` rows are the BatchNorm scales (the
    group's weights when it has no BatchNorm).
    """
    rows, seen = [], set()
    for item in group:
        module = item.dep.target.module
        if not isinstance(module, (*PRUNABLE_TYPES, _BatchNorm)) or getattr(module, "weight", None) is None:
            continue
        out = graph.is_out_channel_pruning_fn(item.dep.handler)
        dim = 0 if out or isinstance(module, _BatchNorm) or _is_depthwise(module) else 1
        if (id(module), dim) in seen:
            continue
        seen.add((id(module), dim))
        weight = module.weight.detach()
        idxs = torch.as_tensor(item.idxs, dtype=torch.long, device=weight.device)
        if criterion == "taylor":  # a weight the loss never reached has no gradient: it changes nothing
            grad = module.weight.grad
            values = weight * grad if grad is not None else torch.zeros_like(weight)
        else:
            values = weight
        rows.append((values.index_select(dim, idxs).movedim(dim, 0), torch.as_tensor(item.root_idxs), isinstance(module, _BatchNorm)))
    if criterion == "bn_scale" and any(is_bn for _, _, is_bn in rows):
        return [(values, root) for values, root, is_bn in rows if is_bn]
    return [(values, root) for values, root, _ in rows]


def _accumulate_gradients(
    model: nn.Module, batches: Iterable, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> None:
    """Sum the loss gradients of ``batches`` into ``model``'s ``.grad`` (model in eval mode: BatchNorm stats untouched)."""
    device = next(model.parameters()).device
    model.zero_grad(set_to_none=True)
    count = 0
    for inputs, targets in batches:
        loss_fn(model(inputs.to(device)), targets.to(device)).backward()
        count += 1
    if count == 0:
        raise ValueError("importance='taylor' needs a few batches of (inputs, targets); the batches given were empty")


def prune_channels(
    model: nn.Module,
    ratios: Mapping[str, object] | str | Path,
    example_inputs: torch.Tensor,
    importance: str = "l2",
    batches: Iterable | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy,
) -> nn.Module:
    """A new, physically smaller copy of ``model`` with whole output channels removed; ``model`` is untouched.

    ``ratios`` maps a Conv2d/Linear module name (``"conv1"``, ``"layer1.0.conv1"``) to the
    fraction of its output channels removed (``round(ratio * n)``, at least one channel kept);
    ``re:<regex>`` and ``_default`` keys resolve as in the sparsity dict. Coupled layers (a
    residual add) are pruned together, at their most specific ratio. The output layer (the
    classes) is never pruned. ``importance``: ``l1`` / ``l2`` magnitude of each channel's
    whole coupled group, ``bn_scale`` (|γ| of its BatchNorms; magnitude for a group
    without one), or ``taylor`` (first-order, from ``batches`` of (inputs, targets) and ``loss_fn``).
    Kept weights are copied bit for bit.
    """
    import torch_pruning as tp  # imported on use: loading a checkpoint does not need it

    if importance not in CRITERIA:
        raise ValueError(f"unknown channel importance {importance!r}; choose one of {', '.join(CRITERIA)}")
    if importance == "taylor" and batches is None:
        raise ValueError("importance='taylor' needs batches=[(inputs, targets), ...] to compute gradients; pass a few batches")
    if not isinstance(example_inputs, torch.Tensor):
        raise ValueError(f"example_inputs must be one input tensor with a batch dimension, got {type(example_inputs).__name__}")
    spec = load_layer_settings(ratios)
    small = copy.deepcopy(model)
    was_training = small.training
    small.eval()  # tracing and gradients must not move BatchNorm running statistics
    param = next(small.parameters(), None)
    example_inputs = example_inputs.to(param.device if param is not None else "cpu")
    names = {module: name for name, module in small.named_modules() if isinstance(module, PRUNABLE_TYPES)}
    outputs = output_layer_names(small, example_inputs)
    for key in spec:
        if key in outputs:
            raise ValueError(f"{key!r} is the model's output layer (its channels are the classes) and is never pruned; remove it from the ratios")
    targets = [name for name in names.values() if name not in outputs]
    resolved = resolve_layer_settings(spec, targets, names.values(), check_ratio, "module")
    requires_grad = {name: p.requires_grad for name, p in small.named_parameters()}
    if importance == "taylor":
        _accumulate_gradients(small, batches, loss_fn)
    graph = tp.DependencyGraph().build_dependency(small, example_inputs, verbose=False)
    output_modules = [module for module, name in names.items() if name in outputs]
    plans = []
    for group in graph.get_all_groups(ignored_layers=output_modules, root_module_types=PRUNABLE_TYPES):
        members = [item.dep.target.module for item in group]
        pruned = [names[m] for m, item in zip(members, group) if m in names and graph.is_out_channel_pruning_fn(item.dep.handler)]
        ratio = _group_ratio(pruned, resolved, spec)
        if not ratio:
            continue
        grouped = [names[m] for m in members if _is_grouped(m)]
        if grouped:
            warnings.warn(f"channels of {', '.join(pruned)} feed grouped conv {grouped[0]}, which Torch-Pruning cannot slice; left whole", stacklevel=2)
            continue
        scores = channel_scores(_group_rows(graph, group, importance), len(group[0].idxs), importance)
        remove = channels_to_remove(scores, ratio)
        if remove:
            plans.append((group[0].dep.target.module, remove))
    for root, remove in plans:
        graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, remove).prune()
    small.zero_grad(set_to_none=True)
    for name, p in small.named_parameters():
        p.requires_grad_(requires_grad[name])
    return small.train(was_training)


def channel_counts(model: nn.Module) -> dict[str, dict[str, int]]:
    """Input and output channels (features) of every Conv2d and Linear module, by module name."""
    counts = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            counts[name] = {"in": module.in_channels, "out": module.out_channels, "groups": module.groups}
        elif isinstance(module, nn.Linear):
            counts[name] = {"in": module.in_features, "out": module.out_features, "groups": 1}
    return counts


def load_channel_pruned(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load a channel-pruned ``state_dict`` into a freshly built model of the same spec: resize, then load strictly."""
    resize_to_state_dict(model, state_dict)
    model.load_state_dict(state_dict)
    return model
