"""Channel sensitivity scan, and a greedy planner that reaches a target MACs or measured latency fraction.

The scan prunes the output channels of one Conv2d/Linear module at a time (with
:func:`~edgeprune.prune.channels.prune_channels`, so the model really gets smaller) at each
ratio of a grid, and records the validation accuracy and the MACs of the pruned model.
Modules coupled by a residual add are pruned together by ``prune_channels``: such a group is
scanned once, under its first module's name, and ``groups`` lists its members.

The planner (:func:`plan_channels_for_macs`) is pure arithmetic on a :class:`ChannelScanResult`.
It assumes per-module accuracy losses and MACs savings add up. The accuracy part is a
prediction; the MACs part is optimistic when two consecutive modules are both pruned (the
second one's MACs shrink with its inputs *and* its outputs, so the real saving is smaller
than the sum by ``macs * r_in * r_out``): check the pruned model with
:func:`~edgeprune.analyze.metrics.count_macs`, or use :func:`prune_for_macs`, which walks further
along the same greedy sequence until the real MACs reach the target. :func:`prune_along_plans` walks
it until any test holds (``edgeprune run --target-latency`` times each candidate against the dense model).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..device import pick_device
from ..files import write_json_atomic
from ..prune.channels import (
    PRUNABLE_TYPES,
    channel_counts,
    output_layer_names,
    prune_channels,
)
from ..prune.importance import check_ratio
from ..training import evaluate
from .metrics import count_macs
from .plots import panel_grid, save_figure

__all__ = [
    "CHANNEL_SCAN_FORMAT", "DEFAULT_RATIOS", "ChannelScanResult", "channel_sensitivity_scan", "plan_channels_for_macs",
    "check_fraction", "prune_along_plans", "prune_for_macs",
]

CHANNEL_SCAN_FORMAT = "edgeprune.channel_scan/1"
DEFAULT_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
REFINE_STEPS = 6  # bisections of the last greedy step's ratio: a 0.1 grid step refined to about 0.002


@dataclass
class ChannelScanResult:
    """Accuracy (%) and MACs of the model with one module's output channels pruned, per module and ratio.

    ``accuracies[name][i]`` and ``macs[name][i]`` are measured with only ``name`` (and the
    modules coupled to it, ``groups[name]``) pruned at ``ratios[i]``; ``dense_accuracy`` and
    ``dense_macs`` are the unpruned model's (MACs of one sample).
    """

    ratios: list[float]
    accuracies: dict[str, list[float]]
    macs: dict[str, list[int]]
    dense_accuracy: float
    dense_macs: int
    groups: dict[str, list[str]] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-ready dict, tagged with :data:`CHANNEL_SCAN_FORMAT`."""
        return {"format": CHANNEL_SCAN_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping) -> ChannelScanResult:
        """Rebuild a result from :meth:`to_dict`'s output; raise ``ValueError`` if it is not one."""
        found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
        if found != CHANNEL_SCAN_FORMAT:
            raise ValueError(f"not an edgeprune channel scan result (expected format {CHANNEL_SCAN_FORMAT!r}, found {found!r})")
        try:
            result = cls(
                ratios=[float(r) for r in data["ratios"]],
                accuracies={str(k): [float(a) for a in v] for k, v in data["accuracies"].items()},
                macs={str(k): [int(m) for m in v] for k, v in data["macs"].items()},
                dense_accuracy=float(data["dense_accuracy"]),
                dense_macs=int(data["dense_macs"]),
                groups={str(k): [str(m) for m in v] for k, v in data.get("groups", {}).items()},
                meta=dict(data.get("meta", {})),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"channel scan result is damaged ({type(exc).__name__}: {exc}); re-run the scan") from exc
        for name in result.accuracies:
            if len(result.accuracies[name]) != len(result.ratios) or len(result.macs.get(name, ())) != len(result.ratios):
                raise ValueError(f"channel scan result: module {name!r} lacks one value per ratio; re-run the scan")
        return result

    def to_json(self, path: str | os.PathLike) -> None:
        """Write the result to ``path`` as JSON, atomically."""
        write_json_atomic(path, self.to_dict())

    def plot(self, path: str | os.PathLike, chosen: Mapping[str, float] | None = None, show: bool = False) -> None:
        """Save a PNG with one panel per scanned module: accuracy, and the MACs left, against the ratio removed."""
        names = list(self.accuracies)
        fig, axes = panel_grid(len(names))
        for ax, name in zip(axes, names):
            ax.plot(self.ratios, self.accuracies[name], "o-", label="accuracy")
            ax.axhline(self.dense_accuracy, color="grey", linestyle=":", label="dense")
            if chosen and chosen.get(name):
                ax.axvline(chosen[name], color="g", linestyle="--", label=f"chosen {chosen[name]:.2f}")
            macs = ax.twinx()
            macs.plot(self.ratios, [100 * m / self.dense_macs for m in self.macs[name]], "s--", color="tab:orange", alpha=0.6)
            macs.set_ylabel("MACs left (%)", color="tab:orange", fontsize=8)
            members = self.groups.get(name, [name])
            ax.set_title(name + (f" (+{len(members) - 1} coupled)" if len(members) > 1 else ""), fontsize=9)
            ax.set_xlabel("fraction of output channels removed")
            ax.set_ylabel("top-1 accuracy (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, loc="lower left")
        fig.suptitle(f"Channel sensitivity scan (dense accuracy {self.dense_accuracy:.2f} %)")
        fig.tight_layout()
        save_figure(fig, path, show=show)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> ChannelScanResult:
        """Read a result written by :meth:`to_json`; raise ``ValueError`` naming the file if it is not one."""
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not valid JSON ({exc}); re-run the channel scan to rewrite it") from exc
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc


def _scan_names(model: nn.Module, outputs: list[str], layers: Sequence[str] | None) -> list[str]:
    """The Conv2d/Linear modules to scan (default: all but the output layer); bad names raise ``ValueError``."""
    prunable = [n for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES) and n not in outputs]
    if layers is None:
        return prunable
    unknown = [n for n in layers if n not in prunable]
    if unknown:
        raise ValueError(
            f"cannot scan module(s) {', '.join(map(repr, unknown))} (unknown, or the output layer); "
            f"valid names: {', '.join(prunable)}"
        )
    return list(layers)


def channel_sensitivity_scan(
    model: nn.Module,
    loader: Iterable,
    example_inputs: torch.Tensor,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    layers: Sequence[str] | None = None,
    importance: str = "l2",
    device: str | torch.device | None = None,
    batches: Iterable | None = None,
) -> ChannelScanResult:
    """Accuracy on ``loader`` and MACs of ``model`` with each module's output channels alone pruned at each ratio.

    ``layers`` are Conv2d/Linear module names (default: every one but the output layer). A
    module coupled to an earlier scanned one (residual add) is pruned with it, so it is not
    scanned again; ``groups`` records the members of each scanned name. ``model`` is untouched
    (left in its train/eval mode, on ``device``). ``batches`` feed ``importance="taylor"`` (see ``prune_channels``).
    """
    ratios = [check_ratio(r, "channel scan ratio") for r in ratios]
    if not ratios or sorted(set(ratios)) != ratios:
        raise ValueError(f"channel scan ratios must be increasing and distinct, got {ratios}; e.g. (0.1, 0.3, 0.5)")
    device = pick_device(device)
    was_training = model.training
    model.eval().to(device)
    example = example_inputs.to(device)
    input_shape = tuple(example.shape[1:])
    try:
        names = _scan_names(model, output_layer_names(model, example), layers)
        dense_counts = channel_counts(model)
        dense_accuracy = evaluate(model, loader, device=device)
        dense_macs = count_macs(model, input_shape)["total"]
        accuracies: dict[str, list[float]] = {}
        macs: dict[str, list[int]] = {}
        groups: dict[str, list[str]] = {}
        covered: set[str] = set()
        for name in names:
            if name in covered:
                continue
            accuracies[name], macs[name] = [], []
            for ratio in ratios:
                pruned = prune_channels(model, {name: ratio}, example, importance=importance, batches=batches)
                accuracies[name].append(evaluate(pruned, loader, device=device))
                macs[name].append(count_macs(pruned, input_shape)["total"])
            counts = channel_counts(pruned)  # at the largest ratio: the modules whose outputs shrank
            members = [n for n in dense_counts if counts[n]["out"] < dense_counts[n]["out"]]
            groups[name] = members if name in members else [name, *members]
            covered.update(groups[name])
    finally:
        model.train(was_training)
    return ChannelScanResult(
        ratios=ratios,
        accuracies=accuracies,
        macs=macs,
        dense_accuracy=dense_accuracy,
        dense_macs=dense_macs,
        groups=groups,
        meta={"importance": importance, "input_shape": list(input_shape)},
    )


def check_fraction(fraction: float, what: str = "MACs") -> float:
    """``fraction`` as a float when it is a target fraction in (0, 1] of the dense MACs (or latency); else ValueError."""
    if isinstance(fraction, bool) or not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"target {what} fraction must be in (0, 1], got {fraction!r}; e.g. 0.5 for half the {what}")
    return float(fraction)


def _greedy_plans(scan: ChannelScanResult) -> list[tuple[dict[str, float], float]]:
    """Every plan of the greedy sequence, from all-dense to all at the largest ratio, with its predicted MACs.

    Each step moves one module to its next grid ratio: the one that saves the most MACs per
    predicted accuracy point lost (a step that loses nothing first, the larger saving first).
    """
    level = {name: -1 for name in scan.accuracies}  # index into scan.ratios; -1: not pruned

    def saved(name: str, i: int) -> float:
        return 0.0 if i < 0 else float(scan.dense_macs - scan.macs[name][i])

    def lost(name: str, i: int) -> float:
        return 0.0 if i < 0 else scan.dense_accuracy - scan.accuracies[name][i]

    def plan() -> dict[str, float]:
        return {name: (0.0 if i < 0 else scan.ratios[i]) for name, i in level.items()}

    predicted = float(scan.dense_macs)
    plans = [(plan(), predicted)]
    while True:
        steps = []
        for name, i in level.items():
            if i + 1 < len(scan.ratios):
                gain = saved(name, i + 1) - saved(name, i)
                loss = lost(name, i + 1) - lost(name, i)
                steps.append(((1, gain) if loss <= 0 else (0, gain / loss), name, gain))
        if not steps:
            return plans
        _, name, gain = max(steps, key=lambda step: step[0])
        level[name] += 1
        predicted -= gain
        plans.append((plan(), predicted))


def _out_of_reach(target: float, best: float, what: str) -> ValueError:
    return ValueError(
        f"target MACs fraction {target} is out of reach: with every scanned module at its largest ratio the "
        f"{what} fraction is {best:.3f}; scan larger ratios or aim higher"
    )


def plan_channels_for_macs(scan: ChannelScanResult, target_macs_fraction: float) -> dict[str, float]:
    """Ratios per scanned module whose predicted MACs are at most ``target_macs_fraction`` of the dense MACs.

    Greedy: repeatedly move the module whose next grid step saves the most MACs per predicted
    accuracy point lost up to that ratio, until the target is reached. Savings and losses are
    taken as additive, which overestimates the MACs saved when consecutive modules are both
    pruned (see the module docstring; :func:`prune_for_macs` checks the real MACs). Returns
    every scanned name, 0.0 for those left whole.
    """
    target = check_fraction(target_macs_fraction)
    plans = _greedy_plans(scan)
    for plan, predicted in plans:
        if predicted <= target * scan.dense_macs:
            return plan
    raise _out_of_reach(target, plans[-1][1] / scan.dense_macs, "predicted")


def prune_along_plans(
    model: nn.Module,
    scan: ChannelScanResult,
    meets: Callable[[nn.Module], bool],
    example_inputs: torch.Tensor,
    importance: str = "l2",
    batches: Iterable | None = None,
) -> tuple[nn.Module, dict[str, float]] | None:
    """The pruned copy of ``model`` and its plan for the earliest plan of the greedy sequence whose model ``meets``,
    its last step refined: the module that step moved gets the smallest ratio between its two grid values that still
    meets, so that the model is no smaller than it must be.

    Ratios only rise along the greedy sequence, so the pruned models only shrink along it; the
    sequence is bisected on ``meets`` (a few ``prune_channels`` calls), which must hold for
    smaller models once it holds for a larger one. ``None`` when even the last plan fails.
    ``model`` is untouched; ``batches`` feed ``importance="taylor"``.
    """
    plans = [plan for plan, _ in _greedy_plans(scan)]

    def build(plan: dict[str, float]) -> nn.Module:
        return prune_channels(model, {k: v for k, v in plan.items() if v > 0}, example_inputs, importance=importance,
                              batches=batches)

    lo, hi = 0, len(plans) - 1
    best = build(plans[hi])
    if not meets(best):
        return None
    while lo < hi:  # invariant: plans[hi] meets the target (best is its model); plans before lo do not
        mid = (lo + hi) // 2
        pruned = build(plans[mid])
        if meets(pruned):
            hi, best = mid, pruned
        else:
            lo = mid + 1
    if hi == 0:
        return best, plans[0]
    before, plan = plans[hi - 1], dict(plans[hi])
    (moved,) = [name for name in plan if plan[name] != before[name]]  # each greedy step moves one module
    low, high = before[moved], plan[moved]
    for _ in range(REFINE_STEPS):  # invariant: the ratio ``high`` meets (best is its model), ``low`` does not
        middle = round((low + high) / 2, 4)
        if middle in (low, high):
            break
        pruned = build({**plan, moved: middle})
        if meets(pruned):
            high, best = middle, pruned
        else:
            low = middle
    return best, {**plan, moved: high}


def prune_for_macs(
    model: nn.Module,
    scan: ChannelScanResult,
    target_macs_fraction: float,
    example_inputs: torch.Tensor,
    importance: str = "l2",
) -> tuple[nn.Module, dict[str, float]]:
    """The pruned copy of ``model`` and its plan: the earliest plan of the greedy sequence whose real MACs reach the target.

    Real MACs (:func:`~edgeprune.analyze.metrics.count_macs`) fall along the greedy sequence, which
    :func:`prune_along_plans` bisects. The plan returned always meets the target; ``model`` is untouched.
    """
    target = check_fraction(target_macs_fraction)
    input_shape = tuple(example_inputs.shape[1:])

    def fraction(pruned: nn.Module) -> float:
        return count_macs(pruned, input_shape)["total"] / scan.dense_macs

    found = prune_along_plans(model, scan, lambda pruned: fraction(pruned) <= target, example_inputs, importance)
    if found is None:
        last = prune_channels(model, {k: v for k, v in _greedy_plans(scan)[-1][0].items() if v > 0}, example_inputs, importance)
        raise _out_of_reach(target, fraction(last), "real")
    return found
