"""Gradual pruning during training: the cubic AGP schedule (Zhu & Gupta 2017) and iterative rounds (Han et al. 2015).

* :func:`agp_sparsity` and :func:`iterative_sparsities` are pure arithmetic.
* :class:`GradualPruner` owns masks: called after every optimizer step (the ``after_step`` hook of
  :func:`~edgeprune.training.train`), it re-prunes each layer by magnitude to its current target
  at the scheduled steps (masks only grow) and zeroes the pruned weights after every step.
* The loops that train while they prune, :func:`edgeprune.training.prune_gradually` and
  :func:`edgeprune.training.prune_iteratively`, live with the other loops in :mod:`edgeprune.training`.

Targets are either per layer (a sparsity dict, e.g. the planner's, resolved like the pruner's:
``_default``, ``re:`` keys) or one float: a global magnitude ranking across all prunable layers
(see :mod:`~edgeprune.prune.global_magnitude`), re-ranked at every pruning step.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..models import prunable_parameters
from .global_magnitude import global_magnitude_counts, mask_from_scores, prune_scores
from .masks import check_sparsity, num_pruned
from .pruner import FineGrainedPruner
from .settings import resolve_sparsity_dict

__all__ = ["SCHEDULES", "GradualPruner", "agp_sparsity", "iterative_sparsities"]

SCHEDULES = ("agp", "iterative")


def agp_sparsity(step: int, initial: float, final: float, begin_step: int, num_prunes: int, frequency: int) -> float:
    """Zhu & Gupta's cubic schedule: the sparsity in force after optimizer step ``step``.

    Pruning happens at steps ``t = begin_step + j * frequency`` for ``j = 0 .. num_prunes``, with
    ``s_t = final + (initial - final) * (1 - (t - begin_step) / (num_prunes * frequency)) ** 3``;
    between pruning steps the last value holds, before ``begin_step`` the sparsity is
    ``initial``, after the last pruning step ``final``.
    """
    initial, final = check_sparsity(initial, "initial sparsity"), check_sparsity(final, "final sparsity")
    if num_prunes < 1 or frequency < 1 or begin_step < 0:
        raise ValueError(
            f"the AGP schedule needs num_prunes >= 1, frequency >= 1 and begin_step >= 0, "
            f"got {num_prunes}, {frequency} and {begin_step}"
        )
    if step <= begin_step:
        return initial
    done = min((step - begin_step) // frequency, num_prunes)
    return final + (initial - final) * (1.0 - done / num_prunes) ** 3


def iterative_sparsities(final: float, rounds: int) -> list[float]:
    """Sparsity after each of ``rounds`` rounds: every round removes the same share of the weights still kept.

    Round ``r`` (1-based) ends at ``1 - (1 - final) ** (r / rounds)``; the last is exactly ``final``.
    """
    final = check_sparsity(final, "final sparsity")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    return [1.0 - (1.0 - final) ** (r / rounds) for r in range(1, rounds)] + [final]


class GradualPruner:
    """Masks that grow along a schedule while the model trains; use it as ``train(..., after_step=pruner)``.

    ``targets`` is a per-layer sparsity dict (each layer ramps from ``initial`` to its own final
    sparsity) or one float (a global magnitude ranking across the prunable layers, each layer kept
    within ``max_sparsity``). Construction prunes the model to the step-0 sparsity. Each call
    counts one optimizer step, re-prunes at the scheduled steps (weights already pruned stay
    pruned) and zeroes every pruned weight. :meth:`fixed` hands the masks over as a
    :class:`~edgeprune.prune.pruner.FineGrainedPruner`.
    """

    def __init__(
        self,
        model: nn.Module,
        targets: float | Mapping[str, object],
        num_prunes: int,
        frequency: int,
        begin_step: int = 0,
        initial: float = 0.0,
        max_sparsity: float = 0.99,
    ) -> None:
        self.final, self.layers = _resolve_targets(model, targets)
        self.initial, self.max_sparsity = check_sparsity(initial, "initial sparsity"), max_sparsity
        self.begin_step, self.num_prunes, self.frequency = begin_step, num_prunes, frequency
        self.sparsity_at(0)  # raises ValueError on a bad schedule before anything is pruned
        params = dict(model.named_parameters())
        self.masks = {name: torch.ones_like(params[name], dtype=torch.bool) for name in self.layers}
        self.step = 0
        self.prune(model, 0)

    def sparsity_at(self, step: int) -> dict[str, float] | float:
        """The target in force after ``step`` optimizer steps: per layer, or the global fraction."""
        ramp = (self.initial, self.begin_step, self.num_prunes, self.frequency)
        if isinstance(self.final, float):
            return agp_sparsity(step, ramp[0], self.final, *ramp[1:])
        return {name: agp_sparsity(step, ramp[0], s, *ramp[1:]) for name, s in self.final.items()}

    def prune(self, model: nn.Module, step: int) -> None:
        """Grow the masks to the schedule's targets after ``step`` optimizer steps and zero the pruned weights."""
        self.prune_to(model, self.sparsity_at(step))

    @torch.no_grad()
    def prune_to(self, model: nn.Module, target: float | Mapping[str, float]) -> None:
        """Grow the masks by magnitude to ``target`` (the global fraction, or per layer); weights pruned stay pruned."""
        params = dict(model.named_parameters())
        scores = {name: prune_scores(params[name], self.masks[name]) for name in self.layers}
        already = {name: int((~mask).sum()) for name, mask in self.masks.items()}
        if isinstance(target, Mapping):
            counts = {name: num_pruned(scores[name].numel(), target[name]) for name in self.layers}
        else:
            total = max(num_pruned(sum(s.numel() for s in scores.values()), target), sum(already.values()))
            counts = global_magnitude_counts(scores, total, max_sparsity=self.max_sparsity)
        for name in self.layers:
            count = max(counts[name], already[name])
            self.masks[name] = mask_from_scores(scores[name], count, params[name].shape).to(params[name].device)
        self.apply(model)

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        """Zero every pruned weight of ``model``."""
        params = dict(model.named_parameters())
        for name, mask in self.masks.items():
            params[name].masked_fill_(~mask.to(params[name].device), 0.0)

    def __call__(self, model: nn.Module) -> None:
        """One optimizer step done: prune if the schedule says so, then re-apply the masks."""
        self.step += 1
        offset = self.step - self.begin_step
        if 0 < offset <= self.num_prunes * self.frequency and offset % self.frequency == 0:
            self.prune(model, self.step)
        else:
            self.apply(model)

    def fixed(self) -> FineGrainedPruner:
        """The present masks as a :class:`~edgeprune.prune.pruner.FineGrainedPruner` (for fine-tuning, saving)."""
        return FineGrainedPruner.from_masks(self.masks)


def _resolve_targets(model: nn.Module, targets: float | Mapping[str, object]) -> tuple[float | dict[str, float], list[str]]:
    """(final targets, pruned layer names): a float for a global ranking over all prunable layers, else a dict."""
    prunable = prunable_parameters(model)
    if isinstance(targets, Mapping):
        resolved = resolve_sparsity_dict(targets, prunable, (name for name, _ in model.named_parameters()))
        return dict(resolved), list(resolved)
    return check_sparsity(targets, "target sparsity"), list(prunable)
