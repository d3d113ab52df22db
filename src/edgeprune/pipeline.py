"""The pipeline: each step of the experiment once, as a function, and the one-command run over them.

The CLI subcommands, :func:`run_experiment` and the benchmarks all call these same steps:
:func:`fit_data_to_model`, :func:`build_baseline`, :func:`train_baseline`, :func:`scan_model`,
:func:`choose_sparsity`, :func:`prune_copy`, :func:`finetune_pruned`, :func:`export_compressed`
and :func:`compare_models`. :class:`RunConfig` checks a whole run before any work starts.
"""

from __future__ import annotations

import contextlib
import itertools
import copy
import math
import numbers
import tempfile
import time
import warnings
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .analyze.channel_scan import ChannelScanResult, channel_sensitivity_scan, check_fraction, prune_along_plans
from .analyze.latency import latency_ratio, measure_latency
from .analyze.metrics import count_macs, file_size, layer_stats, model_stats
from .analyze.plan import make_plan
from .analyze.plots import plot_num_parameters_distribution, plot_weight_distribution
from .analyze.scan import METHODS, ScanResult, scan_sparsities, sensitivity_scan
from .checkpoint import load_checkpoint, model_header, save_checkpoint
from .data import DataConfig, DataSplits, load_data, make_loaders, native_geometry
from .device import pick_device
from .export.centroids import share_weights
from .export.c_source import fits_on, write_c_source
from .export.epz import load_compressed, save_compressed
from .export.onnx import evaluate_onnx, export_onnx
from .export.tflite import calibration_images, export_tflite
from .export.tflm import evaluate_tflite
from .export.quantize import MODES, QuantConfig
from .files import write_json_atomic, write_text_atomic
from .models import ModelSpec, prunable_parameters
from .prune.masks import check_sparsity
from .prune.channels import channel_counts, prune_channels
from .prune.importance import CRITERIA
from .prune.global_magnitude import global_magnitude_sparsity
from .prune.pruner import FineGrainedPruner
from .prune.schedule import SCHEDULES
from .prune.settings import load_layer_settings, resolve_sparsity_dict
from .report import run_report
from .runfolder import RunFolder
from .training import LR_SCHEDULES, Teacher, TrainHistory, evaluate, finetune, prune_gradually, train

__all__ = [
    "RunConfig",
    "build_baseline",
    "check_fits",
    "choose_sparsity",
    "compare_models",
    "default_bits",
    "export_compressed",
    "export_for_devices",
    "finetune_pruned",
    "fit_data_to_model",
    "model_for_data",
    "prune_copy",
    "prune_channels_step",
    "prune_while_training",
    "run_experiment",
    "scan_model",
    "train_baseline",
]

STEPS = ("baseline", "channels", "scan", "prune", "finetune", "shared")
PLANS = ("scan", "global")
DEVICE_EXPORTS = ("final", "all", "none")
"""The steps of a run whose outputs are kept on disk, in order; a resumed run skips those done."""


def is_torchvision(model: str) -> bool:
    """Whether ``model`` names a torchvision classifier (not the built-in CNN, not a user's ``module:factory``)."""
    return model.lower() != "basiccnn" and ":" not in model


def fit_data_to_model(model: str, data: DataConfig) -> DataConfig:
    """The data config a model needs: torchvision classifiers get 3 channels and at least 32 pixels.

    Grey images are repeated to 3 channels and images smaller than 32 pixels are resized to 32
    (VGG's five poolings need it), unless ``channels`` or ``image_size`` were given.
    """
    native = native_geometry(data.name)
    if not is_torchvision(model) or native is None:
        return data
    channels = data.channels if data.channels is not None else (3 if native[0] == 1 else None)
    size = data.image_size if data.image_size is not None else (32 if native[1] < 32 else None)
    return replace(data, channels=channels, image_size=size)


def default_bits(values: str) -> int | None:
    """The bit width a value mode needs when none is given: 4 for k-means, 8 for int8, none for floats."""
    return {"kmeans": 4, "int8": 8}.get(values)


def _check_int(value: object, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{name} must be a whole number {bound}, got {value!r}")
    return int(value)


def _check_positive(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


MAX_SEED = 2**63 - 1


@dataclass
class RunConfig:
    """Everything ``edgeprune run`` needs, checked as a whole on construction; saved beside the report as ``config.json``.

    ``epochs=None`` means 5, or 0 when ``weights`` gives a trained baseline. ``export_bits=None``
    means what ``export_values`` needs (:func:`default_bits`). ``sparsity`` (inline JSON, a file or a
    dict) is read and its values checked here; its names are checked against the model before training.
    """

    model: str = "basiccnn"
    data: DataConfig = field(default_factory=DataConfig)
    weights: str | None = None  # a baseline checkpoint to start from instead of training
    epochs: int | None = None
    finetune_epochs: int = 3
    lr: float = 1e-3
    lr_schedule: str = "constant"  # of fine-tuning: "constant", "cosine" or "step"
    distill: float = 0.0  # fine-tuning also distils the dense baseline's outputs with this weight (0: off)
    channels: str | dict | None = None  # channel ratios by module name (re:, _default): a smaller dense model first
    target_macs: float | None = None  # or: remove channels until MACs are at most this fraction of the dense model's
    target_latency: float | None = None  # or: until the measured batch-64 latency is at most this fraction of the dense
    channel_importance: str = "l2"
    sparsity: str | dict | None = None  # a sparsity dict; None: the planner chooses one
    plan: str = "scan"  # how the planner chooses: "scan" (from the sensitivity scan) or "global" (one magnitude ranking)
    target_sparsity: float = 0.8  # the planner's budget: fraction of prunable weights removed
    schedule: str = "oneshot"  # "oneshot" (prune, then fine-tune), "agp" (cubic ramp while training), "iterative"
    max_drop: float | None = None  # plan by tolerance instead: largest sparsity within this accuracy drop
    scan_split: str = "val"  # "val" (held out of train) or "test" (the seed's choice, only when asked)
    scan_start: float = 0.0
    scan_step: float = 0.05
    scan_end: float = 1.0
    scan_method: str = "auto"
    export_values: str = "kmeans"
    export_bits: int | None = None
    centroid_epochs: int = 0  # with kmeans export: epochs of Deep Compression's centroid fine-tuning
    device_exports: str = "final"  # ONNX + int8 TFLite, verified in onnxruntime and TFLM: "final" model, "all", "none"
    out: str = "runs/latest"
    device: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.data, Mapping):
            self.data = DataConfig(**self.data)
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be a name such as 'basiccnn' or 'resnet18', got {self.model!r}")
        self.data = fit_data_to_model(self.model, self.data)
        if self.epochs is None:
            self.epochs = 0 if self.weights else 5
        self.epochs = _check_int(self.epochs, "epochs", 0, 10_000)
        self.finetune_epochs = _check_int(self.finetune_epochs, "finetune_epochs", 0, 10_000)
        self.centroid_epochs = _check_int(self.centroid_epochs, "centroid_epochs", 0, 10_000)
        self.seed = _check_int(self.seed, "seed", 0, MAX_SEED)
        self.lr = _check_positive(self.lr, "lr")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; use one of {', '.join(LR_SCHEDULES)}")
        if isinstance(self.distill, bool) or not isinstance(self.distill, numbers.Real) or not 0.0 <= self.distill <= 1.0:
            raise ValueError(f"distill must be a weight from 0 (off) to 1, got {self.distill!r}; e.g. 0.5")
        if self.epochs == 0 and not self.weights:
            raise ValueError("epochs=0 needs weights: a trained baseline to start from (--weights FILE)")
        if self.weights is not None and not Path(self.weights).is_file():
            raise ValueError(f"weights {self.weights!r}: no such file; give a checkpoint written by 'edgeprune train' or a .pth state_dict")
        if self.sparsity is not None:
            self.sparsity = load_layer_settings(self.sparsity)
            for key, value in self.sparsity.items():
                check_sparsity(value, key)
            if not self.sparsity:
                raise ValueError("the sparsity dict is empty: name layers (e.g. {\"_default\": 0.5}) or leave it out to plan one")
        check_sparsity(self.target_sparsity, "target_sparsity")
        if sum(x is not None for x in (self.channels, self.target_macs, self.target_latency)) > 1:
            raise ValueError("give one of channel ratios (--channel-ratios), a MACs target (--target-macs) "
                             "or a latency target (--target-latency), not several")
        if self.channels is not None:
            self.channels = load_layer_settings(self.channels)
            for key, value in self.channels.items():
                check_sparsity(value, f"channel ratio {key}")
        for name, what in (("target_macs", "MACs"), ("target_latency", "latency")):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < value <= 1.0):
                raise ValueError(f"{name} must be a fraction of the dense {what} in (0, 1], got {value!r}; e.g. 0.5")
        if self.channel_importance not in CRITERIA:
            raise ValueError(f"unknown channel importance {self.channel_importance!r}; use one of {', '.join(CRITERIA)}")
        if self.plan not in PLANS:
            raise ValueError(f"unknown plan {self.plan!r}; use one of {', '.join(PLANS)}")
        if self.plan == "global" and self.max_drop is not None:
            raise ValueError("max_drop plans from the scan: use it with plan='scan', or give target_sparsity with plan='global'")
        if self.schedule not in ("oneshot", *SCHEDULES):
            raise ValueError(f"unknown schedule {self.schedule!r}; use one of oneshot, {', '.join(SCHEDULES)}")
        if self.schedule != "oneshot" and self.finetune_epochs < 1:
            raise ValueError(f"schedule {self.schedule!r} prunes while it trains: give finetune_epochs of at least 1")
        if self.max_drop is not None and (isinstance(self.max_drop, bool) or not isinstance(self.max_drop, numbers.Real)
                                          or not math.isfinite(self.max_drop) or self.max_drop < 0):
            raise ValueError(f"max_drop must be a non-negative number of accuracy points, got {self.max_drop!r}")
        if self.scan_split not in ("val", "test"):
            raise ValueError(f"scan_split must be 'val' or 'test', got {self.scan_split!r}")
        if self.scan_split == "val" and self.data.val_size == 0:
            raise ValueError("scanning on the validation split needs --val-size > 0 (or --scan-on test)")
        if self.scan_method not in METHODS:
            raise ValueError(f"unknown scan method {self.scan_method!r}; use one of {', '.join(METHODS)}")
        if self.sparsity is None and self.plan == "scan":
            scan_sparsities(self.scan_start, self.scan_end, self.scan_step)
        if self.export_values not in MODES:
            raise ValueError(f"unknown export values {self.export_values!r}; use one of {', '.join(MODES)}")
        if self.export_bits is None:
            self.export_bits = default_bits(self.export_values)
        QuantConfig(self.export_values, self.export_bits)  # a mode with bits it cannot use is an error now, not after training
        if self.device_exports not in DEVICE_EXPORTS:
            raise ValueError(f"unknown device_exports {self.device_exports!r}; use one of {', '.join(DEVICE_EXPORTS)}")
        if self.centroid_epochs and self.export_values != "kmeans":
            raise ValueError("centroid_epochs fine-tunes k-means centroids: use it with export_values='kmeans'")
        pick_device(self.device)

    def to_dict(self) -> dict:
        """The resolved config as plain JSON data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> "RunConfig":
        """A config from :meth:`to_dict` output (such as a saved ``config.json``)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown run config keys {unknown}; valid keys: {', '.join(sorted(known))}")
        return cls(**data)


# --------------------------------------------------------------------------- the steps


def model_for_data(name: str, splits: DataSplits) -> ModelSpec:
    """The spec of model ``name`` fitted to the data's channels, image size and classes."""
    return ModelSpec(name, splits.in_channels, splits.num_classes, splits.image_size)


def check_fits(spec: ModelSpec, splits: DataSplits) -> None:
    """Raise ``ValueError`` naming the flags when a built-in model does not fit the data's images or classes."""
    if ":" in spec.name:
        return  # the user's own model: its input is its own business
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
                 lr_schedule=lr_schedule)


def scan_model(
    model: nn.Module, splits: DataSplits, split: str = "val", start: float = 0.0, step: float = 0.05, end: float = 1.0,
    method: str = "auto", device: str | torch.device | None = None,
) -> ScanResult:
    """The sensitivity scan on the validation split (the test set only when asked for by name).

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
                                device=device, progress=distributed.is_main())
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
    plan: str = "scan",
) -> tuple[dict, dict]:
    """The sparsity dict: the user's (``sparsity``), one global magnitude ranking (``plan="global"``),
    or the planner's from the scan; returns (dict, plan info)."""
    if sparsity is not None:
        return load_layer_settings(sparsity), {"method": "given"}
    if plan == "global":
        chosen = global_magnitude_sparsity(prunable_parameters(model), target_sparsity)
        return chosen, {"method": "global magnitude", "target": target_sparsity}
    if scan is None:
        raise ValueError("no sparsity dict given and no scan to plan one from; give --sparsity or run a scan")
    target = target_sparsity if max_drop is None and target_bytes is None else None
    planned = make_plan(scan, model, target_sparsity=target, target_bytes=target_bytes, max_drop=max_drop)
    return dict(planned.sparsity_dict), planned.to_dict()


def prune_copy(model: nn.Module, sparsity: Mapping[str, object]) -> tuple[nn.Module, FineGrainedPruner]:
    """A pruned copy of ``model`` (the original is untouched) and the pruner that holds its masks."""
    if not sparsity:
        raise ValueError("the sparsity dict is empty, so it prunes no layer; name layers or use '_default' (e.g. {\"_default\": 0.5})")
    pruned = copy.deepcopy(model)
    pruner = FineGrainedPruner(pruned, sparsity)
    if not pruner.masks:
        raise ValueError("the sparsity dict prunes no layer; name at least one layer (or use '_default')")
    return pruned, pruner


def finetune_pruned(
    model: nn.Module, pruner: FineGrainedPruner, splits: DataSplits, epochs: int, lr: float = 1e-3,
    device: str | torch.device | None = None, seed: int = 0, lr_schedule: str = "constant", teacher: Teacher | None = None,
) -> TrainHistory:
    """Fine-tune with the masks kept; the best epoch on the validation split is kept (shuffling seeded afresh).
    With a ``teacher`` (e.g. ``Teacher(baseline)``) the loss also distils its outputs."""
    train_loader, val_loader, _ = make_loaders(splits, splits.info.get("batch_size", 64), seed)
    return finetune(model, pruner, train_loader, epochs, val_loader, lr, device, seed, lr_schedule, teacher)


def prune_while_training(
    model: nn.Module, sparsity: Mapping[str, object] | float, splits: DataSplits, epochs: int, schedule: str = "agp",
    lr: float = 1e-3, device: str | torch.device | None = None, seed: int = 0, lr_schedule: str = "constant",
    teacher: Teacher | None = None,
) -> tuple[FineGrainedPruner, TrainHistory]:
    """Prune ``model`` gradually to ``sparsity`` (a dict per layer, or one fraction ranked globally) while training it
    ``epochs`` epochs (AGP or iterative rounds)."""
    train_loader, val_loader, _ = make_loaders(splits, splits.info.get("batch_size", 64), seed)
    return prune_gradually(model, train_loader, sparsity, epochs, schedule, val_loader, lr, device, seed,
                           lr_schedule=lr_schedule, teacher=teacher)


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
    example = torch.zeros(1, spec.in_channels, spec.image_size, spec.image_size, device=next(model.parameters()).device)
    shape = (spec.in_channels, spec.image_size, spec.image_size)
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


def export_compressed(
    model: nn.Module, path: str | Path, values: str = "kmeans", bits: int | Mapping | None = None, spec: ModelSpec | None = None
) -> Path:
    """Write ``model`` as a compressed ``.epz`` file (sparse, quantized, entropy-coded); return the path.

    With ``spec`` the file's header carries it (and whether channels were pruned), so that ``load_checkpoint`` and
    every CLI command load the file without model flags, a channel-pruned model included."""
    header = model_header(model, spec, {"stage": "export"}) if spec is not None else None
    save_compressed(model.state_dict(), path, values=values, bits=bits, header=header)
    return Path(path)


def export_for_devices(
    model: nn.Module, stem: Path, splits: DataSplits, loader: Iterable, c_source: bool = False
) -> dict:
    """Export ``model`` as ``<stem>.onnx`` and fully int8 ``<stem>.tflite`` (calibrated on 500 training images), and
    score each in its own runtime (onnxruntime, TensorFlow Lite Micro) on ``loader``; returns the row fields.

    With ``c_source`` the .tflite is also written as ``model_data.cc`` / ``model_data.h`` beside it.
    """
    cpu = copy.deepcopy(model).cpu().eval()
    example = next(iter(loader))[0][:1].cpu()
    onnx_path = export_onnx(cpu, stem.with_suffix(".onnx"), example)
    tflite_path = export_tflite(cpu, stem.with_suffix(".tflite"), calibration_images(splits.train, 500))
    tflm = evaluate_tflite(tflite_path, loader)
    row = {
        "onnx_file": str(onnx_path), "onnx_accuracy": evaluate_onnx(onnx_path, loader)["accuracy"],
        "tflite_file": str(tflite_path), "tflite_accuracy": tflm["accuracy"],
        "tflite_arena_bytes": tflm["arena_bytes"], "tflite_bytes": tflm["model_bytes"],
    }
    if c_source:
        row["c_source"] = [str(p) for p in write_c_source(tflite_path, stem.parent)]
    return row


def check_device_export(model: nn.Module, spec: ModelSpec) -> None:
    """Refuse, before any training, a model that the int8 TFLite export cannot convert (names the op and layer)."""
    example = torch.randn(4, spec.in_channels, spec.image_size, spec.image_size)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            export_tflite(copy.deepcopy(model).cpu().eval(), Path(tmp) / "probe.tflite", example)
        except ValueError as exc:
            raise ValueError(f"{str(exc).splitlines()[0]}; or pass --device-exports none to skip the ONNX and TFLite exports") from None


def compare_models(
    models: list[tuple[str, nn.Module, Path]],
    loader: Iterable,
    device: torch.device | str | None = None,
    export_dir: Path | None = None,
    export_values: str = "fp32",
    export_bits: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    specs: list[ModelSpec] | None = None,
) -> list[dict]:
    """One row per (label, model, checkpoint path): sizes, sparsity and test accuracy.

    With ``export_dir`` each model is also written as a compressed file there, read
    back, and evaluated as decoded: the accuracy a device running that file would see (with ``specs[i]``, one per
    model, in its header, so that the file loads without model flags).
    With ``input_shape`` (one image, e.g. ``(1, 28, 28)``) each row also gets its dense ``macs`` and
    measured ``latency_ms`` ({batch size: median ms} at batch 1 and 64, on ``device``).
    """
    rows = []
    stems = [Path(path).stem for _, _, path in models]
    unique = len(set(stems)) == len(stems)
    for index, (label, model, path) in enumerate(tqdm(models, desc="compare", leave=False)):
        row = {"model": label, "checkpoint": str(path), **model_stats(model), "file_bytes": file_size(path)}
        row["accuracy"] = evaluate(model, loader, device)
        if input_shape is not None:
            row["macs"] = count_macs(model, input_shape)["total"]
            timing = measure_latency(model, torch.zeros(1, *input_shape), (1, 64), pick_device(device))
            row["latency_ms"] = next(iter(timing["latency_ms"].values()))
            row["latency_threads"] = timing["threads"]
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
                decoded_accuracy=evaluate(decoded, loader, device),
            )
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- the whole run


def run_experiment(cfg: RunConfig, overwrite: bool = False, resume: bool = False) -> dict:
    """Run the seed's experiment end to end into the report folder ``cfg.out``; return the results.

    The folder is locked while the run writes it. A folder holding another run's files is refused
    unless ``overwrite`` (its run files are removed first) or ``resume`` (the steps already done,
    with the same config, are loaded instead of redone; the results equal an uninterrupted run's).
    Under ``torchrun`` every process runs the steps (training data-parallel) and only rank 0 writes ``cfg.out``.
    """
    start = time.time()
    if resume and distributed.is_distributed():
        raise ValueError("--resume runs in one process: resume without torchrun, or start again with --overwrite")
    with contextlib.ExitStack() as stack:
        where = cfg.out if distributed.is_main() else stack.enter_context(tempfile.TemporaryDirectory(prefix="edgeprune-rank"))
        defaults = {f.name: f.default for f in fields(RunConfig) if f.default is not MISSING}
        folder = stack.enter_context(RunFolder(where, cfg.to_dict(), overwrite=overwrite, resume=resume, defaults=defaults))
        out = folder.path
        device = pick_device(cfg.device)
        splits = load_data(cfg.data)
        done = folder.done
        resumed = [step for step in STEPS if step in done]

        # 1. Baseline: train, or take the given weights; checked against the data and the sparsity dict first.
        if "baseline" in done:
            model, spec, _, _ = load_checkpoint(out / "baseline.safetensors", model_for_data(cfg.model, splits))
            history = TrainHistory(**done["baseline"])
        else:
            model, spec = build_baseline(cfg.model, splits, cfg.weights, cfg.seed)
            if cfg.device_exports != "none":  # an op TFLite Micro cannot run is an error now, not after training
                check_device_export(model, spec)
            if cfg.sparsity is not None:  # wrong layer names are an error now, not after training
                resolve_sparsity_dict(cfg.sparsity, prunable_parameters(model), (n for n, _ in model.named_parameters()))
            if cfg.channels is not None:  # the channel step itself, on the untrained model: names, output layer, ratios
                prune_channels(model, cfg.channels, torch.zeros(1, spec.in_channels, spec.image_size, spec.image_size),
                               "l2")  # the names and ratios are what is checked; taylor's batches come after training
            if cfg.epochs:
                tqdm.write(f"training the baseline {cfg.model} for {cfg.epochs} epochs on {device}")
            history = train_baseline(model, splits, cfg.epochs, cfg.lr, device, cfg.seed)
            save_checkpoint(out / "baseline.safetensors", model, spec, info={"stage": "baseline"})
            plot_weight_distribution(model, out / "weight_distribution.png")
            folder.mark_done("baseline", asdict(history))
        model.to(device)
        baseline_path = out / "baseline.safetensors"
        compared = [("Baseline", model, baseline_path)]

        # every fine-tuning may distil the dense baseline (a frozen copy: the baseline row stays what was trained)
        teacher = Teacher(copy.deepcopy(model), cfg.distill) if cfg.distill else None

        # 1b. Optionally: whole channels first (a smaller dense model), fine-tuned; fine-grained pruning starts from it.
        source = model
        if cfg.channels is not None or cfg.target_macs is not None or cfg.target_latency is not None:
            if "channels" in done:
                source = load_checkpoint(out / "channels.safetensors", spec)[0].to(device)
            else:
                train_loader, val_loader, _ = make_loaders(splits, cfg.data.batch_size, cfg.seed)
                batches = list(itertools.islice(train_loader, 4)) if cfg.channel_importance == "taylor" else None
                source, channel_info = prune_channels_step(model, spec, cfg.channels, cfg.target_macs,
                                                           cfg.channel_importance, val_loader, device, cfg.target_latency,
                                                           batches)
                if channel_info["channel_scan"] is not None:
                    scanned = ChannelScanResult.from_dict(channel_info["channel_scan"])
                    scanned.plot(out / "channel_scan.png", chosen=channel_info["channel_ratios"])
                ch_history = train_baseline(source, splits, cfg.finetune_epochs, cfg.lr, device, cfg.seed, teacher, cfg.lr_schedule)
                save_checkpoint(out / "channels.safetensors", source, spec, info={"stage": "channels", **channel_info})
                folder.mark_done("channels", {**channel_info, "history": asdict(ch_history)})
            compared.append(("Channel-pruned + fine-tuned", source, out / "channels.safetensors"))

        # 2. Sensitivity scan (only when the planner needs it).
        scan = None
        if cfg.sparsity is None and cfg.plan == "scan":
            if "scan" in done:
                scan = ScanResult.from_json(out / "scan.json")
            else:
                scan = scan_model(source, splits, cfg.scan_split, cfg.scan_start, cfg.scan_step, cfg.scan_end, cfg.scan_method, device)
                scan.to_json(out / "scan.json")
                folder.mark_done("scan", {})

        # 3. Sparsity dict (given or planned), then prune a copy.
        if "prune" in done:
            pruned, _, masks, _ = load_checkpoint(out / "pruned.safetensors", spec)
            pruner = FineGrainedPruner.from_masks(masks)
            pruner.sparsity_dict = done["prune"]["sparsity_dict"]
            plan_info = done["prune"]["plan"]
        else:
            sparsity, plan_info = choose_sparsity(source, scan, cfg.sparsity, cfg.target_sparsity, cfg.max_drop, plan=cfg.plan)
            pruned, pruner = prune_copy(source, sparsity)
            write_json_atomic(out / "sparsity.json", pruner.sparsity_dict)
            write_json_atomic(out / "plan.json", plan_info)
            if scan is not None:
                scan.plot(out / "sensitivity.png", chosen=pruner.sparsity_dict)
            save_checkpoint(out / "pruned.safetensors", pruned, spec, pruner.masks, {"stage": "pruned"})
            folder.mark_done("prune", {"sparsity_dict": pruner.sparsity_dict, "plan": plan_info})
        pruned.to(device)
        pruned_path = out / "pruned.safetensors"
        chosen = dict(pruner.sparsity_dict)

        # 4. Fine-tune with the masks held in the model (or prune gradually from the baseline while training);
        #    the best epoch on the validation split is kept.
        if "finetune" in done:
            finetuned, _, masks, _ = load_checkpoint(out / "finetuned.safetensors", spec)
            finetuned.to(device)
            pruner = FineGrainedPruner.from_masks(masks)
            ft_history = TrainHistory(**done["finetune"])
        elif cfg.schedule == "oneshot":
            finetuned = copy.deepcopy(pruned)
            ft_history = finetune_pruned(finetuned, pruner, splits, cfg.finetune_epochs, cfg.lr, device, cfg.seed, cfg.lr_schedule,
                                         teacher)
        else:
            finetuned = copy.deepcopy(source)
            # a global plan is re-ranked across all layers at every pruning step; otherwise each layer ramps to its own target
            targets = cfg.target_sparsity if cfg.plan == "global" and cfg.sparsity is None else pruner.sparsity_dict
            pruner, ft_history = prune_while_training(
                finetuned, targets, splits, cfg.finetune_epochs, cfg.schedule, cfg.lr, device, cfg.seed, cfg.lr_schedule, teacher
            )
        if "finetune" not in done:
            save_checkpoint(out / "finetuned.safetensors", finetuned, spec, pruner.masks, {"stage": "finetuned"})
            plot_num_parameters_distribution(finetuned, out / "num_parameters.png")
            plot_weight_distribution(finetuned, out / "weight_distribution_finetuned.png", count_nonzero_only=True)
            folder.mark_done("finetune", asdict(ft_history))
        finetuned_path = out / "finetuned.safetensors"
        compared += [("Pruned", pruned, pruned_path), ("Fine-tuned + pruned", finetuned, finetuned_path)]

        # 5. Optionally: share weights (k-means) and fine-tune the centroids, as Deep Compression does.
        if cfg.centroid_epochs:
            if "shared" in done:
                shared = load_checkpoint(out / "shared.safetensors", spec)[0].to(device)
            else:
                shared = copy.deepcopy(finetuned)
                train_loader = make_loaders(splits, cfg.data.batch_size, cfg.seed)[0]
                torch.manual_seed(cfg.seed)
                share_weights(shared, cfg.export_bits, train_loader, cfg.centroid_epochs, lr=1e-4)
                save_checkpoint(out / "shared.safetensors", shared, spec, pruner.masks, {"stage": "shared"})
                folder.mark_done("shared", {})
            compared.append((f"+ {cfg.export_bits}-bit centroids fine-tuned", shared, out / "shared.safetensors"))

        # 6. Compare on the test set, with the real compressed files; then the report.
        test_loader = make_loaders(splits, cfg.data.batch_size, cfg.seed)[2]
        shape = (spec.in_channels, spec.image_size, spec.image_size)
        rows = compare_models(compared, test_loader, device, out, cfg.export_values, cfg.export_bits, shape, [spec] * len(compared))
        # 7. The files devices load: ONNX and int8 TFLite, each scored in its own runtime; does the final model fit a board?
        fits = None
        if cfg.device_exports != "none":
            exported = range(len(rows)) if cfg.device_exports == "all" else [len(rows) - 1]
            for index in tqdm(exported, desc="device exports", leave=False):
                label, exported_model, path = compared[index]
                rows[index].update(export_for_devices(exported_model, out / Path(path).stem, splits, test_loader,
                                                      c_source=index == len(rows) - 1))
            final = rows[-1]
            fits = {"model": final["model"], "boards": fits_on(final["tflite_bytes"], final["tflite_arena_bytes"])}
        results = {
            "config": cfg.to_dict(),
            "data": splits.info,
            "model": asdict(spec),
            "macs_dense": count_macs(model, shape),
            "channels": channels_summary(done.get("channels")),
            "sparsity_dict": chosen,
            "plan": plan_info,
            "baseline_training": asdict(history),
            "finetune": asdict(ft_history),
            "comparison": rows,
            "fits_on": fits,
            "layers": [s.to_dict() for s in layer_stats(finetuned)],
            "resumed_steps": resumed,
            "seconds": round(time.time() - start, 1),
        }
        write_json_atomic(out / "results.json", results)
        write_text_atomic(out / "report.md", run_report(results, cfg.model, cfg.scan_split, scanned=scan is not None))
        folder.mark_done("report", {})
    return results
