"""The steps of the experiment, each once, as a function: the CLI, :func:`~edgeprune.run.run_experiment` and the
benchmarks all call these, so a step gives the same result wherever it is called from.

In the order of a run: the model and data (:func:`model_spec_from_flags`, :func:`load_model`, :func:`load_splits`,
:func:`build_baseline`), training (:func:`train_baseline`, :func:`accuracy_on_test`), :func:`inspect_model`,
the sensitivity scan (:func:`scan_model`) and the plan (:func:`choose_sparsity`), pruning (:func:`prune_copy`,
:func:`prune_channels_step`), fine-tuning (:func:`finetune_pruned`, :func:`prune_while_training`), the seeded
centroid step (:func:`share_centroids`), the exports (:func:`export_compressed`, :func:`export_for_devices`) and
:func:`compare_models`. The ``*_checkpoint`` steps are the CLI's subcommands: they read a checkpoint, run the step,
write its files, and return what the CLI prints.
"""

from __future__ import annotations

import copy
import itertools
import tempfile
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .analyze.channel_scan import channel_sensitivity_scan, check_fraction, prune_along_plans
from .analyze.latency import latency_ratio, time_models
from .analyze.metrics import count_macs, file_size, layer_stats, model_stats
from .analyze.plan import make_plan
from .analyze.plots import plot_num_parameters_distribution, plot_weight_distribution
from .analyze.scan import ScanResult, sensitivity_scan
from .checkpoint import load_checkpoint, save_checkpoint, save_compressed_model
from .config import parse_bits
from .data import DataConfig, DataSplits, data_geometry, load_data, make_loaders, tensors_shapes
from .device import pick_device
from .export.c_source import fits_on, write_c_source
from .export.centroids import share_weights
from .export.epz import load_compressed
from .export.onnx import compare_onnx, evaluate_onnx, export_onnx, onnx_latency
from .export.tflite import calibration_images, export_tflite
from .export.tflm import evaluate_tflite
from .files import writable_folder, write_json_atomic, write_text_atomic
from .mcu import export_c
from .mcu.measure import engine_outputs, load_inputs, measure_on_mcu, measure_tflite, random_inputs
from .mcu.predict import parse_bytes, unit_costs
from .mcu.toolchain import board_memory, get_target
from .mcu.target import DEVICE_TOLERANCE, plan_for_device
from .models import ModelSpec, prunable_parameters
from .prune.channels import channel_counts, prune_channels
from .prune.global_magnitude import global_magnitude_sparsity
from .prune.pruner import FineGrainedPruner
from .prune.settings import load_layer_settings
from .report import comparison_markdown
from .task import CLASSIFICATION, Task, resolve_task
from .training import Teacher, TrainHistory, batchnorm_layers, evaluate, finetune, prune_gradually, recalibrate_batchnorm, train

__all__ = [
    "BATCHNORM_BATCHES", "CALIBRATION_IMAGES", "CENTROID_LR", "DEVICE_CHECK_IMAGES", "MCU_IMAGES", "TAYLOR_BATCHES",
    "accuracy_on_test", "c_engine_checkpoint", "build_baseline", "channels_summary", "check_device_export",
    "check_device_target", "check_fits", "check_weight_budget", "choose_sparsity", "compare_checkpoints",
    "compare_models", "engine_unit_bytes",
    "export_checkpoint", "export_compressed", "export_for_devices", "finetune_checkpoint", "finetune_pruned",
    "inspect_model", "load_model", "load_splits", "mcu_checkpoint", "mcu_model", "model_for_data",
    "model_spec_from_flags", "plan_for_device_target", "plan_from_scan", "prune_channels_step", "prune_checkpoint", "prune_copy",
    "prune_while_training", "recalibration_batches", "scan_checkpoint", "scan_model", "share_centroids", "taylor_batches", "train_baseline",
    "train_checkpoint", "writable_file",
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


# --------------------------------------------------------------------------- model, data and files


def model_spec_from_flags(model: str, data: DataConfig, num_classes: int | None = None) -> ModelSpec | None:
    """The model spec the flags and the data describe, without loading the data (None when the classes are unknown).

    Used for checkpoints that carry no spec of their own, such as the seed's ``.pth`` files: an image
    folder gives its classes (its class folders) and geometry (see :func:`~edgeprune.data.data_geometry`).
    """
    channels, size, classes = data_geometry(data)
    classes = num_classes or classes
    shape = tensors_shapes(data.data_dir)["x_train"][0][1:] if data.name == "tensors" else None
    if not classes:
        return None
    return ModelSpec(model, channels, classes, size, input_shape=None if shape == (channels, size, size) else shape)


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


def model_for_data(name: str, splits: DataSplits) -> ModelSpec:
    """The spec of model ``name`` fitted to the data's sample shape and classes (1 for data without labels); the
    ``input_shape`` is left out when it is the square image ``in_channels`` x ``image_size`` x ``image_size`` says."""
    image = (splits.in_channels, splits.image_size, splits.image_size)
    return ModelSpec(name, splits.in_channels, max(splits.num_classes, 1), splits.image_size,
                     input_shape=None if splits.input_shape == image else splits.input_shape)


def check_fits(spec: ModelSpec, splits: DataSplits) -> None:
    """Raise ``ValueError`` naming the flags when a built-in model does not fit the data's samples or classes."""
    if ":" in spec.name:
        return  # the user's own model: its input is its own business
    image = (splits.in_channels, splits.image_size, splits.image_size)
    if spec.sample_shape != image or splits.input_shape != image:  # not square images both: the whole shape must agree
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


def build_baseline(name: str, splits: DataSplits, weights: str | None = None, seed: int = 0) -> tuple[nn.Module, ModelSpec]:
    """The model to start from: loaded from ``weights`` (checked against the data), else freshly built (seeded)."""
    spec = model_for_data(name, splits)
    if weights:
        model, spec, _, _ = load_checkpoint(weights, spec)
        check_fits(spec, splits)
        return model, spec
    return spec.build(seed=seed), spec


def train_baseline(
    model: nn.Module, splits: DataSplits, epochs: int, lr: float = 1e-3, device: str | torch.device | None = None, seed: int = 0,
    teacher: Teacher | None = None, lr_schedule: str = "constant",
) -> TrainHistory:
    """Train with Adam (the seed's recipe); keep the best epoch on the validation split when there is one.

    The shuffling is seeded afresh for this step, so the step gives the same model however the run got here.
    With a ``teacher`` the loss also distils its outputs (the channel step's fine-tuning uses it).
    """
    train_loader, val_loader, _ = make_loaders(splits, splits.info.get("batch_size", 64), seed)
    return train(model, train_loader, epochs, val_loader, lr, device, seed, keep_best=val_loader is not None, teacher=teacher,
                 lr_schedule=lr_schedule, task=splits.task)


def scan_model(
    model: nn.Module, splits: DataSplits, split: str = "val", start: float = 0.0, step: float = 0.05, end: float = 1.0,
    method: str = "auto", device: str | torch.device | None = None,
) -> ScanResult:
    """The sensitivity scan on the validation split (the test set only when asked for by name), by the splits' task's metric.

    Under ``torchrun`` the layers are shared out across the processes, and the parts gathered on every process."""
    _, val_loader, test_loader = make_loaders(splits, splits.info.get("batch_size", 64))
    if split == "val" and val_loader is None:
        raise ValueError("scanning on the validation split needs --val-size > 0 (or scan on the test split)")
    loader = val_loader if split == "val" else test_loader
    names = list(prunable_parameters(model))
    # under torchrun each process scans every world_size-th layer; all of them then hold the whole, identical result
    mine = names[distributed.rank()::distributed.world_size()]
    part = None
    if mine:
        part = sensitivity_scan(model, loader, scan_step=step, scan_start=start, scan_end=end, layers=mine, method=method,
                                device=device, progress=distributed.is_main(),
                                recalibration=recalibration_batches(model, splits), task=splits.task)
    parts = [p for p in distributed.gather(part) if p is not None]
    accuracies = {name: acc for p in parts for name, acc in p.accuracies.items()}
    sizes = {name: n for p in parts for name, n in p.layer_sizes.items()}
    scan = replace(parts[0], accuracies={name: accuracies[name] for name in names},  # the model's order, whoever scanned
                   layer_sizes={name: sizes[name] for name in names if name in sizes}, meta=dict(parts[0].meta))
    naive = [name for p in parts for name in p.meta.get("naive_layers", [])]
    if naive:
        scan.meta["naive_layers"] = naive
    scan.meta.update(split=split, images=len(loader.dataset), processes=len(parts),
                     layers_per_process=[len(p.accuracies) for p in parts])
    return scan


def choose_sparsity(
    model: nn.Module, scan: ScanResult | None, sparsity: str | Mapping | None = None,
    target_sparsity: float | None = 0.8, max_drop: float | None = None, target_bytes: int | None = None,
    plan: str = "scan", budget: str = "params", input_shape: tuple[int, ...] | None = None,
    bytes_per_nonzero: Mapping[str, float] | None = None,
) -> tuple[dict, dict]:
    """The sparsity dict: the user's (``sparsity``), one global magnitude ranking (``plan="global"``),
    or the planner's from the scan in ``budget`` (see :func:`~edgeprune.analyze.plan.plan_by_budget`); returns
    (dict, plan info)."""
    if sparsity is not None:
        return load_layer_settings(sparsity), {"method": "given"}
    if plan == "global":
        chosen = global_magnitude_sparsity(prunable_parameters(model), target_sparsity)
        return chosen, {"method": "global magnitude", "target": target_sparsity}
    if scan is None:
        raise ValueError("no sparsity dict given and no scan to plan one from; give --sparsity or run a scan")
    target = target_sparsity if max_drop is None and target_bytes is None else None
    planned = make_plan(scan, model, target_sparsity=target, target_bytes=target_bytes, max_drop=max_drop, budget=budget,
                        input_shape=input_shape, bytes_per_nonzero=bytes_per_nonzero)
    return dict(planned.sparsity_dict), planned.to_dict()


def engine_unit_bytes(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, float]:
    """The sparse engine's flash bytes per non-zero weight of each prunable layer (``bytes_per_nonzero`` of a flash
    budget). The bytes depend on which weights are zero, not on the activations, so random images calibrate."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(8, *input_shape, generator=generator)
    return {name: cost["bytes"] for name, cost in unit_costs(copy.deepcopy(model).cpu(), images).items()}


def plan_for_device_target(
    model: nn.Module, scan: ScanResult, splits: DataSplits, out: str | Path, budget: str = "params",
    target_instructions: float | None = None, target_flash: str | int | None = None, target: str = "cortex-m4",
    images: int = DEVICE_CHECK_IMAGES,
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
                             *_test_images(splits, images), out, target_instructions, target_flash, target=target)
    info = dict(plans[device["planner_fraction"]])
    info["device"] = {key: value for key, value in device.items() if key not in ("mcu", "sparsity")}
    info["device"]["layers"] = device["mcu"]["layers"]
    return dict(device["sparsity"]), info


def check_device_target(device: Mapping, final: Mapping) -> dict:
    """The device target's record (``device`` from :func:`plan_for_device_target`'s plan info, without its layers) with
    the final model's measurement (``final``, its :func:`mcu_model` result): its instructions and flash bytes, and
    whether it still meets the target within 5 %."""
    value = final[device["quantity"]]
    return {**{key: v for key, v in device.items() if key != "layers"},
            "final": {"instructions": final["instructions"], "flash_bytes": final["flash_bytes"],
                      "met": (1 - DEVICE_TOLERANCE) * device["target"] <= value <= device["target"]}}


def prune_copy(model: nn.Module, sparsity: Mapping[str, object],
               recalibration: Iterable | None = None) -> tuple[nn.Module, FineGrainedPruner]:
    """A pruned copy of ``model`` (the original is untouched) and the pruner that holds its masks; with
    ``recalibration`` (training batches, :func:`recalibration_batches`) its BatchNorm statistics re-estimated."""
    if not sparsity:
        raise ValueError("the sparsity dict is empty, so it prunes no layer; name layers or use '_default' (e.g. {\"_default\": 0.5})")
    pruned = copy.deepcopy(model)
    pruner = FineGrainedPruner(pruned, sparsity)
    if not pruner.masks:
        raise ValueError("the sparsity dict prunes no layer; name at least one layer (or use '_default')")
    if recalibration is not None:
        recalibrate_batchnorm(pruned, recalibration)
    return pruned, pruner


def finetune_pruned(
    model: nn.Module, pruner: FineGrainedPruner, splits: DataSplits, epochs: int, lr: float = 1e-3,
    device: str | torch.device | None = None, seed: int = 0, lr_schedule: str = "constant", teacher: Teacher | None = None,
) -> TrainHistory:
    """Fine-tune with the masks kept; the best epoch on the validation split is kept (shuffling seeded afresh).
    With a ``teacher`` (e.g. ``Teacher(baseline)``) the loss also distils its outputs."""
    train_loader, val_loader, _ = make_loaders(splits, splits.info.get("batch_size", 64), seed)
    return finetune(model, pruner, train_loader, epochs, val_loader, lr, device, seed, lr_schedule, teacher, splits.task)


def prune_while_training(
    model: nn.Module, sparsity: Mapping[str, object] | float, splits: DataSplits, epochs: int, schedule: str = "agp",
    lr: float = 1e-3, device: str | torch.device | None = None, seed: int = 0, lr_schedule: str = "constant",
    teacher: Teacher | None = None,
) -> tuple[FineGrainedPruner, TrainHistory]:
    """Prune ``model`` gradually to ``sparsity`` (a dict per layer, or one fraction ranked globally) while training it
    ``epochs`` epochs (AGP or iterative rounds)."""
    train_loader, val_loader, _ = make_loaders(splits, splits.info.get("batch_size", 64), seed)
    return prune_gradually(model, train_loader, sparsity, epochs, schedule, val_loader, lr, device, seed,
                           lr_schedule=lr_schedule, teacher=teacher, task=splits.task)


def _training_batches(splits: DataSplits, count: int, seed: int) -> list:
    """The first ``count`` shuffled training batches."""
    return list(itertools.islice(make_loaders(splits, splits.info.get("batch_size", 64), seed)[0], count))


def taylor_batches(splits: DataSplits, seed: int = 0) -> list:
    """The first :data:`TAYLOR_BATCHES` shuffled training batches, whose gradients rank channels for ``importance="taylor"``."""
    return _training_batches(splits, TAYLOR_BATCHES, seed)


def recalibration_batches(model: nn.Module, splits: DataSplits, seed: int = 0) -> list | None:
    """The first :data:`BATCHNORM_BATCHES` shuffled training batches, on which ``model``'s BatchNorm statistics are
    re-estimated once it is pruned (the scan's pruned models and :func:`prune_copy`'s); None for a model without
    BatchNorm, which needs none."""
    return _training_batches(splits, BATCHNORM_BATCHES, seed) if batchnorm_layers(model) else None


def prune_channels_step(
    model: nn.Module, spec: ModelSpec, ratios: Mapping[str, object] | None = None, target_macs: float | None = None,
    importance: str = "l2", loader: Iterable | None = None, device: str | torch.device | None = None,
    target_latency: float | None = None, batches: Iterable | None = None,
) -> tuple[nn.Module, dict]:
    """A smaller dense copy of ``model`` with whole channels removed: by ``ratios``, or until the MACs are at most
    ``target_macs`` of the dense model's, or until its latency at batch 64 on ``device``, timed against the dense
    model here, is at most ``target_latency`` of the dense model's. With a validation ``loader`` a target is reached
    with the least predicted accuracy loss (a channel sensitivity scan, then the earliest plan of its greedy sequence
    that meets the target); without one, or when the scanned ratios cannot reach it, one ratio for every layer is
    bisected. ``batches`` (a few training batches) feed ``importance="taylor"``. Returns (model, info)."""
    if sum(x is not None for x in (ratios, target_macs, target_latency)) != 1:
        raise ValueError("give exactly one of channel ratios, a MACs target or a latency target")
    example = torch.zeros(1, *spec.sample_shape, device=next(model.parameters()).device)
    shape = spec.sample_shape
    dense_macs = count_macs(model, shape)["total"]
    measured: dict[int, float] = {}  # latency fraction of each candidate timed, by id
    if target_macs is not None:
        target, what = check_fraction(target_macs, "MACs"), "MACs"

        def meets(small: nn.Module) -> bool:
            return count_macs(small, shape)["total"] <= target_macs * dense_macs
    elif target_latency is not None:
        target, what = check_fraction(target_latency, "latency"), "latency"

        def meets(small: nn.Module) -> bool:
            # timed by rank 0 alone and shared: under torchrun every process must choose the same (same-shaped) model
            mine = latency_ratio(small, model, example, 64, device) if distributed.is_main() else None
            measured[id(small)] = distributed.gather(mine)[0]
            return measured[id(small)] <= target_latency

    scan_info = None
    if ratios is None and loader is not None:
        channel_scan = channel_sensitivity_scan(model, loader, example, importance=importance, device=device, batches=batches)
        scan_info = channel_scan.to_dict()
        found = prune_along_plans(model, channel_scan, meets, example, importance, batches)
        if found is not None:
            small, ratios = found
        else:
            warnings.warn(f"the scanned ratios do not reach the {what} target {target}; "
                          "removing one share of channels from every layer instead", stacklevel=2)
    if ratios is None:
        low, high, best = 0.0, 0.95, None
        for _ in range(12):
            middle = (low + high) / 2
            small = prune_channels(model, {"_default": middle}, example, importance, batches)
            if meets(small):
                best, high = (middle, small), middle
            else:
                low = middle
        if best is None:
            flag = "--target-macs" if what == "MACs" else "--target-latency"
            raise ValueError(f"removing 95 % of every layer's channels still leaves more than {target} of the {what}; raise {flag}")
        ratios, small = {"_default": round(best[0], 4)}, best[1]
    elif scan_info is None:
        small = prune_channels(model, ratios, example, importance, batches)
    macs = count_macs(small, shape)["total"]
    info = {"channel_ratios": dict(ratios), "channel_importance": importance, "macs_dense": dense_macs, "macs": macs,
            "macs_fraction": macs / dense_macs, "channels": channel_counts(small), "channel_scan": scan_info}
    if target_latency is not None:
        info["latency_fraction_b64"] = measured[id(small)]  # as timed when it was chosen
    return small, info


def channels_summary(info: Mapping | None) -> dict | None:
    """The channel step's info for results.json: the scan itself is replaced by whether one ran."""
    if info is None:
        return None
    return {**{k: v for k, v in info.items() if k != "channel_scan"}, "scanned": info.get("channel_scan") is not None}


def share_centroids(
    model: nn.Module, bits: int | Mapping[str, int], splits: DataSplits, epochs: int, seed: int = 0, lr: float = CENTROID_LR
) -> nn.Module:
    """Share ``model``'s weights by k-means (``bits`` per codebook) in place and fine-tune the centroids ``epochs`` epochs
    on the shuffled training split, seeded: the same weights from the run and from ``edgeprune export``. Returns it."""
    train_loader = make_loaders(splits, splits.info.get("batch_size", 64), seed)[0]
    torch.manual_seed(seed)
    share_weights(model, bits, train_loader, epochs, lr=lr)
    return model


def export_compressed(
    model: nn.Module, path: str | Path, values: str = "kmeans", bits: int | Mapping | None = None, spec: ModelSpec | None = None
) -> Path:
    """Write ``model`` as a compressed ``.epz`` file with ``spec`` in its header; see :func:`edgeprune.checkpoint.save_compressed_model`."""
    return save_compressed_model(path, model, spec, values, bits)


def export_for_devices(
    model: nn.Module, splits: DataSplits, onnx_path: str | Path | None = None, tflite_path: str | Path | None = None,
    calibration: int = CALIBRATION_IMAGES, softmax: bool = False, lut_bits: int | None = None,
    c_source: str | Path | None = None, latency_batches: Iterable[int] = (),
) -> dict:
    """Export ``model`` as ONNX (to ``onnx_path``) and/or fully int8 TFLite (to ``tflite_path``, calibrated on the first
    ``calibration`` training images), and score each file in its own runtime (onnxruntime, TensorFlow Lite Micro) on
    the test split by the splits' task (``onnx_accuracy`` / ``tflite_accuracy``, or ``onnx_mse`` / ``tflite_mse``);
    returns the row fields.

    The ONNX logits are also checked against PyTorch's (``onnx_equal``, ``onnx_max_abs_diff``, first 3 test batches),
    and timed against PyTorch at each of ``latency_batches`` (``onnx_latency``: batch size -> ms). ``softmax`` ends
    the int8 graph with a softmax, ``lut_bits`` stores k-means shared weights as TFLM look-up tables, and
    ``c_source`` (a folder) receives the .tflite as ``model_data.cc`` / ``model_data.h``.
    """
    if onnx_path is None and tflite_path is None:
        raise ValueError("give onnx_path, tflite_path or both: the files to export")
    cpu = copy.deepcopy(model).cpu().eval()
    loader = make_loaders(splits, splits.info.get("batch_size", 64))[2]
    metric = splits.task.metric
    images = calibration_images(splits.train, calibration)
    row: dict = {}
    if onnx_path is not None:
        onnx_path = export_onnx(cpu, onnx_path, images[:1])
        check = compare_onnx(cpu, onnx_path, loader)
        scored = evaluate_onnx(onnx_path, loader, splits.task)
        row.update(onnx_file=str(onnx_path), test_images=scored["count"], onnx_equal=check["equal"],
                   onnx_max_abs_diff=check["max_abs_diff"], **{f"onnx_{metric}": scored[metric]})
        if latency_batches:
            row["onnx_latency"] = {b: onnx_latency(cpu, onnx_path, images[:b])
                                   for b in latency_batches}
    if tflite_path is not None:
        tflite_path = export_tflite(cpu, tflite_path, images, softmax=softmax, lut_bits=lut_bits)
        tflm = evaluate_tflite(tflite_path, loader, task=splits.task)
        row.update(tflite_file=str(tflite_path), tflite_arena_bytes=tflm["arena_bytes"], tflite_bytes=tflm["model_bytes"],
                   test_images=tflm["count"], **{f"tflite_{metric}": tflm[metric]})
        if c_source is not None:
            row["c_source"] = [str(p) for p in write_c_source(tflite_path, c_source)]
    return row


def _refuse_unfit(name: str, target: str, flash: int, ram: int | None = None) -> None:
    """One line when a dense engine of ``flash`` bytes (weights and code; ``ram``: arena) cannot fit ``target``'s board."""
    board = board_memory(get_target(target))
    free_ram = board["ram"] - board["stack"]
    if flash > board["flash"] or (ram is not None and ram > free_ram):
        need = f"{flash:,} B of flash" if flash > board["flash"] else f"an arena of {ram:,} B"
        have = f"{board['flash']:,} B of flash" if flash > board["flash"] else f"{free_ram:,} B of RAM beside its stack"
        raise ValueError(f"model {name!r} needs {need} on the microcontroller (its dense int8 engine, as the run measures "
                         f"the baseline there), but the {target} board has {have}; pass --mcu none to skip the "
                         "microcontroller, or choose a smaller model")


def check_device_export(model: nn.Module, spec: ModelSpec, engine: bool = False, target: str | None = None) -> None:
    """Refuse, before any training, a model that the int8 TFLite export cannot convert (names the op and layer),
    and with ``engine`` one whose ``.tflite`` the C engine cannot run, or (with ``target``) whose dense engine cannot
    fit that board's flash and RAM: at once from the weights' count, then from the engine's own sizes."""
    if engine and target is not None:  # a lower bound first, before an export of millions of weights
        _refuse_unfit(spec.name, target, sum(p.numel() for p in prunable_parameters(model).values()))
    example = torch.randn(4, *spec.sample_shape)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            probe = export_tflite(copy.deepcopy(model).cpu().eval(), Path(tmp) / "probe.tflite", example)
        except ValueError as exc:
            raise ValueError(f"{str(exc).splitlines()[0]}; or pass --device-exports none and --mcu none to skip the ONNX, "
                             "TFLite and microcontroller steps") from None
        if engine:
            try:
                report = export_c(probe, Path(tmp) / "engine", sparse="never")
            except ValueError as exc:
                raise ValueError(f"{str(exc).splitlines()[0]}; or pass --mcu none to skip the microcontroller") from None
            if target is not None:
                totals = report["totals"]
                _refuse_unfit(spec.name, target, totals["weight_bytes"] + totals["index_bytes"], report["arena_bytes"])


def compare_models(
    models: list[tuple[str, nn.Module, Path]],
    loader: Iterable,
    device: torch.device | str | None = None,
    export_dir: Path | None = None,
    export_values: str = "fp32",
    export_bits: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    specs: list[ModelSpec] | None = None,
    task: Task = CLASSIFICATION,
) -> list[dict]:
    """One row per (label, model, checkpoint path): sizes, sparsity and the ``task``'s metric on the test set, under the
    metric's name (``accuracy``, ``decoded_accuracy``; ``mse``, ``decoded_mse``).

    With ``export_dir`` each model is also written as a compressed file there, read
    back, and evaluated as decoded: the accuracy a device running that file would see (with ``specs[i]``, one per
    model, in its header, so that the file loads without model flags).
    With ``input_shape`` (one image, e.g. ``(1, 28, 28)``) each row also gets its dense ``macs`` and
    measured ``latency_ms`` ({batch size: median ms} at batch 1 and 64, on ``device``; the models
    timed interleaved by ``time_models``, so their ratios compare like with like).
    """
    rows = []
    stems = [Path(path).stem for _, _, path in models]
    unique = len(set(stems)) == len(stems)
    if input_shape is not None:  # all models of the table timed interleaved, round-robin, masks detached
        timings = time_models([model for _, model, _ in models], torch.zeros(1, *input_shape), (1, 64), pick_device(device))
    for index, (label, model, path) in enumerate(tqdm(models, desc="compare", leave=False)):
        row = {"model": label, "checkpoint": str(path), **model_stats(model), "file_bytes": file_size(path)}
        row[task.metric] = evaluate(model, loader, device, task)
        if input_shape is not None:
            row["macs"] = count_macs(model, input_shape)["total"]
            row["latency_ms"] = timings[index]["latency_ms"]
            row["latency_threads"] = timings[index]["threads"]
        if export_dir is not None:
            name = stems[index] if unique else f"{index}-{stems[index]}"  # two runs' finetuned.* must not collide
            target = export_compressed(model, Path(export_dir) / f"{name}.epz", export_values, export_bits,
                                       specs[index] if specs else None)
            decoded = copy.deepcopy(model)
            decoded.load_state_dict(load_compressed(target))
            row.update(
                compressed_file=str(target),
                compressed_bytes=file_size(target),
                compressed_values=export_values,
                compressed_bits=export_bits,
                **{f"decoded_{task.metric}": evaluate(decoded, loader, device, task)},
            )
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- the CLI's subcommands: checkpoint in, files out


def accuracy_on_test(model: nn.Module, splits: DataSplits, device: str | torch.device | None = None) -> float:
    """The splits' task's metric on the test split: top-1 accuracy (percent), or the reconstruction MSE."""
    return evaluate(model, make_loaders(splits, splits.info.get("batch_size", 64))[2], device, splits.task)


def train_checkpoint(
    name: str, data: DataConfig, epochs: int, lr: float, device: str | None, seed: int, out: str | Path
) -> tuple[float, TrainHistory, Path]:
    """Train a seeded baseline ``name`` on ``data`` and save it to ``out``; return (test accuracy, history, path)."""
    out = writable_file(out)
    splits = load_splits(data)
    splits = replace(splits, task=resolve_task("auto", name, splits.labeled))  # an autoencoder learns to reconstruct
    model, spec = build_baseline(name, splits, seed=seed)
    history = train_baseline(model, splits, epochs, lr, device, seed)
    accuracy = accuracy_on_test(model, splits, device)
    if distributed.is_main():
        save_checkpoint(out, model, spec, info={"stage": "baseline", "test_accuracy": accuracy, "data": splits.info})
    return accuracy, history, out


def inspect_model(
    model: nn.Module, spec: ModelSpec, out: str | Path, bit_width: int = 32, nonzero_only: bool = False, show: bool = False
) -> dict:
    """Sizes, non-zeros, MACs and channels of ``model``, per layer and in total, written to ``out/inspect.json`` with
    the weight and parameter plots; returns the stats."""
    out = writable_folder(out)
    stats = {
        "model": asdict(spec), **model_stats(model, bit_width),
        "macs_dense": count_macs(model, spec.sample_shape),
        "layers": [s.to_dict() for s in layer_stats(model, bit_width)],
        "channels": channel_counts(model),
    }
    write_json_atomic(out / "inspect.json", stats)
    plot_weight_distribution(model, out / "weight_distribution.png", count_nonzero_only=nonzero_only, show=show)
    plot_num_parameters_distribution(model, out / "num_parameters.png", show=show)
    return stats


def scan_checkpoint(
    path: str | Path, spec: ModelSpec | None, data: DataConfig, split: str, start: float, step: float, end: float,
    method: str, device: str | None, out: str | Path, show: bool = False,
) -> ScanResult | None:
    """The sensitivity scan of a checkpoint, written to ``out/scan.json`` and ``sensitivity.png``; None on the
    processes of ``torchrun`` that do not write."""
    out = writable_folder(out)
    model, spec, _, _ = load_model(path, spec, device)
    splits = load_splits(data, spec)
    result = scan_model(model, splits, split, start, step, end, method, device)
    result.meta.update(data=splits.info)
    if not distributed.is_main():
        return None  # under torchrun the processes shared the scan out; one of them writes it
    result.to_json(out / "scan.json")
    result.plot(out / "sensitivity.png", show=show)
    return result


def plan_from_scan(
    scan_path: str | Path, checkpoint: str | Path | None, spec: ModelSpec | None, out: str | Path,
    target_sparsity: float | None = None, max_drop: float | None = None, target_bytes: int | None = None,
    plot: str | Path | None = None, device: str | None = None, budget: str = "params",
) -> dict:
    """A sparsity dict planned from a saved scan, written to ``out`` (its plan beside it as ``.plan.json``);
    ``budget`` is what ``target_sparsity`` counts (params, macs, flash: see :func:`~edgeprune.analyze.plan.plan_by_budget`)."""
    if budget != "params" and (target_sparsity is None or checkpoint is None):
        raise ValueError(f"--budget {budget} counts what --target-sparsity removes: give --target-sparsity and --checkpoint "
                         "(the scanned model)")
    out = writable_file(out)
    scan = ScanResult.from_json(scan_path)
    shape, units = None, None
    model = None
    if checkpoint:
        model, spec, _, _ = load_model(checkpoint, spec, device)
        shape = spec.sample_shape
        units = engine_unit_bytes(model, shape) if budget == "flash" else None
    sparsity, plan = choose_sparsity(model, scan, None, target_sparsity, max_drop, target_bytes, budget=budget,
                                     input_shape=shape, bytes_per_nonzero=units)
    write_json_atomic(out, sparsity)
    write_json_atomic(out.with_suffix(".plan.json"), plan)
    if plot:
        scan.plot(plot, chosen=sparsity)
    return sparsity


def prune_checkpoint(
    path: str | Path, spec: ModelSpec | None, data: DataConfig, out: str | Path, sparsity: str | Mapping | None = None,
    channel_ratios: str | Mapping | None = None, importance: str = "l2", device: str | None = None, seed: int = 0,
) -> dict:
    """Prune a checkpoint: whole channels first (``channel_ratios``, :func:`prune_channels_step`), then fine-grained
    (``sparsity``, its masks saved beside it); save it to ``out``. Returns the channel step's info (or None) as
    ``"channels"`` and the fine-grained masks' layers (or None) as ``"layers"``."""
    if sparsity is None and channel_ratios is None:
        raise ValueError("prune needs --sparsity (fine-grained), --channel-ratios (whole channels), or both")
    out = writable_file(out)
    model, spec, _, _ = load_model(path, spec, device)
    info: dict = {"stage": "pruned"}
    result: dict = {"path": out, "channels": None, "layers": None}
    if channel_ratios is not None:  # whole channels first: a smaller dense model
        batches = taylor_batches(load_splits(data, spec), seed) if importance == "taylor" else None
        model, result["channels"] = prune_channels_step(model, spec, load_layer_settings(channel_ratios),
                                                        importance=importance, batches=batches)
        info.update(channel_pruned=True, channel_ratios=result["channels"]["channel_ratios"], channel_importance=importance)
    if sparsity is None:
        save_checkpoint(out, model, spec, None, info)
        return result
    settings = load_layer_settings(sparsity)
    # only a model with BatchNorm needs the data here: its statistics are re-estimated once it is pruned
    recalibration = recalibration_batches(model, load_splits(data, spec), seed) if batchnorm_layers(model) else None
    pruned, pruner = prune_copy(model, settings, recalibration)
    if recalibration is not None:
        info["batchnorm_recalibrated_on"] = sum(len(labels) for _, labels in recalibration)
    save_checkpoint(out, pruned, spec, pruner.masks, {**info, "sparsity_dict": pruner.sparsity_dict})
    result["layers"] = [s.to_dict() for s in layer_stats(pruned) if s.name in pruner.masks]
    return result


def finetune_checkpoint(
    path: str | Path, spec: ModelSpec | None, data: DataConfig, epochs: int, lr: float, device: str | None, seed: int,
    out: str | Path,
) -> tuple[float, TrainHistory, Path]:
    """Fine-tune a pruned checkpoint with its masks kept and save it to ``out``; return (test accuracy, history, path).

    A channel-pruned checkpoint without masks is fine-tuned as the smaller dense model it is (and stays marked
    channel-pruned, so that it loads again); any other checkpoint without masks is refused.
    """
    out = writable_file(out)
    model, spec, masks, info = load_model(path, spec, device)
    channels = {"channel_pruned": True} if info.get("channel_pruned") is True else {}
    if masks is None and not channels:
        raise ValueError(f"{path} has no masks beside it; prune it first with 'edgeprune prune'")
    pruner = FineGrainedPruner.from_masks(masks or {})
    splits = load_splits(data, spec)
    history = finetune_pruned(model, pruner, splits, epochs, lr, device, seed)
    accuracy = accuracy_on_test(model, splits, device)
    if distributed.is_main():
        save_checkpoint(out, model, spec, pruner.masks, {"stage": "finetuned", "test_accuracy": accuracy, **channels})
    return accuracy, history, out


def compare_checkpoints(
    paths: list[str], labels: list[str] | None, spec: ModelSpec | None, data: DataConfig, device: str | None,
    out: str | Path, export_values: str | None = "fp32", export_bits: int | None = None,
) -> list[dict]:
    """The comparison table of checkpoints (:func:`compare_models`), written to ``out/comparison.md`` and ``.json``; each model
    also exported compressed (``export_values``, ``None`` to skip; ``export_bits`` by default what the mode needs, as in
    :class:`~edgeprune.config.RunConfig`) and scored decoded. Returns the rows."""
    out = writable_folder(out)
    labels = labels or [Path(p).stem for p in paths]
    if len(labels) != len(paths):
        raise ValueError(f"--labels names {len(labels)} models but {len(paths)} checkpoints were given")
    loaded = [load_model(path, spec, device) for path in paths]
    models = [(label, model, Path(path)) for label, (model, _, _, _), path in zip(labels, loaded, paths)]
    splits = load_splits(data, loaded[0][1])
    test_loader = make_loaders(splits, data.batch_size)[2]
    export_dir = None if export_values is None else out
    values = export_values or "fp32"
    rows = compare_models(models, test_loader, device, export_dir, values, parse_bits(export_bits, values),
                          specs=[spec for _, spec, _, _ in loaded], task=splits.task)
    write_text_atomic(out / "comparison.md", comparison_markdown(rows, splits.task))
    write_json_atomic(out / "comparison.json", rows)
    return rows


def export_checkpoint(
    path: str | Path, spec: ModelSpec | None, data: DataConfig, out: str | Path, fmt: str = "epz", values: str = "fp32",
    bits: int | Mapping | None = None, centroid_epochs: int = 0, centroid_lr: float = CENTROID_LR,
    calibration: int = CALIBRATION_IMAGES, softmax: bool = False, c_source: str | Path | None = None,
    device: str | None = None, seed: int = 0,
) -> dict:
    """Export a checkpoint to ``out``: a compressed ``.epz`` (``fmt="epz"``, after the seeded centroid step when
    ``centroid_epochs``), or an ONNX / int8 TFLite file scored in its own runtime (:func:`export_for_devices`).

    Returns ``{"path", "bytes", "checkpoint_bytes"}`` for ``.epz``; for a device format, the PyTorch test
    accuracy as ``"accuracy"``, :func:`export_for_devices`'s fields and, for TFLite, the boards it fits as ``"fits_on"``.
    """
    out = writable_file(out)
    if fmt not in ("epz", "onnx", "tflite"):
        raise ValueError(f"unknown export format {fmt!r}; use epz, onnx or tflite")
    model, spec, _, _ = load_model(path, spec, device)
    if fmt != "epz":
        if values != "fp32" or bits is not None or centroid_epochs:
            raise ValueError(f"--values, --bits and --centroid-epochs shape the compressed .epz file; drop them with --format {fmt}")
        splits = load_splits(data, spec)
        model = model.cpu().eval()
        row = {"task": splits.task.name, splits.task.metric: accuracy_on_test(model, splits, "cpu")}
        if fmt == "onnx":
            row.update(export_for_devices(model, splits, onnx_path=out, latency_batches=(1,)))
        else:
            folder = writable_folder(c_source, "--c-source") if c_source else None
            row.update(export_for_devices(model, splits, tflite_path=out, calibration=calibration, softmax=softmax,
                                          c_source=folder))
            row["fits_on"] = fits_on(row["tflite_bytes"], row["tflite_arena_bytes"])
        return row
    bits = parse_bits(bits, values)
    if centroid_epochs:
        if values != "kmeans":
            raise ValueError("--centroid-epochs fine-tunes k-means centroids: use it with --values kmeans")
        share_centroids(model, bits, load_splits(data, spec), centroid_epochs, seed, centroid_lr)
    export_compressed(model, out, values, bits, spec)
    return {"path": out, "bytes": file_size(out), "checkpoint_bytes": file_size(path)}


# --------------------------------------------------------------------------- the microcontroller: the C engine in QEMU


def _int8_tflite(model: nn.Module, splits: DataSplits, path: Path) -> Path:
    """``model`` as a fully int8 ``.tflite`` at ``path``, calibrated as :func:`export_for_devices` calibrates."""
    return export_tflite(copy.deepcopy(model).cpu().eval(), path, calibration_images(splits.train, CALIBRATION_IMAGES))


def _engine_source(source: str | Path, spec: ModelSpec | None, data: DataConfig, folder: Path,
                   device: str | None) -> tuple[Path, ModelSpec | None, DataSplits | None]:
    """The int8 ``.tflite`` behind ``source`` (a ``.tflite`` as it is, needing no data; or a checkpoint exported into
    ``folder``, calibrated on its data), the checkpoint's spec and data splits (both None for a ``.tflite``)."""
    source = Path(source)
    if source.suffix == ".tflite":
        if not source.is_file():
            raise ValueError(f"{source}: no such file; give a fully int8 .tflite (edgeprune export CKPT --format tflite)")
        return source, None, None
    model, spec, _, _ = load_model(source, spec, device)
    splits = load_splits(data, spec)
    return _int8_tflite(model, splits, folder / "model.tflite"), spec, splits


def check_weight_budget(weight_budget: str | int | None, sparse: str) -> int | None:
    """A weight budget (``"15KB"``, ``15000``) in bytes, checked with the kernel choice it needs; one-line ValueError otherwise."""
    if weight_budget is None:
        return None
    if sparse != "auto":
        raise ValueError(f"--weight-budget chooses each layer's kernel itself: use it with --sparse auto, not {sparse}")
    try:
        return parse_bytes(weight_budget)
    except ValueError as exc:
        raise ValueError(str(exc).replace("a flash size", "a weight budget")) from None


def c_engine_checkpoint(source: str | Path, spec: ModelSpec | None, data: DataConfig, out: str | Path,
                        sparse: str = "auto", device: str | None = None, weight_budget: str | int | None = None) -> dict:
    """Write the C engine of a checkpoint or an int8 ``.tflite`` into the folder ``out``; return ``layers.json``.

    A checkpoint is first exported to ``out/model.tflite`` (calibrated on the training images); the
    ``.tflite`` is the single source of the engine's quantization (see :func:`edgeprune.mcu.export_c`).
    ``weight_budget`` caps the bytes of weights and index (see :func:`edgeprune.mcu.lowering.lower`).
    """
    budget = check_weight_budget(weight_budget, sparse)
    folder = writable_folder(out, "--out")
    tflite, _, _ = _engine_source(source, spec, data, folder, device)
    return {**export_c(tflite, folder, sparse, budget), "tflite": str(tflite)}


def _test_images(splits: DataSplits, count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` test samples and their labels: the whole test split when it is no larger, else a seeded random subset,
    stratified by class when there are labels (each class its share, largest remainders first), in test-set order.
    A folder of images sorted by class would otherwise give the first classes only."""
    total = len(splits.test)
    if min(count, total) < 1:
        raise ValueError("no test samples to run on the microcontroller: the test split is empty")
    chosen = list(range(total)) if count >= total else sample_indices(_labels_of(splits.test), count, seed)
    images, labels = zip(*(splits.test[i] for i in chosen))
    return torch.stack(images), torch.tensor(labels)


def _labels_of(dataset) -> list[int]:
    """Every label of ``dataset`` (one pass; -1 for unlabelled samples)."""
    return [int(label) for _, label in (dataset[i] for i in range(len(dataset)))]


def sample_indices(labels: list[int], count: int, seed: int = 0) -> list[int]:
    """``count`` of the indices of ``labels``, seeded, sorted: stratified by class (each class ``count * its share``,
    rounded by largest remainder), or uniformly when the samples carry no labels (all -1)."""
    generator = torch.Generator().manual_seed(seed)
    classes = sorted(set(labels))
    if classes == [-1]:
        return sorted(torch.randperm(len(labels), generator=generator)[:count].tolist())
    members = {c: [i for i, label in enumerate(labels) if label == c] for c in classes}
    exact = {c: count * len(members[c]) / len(labels) for c in classes}
    quota = {c: int(exact[c]) for c in classes}
    for c in sorted(classes, key=lambda c: (quota[c] - exact[c], c))[:count - sum(quota.values())]:
        quota[c] += 1
    chosen = []
    for c in classes:
        order = torch.randperm(len(members[c]), generator=generator)[:quota[c]].tolist()
        chosen += [members[c][i] for i in order]
    return sorted(chosen)


def mcu_model(model: nn.Module, splits: DataSplits, folder: str | Path, target: str = "cortex-m4",
              images: int = MCU_IMAGES, sparse: str = "auto", seed: int = 0) -> dict:
    """Run ``model`` on the microcontroller: int8 ``.tflite``, the C engine, built for ``target`` and run in QEMU on
    ``images`` test samples (a seeded subset stratified by class: :func:`_test_images`), every output compared with
    TFLM's; ``folder/mcu.json`` holds the results, with the splits' task's metric of the engine's outputs."""
    folder = writable_folder(folder, f"mcu folder {folder}")
    tflite = _int8_tflite(model, splits, folder / "model.tflite")
    return _measure_test_samples(tflite, splits, folder, target, images, sparse, None, seed)


def _measure_test_samples(tflite: Path, splits: DataSplits, folder: Path, target: str, images: int, sparse: str,
                          weight_budget: int | None, seed: int) -> dict:
    """:func:`measure_on_mcu` on ``images`` test samples (:func:`_test_images`), scored by the splits' task: accuracy
    for a classifier; for a reconstruction, the MSE of the engine's outputs (dequantized as TFLM's would be) against
    the inputs. ``mcu.json`` records the metric and how the samples were drawn."""
    samples, labels = _test_images(splits, images, seed)
    classifier = splits.task is CLASSIFICATION
    result = measure_on_mcu(tflite, samples, labels if classifier else None, folder, target, sparse,
                            weight_budget=weight_budget)
    if not classifier:
        outputs = torch.from_numpy(engine_outputs(folder, tflite))
        result[splits.task.metric] = splits.task.finish(*splits.task.batch_total(outputs, samples, labels))
    result["sample"] = ("all test samples" if images >= len(splits.test) else
                        f"{len(samples)} of {len(splits.test)} test samples, seeded ({seed}), "
                        + ("stratified by class" if splits.labeled else "uniformly"))
    write_json_atomic(folder / "mcu.json", result)
    return result


def mcu_checkpoint(source: str | Path, spec: ModelSpec | None, data: DataConfig, out: str | Path,
                   target: str = "cortex-m4", images: int = MCU_IMAGES, sparse: str = "auto",
                   device: str | None = None, weight_budget: str | int | None = None,
                   inputs: str | Path | None = None, labels: str | Path | None = None, seed: int = 0) -> dict:
    """:func:`mcu_model` for a checkpoint (its first ``images`` test samples), or an int8 ``.tflite`` as it is: with
    ``inputs`` (a ``.npy`` in the model's input dtype and shape, ``labels`` optional) those, else ``images`` seeded
    random inputs (no accuracy; ``seed``). ``weight_budget`` caps the engine's bytes of weights and index."""
    budget = check_weight_budget(weight_budget, sparse)
    is_tflite = Path(source).suffix == ".tflite"
    if not is_tflite and (inputs is not None or labels is not None):
        raise ValueError("--inputs and --labels give a .tflite its inputs; a checkpoint runs its test set: drop them, "
                         "or give the .tflite")
    if labels is not None and inputs is None:
        raise ValueError("--labels needs --inputs: give the inputs they label")
    folder = writable_folder(out, "--out")
    tflite, _, splits = _engine_source(source, spec, data, folder, device)
    if splits is not None:
        return _measure_test_samples(tflite, splits, folder, target, images, sparse, budget, seed)
    if inputs is not None:
        x, y = load_inputs(tflite, inputs, labels)
    else:
        x, y = random_inputs(tflite, images, seed), None
    return measure_tflite(tflite, x, y, folder, target, sparse, weight_budget=budget)
