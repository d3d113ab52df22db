"""Measured inference latency: one timer, on ``torch.utils.benchmark.Timer``, for every model and runtime.

``time_calls`` is the timer: it times a list of zero-argument callables round-robin, each round
one fixed-size ``Timer.timeit`` block per callable in turn, and gives milliseconds per call per round.
Everything that times goes through it: ``time_models`` (the models of one table, with their masks
detached), ``measure_latency`` (one model on each device), ``latency_ratio`` (the channel planner's
``--target-latency``) and ``export.onnx.onnx_latency`` (PyTorch against onnxruntime).

Why fixed ``timeit`` blocks and not ``blocked_autorange``/``adaptive_autorange``: the autorange
methods keep running one statement until they have spent their ``min_run_time`` or their spread
settles, so a list of models would be timed one after the other, each through a different
stretch of the shared machine's load: the sequential timing that made a pruned model look 1.6x
slower than its baseline in a report. A ``timeit(number)`` block is short and the same for every
callable of a round, so a slow spell falls on all of them alike, and the median over rounds drops it.
``Timer`` still does the rest: it runs ``max(number // 100, 2)`` untimed warm-up calls before each
block (so a model's caches are its own again after the previous model ran), sets PyTorch's thread
count for the block and restores it, and synchronises the accelerator before and after the block.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import statistics
from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from ..device import pick_device
from ..prune.pruner import remove

__all__ = ["BLOCK_MS", "latency_ratio", "measure_latency", "time_calls", "time_models", "timing_copy"]

BLOCK_MS = 20.0  # with number=None a block of the slowest callable lasts about this long


def _positive_int(value: object, name: str) -> int:
    """``value`` when it is an int of at least 1, else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


@functools.cache
def _timer_class() -> type:
    """``torch.utils.benchmark.Timer``, imported on first use and without its import's warning.

    Importing it loads ``torch.utils.cpp_extension``, which on a CUDA build of PyTorch without a CUDA
    runtime logs "No CUDA runtime is found" to stderr: noise in every command, and no longer one error line.
    """
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils.benchmark import Timer
    finally:
        logger.setLevel(level)
    return Timer


def time_calls(
    calls: Sequence[Callable[[], object]], rounds: int = 9, number: int | None = None, threads: int | None = None
) -> tuple[list[list[float]], int]:
    """Milliseconds per call of each of ``calls``, one value per round, timed round-robin.

    Each round times one ``Timer.timeit(number)`` block of every callable in turn (the order of
    ``calls``); the value is the block's mean time per call. ``number=None`` picks, from three
    untimed single calls of each (their fastest), the calls per block that make the slowest
    callable's block last about ``BLOCK_MS``; every callable gets the same ``number``. PyTorch runs
    with ``threads`` intra-op threads (default: the current setting, restored afterwards).
    Returns ``(times, number)`` with ``times[i]`` the ``rounds`` values of ``calls[i]``.
    """
    if not calls:
        raise ValueError("nothing to time: give at least one model (or callable)")
    rounds = _positive_int(rounds, "rounds")
    threads = torch.get_num_threads() if threads is None else _positive_int(threads, "threads")
    timer = _timer_class()
    timers = [timer("call()", globals={"call": call}, num_threads=threads) for call in calls]
    if number is None:
        # the fastest of three single calls (a hiccup of the shared machine would inflate one), also the warm-up
        slowest = max(min(timer.timeit(1).mean for _ in range(3)) for timer in timers)
        number = max(1, math.ceil(BLOCK_MS / 1000.0 / slowest))
    number = _positive_int(number, "number")
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(rounds):
        for timer, own in zip(timers, times):
            own.append(1000.0 * timer.timeit(number).mean)
    return times, number


def timing_copy(model: nn.Module, device: torch.device) -> nn.Module:
    """A deep copy of ``model`` on ``device`` in eval mode, with any pruning masks detached (``prune.remove``).

    Masks held in the model (buffers, gradient hooks, forward pre-hooks) are training machinery; a
    deployed model has none, so timing the copy measures the network alone. ``model`` keeps its masks.
    """
    return remove(copy.deepcopy(model)).to(device).eval()


def _check_batch_sizes(batch_sizes: Iterable[int]) -> list[int]:
    """``batch_sizes`` as a list when it holds positive ints, else a ValueError with an example."""
    batch_sizes = list(batch_sizes)
    if not batch_sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes must be positive ints, got {batch_sizes!r}; e.g. (1, 64)")
    return batch_sizes


def time_models(
    models: Sequence[nn.Module],
    example_input: torch.Tensor,
    batch_sizes: Iterable[int] = (1, 64),
    device: str | torch.device | None = None,
    rounds: int = 9,
    number: int | None = None,
    threads: int | None = None,
) -> list[dict]:
    """Forward latency of each of ``models``, timed interleaved so that their ratios mean something.

    Per batch size, ``time_calls`` times the models round-robin (each round every model once in
    turn), on ``timing_copy`` copies (masks detached, eval mode) under ``torch.inference_mode()``.
    ``example_input`` is one input batch; its first sample is repeated to each batch size.
    ``device=None`` is CUDA when present, else the CPU. The models are not moved or changed.
    Returns one dict per model, in order: ``{"latency_ms": {batch: median over rounds},
    "rounds_ms": {batch: [ms per round]}, "number": {batch: calls per block}, "rounds", "threads", "device"}``.
    """
    batch_sizes = _check_batch_sizes(batch_sizes)
    dev = pick_device(device)
    threads = torch.get_num_threads() if threads is None else threads
    copies = [timing_copy(model, dev) for model in models]
    sample = example_input.detach()[:1].to(dev)
    results = [{"latency_ms": {}, "rounds_ms": {}, "number": {}, "rounds": rounds, "threads": threads, "device": str(dev)}
               for _ in models]
    for batch in batch_sizes:
        inputs = sample.expand(batch, *sample.shape[1:]).contiguous()
        with torch.inference_mode():
            times, used = time_calls([functools.partial(m, inputs) for m in copies], rounds, number, threads)
        for result, own in zip(results, times):
            result["latency_ms"][batch] = statistics.median(own)
            result["rounds_ms"][batch] = own
            result["number"][batch] = used
    return results


def measure_latency(
    model: nn.Module,
    example_inputs: torch.Tensor,
    batch_sizes: Iterable[int] = (1, 64),
    device: str | torch.device | None = None,
    rounds: int = 9,
    number: int | None = None,
) -> dict:
    """Median forward latency (ms) of one ``model`` per batch size, on the CPU and on CUDA where present.

    ``device=None`` measures the CPU and, when present, CUDA; a given device measures only it.
    Each device is timed by ``time_models`` (a copy with masks detached; ``model`` is not changed).
    Returns ``{"threads", "rounds", "latency_ms": {device: {batch: median}}, "rounds_ms": {device: {batch: [..]}}}``.
    """
    if device is None:
        devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    else:
        devices = [pick_device(device)]
    timed = {str(dev): time_models([model], example_inputs, batch_sizes, dev, rounds, number)[0] for dev in devices}
    return {"threads": torch.get_num_threads(), "rounds": rounds,
            "latency_ms": {dev: t["latency_ms"] for dev, t in timed.items()},
            "rounds_ms": {dev: t["rounds_ms"] for dev, t in timed.items()}}


def latency_ratio(
    model: nn.Module,
    reference: nn.Module,
    example_inputs: torch.Tensor,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    rounds: int = 9,
    number: int | None = None,
) -> float:
    """Latency of ``model`` over that of ``reference`` at ``batch_size``: the median of the per-round ratios.

    Both go through ``time_models`` (round-robin, masks detached); each round's ratio pairs two blocks
    timed back to back, so a change of load on a shared machine between rounds cancels out (on the
    loaded development CPU this held copies of one model within 2 % at batch 64, where the ratio of
    the two medians strayed by up to 15 %: docs/benchmarks.md). Neither model is moved or changed.
    """
    batch_size = _positive_int(batch_size, "batch_size")
    mine, theirs = time_models([model, reference], example_inputs, (batch_size,), device, rounds, number)
    pairs = zip(mine["rounds_ms"][batch_size], theirs["rounds_ms"][batch_size])
    return statistics.median(a / b for a, b in pairs)
