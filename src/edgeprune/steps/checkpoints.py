"""The CLI's subcommands: each reads a checkpoint, runs a step, writes its files and returns what the CLI prints."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Mapping

from torch import nn

from .. import distributed
from ..analyze.metrics import count_macs, file_size, layer_stats, model_stats
from ..analyze.plots import plot_num_parameters_distribution, plot_weight_distribution
from ..analyze.scan import ScanResult
from ..checkpoint import save_checkpoint
from ..config import check_export_bits, parse_bits
from ..data import DataConfig, make_loaders
from ..export.bit_choice import AUTO
from ..export.c_source import fits_on
from ..files import writable_folder, write_json_atomic, write_text_atomic
from ..models import ModelSpec
from ..prune.channels import channel_counts
from ..prune.pruner import FineGrainedPruner
from ..prune.settings import load_layer_settings
from ..report import comparison_markdown
from ..task import CLASSIFICATION, resolve_task
from ..training import TrainHistory, batchnorm_layers, evaluate
from .common import CALIBRATION_IMAGES, CENTROID_LR, accuracy_on_test, load_model, load_splits, writable_file
from .pruning import (
    build_baseline, choose_sparsity, finetune_pruned, prune_channels_step, prune_copy, recalibration_batches,
    scan_model, taylor_batches, train_baseline,
)
from .device_target import engine_unit_bytes
from .exports import compare_models, export_bits_for, export_compressed, export_for_devices, share_centroids

__all__ = [
    "compare_checkpoints", "export_checkpoint", "finetune_checkpoint", "inspect_model", "plan_from_scan",
    "prune_checkpoint", "scan_checkpoint", "train_checkpoint",
]


def train_checkpoint(
    name: str, data: DataConfig, epochs: int, lr: float, device: str | None, seed: int, out: str | Path,
    width: float | None = None,
) -> tuple[float, TrainHistory, Path]:
    """Train a seeded baseline ``name`` (of ``width``, where it has one) on ``data`` and save it to ``out``; return
    (the test metric, history, path)."""
    out = writable_file(out)
    splits = load_splits(data)
    splits = replace(splits, task=resolve_task("auto", name, splits.labeled))  # an autoencoder learns to reconstruct
    model, spec = build_baseline(name, splits, seed=seed, width=width)
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
    out: str | Path, export_values: str | None = "fp32", export_bits: int | str | None = None,
    tolerance: float | None = None,
) -> list[dict]:
    """The comparison table of checkpoints (:func:`compare_models`), written to ``out/comparison.md`` and ``.json``; each model
    also exported compressed (``export_values``, ``None`` to skip; ``export_bits`` by default what the mode needs, as in
    :class:`~edgeprune.config.RunConfig`: ``auto`` for k-means, each row's own within ``tolerance`` on the validation
    split) and scored decoded. Returns the rows."""
    out = writable_folder(out)
    labels = labels or [Path(p).stem for p in paths]
    if len(labels) != len(paths):
        raise ValueError(f"--labels names {len(labels)} models but {len(paths)} checkpoints were given")
    loaded = [load_model(path, spec, device) for path in paths]
    models = [(label, model, Path(path)) for label, (model, _, _, _), path in zip(labels, loaded, paths)]
    splits = load_splits(data, loaded[0][1])
    _, val_loader, test_loader = make_loaders(splits, data.batch_size)
    export_dir = None if export_values is None else out
    values = export_values or "fp32"
    bits = parse_bits(export_bits, values)
    check_export_bits(values, bits)
    rows = compare_models(models, test_loader, device, export_dir, values, bits, specs=[spec for _, spec, _, _ in loaded],
                          task=splits.task, val_loader=val_loader, tolerance=tolerance)
    write_text_atomic(out / "comparison.md", comparison_markdown(rows, splits.task))
    write_json_atomic(out / "comparison.json", rows)
    return rows


def export_checkpoint(
    path: str | Path, spec: ModelSpec | None, data: DataConfig, out: str | Path, fmt: str = "epz", values: str = "fp32",
    bits: int | Mapping | None = None, centroid_epochs: int = 0, centroid_lr: float = CENTROID_LR,
    calibration: int = CALIBRATION_IMAGES, softmax: bool = False, c_source: str | Path | None = None,
    device: str | None = None, seed: int = 0, tolerance: float | None = None,
) -> dict:
    """Export a checkpoint to ``out``: a compressed ``.epz`` (``fmt="epz"``, after the seeded centroid step when
    ``centroid_epochs``), or an ONNX / int8 TFLite file scored in its own runtime (:func:`export_for_devices`).

    The ``.epz``'s bits are :func:`export_bits_for`'s, on the data's validation split: ``bits="auto"`` (the default for
    k-means) the fewest per layer within ``tolerance`` of the checkpoint's own metric there (with the centroid step,
    chosen before it, and the shared model's file checked against the checkpoint's metric). Given bits need no data,
    as before; with the centroid step (which loads it) their file is checked too.

    Returns ``{"path", "bytes", "checkpoint_bytes", "bits", "check"}`` for ``.epz`` (``check``: what the file loses on
    the validation split, None without one); for a device format, the PyTorch test
    accuracy as ``"accuracy"``, :func:`export_for_devices`'s fields and, for TFLite, the boards it fits as ``"fits_on"``.
    """
    out = writable_file(out)
    if fmt not in ("epz", "onnx", "tflite"):
        raise ValueError(f"unknown export format {fmt!r}; use epz, onnx or tflite")
    model, spec, _, _ = load_model(path, spec, device)
    if fmt != "epz":
        if values != "fp32" or bits is not None or centroid_epochs or tolerance is not None:
            raise ValueError(f"--values, --bits, --tolerance and --centroid-epochs shape the compressed .epz file; drop them "
                             f"with --format {fmt}")
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
    check_export_bits(values, bits)
    if centroid_epochs and values != "kmeans":
        raise ValueError("--centroid-epochs fine-tunes k-means centroids: use it with --values kmeans")
    splits = load_splits(data, spec) if centroid_epochs or bits == AUTO else None  # given bits need no data
    val_loader = None if splits is None else make_loaders(splits, data.batch_size)[1]
    task = CLASSIFICATION if splits is None else splits.task
    reference = None
    if centroid_epochs:  # the bits chosen on the checkpoint, its file checked against the checkpoint's own metric
        reference = None if val_loader is None else evaluate(model, val_loader, device, task)
        bits = export_bits_for(model, values, bits, val_loader, device, task, tolerance)[0]
        share_centroids(model, bits, splits, centroid_epochs, seed, centroid_lr)
    bits, check = export_bits_for(model, values, bits, val_loader, device, task, tolerance, reference)
    export_compressed(model, out, values, bits, spec)
    return {"path": out, "bytes": file_size(out), "checkpoint_bytes": file_size(path), "bits": bits,
            "check": None if check is None else check.to_dict(), "task": None if task is None else task.name}
