"""Per-layer k-means bit widths chosen by a tolerance: the fewest bits whose decoded model stays within it.

Pure: the caller gives ``score`` (a state dict -> the metric on the validation split, e.g. accuracy) and ``drop``
(``Task.drop``: how much worse a metric value is than the model's own), and nothing here holds a model or writes a
file. Every model scored is exactly what a ``.epz`` file of those settings decodes to
(:func:`~edgeprune.export.quantize.quantize_state_dict`, which quantizes each tensor on its own).

The search (:func:`choose_bits`):

1. the model as it is gives the reference metric;
2. each weight tensor alone (every other one unquantized) gets the fewest bits from ``low`` to ``high`` whose loss is
   at most half the tolerance, by binary search (``high`` when none is: it is never tried alone);
3. all tensors together at those bits: while the decoded model loses more than the tolerance, the tensor that loses
   most alone at its current bits gets one bit more (the first such tensor on a tie), until it holds or every tensor
   is at ``high``. When the first joint try fails, all tensors at ``high`` are tried once first: a model that cannot
   be held even there returns those bits at once, flagged ``within=False``, instead of climbing to them;
4. then the fewest: each tensor in turn, the largest first (it saves the most bytes), loses one bit while the whole
   decoded model stays within the tolerance, so that no tensor keeps a bit the tolerance does not need (checked one
   tensor at a time: taking a bit from any one tensor of the result leaves the tolerance, unless a tensor lowered
   after it changed that).

:func:`check_bits_choice` scores given settings (any value mode) the same way, for a flag without a search.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Mapping

import torch

from .quantize import check_bits, is_weight, quantize_state_dict

__all__ = ["AUTO", "BitChoice", "Drop", "Score", "bits_label", "check_bits_choice", "choose_bits"]

AUTO = "auto"
"""The ``bits`` setting that asks for :func:`choose_bits`."""

Score = Callable[[Mapping[str, torch.Tensor]], float]
"""The metric of a model holding this state dict, on the validation split."""
Drop = Callable[[float, float], float]
"""``drop(reference, value)``: how much worse ``value`` is than ``reference`` (:meth:`edgeprune.task.Task.drop`)."""


@dataclass(frozen=True)
class BitChoice:
    """What a bit choice (or a check of given settings) measured.

    ``bits``: the k-means bits, per weight tensor name after a search, else as given (None for float modes, 8 for
    int8); ``reference``: the metric of the model as it is; ``decoded``: of the model the file decodes to; ``loss``:
    ``drop(reference, decoded)``; ``within``: ``loss <= tolerance``; ``searched``: whether bits were chosen here;
    ``alone``: each tensor's fewest bits alone within half the tolerance (search only); ``evaluations``: models scored.
    """

    values: str
    bits: int | dict[str, int] | None
    reference: float
    decoded: float
    loss: float
    tolerance: float
    within: bool
    searched: bool
    alone: dict[str, int] | None
    evaluations: int

    def to_dict(self) -> dict:
        """Plain JSON data (a comparison row's ``export_check``)."""
        return asdict(self)


def _check_tolerance(tolerance: float) -> float:
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0 or tolerance == float("inf"):
        raise ValueError(f"the export tolerance must be a non-negative finite number, got {tolerance!r}; e.g. 1")
    return float(tolerance)


def bits_label(bits: int | Mapping[str, int] | None) -> str:
    """Bits as a short label: ``"4"``, or the range of per-tensor widths ``"2-6"`` (``"4"`` when all agree)."""
    if not isinstance(bits, Mapping):
        return str(bits)
    low, high = min(bits.values(), default=0), max(bits.values(), default=0)
    return str(low) if low == high else f"{low}-{high}"


def check_bits_choice(
    state_dict: Mapping[str, torch.Tensor], values: str, bits: int | Mapping[str, int] | None, score: Score, drop: Drop,
    tolerance: float, reference: float | None = None,
) -> BitChoice:
    """Score the file of ``values`` / ``bits`` decoded against ``reference`` (default: the model as it is); no search."""
    tolerance = _check_tolerance(tolerance)
    evaluations = 1 if reference is None else 0
    reference = float(score(state_dict)) if reference is None else float(reference)
    decoded = float(score(quantize_state_dict(state_dict, values, bits)))
    loss = float(drop(reference, decoded))
    given = dict(bits) if isinstance(bits, Mapping) else bits
    return BitChoice(values, given, reference, decoded, loss, tolerance, loss <= tolerance, False, None, evaluations + 1)


def choose_bits(
    state_dict: Mapping[str, torch.Tensor], score: Score, drop: Drop, tolerance: float, low: int = 2, high: int = 8,
) -> BitChoice:
    """The fewest k-means bits per weight tensor whose decoded model loses at most ``tolerance`` (see the module)."""
    tolerance = _check_tolerance(tolerance)
    low, high = check_bits(low, "low"), check_bits(high, "high")
    if low > high:
        raise ValueError(f"choose_bits: low={low} is above high={high}")
    names = [name for name, tensor in state_dict.items() if isinstance(tensor, torch.Tensor) and is_weight(tensor)]
    if not names:
        raise ValueError("choose_bits: the state dict has no weight tensor (floating, more than one dimension) to quantize")
    evaluations = 0

    def scored(state: Mapping[str, torch.Tensor]) -> float:
        nonlocal evaluations
        evaluations += 1
        return float(score(state))

    reference = scored(state_dict)

    tensors: dict[tuple[str, int], torch.Tensor] = {}

    def decoded_state(widths: Mapping[str, int]) -> dict[str, torch.Tensor]:
        """The state dict a file with the tensors of ``widths`` at those bits decodes to (the others as they are):
        each tensor is quantized on its own, so one tensor's result is kept for every setting that uses it."""
        for name, width in widths.items():
            if (name, width) not in tensors:
                tensors[name, width] = quantize_state_dict({name: state_dict[name]}, "kmeans", width)[name]
        return {**state_dict, **{name: tensors[name, width] for name, width in widths.items()}}

    losses: dict[tuple[str, int], float] = {}

    def alone_loss(name: str, width: int) -> float:
        """The loss of the model with only ``name`` quantized, at ``width`` bits (each measured once)."""
        if (name, width) not in losses:
            losses[name, width] = float(drop(reference, scored(decoded_state({name: width}))))
        return losses[name, width]

    alone = {}
    for name in names:
        lo, hi = low, high  # every width below lo loses too much alone; hi is within, or the top
        while lo < hi:
            mid = (lo + hi) // 2
            if alone_loss(name, mid) <= tolerance / 2:
                hi = mid
            else:
                lo = mid + 1
        alone[name] = lo

    joints: dict[tuple[int, ...], tuple[float, float]] = {}

    def joint(widths: Mapping[str, int]) -> tuple[float, float]:
        """(metric, loss) of the model with every tensor quantized at ``widths`` (each setting scored once)."""
        key = tuple(widths[name] for name in names)
        if key not in joints:
            decoded = scored(decoded_state(widths))
            joints[key] = decoded, float(drop(reference, decoded))
        return joints[key]

    bits = dict(alone)
    decoded, loss = joint(bits)
    if loss > tolerance and any(width < high for width in bits.values()):
        top = {name: high for name in names}
        if joint(top)[1] > tolerance:  # lost even at the top: flagged at once
            bits = top
        while joint(bits)[1] > tolerance and any(width < high for width in bits.values()):
            raisable = [name for name in names if bits[name] < high]
            worst = max(raisable, key=lambda name: alone_loss(name, bits[name]))  # max keeps the first of a tie
            bits[worst] += 1
    if joint(bits)[1] <= tolerance:  # then the fewest: each tensor, largest first, one bit fewer while the whole holds
        for name in sorted(names, key=lambda name: -state_dict[name].numel()):
            while bits[name] > low and joint({**bits, name: bits[name] - 1})[1] <= tolerance:
                bits[name] -= 1
    decoded, loss = joint(bits)
    return BitChoice("kmeans", bits, reference, decoded, loss, tolerance, loss <= tolerance, True, alone, evaluations)
