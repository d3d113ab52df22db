"""What the engine will cost for a sparsity plan, predicted without QEMU, and device targets met by refinement.

:func:`predict_model` prunes a copy of a PyTorch model to a sparsity dict (smallest magnitudes, as
the pruner does), converts it to the int8 graph and lowers it exactly as :func:`~edgeprune.mcu.codegen.export_c`
would (:func:`~edgeprune.mcu.lowering.lower`): each weighted layer gets the engine's own dense/sparse
choice and :mod:`edgeprune.mcu.cost`'s predicted instructions, and its weight and index bytes are
counted from the real sparse format. Steps without weights (pads, adds, pools) have no cost model;
their instructions and the code size come from one QEMU measurement of the dense engine
(:class:`DeviceBaseline`), as they do not change with sparsity.

:func:`unit_costs` turns the cost model into the planner's prices of one weight per layer: the
instructions saved per weight pruned and the flash bytes per non-zero weight (``bytes_per_nonzero`` of
:func:`edgeprune.analyze.plan.plan_by_budget`).

:func:`meet_target` finds the planner's target fraction whose model meets a device target: bisection
on the prediction, a check of the final model (QEMU), and, when the check misses by more than the
tolerance, the prediction corrected by the measured/predicted ratio and planned again.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn

from ..export.int8_graph import Int8Graph
from ..export.tflite_convert import convert_model
from ..models import prunable_parameters
from ..prune.masks import check_sparsity, fine_grained_prune
from .lowering import lower

__all__ = [
    "DeviceBaseline", "EnginePrediction", "LayerPrediction", "TargetSearch", "meet_target", "predict_graph",
    "predict_model", "pruned_copy", "unit_costs",
]

@dataclass(frozen=True)
class LayerPrediction:
    """One weighted layer as the engine will run it: ``engine`` dense or sparse, its weights' ``format``,
    predicted ``instructions`` per inference, ``weight_bytes`` and ``index_bytes`` of flash, and ``nonzeros``."""

    engine: str
    format: str
    instructions: float
    weight_bytes: int
    index_bytes: int
    nonzeros: int


@dataclass(frozen=True)
class DeviceBaseline:
    """What the cost model does not predict, from one QEMU run of the dense engine (:func:`measure_on_mcu`'s
    ``mcu.json``): instructions of the steps without weights, and flash besides weights and indices (code,
    biases, requantization constants)."""

    other_instructions: float
    other_flash: int
    dense_instructions: float
    dense_flash: int

    @classmethod
    def from_measurement(cls, result: Mapping) -> "DeviceBaseline":
        """From a dense engine's ``mcu.json`` content."""
        other = sum(layer["instructions"] for layer in result["layers"] if layer["engine"] == "-")
        return cls(float(other), int(result["flash_bytes"]) - int(result["weight_bytes"]) - int(result["index_bytes"]),
                   float(result["instructions"]), int(result["flash_bytes"]))


@dataclass(frozen=True)
class EnginePrediction:
    """Per weighted layer (by parameter name) its :class:`LayerPrediction`; totals with a :class:`DeviceBaseline`."""

    layers: dict[str, LayerPrediction]
    baseline: DeviceBaseline | None = None

    @property
    def weighted_instructions(self) -> float:
        """Predicted instructions of the weighted layers."""
        return sum(layer.instructions for layer in self.layers.values())

    @property
    def weight_index_bytes(self) -> int:
        """Bytes of weights and indices."""
        return sum(layer.weight_bytes + layer.index_bytes for layer in self.layers.values())

    @property
    def instructions(self) -> float:
        """Predicted instructions per inference: the weighted layers plus the baseline's other steps (0 without one)."""
        return self.weighted_instructions + (self.baseline.other_instructions if self.baseline else 0.0)

    @property
    def flash_bytes(self) -> int:
        """Predicted flash: weights and indices plus the baseline's code and constants (0 without one)."""
        return self.weight_index_bytes + (self.baseline.other_flash if self.baseline else 0)

    def to_dict(self) -> dict:
        """A JSON-ready summary: totals and each layer."""
        return {"instructions": self.instructions, "flash_bytes": self.flash_bytes,
                "weight_index_bytes": self.weight_index_bytes,
                "layers": {name: vars(layer) for name, layer in self.layers.items()}}


def predict_graph(graph: Int8Graph, sparse: str = "auto", baseline: DeviceBaseline | None = None) -> EnginePrediction:
    """The engine's prediction for an int8 graph (:class:`~edgeprune.export.int8_graph.Int8Graph`), lowered as export_c
    lowers it; layers are named by their weight tensor (``conv1.weight`` for a graph converted from PyTorch)."""
    layers = {}
    for step in lower(graph, sparse).steps:
        if step.engine == "-":
            continue
        weight = graph.tensors[graph.ops[step.source].inputs[1]]
        layers[weight.name] = LayerPrediction(step.engine, step.format, step.predicted_instructions, step.weight_bytes,
                                              step.index_bytes, int(np.count_nonzero(weight.data)))
    return EnginePrediction(layers, baseline)


def pruned_copy(model: nn.Module, sparsity: Mapping[str, float]) -> nn.Module:
    """A copy of ``model`` with each named prunable parameter's smallest weights zeroed to its sparsity."""
    params = prunable_parameters(model)
    unknown = [name for name in sparsity if name not in params]
    if unknown:
        raise ValueError(f"the sparsity dict names {', '.join(unknown)}, which the model has not; "
                         f"its prunable layers are {', '.join(params)}")
    pruned = copy.deepcopy(model).eval()
    pruned_params = prunable_parameters(pruned)
    for name, s in sparsity.items():
        fine_grained_prune(pruned_params[name].data, check_sparsity(s, name))
    return pruned


def predict_model(model: nn.Module, sparsity: Mapping[str, float], calibration_images: torch.Tensor,
                  sparse: str = "auto", baseline: DeviceBaseline | None = None) -> EnginePrediction:
    """The engine's prediction for ``model`` pruned to ``sparsity`` (``model`` untouched).

    ``calibration_images`` (a few images of the input shape) set the activation ranges of the int8
    graph; they do not change which weights are zero, so a handful is enough.
    """
    return predict_graph(convert_model(pruned_copy(model, sparsity), calibration_images), sparse, baseline)


def unit_costs(model: nn.Module, calibration_images: torch.Tensor, low: float = 0.8,
               high: float = 0.95) -> dict[str, dict[str, float]]:
    """Per prunable parameter, what one weight costs on the sparse engine (all layers sparse), from its prediction
    at uniform sparsities ``low`` and ``high`` (the region where the planner's device targets fall):

    * ``instructions``: saved per inference by pruning one more weight (the slope between the two);
    * ``bytes``: flash per non-zero weight, value and index (the average over the two, counts per run
      included; the planner's ``bytes_per_nonzero``). A layer with no non-zeros there is priced at 1 byte.
    """
    names = list(prunable_parameters(model))
    at = [predict_model(model, dict.fromkeys(names, s), calibration_images, sparse="always") for s in (low, high)]
    costs = {}
    for name in names:
        a, b = at[0].layers[name], at[1].layers[name]
        stored = a.weight_bytes + a.index_bytes + b.weight_bytes + b.index_bytes
        costs[name] = {"instructions": (a.instructions - b.instructions) / max(1, a.nonzeros - b.nonzeros),
                       "bytes": stored / (a.nonzeros + b.nonzeros) if a.nonzeros + b.nonzeros else 1.0}
    return costs


@dataclass
class TargetSearch:
    """The outcome of :func:`meet_target`: the planner's ``fraction``, the ``predicted`` and ``measured`` values of
    its model, whether it is ``met`` (measured within ``tolerance`` below the target, never above) and each
    check (``checks``: fraction, predicted, measured)."""

    target: float
    fraction: float
    predicted: float
    measured: float
    met: bool
    tolerance: float
    checks: list[dict] = field(default_factory=list)


def _bisect(cost_at: Callable[[float], float], goal: float, low: float, high: float, steps: int) -> float:
    """The smallest fraction in [low, high] (within (high - low) / 2**steps) whose cost is at most ``goal``;
    ``cost_at`` must not increase with the fraction, and ``cost_at(high) <= goal``."""
    for _ in range(steps):
        middle = (low + high) / 2
        if cost_at(middle) <= goal:
            high = middle
        else:
            low = middle
    return high


def meet_target(predict_at: Callable[[float], float], measure_at: Callable[[float], float], target: float,
                what: str, high: float = 0.99, tolerance: float = 0.05, checks: int = 4,
                bisection_steps: int = 14, dense: float | None = None) -> TargetSearch:
    """The planner's fraction whose model measures at most ``target`` and at least ``(1 - tolerance) * target``.

    ``predict_at(f)`` is the cost model's value (instructions, bytes) for the plan at fraction ``f``,
    ``measure_at(f)`` the device's (QEMU); both must not increase with ``f``, the densest plan being
    ``f = 0`` and the sparsest ``f = high``. The fraction is bisected on the prediction; its model is
    measured; on a miss the goal the prediction bisects for is scaled by target / measured and the
    search runs again, at most ``checks`` measurements in all. One-line ValueError, naming what the
    sparsest plan reaches, when even it is predicted above the target (``what`` names the quantity; with the
    ``dense`` value, both also as fractions of it).
    """
    known: dict[float, float] = {}

    def predicted(f: float) -> float:
        if f not in known:
            known[f] = predict_at(f)
        return known[f]

    sparsest = predicted(high)
    if sparsest > target:
        def share(value: float) -> str:
            return f" ({value / dense:.3f} of the dense {dense:,.0f})" if dense else ""

        raise ValueError(f"the {what} target {target:,.0f}{share(target)} is below what the sparsest plan reaches: "
                         f"{sparsest:,.0f}{share(sparsest)} predicted, every layer at {high:.0%}; aim higher")
    search = TargetSearch(target, high, sparsest, math.nan, False, tolerance)
    goal = target * (1 - tolerance / 2)  # the middle of the band the measurement must fall in
    for _ in range(checks):
        fraction = _bisect(predicted, goal, 0.0, high, bisection_steps) if predicted(0.0) > goal else 0.0
        measured = measure_at(fraction)
        search.checks.append({"fraction": fraction, "predicted": predicted(fraction), "measured": measured})
        search.fraction, search.predicted, search.measured = fraction, predicted(fraction), measured
        search.met = (1 - tolerance) * target <= measured <= target
        if search.met or (fraction == 0.0 and measured < target) or (fraction == high and measured > target):
            break  # met, or the densest plan is already under the band, or the sparsest still over it
        goal = max(sparsest, goal * target * (1 - tolerance / 2) / measured)
    return search
