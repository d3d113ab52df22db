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
The order rotates from round to round (each callable first equally often: the rounds are rounded up to
a multiple of their count), so no model is always the one timed first, and a block lasts at least
``BLOCK_MS`` and ``MIN_CALLS`` calls, so that at batch 64 one slow spell is not a third of a block.
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
from typing import Callable, Hashable, Iterable, Mapping, Sequence

import torch
from torch import nn

from ..device import pick_device
from ..prune.pruner import _keepers, remove

__all__ = ["BLOCK_MS", "MIN_CALLS", "compute_key", "equal_compute_groups", "latency_ratio", "measure_latency", "spread",
           "time_calls", "time_models", "timing_copy"]

BLOCK_MS = 50.0  # with number=None a block of the slowest callable lasts at least about this long ...
MIN_CALLS = 10  # ... and holds at least this many calls (BasicCNN at batch 64: about 5 ms a call)


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
    calls: Sequence[Callable[[], object]], rounds: int = 9, number: int | None = None, threads: int | None = None,
    rotate: bool = True, block_ms: float | None = None, min_calls: int | None = None,
) -> tuple[list[list[float]], int]:
    """Milliseconds per call of each of ``calls``, one value per round, timed round-robin.

    Each round times one ``Timer.timeit(number)`` block of every callable in turn; the value is the
    block's mean time per call. With ``rotate`` round ``r`` starts at callable ``r % len(calls)`` (each
    callable first equally often: ``rounds`` is rounded up to a multiple of ``len(calls)``); without it
    every round runs in the order of ``calls``. ``number=None`` picks, from an untimed block of
    ``min_calls`` calls of each (also their warm-up), the calls per block that make the slowest callable's
    block last ``block_ms``, and at least ``min_calls`` (defaults ``BLOCK_MS`` and ``MIN_CALLS``); every
    callable gets the same ``number``. PyTorch runs with ``threads``
    intra-op threads (default: the current setting, restored afterwards).
    Returns ``(times, number)`` with ``times[i]`` the values of ``calls[i]``, in the order of the rounds.
    """
    if not calls:
        raise ValueError("nothing to time: give at least one model (or callable)")
    rounds = _positive_int(rounds, "rounds")
    min_calls = _positive_int(MIN_CALLS if min_calls is None else min_calls, "min_calls")
    block_ms = BLOCK_MS if block_ms is None else block_ms
    if rotate:
        rounds = math.ceil(rounds / len(calls)) * len(calls)
    threads = torch.get_num_threads() if threads is None else _positive_int(threads, "threads")
    timer = _timer_class()
    timers = [timer("call()", globals={"call": call}, num_threads=threads) for call in calls]
    if number is None:
        # the mean of a block of min_calls calls: a single call timed in a lucky moment of a loaded machine
        # made blocks ten times longer than meant (BasicCNN at batch 64 under load: 0.6 ms single, 6 ms in a block)
        slowest = max(timer.timeit(min_calls).mean for timer in timers)
        number = max(min_calls, math.ceil(block_ms / 1000.0 / slowest))
    number = _positive_int(number, "number")
    times: list[list[float]] = [[] for _ in calls]
    for r in range(rounds):
        first = r % len(calls) if rotate else 0
        for i in [*range(first, len(calls)), *range(first)]:
            times[i].append(1000.0 * timers[i].timeit(number).mean)
    return times, number


def spread(values: Sequence[float]) -> float:
    """The relative spread of one model's rounds: their interquartile range over their median (0 for fewer than 2)."""
    values = list(values)
    if len(values) < 2:
        return 0.0
    low, _, high = statistics.quantiles(values, n=4, method="inclusive")
    middle = statistics.median(values)
    return (high - low) / middle if middle > 0 else 0.0


def timing_copy(model: nn.Module, device: torch.device) -> nn.Module:
    """A copy of ``model`` as its saved file would load: on ``device``, in eval mode, masks detached, fresh tensors.

    Masks held in the model (buffers, gradient hooks, forward pre-hooks) are training machinery; a
    deployed model has none, so timing the copy measures the network alone. Every parameter and buffer
    is a new contiguous tensor without a gradient (what ``load_state_dict`` into a new model gives),
    so nothing that training left on the tensors (strides, ``.grad``) reaches the timing.
    ``model`` keeps its masks.
    """
    copied = remove(copy.deepcopy(model)).to(device).eval()
    fresh: dict[int, torch.Tensor] = {}  # by the old tensor's id: a weight tied in two modules stays tied
    with torch.no_grad():
        for module in copied.modules():
            for name, param in module._parameters.items():
                if param is not None and id(param) not in fresh:
                    fresh[id(param)] = nn.Parameter(param.detach().clone(memory_format=torch.contiguous_format),
                                                    requires_grad=param.requires_grad)
                if param is not None:
                    module._parameters[name] = fresh[id(param)]
            for name, buffer in module._buffers.items():
                if buffer is not None and id(buffer) not in fresh:
                    fresh[id(buffer)] = buffer.detach().clone(memory_format=torch.contiguous_format)
                if buffer is not None:
                    module._buffers[name] = fresh[id(buffer)]
    return copied


def compute_key(model: nn.Module, macs: int | None = None) -> tuple:
    """What fixes a model's dense compute: its modules (name, type and settings such as stride and padding),
    its parameters' and buffers' names, shapes and dtypes, and its ``macs`` when known.

    Two models with equal keys run the same dense kernels on the same shapes (fine-grained zeros change
    nothing); channel pruning changes the shapes and so the key. Attached pruning masks are left out
    (they are detached for timing).
    """
    prefixes = {id(module): f"{name}." if name else "" for name, module in model.named_modules()}
    masks = {prefixes[id(owner)] + keeper.mask_name for owner, _, keeper in _keepers(model)}
    return (
        tuple((name, type(m).__qualname__, m.extra_repr()) for name, m in model.named_modules()),
        tuple((name, tuple(p.shape), str(p.dtype)) for name, p in model.named_parameters()),
        tuple((name, tuple(b.shape), str(b.dtype)) for name, b in model.named_buffers() if name not in masks),
        macs,
    )


def equal_compute_groups(timings: Sequence[Mapping], keys: Sequence[Hashable]) -> list[dict | None]:
    """For models of identical dense compute (equal ``keys``), one latency, and a flag where they were timed apart.

    ``timings[i]`` is ``time_models``' result for model ``i`` (``latency_ms``, ``rounds_ms``, ``spread`` per
    batch size). Models whose key no other model shares get ``None``. Each member of a group of two or more
    gets the same dict: ``members`` (indices, in order), ``latency_ms`` (per batch, the median of all the
    members' rounds: the one latency shown for all of them), ``apart`` (the fastest member's median to the
    slowest's, as a fraction), ``noise`` (the largest ``spread`` of a member's rounds) and ``flagged`` (the
    batch sizes where ``apart`` exceeds ``noise``: identical networks timed apart by more than the timer's
    own spread, a difference of the machine or the process, never of the model: to treat as equal).
    """
    if len(timings) != len(keys):
        raise ValueError(f"equal_compute_groups: {len(timings)} timings but {len(keys)} keys")
    groups: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    verdicts: list[dict | None] = [None] * len(keys)
    for members in groups.values():
        if len(members) < 2:
            continue
        batches = list(timings[members[0]]["latency_ms"])
        verdict = {"members": members, "latency_ms": {}, "apart": {}, "noise": {}, "flagged": []}
        for b in batches:
            medians = [timings[i]["latency_ms"][b] for i in members]
            verdict["latency_ms"][b] = statistics.median(t for i in members for t in timings[i]["rounds_ms"][b])
            verdict["apart"][b] = max(medians) / min(medians) - 1.0
            verdict["noise"][b] = max(timings[i]["spread"][b] for i in members)
            if verdict["apart"][b] > verdict["noise"][b]:
                verdict["flagged"].append(b)
        for i in members:
            verdicts[i] = verdict
    return verdicts


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

    Per batch size, ``time_calls`` times the models round-robin (each round every model once, the order
    rotating so that each is first equally often; ``rounds`` rounded up to a multiple of the models'
    count), on ``timing_copy`` copies (as their saved files would load: masks detached, eval mode, fresh
    tensors) under ``torch.inference_mode()``. ``example_input`` is an input batch; its samples are
    repeated in turn to fill each batch size. ``device=None`` is CUDA when present, else the CPU.
    The models are not moved or changed.
    Returns one dict per model, in order: ``{"latency_ms": {batch: median over rounds},
    "rounds_ms": {batch: [ms per round]}, "spread": {batch: relative IQR of the rounds (:func:`spread`)},
    "number": {batch: calls per block}, "rounds", "threads", "device"}``.
    """
    batch_sizes = _check_batch_sizes(batch_sizes)
    dev = pick_device(device)
    threads = torch.get_num_threads() if threads is None else threads
    copies = [timing_copy(model, dev) for model in models]
    samples = example_input.detach().to(dev)
    results = [{"latency_ms": {}, "rounds_ms": {}, "spread": {}, "number": {}, "rounds": rounds, "threads": threads,
                "device": str(dev)} for _ in models]
    for batch in batch_sizes:
        inputs = samples[torch.arange(batch, device=dev) % len(samples)].contiguous()
        with torch.inference_mode():
            times, used = time_calls([functools.partial(m, inputs) for m in copies], rounds, number, threads)
        for result, own in zip(results, times):
            result["latency_ms"][batch] = statistics.median(own)
            result["rounds_ms"][batch] = own
            result["spread"][batch] = spread(own)
            result["number"][batch] = used
            result["rounds"] = len(own)
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
