"""Measured inference latency: median wall time per forward pass, after warm-up, per batch size and device."""

from __future__ import annotations

import copy
import statistics
import time
from typing import Iterable

import torch
from torch import nn

from ..device import pick_device

__all__ = ["latency_ratio", "measure_latency", "time_forward"]


def time_forward(model: nn.Module, inputs: torch.Tensor, warmup: int, repeats: int) -> list[float]:
    """Wall times (ms) of ``repeats`` forward passes of ``model`` on ``inputs`` after ``warmup`` untimed ones.

    The model must already be on the inputs' device and in eval mode; CUDA is synchronised around every pass.
    """
    cuda = inputs.device.type == "cuda"
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            if cuda:
                torch.cuda.synchronize(inputs.device)
            start = time.perf_counter()
            model(inputs)
            if cuda:
                torch.cuda.synchronize(inputs.device)
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000.0)
    return times


def measure_latency(
    model: nn.Module,
    example_inputs: torch.Tensor,
    batch_sizes: Iterable[int] = (1, 64),
    device: str | torch.device | None = None,
    warmup: int = 3,
    repeats: int = 10,
) -> dict:
    """Median forward latency (ms) of ``model`` per batch size, on the CPU and on CUDA where present.

    ``example_inputs`` is one input batch (its first sample is repeated to each batch size).
    ``device=None`` measures the CPU and, when present, CUDA; a given device measures only it.
    ``model`` is not moved or changed (a copy in eval mode is timed). Returns
    ``{"threads", "warmup", "repeats", "latency_ms": {device: {batch: median}}, "all_ms": {device: {batch: [..]}}}``.
    """
    batch_sizes = list(batch_sizes)
    if not batch_sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes must be positive ints, got {batch_sizes!r}; e.g. (1, 64)")
    if warmup < 0 or repeats < 1:
        raise ValueError(f"warmup must be at least 0 and repeats at least 1, got {warmup} and {repeats}")
    if device is None:
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    else:
        devices = [pick_device(device)]
    sample = example_inputs.detach()[:1]
    latency: dict[str, dict[int, float]] = {}
    samples: dict[str, dict[int, list[float]]] = {}
    for dev in devices:
        timed = copy.deepcopy(model).to(dev).eval()
        latency[str(dev)], samples[str(dev)] = {}, {}
        for batch in batch_sizes:
            inputs = sample.to(dev).expand(batch, *sample.shape[1:]).contiguous()
            times = time_forward(timed, inputs, warmup, repeats)
            latency[str(dev)][batch] = statistics.median(times)
            samples[str(dev)][batch] = times
    return {"threads": torch.get_num_threads(), "warmup": warmup, "repeats": repeats, "latency_ms": latency, "all_ms": samples}


def latency_ratio(
    model: nn.Module,
    reference: nn.Module,
    example_inputs: torch.Tensor,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    rounds: int = 5,
    repeats: int = 5,
    warmup: int = 2,
) -> float:
    """Median latency of ``model`` over that of ``reference`` at ``batch_size``, timed in turn in this process.

    Each of ``rounds`` rounds times ``repeats`` passes of one model, then of the other (after
    ``warmup`` untimed passes each), so that a change of load on a shared machine hits both;
    the ratio is of the medians over all passes. Neither model is moved or changed.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1 or rounds < 1 or repeats < 1:
        raise ValueError(f"batch_size, rounds and repeats must be positive ints, got {batch_size}, {rounds}, {repeats}")
    dev = pick_device(device)
    sample = example_inputs.detach()[:1].to(dev)
    inputs = sample.expand(batch_size, *sample.shape[1:]).contiguous()
    timed = [copy.deepcopy(m).to(dev).eval() for m in (model, reference)]
    times: list[list[float]] = [[], []]
    for _ in range(rounds):
        for i, m in enumerate(timed):
            times[i] += time_forward(m, inputs, warmup, repeats)
    return statistics.median(times[0]) / statistics.median(times[1])

