"""Device targets: the sparsity plan whose engine meets an instruction, estimated-cycle or flash target, checked in QEMU.

:func:`plan_for_device` measures the dense engine once (and, for a flash target, the sparsest
plan's), then :func:`~edgeprune.mcu.predict.meet_target` bisects the planner's target fraction on the
cost model's prediction (:func:`~edgeprune.mcu.predict.predict_model`) and checks the chosen plan's
engine in QEMU, planning again with the measured/predicted ratio when it misses. The planner is a
callable (fraction -> sparsity dict), so this module does not depend on how plans are made.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from ..export.tflite import export_tflite
from ..files import writable_folder
from .measure import measure_on_mcu
from .predict import DeviceBaseline, meet_target, predict_model, pruned_copy
from .units import check_device_targets

__all__ = ["DEVICE_TOLERANCE", "SPARSEST", "plan_for_device"]

SPARSEST = 0.99
"""The planner's fraction of the sparsest plan (each layer at most 99 % pruned)."""
DEVICE_TOLERANCE = 0.05
"""A device target is met when QEMU measures at most the target and at least this fraction under it."""


def plan_for_device(
    model: nn.Module, plan_at: Callable[[float], Mapping[str, float]], calibration_images: torch.Tensor,
    images: torch.Tensor, labels: torch.Tensor, out_dir: str | os.PathLike, target_instructions: float | None = None,
    target_flash: str | int | None = None, tolerance: float = DEVICE_TOLERANCE, checks: int = 4, target: str = "cortex-m4",
    target_cycles: float | None = None,
) -> dict:
    """The sparsity plan whose engine meets one device target, and what was predicted and measured for it.

    ``plan_at(f)`` is the planner at target fraction ``f`` (e.g. ``plan_by_budget(..., target_sparsity=f)``'s
    sparsity dict). ``target_instructions`` is a fraction of the dense engine's instructions per inference,
    ``target_cycles`` of its estimated cycles (QEMU's Cortex-M4 timing plugin; the cost model's instructions are
    priced at the dense engine's measured cycles per instruction), ``target_flash`` a flash size (``"32KiB"``,
    ``32768``); give one. The engines are measured in QEMU
    (``target``) on ``images`` (a few; the counts hardly depend on the input) under ``out_dir``
    (``dense``, ``sparsest``, ``check-N``). Returns ``sparsity`` (the plan), ``met``, ``target``,
    ``predicted`` and ``measured`` (instructions, estimated cycles or flash bytes), ``checks`` (each QEMU check) and
    ``mcu`` (the last check's mcu.json). One-line ValueError for a target no plan reaches, naming the
    reachable range.
    """
    fraction, flash, cycles = check_device_targets(target_instructions, target_flash, target_cycles)
    if fraction is None and flash is None and cycles is None:
        raise ValueError("give a device target: --target-instructions (e.g. 0.3), --target-cycles (e.g. 0.3) or "
                         "--target-flash (e.g. 32KiB)")
    out_dir = writable_folder(out_dir, f"out_dir {out_dir}")
    key = "flash_bytes" if flash is not None else "estimated_cycles" if cycles is not None else "instructions"
    results: dict[str, dict] = {}

    def measure(sparsity: Mapping[str, float], name: str) -> dict:
        path = export_tflite(pruned_copy(model, sparsity), out_dir / f"{name}.tflite", calibration_images)
        results[name] = measure_on_mcu(path, images, labels, out_dir / name, target)
        return results[name]

    dense = measure({}, "dense")
    per_instruction = 1.0  # the price of a predicted instruction in the target's quantity
    if cycles is not None:
        if dense.get("estimated_cycles") is None:
            raise ValueError(f"--target-cycles needs a cycle estimate, but {target} has {dense['cycles_note']}; "
                             "use --target-instructions")
        fraction, per_instruction = cycles, dense["estimated_cycles"] / dense["instructions"]
    if flash is None:
        goal, baseline = fraction * dense[key], DeviceBaseline.from_measurement(dense)
    else:
        sparsest = measure(plan_at(SPARSEST), "sparsest")
        if not sparsest["flash_bytes"] <= flash < dense["flash_bytes"]:
            raise ValueError(f"--target-flash {flash:,} B is out of reach: the engine takes {sparsest['flash_bytes']:,} B "
                             f"(sparsest plan, code included) to {dense['flash_bytes']:,} B (dense); aim in that range")
        goal, baseline = float(flash), DeviceBaseline.from_measurement(sparsest)

    def predicted(f: float) -> float:
        prediction = predict_model(model, plan_at(f), calibration_images, baseline=baseline)
        return prediction.instructions * per_instruction if flash is None else prediction.flash_bytes

    def measured(f: float) -> float:
        return measure(plan_at(f), f"check-{sum(name.startswith('check') for name in results) + 1}")[key]

    search = meet_target(predicted, measured, goal, key.replace("_", " "), high=SPARSEST, tolerance=tolerance,
                         checks=checks, dense=dense[key] if flash is None else None)
    last = results[max((n for n in results if n.startswith("check")), key=lambda n: int(n.split("-")[1]))]
    return {
        "sparsity": dict(plan_at(search.fraction)), "met": search.met, "quantity": key, "target": goal,
        "target_fraction": fraction, "planner_fraction": search.fraction, "predicted": search.predicted,
        "measured": search.measured, "prediction_error": (search.predicted - search.measured) / search.measured
        if search.measured and not math.isnan(search.measured) else None,
        "dense": {"instructions": dense["instructions"], "estimated_cycles": dense.get("estimated_cycles"),
                  "flash_bytes": dense["flash_bytes"]},
        "checks": search.checks, "mcu": last, "folder": str(Path(out_dir)),
    }
