"""Which device to compute on: CUDA when present, else the CPU."""

from __future__ import annotations

import torch

__all__ = ["pick_device"]

_HINT = "use cpu, cuda, cuda:N or mps"


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, else CUDA when present, else the CPU.

    Only ``cpu``, ``cuda``/``cuda:N`` (when that GPU is there) and ``mps`` (when available)
    are accepted: any other device (``meta``, ``xla``, a missing GPU) is a ``ValueError``.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r}; {_HINT}") from exc
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} asked for, but CUDA is not available here; use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {str(device)!r} asked for, but this machine has {count} GPU(s); use cuda:0 to cuda:{count - 1}")
        return device
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {str(device)!r} asked for, but Apple's MPS is not available here; use --device cpu")
        return device
    raise ValueError(f"device {str(device)!r} cannot run edgeprune; {_HINT}")
