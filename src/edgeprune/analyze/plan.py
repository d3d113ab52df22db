"""Turn a sensitivity scan into a sparsity dict: by accuracy tolerance, or by a size budget.

* :func:`plan_by_tolerance` is the seed's rule made automatic: each layer gets the largest
  scanned sparsity whose accuracy stays above a floor.
* :func:`plan_by_budget` removes a given share of what the prunable weights cost (or fits them
  in a given number of bytes): it starts from the global magnitude ranking and moves pruning to
  the layers where, according to the scan, the cost freed costs less accuracy.

What a weight costs is its layer's *unit cost* (:func:`layer_unit_costs`), by budget:

* ``params``: 1 per weight, the plain share of weights;
* ``macs``: the multiply-accumulates each weight does in one inference (a conv weight is used
  once per output pixel, a linear weight once per example), the time of a dense kernel;
* ``flash``: the bytes a non-zero weight takes in the device's sparse format (its value and its
  index).

Both return a :class:`SparsityPlan` that records what the scan predicts for it. "Accuracy" below is the scan's
task's metric, and an accuracy drop its :meth:`~edgeprune.task.Task.drop` (points of accuracy, or percent of MSE increase).
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn

from ..files import write_json_atomic
from ..prune.global_magnitude import count_bounds, global_magnitude_counts, sparsity_for_count
from ..prune.masks import check_sparsity, num_pruned
from ..models import prunable_parameters
from .metrics import module_macs
from .scan import ScanResult

__all__ = [
    "BUDGETS",
    "BytesPerNonzero",
    "DEFAULT_BYTES_PER_NONZERO",
    "PLAN_FORMAT",
    "SparsityPlan",
    "layer_unit_costs",
    "make_plan",
    "plan_by_budget",
    "plan_by_tolerance",
]

PLAN_FORMAT = "edgeprune.plan/1"
BUDGETS = {"params": "weights", "macs": "MACs", "flash": "bytes"}
"""The budgets a plan can count in, and the unit each one counts."""
DEFAULT_BYTES_PER_NONZERO = 2.0
"""Placeholder flash price of a non-zero weight: 1 int8 value byte + 1 index byte. The sparse
engine's cost model (its bytes per non-zero of each layer) replaces it through ``bytes_per_nonzero``."""
BytesPerNonzero = Mapping[str, float] | Callable[[str, torch.Tensor], float]
"""Flash price of a non-zero weight per layer: a mapping by parameter name, or ``f(name, weight)``."""


@dataclass
class SparsityPlan:
    """A sparsity per parameter and what the scan predicts for it.

    ``predicted_accuracy[name]`` is the scan's metric (accuracy in %, or the MSE of a reconstruction scan: its
    task's, :mod:`edgeprune.task`) with only that layer pruned to its
    planned sparsity, interpolated linearly between scanned sparsities (sparsity 0 is the dense
    accuracy); pruning all layers together usually costs more than any one of them.
    ``predicted_overall_sparsity`` is the fraction of prunable weights that will be zero
    (None when the layer sizes are unknown). A budget plan also records its ``budget`` (a key
    of :data:`BUDGETS`), the ``dense_cost`` of all prunable weights in that budget's unit
    (weights, MACs or bytes) and ``predicted_cost_removed``, the fraction of it the plan removes.
    """

    sparsity_dict: dict[str, float]
    method: str
    target: dict[str, float]
    predicted_accuracy: dict[str, float]
    predicted_overall_sparsity: float | None
    budget: str | None = None
    dense_cost: float | None = None
    predicted_cost_removed: float | None = None

    def to_dict(self) -> dict:
        """A JSON-ready dict, tagged with :data:`PLAN_FORMAT`."""
        return {"format": PLAN_FORMAT, **asdict(self)}

    def to_json(self, path: str | os.PathLike) -> None:
        """Write the plan to ``path`` as JSON, atomically."""
        write_json_atomic(path, self.to_dict())


def plan_by_tolerance(scan: ScanResult, max_drop: float | None = None) -> SparsityPlan:
    """Each layer's largest scanned sparsity within ``max_drop`` of the dense model (else 0.0), in the scan's task's
    drop (:meth:`~edgeprune.task.Task.drop`): accuracy at least ``dense - max_drop`` points, or an MSE at most
    ``max_drop`` percent above the dense MSE.

    By default the bound is the seed's lower bound drawn in the scan plot: the error 1.5 times the dense model's
    (accuracy ``100 - 1.5 * (100 - dense)``, that is ``max_drop = 0.5 * (100 - dense)``; MSE ``1.5 * dense``, that is
    ``max_drop = 50`` percent).
    """
    task = scan.metric_task
    if max_drop is None:
        max_drop = task.drop(scan.dense_accuracy, scan.lower_bound)
    if not max_drop >= 0:
        raise ValueError(f"max_drop must be a non-negative number ({task.drop_unit}), got {max_drop}")
    floor = task.floor(scan.dense_accuracy, max_drop)
    chosen = {
        name: max((s for s, value in zip(scan.sparsities, values) if task.within(value, floor)), default=0.0)
        for name, values in scan.accuracies.items()
    }
    sizes = scan.layer_sizes
    overall = None
    if sizes and all(name in sizes for name in chosen):
        overall = sum(num_pruned(sizes[n], s) for n, s in chosen.items()) / sum(sizes[n] for n in chosen)
    return SparsityPlan(
        sparsity_dict=chosen,
        method="tolerance",
        target={"max_drop": float(max_drop)},
        predicted_accuracy={name: _predicted_accuracy(scan, name, s) for name, s in chosen.items()},
        predicted_overall_sparsity=overall,
    )


def layer_unit_costs(
    model: nn.Module,
    input_shape: tuple[int, ...] | None,
    budget: str,
    bytes_per_nonzero: BytesPerNonzero | None = None,
) -> dict[str, float]:
    """What one weight of each prunable parameter costs in ``budget`` (see :data:`BUDGETS`).

    * ``params``: 1.0 each.
    * ``macs``: the MACs of the module that owns the weight, in one forward pass on a batch of one
      of ``input_shape`` (e.g. ``(3, 32, 32)``, see :func:`~edgeprune.analyze.metrics.module_macs`),
      divided by the weight's size: the output pixels of a conv, the rows of a linear layer.
    * ``flash``: ``bytes_per_nonzero[name]``, or ``bytes_per_nonzero(name, weight)`` when it is a
      callable; by default :data:`DEFAULT_BYTES_PER_NONZERO` for every layer.
    """
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; use one of {', '.join(BUDGETS)}")
    prunable = prunable_parameters(model)
    if budget == "params":
        return {name: 1.0 for name in prunable}
    if budget == "macs":
        return _macs_per_weight(model, prunable, input_shape)
    if bytes_per_nonzero is None:
        return {name: DEFAULT_BYTES_PER_NONZERO for name in prunable}
    if callable(bytes_per_nonzero):
        units = {name: bytes_per_nonzero(name, p.detach()) for name, p in prunable.items()}
    else:
        missing = [name for name in prunable if name not in bytes_per_nonzero]
        if missing:
            raise ValueError(f"bytes_per_nonzero has no price for {', '.join(missing)}; give one for every prunable layer")
        units = {name: bytes_per_nonzero[name] for name in prunable}
    bad = [f"{name}={value!r}" for name, value in units.items() if not _positive(value)]
    if bad:
        raise ValueError(f"bytes per non-zero must be positive numbers of bytes, got {', '.join(bad)}")
    return {name: float(value) for name, value in units.items()}


def _positive(value: object) -> bool:
    """A finite real number above zero (not a bool)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _macs_per_weight(model: nn.Module, prunable: dict[str, nn.Parameter], input_shape: tuple[int, ...] | None) -> dict[str, float]:
    """Each prunable weight's share of the MACs of the module that owns it (see :func:`layer_unit_costs`)."""
    if input_shape is None or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in input_shape):
        raise ValueError(f"budget 'macs' needs the input shape of one example, e.g. (3, 32, 32), got {input_shape!r}")
    macs = module_macs(model, tuple(input_shape))
    modules = dict(model.named_modules())
    owners = [name.rpartition(".")[0] for name in prunable]
    units, unknown = {}, []
    for (name, p), owner in zip(prunable.items(), owners):
        # a module's count includes its children's, and is shared by all its weights: it is this
        # weight's only for a leaf module with one prunable weight (a conv, a linear layer)
        if any(True for _ in modules[owner].children()) or owners.count(owner) > 1 or macs.get(owner, 0) == 0:
            unknown.append(name)
        else:
            units[name] = macs[owner] / p.numel()
    if unknown:
        raise ValueError(
            f"cannot count the MACs of each weight of {', '.join(unknown)} (not a conv or linear layer, or its "
            "module has sub-modules); plan with budget 'params' or 'flash'"
        )
    return units


def plan_by_budget(
    scan: ScanResult,
    model: nn.Module,
    target_sparsity: float | None = None,
    target_bytes: float | None = None,
    bit_width: int = 32,
    budget: str = "params",
    input_shape: tuple[int, ...] | None = None,
    bytes_per_nonzero: BytesPerNonzero | None = None,
) -> SparsityPlan:
    """Sparsities for the scanned layers that meet one budget at the least predicted accuracy cost.

    Each prunable weight of ``model`` (see :func:`~edgeprune.models.prunable_parameters`) costs
    its layer's unit cost in ``budget`` (:func:`layer_unit_costs`, from ``input_shape`` or
    ``bytes_per_nonzero``); the dense cost is the sum over all of them. Give exactly one target:

    * ``target_sparsity``: the fraction of the dense cost that must be removed (of the weights
      for ``params``, of the MACs for ``macs``, of the bytes for ``flash``);
    * ``target_bytes``: the non-zero weights must fit in this many bytes: ``bit_width / 8`` bytes
      each for ``params``, their ``bytes_per_nonzero`` for ``flash`` (``bit_width`` unused);
      not for ``macs``. Biases and other 1-D parameters are not counted.

    The plan starts from the global magnitude ranking of the scanned layers (the smallest |w|
    per unit of cost of all of them together, each layer keeping at least one weight and at most
    99 % pruned, see :mod:`~edgeprune.prune.global_magnitude`), walked until the weights pruned
    remove the target cost, and moves away from it only where the scan predicts a gain:

    * a layer the ranking prunes beyond its largest scanned sparsity keeps the ranking's count
      (the scan knows nothing there; a warning says so);
    * the other layers share the rest of the target by their scanned cost curves (the accuracy
      drop, made non-increasing with sparsity and linear between scanned points): the pieces of
      the curves' lower convex hulls that lose the least accuracy per unit of cost freed (per
      MAC saved under ``macs``) first, so the insensitive layers, and under ``macs`` the layers
      whose weights do the most MACs, are pruned most. This allocation replaces the ranking's
      only when the scan predicts it costs less accuracy.

    The ranking is of |w| per unit of cost (|w| / MACs per weight under ``macs``): with |w| for
    what a weight is worth, the weights that are worth least for what they cost go first, as a
    greedy knapsack would take them; with equal unit costs (``params``, one flash price for all
    layers) it is the plain global magnitude ranking. As the units differ by up to ~1000x
    between a first conv and a linear layer, this ranking drives the layers with the most MACs
    per weight to the 99 % cap; so, when unit costs differ and the ranking goes beyond the
    scanned range, the scan's allocation within the range (when it reaches the target) replaces
    it if it predicts less accuracy lost, a layer past its last scanned point being predicted
    along its curve's last piece.

    Weights already zero and prunable layers outside the scan count toward the target as they
    are; applied with :func:`~edgeprune.prune.masks.fine_grained_prune`, the plan meets the target
    exactly or goes over it by less than one weight's unit cost.
    """
    if (target_sparsity is None) == (target_bytes is None):
        raise ValueError("give exactly one of target_sparsity and target_bytes")
    prunable = prunable_parameters(model)
    unknown = [name for name in scan.accuracies if name not in prunable]
    if unknown:
        raise ValueError(f"the scan has layers the model lacks: {', '.join(unknown)}; scan this model again")
    units = layer_unit_costs(model, input_shape, budget, bytes_per_nonzero)
    sizes = {name: p.numel() for name, p in prunable.items()}
    zeros = {name: int((p == 0).sum()) for name, p in prunable.items()}
    dense = sum(units[name] * sizes[name] for name in prunable)
    if target_sparsity is not None:
        target_sparsity = check_sparsity(target_sparsity, "target_sparsity")
        required = round(target_sparsity * dense, 6)
        target = {"target_sparsity": target_sparsity}
    elif budget == "macs":
        raise ValueError("target_bytes is a size, not a number of MACs; with budget 'macs' give target_sparsity")
    else:
        if not target_bytes >= 0 or bit_width <= 0:
            raise ValueError(f"target_bytes must be >= 0 and bit_width > 0, got {target_bytes} and {bit_width}")
        if budget == "params":
            required = max(0, sum(sizes.values()) - math.floor(target_bytes * 8 / bit_width))
            target = {"target_bytes": float(target_bytes), "bit_width": bit_width}
        else:
            required = max(0.0, round(dense - target_bytes, 6))
            target = {"target_bytes": float(target_bytes)}

    names = list(scan.accuracies)
    outside = {name: zeros[name] for name in prunable if name not in scan.accuracies}
    goal = required - _removed_cost(outside, outside, units)  # what the scanned layers must remove
    ranked = _global_counts({name: prunable[name] for name in names}, units, max(0, goal), BUDGETS[budget])
    pruned = dict(ranked)
    beyond = [name for name in names if ranked[name] > _scanned_count(scan, name, sizes[name])]
    inside = [name for name in names if name not in beyond]
    # the layers the ranking keeps inside the scanned range share its cost for them by the scan
    rest = goal - _removed_cost({n: ranked[n] for n in beyond}, {n: zeros[n] for n in beyond}, units)
    by_scan = _scan_allocation(scan, inside, sizes, units, zeros, rest)
    if _predicted_cost(scan, by_scan, sizes) < _predicted_cost(scan, {n: ranked[n] for n in inside}, sizes) - 1e-9:
        pruned.update(by_scan)
    if beyond and len({units[name] for name in names}) > 1:
        # a ranking per unit of cost pushes the costliest layers to the cap; stay within the
        # scanned range when it meets the target at a lower predicted accuracy cost
        within = _scan_allocation(scan, names, sizes, units, zeros, goal)
        if round(_removed_cost(within, {n: zeros[n] for n in names}, units) - goal, 6) >= 0 and (
            _predicted_cost(scan, within, sizes) < _predicted_cost(scan, pruned, sizes) - 1e-9
        ):
            pruned = within
    beyond = [name for name in names if pruned[name] > _scanned_count(scan, name, sizes[name])]
    if beyond:
        warnings.warn(
            f"plan_by_budget: the target prunes {', '.join(beyond)} beyond the scanned sparsities; "
            "there the plan follows the global magnitude ranking (scan further toward 1.0 to plan them)",
            stacklevel=2,
        )
    sparsity = {name: sparsity_for_count(sizes[name], pruned[name]) for name in names}
    return SparsityPlan(
        sparsity_dict=sparsity,
        method="budget",
        target=target,
        predicted_accuracy={name: _predicted_accuracy(scan, name, s) for name, s in sparsity.items()},
        predicted_overall_sparsity=_removed_cost(pruned, zeros, dict.fromkeys(zeros, 1)) / sum(sizes.values()),
        budget=budget,
        dense_cost=dense,
        predicted_cost_removed=_removed_cost(pruned, zeros, units) / dense if dense else 0.0,
    )


def _global_counts(params: dict[str, nn.Parameter], units: dict[str, float], required: float, unit: str) -> dict[str, int]:
    """Weights each layer loses under one global ranking of |w| per unit of cost, walked until ``required``
    cost is removed; no layer emptied unless the target needs it."""
    scores = {name: p.detach().abs() / units[name] for name, p in params.items()}
    size = sum(units[name] * p.numel() for name, p in params.items())
    if required > size:
        raise ValueError(
            f"the target needs {round(required, 2):,} more {unit} removed, but the scanned layers hold only {round(size, 2):,}; "
            "scan more layers"
        )
    kept = sum(units[name] * count_bounds(p.numel())[1] for name, p in params.items())
    if required > kept:
        return global_magnitude_counts(scores, required, max_sparsity=1.0, min_kept=0, unit_costs=units)
    return global_magnitude_counts(scores, required, unit_costs=units)


def _scanned_count(scan: ScanResult, name: str, size: int) -> int:
    """Weights pruned at the layer's largest scanned sparsity (how far its cost curve is known)."""
    return num_pruned(size, max([0.0, *scan.sparsities]))


def _predicted_cost(scan: ScanResult, pruned: dict[str, int], sizes: dict[str, int]) -> float:
    """Sum over layers of the scan's drop (the task's, :meth:`~edgeprune.task.Task.drop`) at their counts.

    The curve is :func:`_curve` (non-decreasing, linear between points), extended beyond its last
    point along its last piece, so a layer pruned past the scanned range is not predicted for free;
    a drop is at most the task's worst (all the accuracy).
    """
    worst = scan.metric_task.worst_drop(scan.dense_accuracy)
    cost = 0.0
    for name, count in pruned.items():
        xs, ds = _curve(scan, name)
        s = count / sizes[name]
        drop = float(np.interp(s, xs, ds))
        if s > xs[-1] and len(xs) > 1:
            drop += (ds[-1] - ds[-2]) / (xs[-1] - xs[-2]) * (s - xs[-1])
        cost += min(worst, drop)
    return cost


def _scan_allocation(
    scan: ScanResult, names: list[str], sizes: dict[str, int], units: dict[str, float], zeros: dict[str, int], goal: float
) -> dict[str, int]:
    """Weights pruned per layer of ``names`` along their scanned cost curves, cheapest first, up to ``goal`` cost.

    Stays within the scanned range, so it may fall short of ``goal``.
    """
    pruned = {name: 0 for name in names}
    pieces = [piece for name in names for piece in _cost_pieces(scan, name, sizes[name], units[name])]
    _take_cheapest(pieces, pruned, {name: zeros[name] for name in names}, units, goal)
    return pruned


def _curve(scan: ScanResult, name: str) -> tuple[list[float], list[float]]:
    """The layer's (sparsity, drop) points with (0, 0) in front, the drop (the scan's task's, against the dense
    model) made non-decreasing."""
    task = scan.metric_task
    xs, ds = [0.0], [0.0]
    for s, value in zip(scan.sparsities, scan.accuracies[name]):
        if s > xs[-1]:
            xs.append(s)
            ds.append(max(ds[-1], task.drop(scan.dense_accuracy, value)))
    return xs, ds


def _predicted_accuracy(scan: ScanResult, name: str, sparsity: float) -> float:
    """The scan's metric at ``sparsity``: linear between points, extended along the last piece beyond them
    (only ever getting worse there, and within what the metric can take)."""
    xs = [0.0] + [s for s in scan.sparsities if s > 0]
    ys = [scan.dense_accuracy] + [a for s, a in zip(scan.sparsities, scan.accuracies[name]) if s > 0]
    if sparsity <= xs[-1]:
        return float(np.interp(sparsity, xs, ys))
    slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]) if len(xs) > 1 else 0.0
    task = scan.metric_task
    worse = min(slope, 0.0) if task.higher_is_better else max(slope, 0.0)
    return float(task.clamp(ys[-1] + worse * (sparsity - xs[-1])))


def _cost_pieces(scan: ScanResult, name: str, size: int, unit: float) -> list[tuple]:
    """Pieces ``(drop per unit of cost freed, name, from, to)`` of the lower convex hull of the layer's cost curve.

    ``from`` and ``to`` count pruned weights, up to the layer's largest scanned sparsity; each
    weight frees ``unit`` (scaling the counts by it keeps the hull, only the slopes change).
    """
    xs, ds = _curve(scan, name)
    points: list[tuple[int, float]] = []
    for s, drop in zip(xs, ds):
        k = num_pruned(size, s)
        if not points or k > points[-1][0]:
            points.append((k, drop))
    hull: list[tuple[int, float]] = []
    for p in points:  # Andrew's monotone chain, lower half
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) <= 0:
            hull.pop()
        hull.append(p)
    return [((b[1] - a[1]) / ((b[0] - a[0]) * unit), name, a[0], b[0]) for a, b in zip(hull, hull[1:])]


def _cross(o: tuple[int, float], a: tuple[int, float], b: tuple[int, float]) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _removed_cost(pruned: dict[str, int], zeros: dict[str, int], units: dict[str, float]) -> float:
    """Cost of the zero weights after pruning ``pruned[name]`` smallest weights per layer (weights already zero go first)."""
    return sum(units[name] * max(pruned.get(name, 0), z) for name, z in zeros.items())


def _take_cheapest(
    pieces: list[tuple], pruned: dict[str, int], zeros: dict[str, int], units: dict[str, float], required: float
) -> None:
    """Prune along the pieces, least accuracy per unit of cost first, until the zero weights cost ``required``."""
    for _, name, start, end in sorted(pieces, key=lambda piece: piece[0]):
        have = _removed_cost(pruned, zeros, units)
        if round(have - required, 6) >= 0:
            return
        others = have - units[name] * max(pruned[name], zeros[name])
        needed = math.ceil(round((required - others) / units[name], 6))
        pruned[name] = max(pruned[name], min(end, max(start, needed)))


def make_plan(
    scan: ScanResult,
    model: nn.Module | None = None,
    target_sparsity: float | None = None,
    target_bytes: float | None = None,
    max_drop: float | None = None,
    budget: str = "params",
    input_shape: tuple[int, ...] | None = None,
    bytes_per_nonzero: BytesPerNonzero | None = None,
) -> SparsityPlan:
    """A plan by tolerance when ``max_drop`` is given, else by budget (which needs ``model`` and one target).

    ``budget``, ``input_shape`` and ``bytes_per_nonzero`` go to :func:`plan_by_budget`.
    """
    if max_drop is not None:
        if target_sparsity is not None or target_bytes is not None:
            raise ValueError("give either a tolerance (--max-drop) or a budget (--target-sparsity / --target-bytes), not both")
        if budget != "params":
            raise ValueError(f"--budget {budget} sets what --target-sparsity / --target-bytes count; --max-drop plans by accuracy alone")
        return plan_by_tolerance(scan, max_drop=max_drop)
    if model is None:
        raise ValueError("a budget plan needs the scanned model (--checkpoint) to count the weights of each layer")
    if target_sparsity is None and target_bytes is None:
        raise ValueError("give a budget (--target-sparsity or --target-bytes) or a tolerance (--max-drop)")
    return plan_by_budget(
        scan, model, target_sparsity=target_sparsity, target_bytes=target_bytes,
        budget=budget, input_shape=input_shape, bytes_per_nonzero=bytes_per_nonzero,
    )
