"""Sparsity planned to a device target (instructions, estimated cycles or flash of the C engine), checked in QEMU."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..analyze.plan import make_plan
from ..analyze.scan import ScanResult
from ..data import DataSplits
from ..export.tflite import calibration_images
from ..mcu.predict import unit_costs
from ..mcu.target import DEVICE_TOLERANCE, plan_for_device
from .common import CALIBRATION_IMAGES, DEVICE_CHECK_IMAGES
from .mcu import test_samples, mcu_model

__all__ = ["check_device_target", "engine_unit_bytes", "plan_for_device_target"]


def engine_unit_bytes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, float]:
    """The sparse engine's flash bytes per non-zero weight of each prunable layer (``bytes_per_nonzero`` of a flash
    budget). The bytes depend on which weights are zero, not on the activations, so random images calibrate."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(8, *input_shape, generator=generator)
    return {name: cost["bytes"] for name, cost in unit_costs(copy.deepcopy(model).cpu(), images).items()}


def plan_for_device_target(
    model: nn.Module, scan: ScanResult, splits: DataSplits, out: str | Path, budget: str = "params",
    target_instructions: float | None = None, target_flash: str | int | None = None, target: str = "cortex-m4",
    images: int = DEVICE_CHECK_IMAGES, target_cycles: float | None = None,
) -> tuple[dict, dict]:
    """The planner's sparsity dict (in ``budget``) whose C engine meets a device target in QEMU, and its plan info.

    The planner's target fraction is searched on the engine's cost model and checked in QEMU on ``images``
    test images on ``target`` (:func:`~edgeprune.mcu.target.plan_for_device`, files under ``out``); the plan info's
    ``device`` holds the target, what was predicted and what QEMU measured.
    """
    model = copy.deepcopy(model).cpu().eval()
    shape = tuple(splits.train[0][0].shape)
    units = engine_unit_bytes(model, shape) if budget == "flash" else None
    plans: dict[float, dict] = {}

    def plan_at(fraction: float) -> dict:
        if fraction not in plans:
            with warnings.catch_warnings():  # beyond the scanned range is expected near the sparsest plan
                warnings.simplefilter("ignore")
                plans[fraction] = make_plan(scan, model, target_sparsity=fraction, budget=budget, input_shape=shape,
                                            bytes_per_nonzero=units).to_dict()
        return plans[fraction]["sparsity_dict"]

    device = plan_for_device(model, plan_at, calibration_images(splits.train, CALIBRATION_IMAGES),
                             *test_samples(splits, images), out, target_instructions, target_flash, target=target,
                             target_cycles=target_cycles)
    info = dict(plans[device["planner_fraction"]])
    info["device"] = {key: value for key, value in device.items() if key not in ("mcu", "sparsity")}
    info["device"]["layers"] = device["mcu"]["layers"]
    return dict(device["sparsity"]), info


def check_device_target(device: Mapping, final: Mapping) -> dict:
    """The device target's record (``device`` from :func:`plan_for_device_target`'s plan info, without its layers) with
    the final model's measurement (``final``, its :func:`mcu_model` result): its instructions, estimated cycles and
    flash bytes, and whether it still meets the target within 5 %."""
    value = final[device["quantity"]]
    return {**{key: v for key, v in device.items() if key != "layers"},
            "final": {"instructions": final["instructions"], "estimated_cycles": final.get("estimated_cycles"),
                      "flash_bytes": final["flash_bytes"],
                      "met": value is not None and (1 - DEVICE_TOLERANCE) * device["target"] <= value <= device["target"]}}
