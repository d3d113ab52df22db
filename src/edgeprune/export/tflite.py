"""Fully int8 TensorFlow Lite export for microcontrollers: convert, write, save.

The work is split by what it is, each part on top of the int8 graph (:mod:`.int8_graph`: the IR,
its quantization maths and the schema constants) and none importing another:
:mod:`.tflite_convert` (torch.fx -> graph, with calibration), :mod:`.tflite_write` (graph -> flatbuffer),
:mod:`.tflite_read` (flatbuffer -> graph, for files from anywhere) and :mod:`.tflm` (TFLite Micro's
interpreter: arena size, raw int8 runs, accuracy).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..files import atomic_path
from .tflite_convert import convert_model
from .tflite_write import graph_to_tflite

__all__ = ["calibration_images", "export_tflite"]


def export_tflite(
    model: nn.Module, path: str | os.PathLike, calibration_images: torch.Tensor, softmax: bool = False,
    lut_bits: int | Mapping[str, int] | None = None,
) -> Path:
    """Write ``model`` as a fully int8 .tflite file (int8 input, output int8 logits or softmax); return the path.

    ``calibration_images`` is a float tensor of real training samples (a few hundred): N x C x H x W images
    (the file's input is 1 x H x W x C), N x C x T sequences (1 x 1 x T x C) or N x F features (1 x F),
    preprocessed exactly as the model sees them; activation ranges are their [min, max].
    With ``lut_bits``, weight tensors whose channels hold at most ``2**lut_bits`` distinct int8 values
    (after k-means weight sharing) are stored as TFLM look-up tables (``lut_bits``-bit indices, DECODE ops),
    which TFLM expands at run time; per weight tensor, ``lut_bits`` may be the k-means bits chosen per layer.
    """
    graph = convert_model(model, calibration_images, softmax)
    data = graph_to_tflite(graph, f"edgeprune int8 {type(model).__name__}", lut_bits)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def calibration_images(dataset, count: int = 500) -> torch.Tensor:
    """The first ``count`` images of a dataset of (image, label) pairs, stacked: a calibration set for :func:`export_tflite`."""
    count = min(count, len(dataset))
    if count < 1:
        raise ValueError("no calibration images: give a training split with at least one image")
    return torch.stack([dataset[i][0] for i in range(count)])
