"""Global magnitude pruning: one magnitude ranking across layers, an exact total, and per-layer bounds.

Pure tensor functions, no state. The smallest ``k = round(sparsity * N)`` magnitudes of all
chosen tensors together are pruned (``N`` their total size), so within each tensor a weight
survives iff ``|w| > threshold``, the seed's rule, as long as no bound binds. Each layer keeps
its count within ``[min_sparsity * n, max_sparsity * n]`` and keeps at least ``min_kept``
weights (no layer is emptied); what a bound refuses goes to the next smallest magnitudes of
the other layers, so the total stays exactly ``k``. Ties are broken by position: layers in the
order given, then lower flat index first (the order :func:`~edgeprune.prune.masks.fine_grained_mask` uses).
"""

from __future__ import annotations

import math
from typing import Mapping

import torch

from .masks import check_sparsity, num_pruned

__all__ = [
    "count_bounds",
    "global_magnitude_counts",
    "global_magnitude_sparsity",
    "mask_from_scores",
    "prune_scores",
    "sparsity_for_count",
]


def count_bounds(numel: int, min_sparsity: float = 0.0, max_sparsity: float = 0.99, min_kept: int = 1) -> tuple[int, int]:
    """The least and most weights a layer of ``numel`` may lose: ``ceil(min_s*n)`` and ``min(floor(max_s*n), n-min_kept)``.

    The upper bound never falls below the lower one: a floor that asks for more wins.
    """
    if min_kept < 0:
        raise ValueError(f"min_kept must be at least 0, got {min_kept}")
    low = min(math.ceil(round(check_sparsity(min_sparsity, "min_sparsity") * numel, 6)), numel)
    high = min(math.floor(round(check_sparsity(max_sparsity, "max_sparsity") * numel, 6)), numel - min_kept)
    return low, max(high, low)


def sparsity_for_count(numel: int, count: int) -> float:
    """A sparsity ``s`` for which ``round(s * numel) == count``, so FineGrainedPruner prunes exactly ``count``.

    ``count / numel`` is enough: its float error, times ``numel``, stays far below one half.
    """
    if not 0 <= count <= numel:
        raise ValueError(f"cannot prune {count} of {numel} weights; the count must be between 0 and {numel}")
    return count / numel if numel else 0.0


def prune_scores(tensor: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Flat pruning scores: ``|w|``, and -1 where ``mask`` (True = kept) already prunes, so pruned weights go first."""
    scores = tensor.detach().abs().flatten().float()
    if mask is not None:
        scores = scores.masked_fill(~mask.flatten().to(scores.device), -1.0)
    return scores


def mask_from_scores(scores: torch.Tensor, count: int, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Boolean mask of ``shape`` (True = kept) pruning the ``count`` lowest flat ``scores``, ties by position."""
    mask = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if count > 0:
        mask[torch.sort(scores, stable=True).indices[:count]] = False
    return mask.view(shape)


def global_magnitude_counts(
    scores: Mapping[str, torch.Tensor],
    total: float,
    min_sparsity: float = 0.0,
    max_sparsity: float = 0.99,
    min_kept: int = 1,
    unit_costs: Mapping[str, float] | None = None,
) -> dict[str, int]:
    """How many weights each layer loses when the ``total`` lowest scores of all layers together are pruned.

    ``scores`` maps a name to a tensor of scores (e.g. ``|w|``, see :func:`prune_scores`). Each
    layer's count stays within :func:`count_bounds`; the sum is exactly ``total``.

    With ``unit_costs`` (a positive cost per weight of each layer: its MACs, its bytes...),
    ``total`` is a cost: the ranking is walked in the same order until the pruned weights' costs
    add up to at least ``total``, so the sum exceeds it by less than the last weight's cost.
    """
    names = list(scores)
    sizes = [scores[n].numel() for n in names]
    units = [1.0 if unit_costs is None else float(unit_costs[n]) for n in names]
    bounds = [count_bounds(n, min_sparsity, max_sparsity, min_kept) for n in sizes]
    low = sum(lo * u for (lo, _), u in zip(bounds, units))
    high = sum(hi * u for (_, hi), u in zip(bounds, units))
    if not low <= total <= high:
        what = "weights" if unit_costs is None else "cost units"
        raise ValueError(
            f"cannot prune {total} {what} of these layers with their bounds (between {low} and {high} possible); "
            "lower the target or relax max_sparsity / min_kept / min_sparsity"
        )
    counts = {name: lo for name, (lo, _) in zip(names, bounds)}
    rest = total - low
    if rest <= 0:
        return counts
    pool, owner = [], []
    for index, (name, (lo, hi)) in enumerate(zip(names, bounds)):
        ordered = torch.sort(scores[name].detach().flatten().float().cpu(), stable=True).values[lo:hi]
        pool.append(ordered)
        owner.append(torch.full((ordered.numel(),), index, dtype=torch.long))
    ranked = torch.cat(owner)[torch.sort(torch.cat(pool), stable=True).indices]
    spent = torch.cumsum(torch.tensor(units, dtype=torch.float64)[ranked], 0)
    # the fewest weights whose costs reach ``rest`` (1e-6 absorbs float dust in a cost total)
    taken = torch.bincount(ranked[: int(torch.searchsorted(spent, rest - 1e-6)) + 1], minlength=len(names))
    return {name: counts[name] + int(taken[i]) for i, name in enumerate(names)}


def global_magnitude_sparsity(
    params: Mapping[str, torch.Tensor],
    sparsity: float,
    min_sparsity: float = 0.0,
    max_sparsity: float = 0.99,
    min_kept: int = 1,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """A sparsity dict for :class:`~edgeprune.prune.pruner.FineGrainedPruner` from one global magnitude ranking.

    Exactly ``round(sparsity * N)`` of the ``N`` weights of ``params`` are pruned in all (per
    layer within the bounds of :func:`count_bounds`); each value reproduces its layer's count
    through the pruner's ``round(s * n)``. Weights that ``masks`` (True = kept) already prune rank first.
    """
    total = num_pruned(sum(p.numel() for p in params.values()), check_sparsity(sparsity))
    scores = {name: prune_scores(p, None if masks is None else masks.get(name)) for name, p in params.items()}
    counts = global_magnitude_counts(scores, total, min_sparsity, max_sparsity, min_kept)
    return {name: sparsity_for_count(params[name].numel(), k) for name, k in counts.items()}
