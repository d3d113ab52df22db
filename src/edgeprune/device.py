"""Which device to compute on: CUDA when present, else the CPU."""

from __future__ import annotations

import torch

__all__ = ["pick_device"]


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, else CUDA when present, else the CPU; a device that is not there is a ``ValueError``."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} asked for, but CUDA is not available here; use --device cpu")
    return device
