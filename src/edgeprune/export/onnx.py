"""ONNX export through ``torch.onnx`` (the dynamo exporter) with a dynamic batch dimension, checked in onnxruntime."""

from __future__ import annotations

import functools
import os
import statistics
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..analyze.latency import time_calls, timing_copy
from ..files import atomic_path
from ..task import CLASSIFICATION, Task

__all__ = ["ONNX_ATOL", "ONNX_RTOL", "compare_onnx", "evaluate_onnx", "export_onnx", "onnx_latency", "onnx_session", "quantize_onnx"]

ONNX_ATOL = 1e-4
"""onnxruntime's float32 logits equal PyTorch's when ``|ort - torch| <= ONNX_ATOL + ONNX_RTOL * |torch|`` everywhere."""
ONNX_RTOL = 1e-4


def export_onnx(model: nn.Module, path: str | os.PathLike, example_input: torch.Tensor) -> Path:
    """Write ``model`` (eval mode, on the CPU) as a self-contained .onnx file with inputs ``input`` and outputs ``logits``.

    The first dimension is dynamic (``batch``); ``example_input`` gives the per-sample shape and dtype.
    """
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 2:
        raise ValueError("example_input must be a batched tensor, e.g. a 1 x C x H x W image batch")
    model = model.eval().cpu()
    example = example_input.detach().cpu()
    if len(example) < 2:  # a batch of 1 would be specialized by torch.export; the batch size is dynamic anyway
        example = example.expand(2, *example.shape[1:]).contiguous()
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            torch.onnx.export(
                model, (example,), str(tmp), dynamo=True, external_data=False, verbose=False,
                input_names=["input"], output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch")},),
            )
        except Exception as exc:  # torch.export and the ONNX translation raise many types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ValueError(f"cannot export {type(model).__name__} to ONNX with an input of shape "
                             f"{tuple(example_input.shape)} ({type(exc).__name__}: {first}); check the input shape") from exc
    return path


def quantize_onnx(path: str | os.PathLike, out: str | os.PathLike, calibration_images: torch.Tensor, batch: int = 32) -> Path:
    """Write an int8 copy of the .onnx file ``path`` to ``out``: onnxruntime's static quantization in QDQ format.

    Weights int8 per output channel, activations int8 per tensor, calibrated (min/max) on the float
    ``calibration_images`` (N x C x H x W training images).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if not isinstance(calibration_images, torch.Tensor) or len(calibration_images) == 0:
        raise ValueError("calibration_images must be a non-empty float tensor N x C x H x W of training images")
    session = onnx_session(path)
    name = session.get_inputs()[0].name
    chunks = [calibration_images[i:i + batch].cpu().numpy().astype(np.float32) for i in range(0, len(calibration_images), batch)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(chunks)

        def get_next(self):
            chunk = next(self.items, None)
            return None if chunk is None else {name: chunk}

    out = Path(out)
    with atomic_path(out) as tmp:
        quantize_static(str(path), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    return out


def onnx_session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU inference session for ``path``; ``threads`` intra-op threads (None: onnxruntime's choice)."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; write it first with export_onnx")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run(session, images: torch.Tensor) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: images.detach().cpu().numpy().astype(np.float32)})[0]


def compare_onnx(model: nn.Module, path: str | os.PathLike, loader: Iterable, batches: int = 3) -> dict:
    """Run ``batches`` batches of ``loader`` through PyTorch and onnxruntime.

    Returns ``{"max_abs_diff", "equal"}``; ``equal`` is the check with ``ONNX_ATOL`` and ``ONNX_RTOL``.
    """
    session = onnx_session(path)
    model = model.eval().cpu()
    worst, equal = 0.0, True
    with torch.no_grad():
        for i, (images, _) in enumerate(loader):
            if i >= batches:
                break
            expected = model(images.cpu()).numpy()
            got = _run(session, images)
            worst = max(worst, float(np.abs(got - expected).max()))
            equal = equal and bool(np.allclose(got, expected, rtol=ONNX_RTOL, atol=ONNX_ATOL))
    return {"max_abs_diff": worst, "equal": equal}


def evaluate_onnx(path: str | os.PathLike, loader: Iterable, task: Task = CLASSIFICATION) -> dict:
    """The ``task``'s metric (top-1 accuracy in percent, or the reconstruction MSE) of the .onnx file in onnxruntime over
    ``loader`` (samples, labels): ``{task.metric: value, "count": samples}``."""
    session = onnx_session(path)
    total, count, samples = 0.0, 0, 0
    for images, labels in loader:
        part, n = task.batch_total(torch.from_numpy(_run(session, images)), images, labels)
        total, count, samples = total + part, count + n, samples + len(images)
    if samples == 0:
        raise ValueError("the loader gave no samples; give a loader of (samples, labels) batches")
    return {task.metric: task.finish(total, count), "count": samples}


def onnx_latency(model: nn.Module, path: str | os.PathLike, images: torch.Tensor, rounds: int = 20, threads: int = 1) -> dict:
    """Median milliseconds per call of onnxruntime and of PyTorch on the same ``images`` batch, on the CPU.

    The two are timed interleaved by ``analyze.latency.time_calls`` (``rounds`` rounds), PyTorch on a
    ``timing_copy`` of ``model`` (eval, masks detached) under ``torch.inference_mode()``; both run with
    ``threads`` intra-op threads (PyTorch's setting is restored afterwards), so the ratio is fair.
    """
    session = onnx_session(path, threads)
    timed = timing_copy(model, torch.device("cpu"))
    images = images.detach().cpu()
    with torch.inference_mode():
        (torch_ms, onnx_ms), number = time_calls(
            [functools.partial(timed, images), functools.partial(_run, session, images)], rounds, threads=threads)
    return {"onnx_ms": statistics.median(onnx_ms), "torch_ms": statistics.median(torch_ms), "batch": len(images),
            "threads": threads, "rounds": rounds, "number": number}
