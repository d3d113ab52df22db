"""The run's constants, and the model, data and file helpers every other step uses."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import load_checkpoint
from ..data import DataConfig, DataSplits, data_geometry, load_data, make_loaders, tensors_shapes
from ..device import pick_device
from ..files import writable_folder
from ..models import ModelSpec
from ..task import resolve_task
from ..training import evaluate

__all__ = [
    "BATCHNORM_BATCHES", "CALIBRATION_IMAGES", "CENTROID_LR", "DEVICE_CHECK_IMAGES", "MCU_IMAGES",
    "TAYLOR_BATCHES", "accuracy_on_test", "check_fits", "load_model", "load_splits", "model_for_data",
    "model_spec_from_flags", "writable_file",
]


TAYLOR_BATCHES = 4
"""Training batches whose gradients rank channels for ``importance="taylor"``."""
BATCHNORM_BATCHES = 10
"""Training batches that re-estimate a pruned model's BatchNorm statistics (:func:`recalibration_batches`)."""
CALIBRATION_IMAGES = 500
"""Training images that calibrate the int8 activations of a TFLite export."""
DEVICE_CHECK_IMAGES = 4
"""Test images each QEMU check of a device target runs (instruction counts hardly depend on the input)."""
CENTROID_LR = 1e-4
"""Learning rate of the k-means centroid fine-tuning (Deep Compression's step after pruning)."""
MCU_IMAGES = 100
"""Test images run through the C engine in the emulated board (each is also run in TFLM and compared)."""


def model_spec_from_flags(model: str, data: DataConfig, num_classes: int | None = None,
                          width: float | None = None) -> ModelSpec | None:
    """The model spec the flags and the data describe, without loading the data (None when the classes are unknown).

    Used for checkpoints that carry no spec of their own, such as the seed's ``.pth`` files: an image
    folder gives its classes (its class folders) and geometry (see :func:`~edgeprune.data.data_geometry`).
    """
    channels, size, classes = data_geometry(data)
    classes = num_classes or classes
    shape = tensors_shapes(data.data_dir)["x_train"][0][1:] if data.name == "tensors" else None
    if not classes:
        return None
    return ModelSpec(model, channels, classes, size, input_shape=None if shape == (channels, size, size) else shape,
                     width=width)


def load_model(
    path: str | Path, spec: ModelSpec | None = None, device: str | torch.device | None = None
) -> tuple[nn.Module, ModelSpec, dict[str, torch.Tensor] | None, dict]:
    """A checkpoint's (model on ``device``, spec, masks or None, info); ``spec`` for files that carry none.

    Without ``spec`` (:func:`model_spec_from_flags` found no classes), a file that carries none asks for the one flag missing.
    """
    missing = "give --num-classes, the number of classes it was trained on (the data has no class folders to count)"
    model, spec, masks, info = load_checkpoint(path, spec, missing) if spec is None else load_checkpoint(path, spec)
    return model.to(pick_device(device)), spec, masks, info


def load_splits(data: DataConfig, spec: ModelSpec | None = None, task: str = "auto") -> DataSplits:
    """The data splits; with ``spec``, checked to fit the model. Their ``task`` is ``task`` (``auto``: resolved from
    the data's labels and ``spec``'s model, see :func:`~edgeprune.task.resolve_task`)."""
    splits = load_data(data)
    splits = replace(splits, task=resolve_task(task, spec.name if spec else "", splits.labeled))
    if spec is not None:
        check_fits(spec, splits)
    return splits


def writable_file(path: str | Path) -> Path:
    """``path`` as an output file, checked before any work: not a folder, in a folder we can write."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--out {path}: is a folder; give a file name such as {path / 'model.safetensors'}")
    writable_folder(path.parent, f"--out {path}")
    return path


def model_for_data(name: str, splits: DataSplits, width: float | None = None) -> ModelSpec:
    """The spec of model ``name`` (with ``width``, for a built-in model that has one) fitted to the data's sample shape
    and classes (1 for data without labels); the ``input_shape`` is left out when it is the square image
    ``in_channels`` x ``image_size`` x ``image_size`` says."""
    image = (splits.in_channels, splits.image_size, splits.image_size)
    return ModelSpec(name, splits.in_channels, max(splits.num_classes, 1), splits.image_size,
                     input_shape=None if splits.input_shape == image else splits.input_shape, width=width)


def check_fits(spec: ModelSpec, splits: DataSplits) -> None:
    """Raise ``ValueError`` naming the flags when a built-in model does not fit the data's samples or classes."""
    if ":" in spec.name:
        return  # the user's own model: its input is its own business
    data_image = splits.input_shape == (splits.in_channels, splits.image_size, splits.image_size)
    model_image = spec.sample_shape == (spec.in_channels, spec.image_size, spec.image_size)
    if not (data_image and model_image):  # not square images both: the whole shape must agree
        classes = not splits.labeled or spec.num_classes == splits.num_classes
        if spec.sample_shape != splits.input_shape or not classes:
            raise ValueError(
                f"model {spec.name!r} takes samples of shape {spec.sample_shape}"
                + (f" and {spec.num_classes} classes" if splits.labeled else "")
                + f", but the data's are {splits.input_shape}" + (f" with {splits.num_classes} classes" if splits.labeled else "")
                + "; use the data the model was trained with"
            )
        return
    image = spec.name.lower() != "basiccnn" or spec.image_size == splits.image_size
    if spec.in_channels != splits.in_channels or spec.num_classes != splits.num_classes or not image:
        raise ValueError(
            f"model {spec.name!r} takes {spec.in_channels}-channel {spec.image_size}x{spec.image_size} images and "
            f"{spec.num_classes} classes, but the data has {splits.in_channels}-channel {splits.image_size}x"
            f"{splits.image_size} images and {splits.num_classes} classes; use the --dataset (and --channels, "
            "--image-size) the model was trained with"
        )


def accuracy_on_test(model: nn.Module, splits: DataSplits, device: str | torch.device | None = None) -> float:
    """The splits' task's metric on the test split: top-1 accuracy (percent), or the reconstruction MSE."""
    return evaluate(model, make_loaders(splits, splits.info.get("batch_size", 64))[2], device, splits.task)
