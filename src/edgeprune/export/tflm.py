"""The TensorFlow Lite Micro runtime (``tflite_micro`` wheel): interpreter, arena size, raw int8 runs, accuracy."""

from __future__ import annotations

import ctypes
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from ..task import CLASSIFICATION, Task
from .int8_graph import quantize_activation

__all__ = ["evaluate_tflite", "make_interpreter", "run_int8", "tflite_arena_bytes", "tflite_layout"]

MIN_ARENA_BYTES = 4096  # TFLM's own bookkeeping needs a few KB; smaller arenas can crash it instead of failing


def tflite_layout(batch: np.ndarray) -> np.ndarray:
    """A PyTorch batch in the layout of :func:`~edgeprune.export.tflite.export_tflite`'s input: N x C x H x W images
    as N x H x W x C, N x C x T sequences as N x 1 x T x C, N x F features as they are."""
    batch = np.asarray(batch)
    if batch.ndim == 4:
        return batch.transpose(0, 2, 3, 1)
    if batch.ndim == 3:
        return batch.transpose(0, 2, 1)[:, None]
    if batch.ndim == 2:
        return batch
    raise ValueError(f"a batch of shape {list(batch.shape)}; give N x C x H x W images, N x C x T sequences or N x F features")


def make_interpreter(model: bytes, arena_size: int = 1 << 20):
    """A TFLM interpreter of the .tflite bytes ``model`` with a ``arena_size``-byte arena; ValueError if it cannot allocate."""
    from tflite_micro.python.tflite_micro import runtime

    if arena_size < MIN_ARENA_BYTES:
        raise ValueError(f"arena_size {arena_size} is too small; give at least {MIN_ARENA_BYTES} bytes")
    try:
        return runtime.Interpreter.from_bytes(model, arena_size=arena_size)
    except RuntimeError as exc:
        raise ValueError(f"TFLM could not allocate the model in a {arena_size:,}-byte arena ({exc}); "
                         "give a larger arena_size, or check the file was written by export_tflite") from exc


def tflite_arena_bytes(interpreter) -> int:
    """Total tensor-arena bytes that TFLM's recording allocator reports for ``interpreter`` (after one invoke)."""
    libc = ctypes.CDLL(None)
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2), os.dup(1)
        libc.fflush(None)
        os.dup2(tmp.fileno(), 2)
        os.dup2(tmp.fileno(), 1)
        try:
            interpreter.print_allocations()
            libc.fflush(None)
        finally:
            os.dup2(saved[0], 2)
            os.dup2(saved[1], 1)
            os.close(saved[0])
            os.close(saved[1])
        tmp.seek(0)
        text = tmp.read().decode(errors="replace")
    found = re.search(r"Arena allocation total (\d+) bytes", text)
    if found is None:
        raise RuntimeError(f"TFLM did not report its arena allocation: {text[:200]!r}")
    return int(found.group(1))


def run_int8(model: bytes | str | os.PathLike, inputs: np.ndarray, arena_size: int = 1 << 20) -> np.ndarray:
    """TFLM's raw outputs for ``inputs`` (N x the input's shape without its batch), one at a time.

    ``inputs`` have the model's input dtype: int8 (quantized with the input's scale and zero point), or float32
    for a model with float ends (a first QUANTIZE). ``model`` is .tflite bytes or a path to the file. Returns
    N x the output's shape without its batch, in the output's dtype.
    """
    interp = make_interpreter(model if isinstance(model, bytes) else Path(model).read_bytes(), arena_size)
    inputs = np.asarray(inputs)
    wanted = np.dtype(interp.get_input_details(0)["dtype"])
    if inputs.dtype != wanted:
        raise ValueError(f"inputs must be {wanted} as the model's input is"
                         + (" (quantized with the input's scale and zero point)" if wanted == np.int8 else "")
                         + f", not {inputs.dtype}")
    outputs = []
    for x in inputs:
        interp.set_input(x[None], 0)
        interp.invoke()
        outputs.append(interp.get_output(0)[0].copy())
    return np.stack(outputs)


def evaluate_tflite(path: str | os.PathLike, loader: Iterable, arena_size: int = 8 << 20, task: Task = CLASSIFICATION) -> dict:
    """Run a .tflite file from :func:`export_tflite` in TFLM, one sample at a time, over ``loader`` (samples, labels).

    Samples are quantized with the input tensor's own scale and zero point and laid out as :func:`tflite_layout`;
    outputs are dequantized with the output's (and NHWC outputs laid back out as NCHW) and scored by ``task``.
    Returns ``{task.metric: value, "arena_bytes": TFLM arena total, "model_bytes": file size, "count": samples}``
    (``"accuracy"`` in percent for classification, ``"mse"`` for reconstruction).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; write it first with export_tflite")
    data = path.read_bytes()
    try:
        interp = make_interpreter(data, arena_size)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    qp = interp.get_input_details(0)["quantization_parameters"]
    scale, zp = float(qp["scales"][0]), int(qp["zero_points"][0])
    out_qp = interp.get_output_details(0)["quantization_parameters"]
    out_scale, out_zp = float(out_qp["scales"][0]), int(out_qp["zero_points"][0])
    total, count, samples = 0.0, 0, 0
    for images, labels in loader:
        q = quantize_activation(tflite_layout(images.numpy()), scale, zp)
        outputs = []
        for img in q:
            interp.set_input(img[None], 0)
            interp.invoke()
            outputs.append((interp.get_output(0)[0].astype(np.float32) - out_zp) * np.float32(out_scale))
        batch = np.stack(outputs)
        batch = batch.transpose(0, 3, 1, 2) if batch.ndim == 4 else batch
        part, n = task.batch_total(torch.from_numpy(batch), images, labels)
        total, count, samples = total + part, count + n, samples + len(q)
    if samples == 0:
        raise ValueError("the loader gave no samples; give a loader of (samples, labels) batches")
    return {task.metric: task.finish(total, count), "arena_bytes": tflite_arena_bytes(interp), "model_bytes": len(data),
            "count": samples}
