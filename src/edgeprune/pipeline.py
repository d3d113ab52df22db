"""The whole experiment of the seed in one call: train, inspect, scan, plan, prune, fine-tune, export, compare."""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .export.epz import load_compressed, save_compressed
from .data import DataConfig, DataSplits, load_data, make_loaders
from .checkpoint import load_checkpoint, save_checkpoint
from .device import pick_device
from .files import write_json_atomic, write_text_atomic
from .models import ModelSpec
from .prune.masks import check_sparsity
from .analyze.metrics import count_macs, file_size, layer_stats, model_stats
from .analyze.plan import make_plan
from .analyze.plots import plot_num_parameters_distribution, plot_weight_distribution
from .prune.pruner import FineGrainedPruner
from .export.centroids import share_weights
from .report import comparison_markdown, layers_markdown, sparsity_markdown
from .analyze.scan import sensitivity_scan
from .prune.settings import load_layer_settings
from .training import evaluate, finetune, train

__all__ = ["RunConfig", "run_experiment", "compare_models", "model_for_data", "check_fits"]


@dataclass
class RunConfig:
    """Everything ``edgeprune run`` needs; saved beside the report as ``config.json``."""

    model: str = "basiccnn"
    data: DataConfig = field(default_factory=DataConfig)
    weights: str | None = None  # a baseline checkpoint to start from instead of training
    epochs: int = 5
    finetune_epochs: int = 3
    lr: float = 1e-3
    sparsity: str | dict | None = None  # a sparsity dict (inline JSON, a file, or a dict); None: plan one
    target_sparsity: float = 0.8  # the planner's budget: fraction of prunable weights removed
    max_drop: float | None = None  # plan by tolerance instead: largest sparsity within this accuracy drop
    scan_split: str = "val"  # "val" (held out of train) or "test" (the seed's choice, only when asked)
    scan_start: float = 0.0
    scan_step: float = 0.05
    scan_end: float = 1.0
    scan_method: str = "auto"
    export_values: str = "kmeans"
    export_bits: int = 4
    centroid_epochs: int = 0  # with kmeans export: epochs of Deep Compression's centroid fine-tuning
    out: str = "runs/latest"
    device: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.finetune_epochs < 0:
            raise ValueError("epochs and finetune_epochs must be at least 0")
        if self.epochs == 0 and not self.weights:
            raise ValueError("epochs=0 needs --weights: a trained baseline to start from")
        if self.scan_split not in ("val", "test"):
            raise ValueError(f"scan_split must be 'val' or 'test', got {self.scan_split!r}")
        if self.scan_split == "val" and self.data.val_size == 0:
            raise ValueError("scanning on the validation split needs --val-size > 0 (or --scan-on test)")
        check_sparsity(self.target_sparsity, "target_sparsity")
        if self.centroid_epochs and self.export_values != "kmeans":
            raise ValueError("centroid_epochs fine-tunes k-means centroids: use it with export_values='kmeans'")


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


def compare_models(
    models: list[tuple[str, nn.Module, Path]],
    loader: Iterable,
    device: torch.device | str | None = None,
    export_dir: Path | None = None,
    export_values: str = "fp32",
    export_bits: int | None = None,
) -> list[dict]:
    """One row per (label, model, checkpoint path): sizes, sparsity and test accuracy.

    With ``export_dir`` each model is also written as a compressed file there, read
    back, and evaluated as decoded: the accuracy a device running that file would see.
    """
    rows = []
    stems = [Path(path).stem for _, _, path in models]
    unique = len(set(stems)) == len(stems)
    for index, (label, model, path) in enumerate(tqdm(models, desc="compare", leave=False)):
        row = {"model": label, "checkpoint": str(path), **model_stats(model), "file_bytes": file_size(path)}
        row["accuracy"] = evaluate(model, loader, device)
        if export_dir is not None:
            name = stems[index] if unique else f"{index}-{stems[index]}"  # two runs' finetuned.* must not collide
            target = Path(export_dir) / f"{name}.epz"
            save_compressed(model.state_dict(), target, values=export_values, bits=export_bits)
            decoded = _decoded_copy(model, target)
            row.update(
                compressed_file=str(target),
                compressed_bytes=file_size(target),
                compressed_values=export_values,
                compressed_bits=export_bits,
                decoded_accuracy=evaluate(decoded, loader, device),
            )
        rows.append(row)
    return rows


def _decoded_copy(model: nn.Module, compressed: Path) -> nn.Module:
    """A copy of ``model`` holding the weights decoded from a compressed file."""
    decoded = copy.deepcopy(model)
    decoded.load_state_dict(load_compressed(compressed))
    return decoded


def _plan(cfg: RunConfig, model: nn.Module, scan) -> tuple[dict[str, float], dict]:
    """The sparsity dict of the run: the user's, or one the planner chooses from the scan."""
    if cfg.sparsity is not None:
        return load_layer_settings(cfg.sparsity), {"method": "given"}
    target = cfg.target_sparsity if cfg.max_drop is None else None
    plan = make_plan(scan, model, target_sparsity=target, max_drop=cfg.max_drop)
    return dict(plan.sparsity_dict), plan.to_dict()


def run_experiment(cfg: RunConfig) -> dict:
    """Run the seed's experiment end to end and write the report folder ``cfg.out``; return the results."""
    start = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    write_json_atomic(out / "config.json", asdict(cfg))
    splits = load_data(cfg.data)
    train_loader, val_loader, test_loader = make_loaders(splits, cfg.data.batch_size, cfg.seed)

    # 1. Baseline: train, or take the given weights.
    spec = model_for_data(cfg.model, splits)
    if cfg.weights:
        model, spec, _, _ = load_checkpoint(cfg.weights, spec)
        check_fits(spec, splits)
    else:
        model = spec.build(seed=cfg.seed)
    model.to(device)
    if cfg.epochs:
        tqdm.write(f"training the baseline {cfg.model} for {cfg.epochs} epochs on {device}")
        train(model, train_loader, cfg.epochs, val_loader, cfg.lr, device, cfg.seed, keep_best=val_loader is not None)
    baseline_path = save_checkpoint(out / "baseline.safetensors", model, spec, info={"stage": "baseline"})

    # 2. Inspect: plots and MACs of the baseline.
    plot_weight_distribution(model, out / "weight_distribution.png")
    macs = count_macs(model, (spec.in_channels, spec.image_size, spec.image_size))

    # 3. Sensitivity scan on the validation split (the test set only when asked for by name).
    scan_loader = val_loader if cfg.scan_split == "val" else test_loader
    scan = sensitivity_scan(
        model, scan_loader, scan_step=cfg.scan_step, scan_start=cfg.scan_start, scan_end=cfg.scan_end,
        method=cfg.scan_method, device=device,
    )
    scan.meta.update(split=cfg.scan_split, images=len(scan_loader.dataset))
    scan.to_json(out / "scan.json")

    # 4. Sparsity dict: given, or planned from the scan; then prune.
    sparsity_spec, plan_info = _plan(cfg, model, scan)
    pruned = spec.build().to(device)
    pruned.load_state_dict(model.state_dict())
    pruner = FineGrainedPruner(pruned, sparsity_spec)
    write_json_atomic(out / "sparsity.json", pruner.sparsity_dict)
    write_json_atomic(out / "plan.json", plan_info)
    scan.plot(out / "sensitivity.png", chosen=pruner.sparsity_dict)
    pruned_path = save_checkpoint(out / "pruned.safetensors", pruned, spec, pruner.masks, {"stage": "pruned"})

    # 5. Fine-tune with the masks kept after every step; the best epoch on the validation split is kept.
    finetuned = spec.build().to(device)
    finetuned.load_state_dict(pruned.state_dict())
    history = finetune(finetuned, pruner, train_loader, cfg.finetune_epochs, val_loader, cfg.lr, device, cfg.seed)
    finetuned_path = save_checkpoint(out / "finetuned.safetensors", finetuned, spec, pruner.masks, {"stage": "finetuned"})
    plot_num_parameters_distribution(finetuned, out / "num_parameters.png")
    plot_weight_distribution(finetuned, out / "weight_distribution_finetuned.png", count_nonzero_only=True)

    compared = [("Baseline", model, baseline_path), ("Pruned", pruned, pruned_path), ("Fine-tuned + pruned", finetuned, finetuned_path)]

    # 6. Optionally: share weights (k-means) and fine-tune the centroids, as Deep Compression does.
    if cfg.centroid_epochs:
        shared = copy.deepcopy(finetuned)
        share_weights(shared, cfg.export_bits, train_loader, cfg.centroid_epochs, lr=1e-4)
        shared_path = save_checkpoint(out / "shared.safetensors", shared, spec, pruner.masks, {"stage": "shared"})
        compared.append((f"+ {cfg.export_bits}-bit centroids fine-tuned", shared, shared_path))

    # 7. Compare on the test set, with the real compressed files.
    rows = compare_models(
        compared,
        test_loader, device, export_dir=out, export_values=cfg.export_values, export_bits=cfg.export_bits,
    )
    results = {
        "config": asdict(cfg),
        "data": splits.info,
        "model": asdict(spec),
        "macs_dense": macs,
        "sparsity_dict": pruner.sparsity_dict,
        "plan": plan_info,
        "finetune": asdict(history),
        "comparison": rows,
        "layers": [s.to_dict() for s in layer_stats(finetuned)],
        "seconds": round(time.time() - start, 1),
    }
    write_json_atomic(out / "results.json", results)
    write_text_atomic(out / "report.md", _report_text(results, cfg))
    return results


def _report_text(results: dict, cfg: RunConfig) -> str:
    """The report a person reads: the table, the dict, the per-layer sparsity and the plots."""
    data = results["data"]
    shown = [s for s in results["layers"] if len(s["shape"]) > 1 or s["name"] in results["sparsity_dict"]]
    plan = results["plan"]
    how = (
        "given by the user"
        if plan.get("method") == "given"
        else f"chosen by the planner ({plan.get('method')}, target {plan.get('target')}) from the sensitivity scan"
    )
    return f"""# edgeprune report: {cfg.model} on {data['name']}

Data: {data['train_images']:,} training images, {data['val_images']:,} held out for validation
(scan and choice of the fine-tuning epoch), {data['test_images']:,} test images (the table below).
Dense MACs per image: {results['macs_dense']['total']:,}. Run time: {results['seconds']} s.

## Comparison (test set)

{comparison_markdown(results['comparison'])}
## Sparsity dict

Sparsity dict {how}:

{sparsity_markdown(results['sparsity_dict'])}
## Per-layer sparsity of the fine-tuned model

{layers_markdown(shown)}
## Plots

Sensitivity scan on the {cfg.scan_split} split (chosen sparsity marked):

![sensitivity](sensitivity.png)

Weight distribution of the baseline:

![weights](weight_distribution.png)

Non-zero weights of the fine-tuned model:

![weights fine-tuned](weight_distribution_finetuned.png)

Parameters per layer, kept and pruned:

![parameters](num_parameters.png)

Files: `baseline.safetensors`, `pruned.safetensors`, `finetuned.safetensors` (with `*.masks.safetensors`),
the compressed `*.epz` files, `scan.json`, `plan.json`, `sparsity.json`, `results.json`, `config.json`.
"""
