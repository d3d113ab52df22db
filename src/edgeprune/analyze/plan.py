"""Turn a sensitivity scan into a sparsity dict: by accuracy tolerance, or by a size budget.

* :func:`plan_by_tolerance` is the seed's rule made automatic: each layer gets the largest
  scanned sparsity whose accuracy stays above a floor.
* :func:`plan_by_budget` removes a given share of the prunable weights (or fits them in a
  given number of bytes): it starts from the global magnitude ranking and moves pruning to
  the layers where, according to the scan, a removed weight costs less accuracy.

Both return a :class:`SparsityPlan` that records what the scan predicts for it.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from torch import nn

from ..files import write_json_atomic
from ..prune.global_magnitude import count_bounds, global_magnitude_counts, sparsity_for_count
from ..prune.masks import check_sparsity, num_pruned
from ..models import prunable_parameters
from .scan import ScanResult

__all__ = ["SparsityPlan", "make_plan", "plan_by_tolerance", "plan_by_budget", "PLAN_FORMAT"]

PLAN_FORMAT = "edgeprune.plan/1"


@dataclass
class SparsityPlan:
    """A sparsity per parameter and what the scan predicts for it.

    ``predicted_accuracy[name]`` is the scan's accuracy (%) with only that layer pruned to its
    planned sparsity, interpolated linearly between scanned sparsities (sparsity 0 is the dense
    accuracy); pruning all layers together usually costs more than any one of them.
    ``predicted_overall_sparsity`` is the fraction of prunable weights that will be zero
    (None when the layer sizes are unknown).
    """

    sparsity_dict: dict[str, float]
    method: str
    target: dict[str, float]
    predicted_accuracy: dict[str, float]
    predicted_overall_sparsity: float | None

    def to_dict(self) -> dict:
        """A JSON-ready dict, tagged with :data:`PLAN_FORMAT`."""
        return {"format": PLAN_FORMAT, **asdict(self)}

    def to_json(self, path: str | os.PathLike) -> None:
        """Write the plan to ``path`` as JSON, atomically."""
        write_json_atomic(path, self.to_dict())


def plan_by_tolerance(scan: ScanResult, max_drop: float | None = None) -> SparsityPlan:
    """Each layer's largest scanned sparsity whose accuracy is at least ``dense - max_drop`` (else 0.0).

    By default the floor is the seed's lower bound ``100 - 1.5 * (100 - dense)`` drawn in the
    scan plot, that is ``max_drop = 0.5 * (100 - dense)``.
    """
    if max_drop is None:
        max_drop = scan.dense_accuracy - scan.lower_bound
    if not max_drop >= 0:
        raise ValueError(f"max_drop must be a non-negative number of accuracy points, got {max_drop}")
    floor = scan.dense_accuracy - max_drop
    chosen = {
        name: max((s for s, acc in zip(scan.sparsities, accs) if acc >= floor), default=0.0)
        for name, accs in scan.accuracies.items()
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


def plan_by_budget(
    scan: ScanResult,
    model: nn.Module,
    target_sparsity: float | None = None,
    target_bytes: float | None = None,
    bit_width: int = 32,
) -> SparsityPlan:
    """Sparsities for the scanned layers that meet one budget at the least predicted accuracy cost.

    Give exactly one target:

    * ``target_sparsity``: the fraction of all prunable weights of ``model`` (see
      :func:`~edgeprune.models.prunable_parameters`) that must be zero;
    * ``target_bytes``: the non-zero prunable weights times ``bit_width / 8`` must fit in this
      many bytes (biases and other 1-D parameters are not counted).

    The plan starts from the global magnitude ranking of the scanned layers (the smallest |w|
    of all of them together, each layer keeping at least one weight and at most 99 % pruned,
    see :mod:`~edgeprune.prune.global_magnitude`) and moves away from it only where the scan
    predicts a gain:

    * a layer the ranking prunes beyond its largest scanned sparsity keeps the ranking's count
      (the scan knows nothing there; a warning says so);
    * the other layers share the weights the ranking takes from them by their scanned cost
      curves (the accuracy drop, made non-increasing with sparsity and linear between scanned
      points): the cheapest accuracy-per-weight pieces of the curves' lower convex hulls first,
      so insensitive layers are pruned most. This allocation replaces the ranking's only when
      the scan predicts it costs less accuracy.

    Weights already zero and prunable layers outside the scan count toward the target as they
    are; applied with :func:`~edgeprune.prune.masks.fine_grained_prune`, the plan meets the target
    exactly or just over it.
    """
    if (target_sparsity is None) == (target_bytes is None):
        raise ValueError("give exactly one of target_sparsity and target_bytes")
    prunable = prunable_parameters(model)
    unknown = [name for name in scan.accuracies if name not in prunable]
    if unknown:
        raise ValueError(f"the scan has layers the model lacks: {', '.join(unknown)}; scan this model again")
    sizes = {name: p.numel() for name, p in prunable.items()}
    zeros = {name: int((p == 0).sum()) for name, p in prunable.items()}
    total = sum(sizes.values())
    if target_sparsity is not None:
        target_sparsity = check_sparsity(target_sparsity, "target_sparsity")
        required = math.ceil(round(target_sparsity * total, 6))
        target = {"target_sparsity": target_sparsity}
    else:
        if not target_bytes >= 0 or bit_width <= 0:
            raise ValueError(f"target_bytes must be >= 0 and bit_width > 0, got {target_bytes} and {bit_width}")
        required = max(0, total - math.floor(target_bytes * 8 / bit_width))
        target = {"target_bytes": float(target_bytes), "bit_width": bit_width}

    names = list(scan.accuracies)
    fixed = sum(z for name, z in zeros.items() if name not in scan.accuracies)
    ranked = _global_counts({name: prunable[name] for name in names}, max(0, required - fixed))
    pruned = dict(ranked)
    inside = [name for name in names if ranked[name] <= _scanned_count(scan, name, sizes[name])]
    beyond = [name for name in names if name not in inside]
    if beyond:
        warnings.warn(
            f"plan_by_budget: the target prunes {', '.join(beyond)} beyond the scanned sparsities; "
            "there the plan follows the global magnitude ranking (scan further toward 1.0 to plan them)",
            stacklevel=2,
        )
    if inside:
        by_scan = {name: 0 for name in inside}
        pieces = [piece for name in inside for piece in _cost_pieces(scan, name, sizes[name])]
        inside_zeros = {name: zeros[name] for name in inside}
        _take_cheapest(pieces, by_scan, inside_zeros, _zero_count({n: ranked[n] for n in inside}, inside_zeros))
        if _predicted_cost(scan, by_scan, sizes) < _predicted_cost(scan, {n: ranked[n] for n in inside}, sizes) - 1e-9:
            pruned.update(by_scan)
    sparsity = {name: sparsity_for_count(sizes[name], pruned[name]) for name in names}
    return SparsityPlan(
        sparsity_dict=sparsity,
        method="budget",
        target=target,
        predicted_accuracy={name: _predicted_accuracy(scan, name, s) for name, s in sparsity.items()},
        predicted_overall_sparsity=_zero_count(pruned, zeros) / total,
    )


def _global_counts(params: dict[str, nn.Parameter], required: int) -> dict[str, int]:
    """Weights each layer loses under one global magnitude ranking; no layer emptied unless the target needs it."""
    scores = {name: p.detach().abs() for name, p in params.items()}
    size = sum(p.numel() for p in params.values())
    if required > size:
        raise ValueError(
            f"the target needs {required} more zero weights, but the scanned layers hold only {size}; scan more layers"
        )
    kept = sum(count_bounds(p.numel())[1] for p in params.values())
    if required > kept:
        return global_magnitude_counts(scores, required, max_sparsity=1.0, min_kept=0)
    return global_magnitude_counts(scores, required)


def _scanned_count(scan: ScanResult, name: str, size: int) -> int:
    """Weights pruned at the layer's largest scanned sparsity (how far its cost curve is known)."""
    return num_pruned(size, max([0.0, *scan.sparsities]))


def _predicted_cost(scan: ScanResult, pruned: dict[str, int], sizes: dict[str, int]) -> float:
    """Sum over layers of the scan's accuracy drop (non-increasing curve, linear between points) at their counts."""
    cost = 0.0
    for name, count in pruned.items():
        xs, ys = _curve(scan, name)
        cost += scan.dense_accuracy - float(np.interp(count / sizes[name], xs, ys))
    return cost


def _curve(scan: ScanResult, name: str) -> tuple[list[float], list[float]]:
    """The layer's (sparsity, accuracy) points with (0, dense accuracy) in front, accuracy made non-increasing."""
    xs, ys = [0.0], [scan.dense_accuracy]
    for s, acc in zip(scan.sparsities, scan.accuracies[name]):
        if s > xs[-1]:
            xs.append(s)
            ys.append(min(ys[-1], acc))
    return xs, ys


def _predicted_accuracy(scan: ScanResult, name: str, sparsity: float) -> float:
    """The scan's accuracy at ``sparsity``: linear between points, extended along the last piece beyond them."""
    xs = [0.0] + [s for s in scan.sparsities if s > 0]
    ys = [scan.dense_accuracy] + [a for s, a in zip(scan.sparsities, scan.accuracies[name]) if s > 0]
    if sparsity <= xs[-1]:
        return float(np.interp(sparsity, xs, ys))
    slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2]) if len(xs) > 1 else 0.0
    return float(min(100.0, max(0.0, ys[-1] + min(slope, 0.0) * (sparsity - xs[-1]))))


def _cost_pieces(scan: ScanResult, name: str, size: int) -> list[tuple]:
    """Pieces ``(cost per weight, name, from, to)`` of the lower convex hull of the layer's cost curve.

    ``from`` and ``to`` count pruned weights, up to the layer's largest scanned sparsity.
    """
    xs, ys = _curve(scan, name)
    points: list[tuple[int, float]] = []
    for s, acc in zip(xs, ys):
        k = num_pruned(size, s)
        if not points or k > points[-1][0]:
            points.append((k, scan.dense_accuracy - acc))
    hull: list[tuple[int, float]] = []
    for p in points:  # Andrew's monotone chain, lower half
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) <= 0:
            hull.pop()
        hull.append(p)
    return [((b[1] - a[1]) / (b[0] - a[0]), name, a[0], b[0]) for a, b in zip(hull, hull[1:])]


def _cross(o: tuple[int, float], a: tuple[int, float], b: tuple[int, float]) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _zero_count(pruned: dict[str, int], zeros: dict[str, int]) -> int:
    """Zero weights after pruning ``pruned[name]`` smallest weights per layer (weights already zero go first)."""
    return sum(max(pruned.get(name, 0), z) for name, z in zeros.items())


def _take_cheapest(pieces: list[tuple], pruned: dict[str, int], zeros: dict[str, int], required: int) -> None:
    """Prune along the pieces, cheapest per weight first, until ``required`` weights are zero."""
    for _, name, start, end in sorted(pieces, key=lambda piece: piece[0]):
        have = _zero_count(pruned, zeros)
        if have >= required:
            return
        others = have - max(pruned[name], zeros[name])
        pruned[name] = max(pruned[name], min(end, max(start, required - others)))


def make_plan(
    scan: ScanResult,
    model: nn.Module | None = None,
    target_sparsity: float | None = None,
    target_bytes: float | None = None,
    max_drop: float | None = None,
) -> SparsityPlan:
    """A plan by tolerance when ``max_drop`` is given, else by budget (which needs ``model`` and one target)."""
    if max_drop is not None:
        if target_sparsity is not None or target_bytes is not None:
            raise ValueError("give either a tolerance (--max-drop) or a budget (--target-sparsity / --target-bytes), not both")
        return plan_by_tolerance(scan, max_drop=max_drop)
    if model is None:
        raise ValueError("a budget plan needs the scanned model (--checkpoint) to count the weights of each layer")
    if target_sparsity is None and target_bytes is None:
        raise ValueError("give a budget (--target-sparsity or --target-bytes) or a tolerance (--max-drop)")
    return plan_by_budget(scan, model, target_sparsity=target_sparsity, target_bytes=target_bytes)
