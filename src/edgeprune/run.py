"""The one-command run: every step of :mod:`edgeprune.steps` in order, into a report folder, resumable step by step."""

from __future__ import annotations

import contextlib
import copy
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, TypeVar

from tqdm.auto import tqdm

from . import distributed, steps
from .analyze.channel_scan import ChannelScanResult
from .analyze.metrics import count_macs, layer_stats
from .analyze.plots import plot_num_parameters_distribution, plot_weight_distribution
from .analyze.scan import ScanResult
from .checkpoint import save_checkpoint
from .config import RunConfig, upgrade_saved
from .data import make_loaders
from .device import pick_device
from .export.bit_choice import AUTO, bits_label
from .export.c_source import fits_on
from .export.quantize import QuantConfig
from .files import write_json_atomic, write_text_atomic
from .models import prunable_parameters
from .prune.pruner import FineGrainedPruner
from .prune.settings import resolve_sparsity_dict
from .report import run_report
from .runfolder import RunFolder
from .training import Teacher, TrainHistory

__all__ = ["STEPS", "run_experiment"]

STEPS = ("baseline", "channels", "scan", "prune", "finetune", "shared")
"""The steps of a run whose outputs are kept on disk, in order; a resumed run loads those done."""

T = TypeVar("T")


def _resumable(folder: RunFolder, step: str, compute: Callable[[], tuple[T, dict]], load: Callable[[dict], T]) -> T:
    """Step ``step`` of the run, done once: when an interrupted run finished it, ``load(info)`` reads its files back;
    otherwise ``compute()`` does it, writes its files and returns (result, info), and the info is recorded."""
    if step in folder.done:
        return load(folder.done[step])
    result, info = compute()
    folder.mark_done(step, info)
    return result


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
        folder = stack.enter_context(RunFolder(where, cfg.to_dict(), overwrite=overwrite, resume=resume, upgrade=upgrade_saved))
        out = folder.path
        device = pick_device(cfg.device)
        task = cfg.resolved_task
        max_loss = cfg.max_loss if cfg.max_loss is not None else steps.default_max_loss(task)
        splits = steps.load_splits(cfg.data, task=task.name)
        export_tolerance = cfg.export_tolerance if cfg.export_tolerance is not None else steps.default_export_tolerance(task)
        val_loader = make_loaders(splits, cfg.data.batch_size, cfg.seed)[1]
        if cfg.export_bits == AUTO and val_loader is None:
            raise ValueError("--export-bits auto chooses the bits on the validation split, but the data has none: give "
                             "x_val / y_val or --val-size > 0, or a bit width (e.g. --export-bits 4)")
        resumed = [step for step in STEPS if step in folder.done]

        def load(name: str, spec=None) -> tuple:
            model, spec, masks, _ = steps.load_model(out / f"{name}.safetensors", spec, device)
            return model, spec, masks

        # 1. Baseline: train, or take the given weights; checked against the data and the sparsity dict first.
        def baseline() -> tuple[tuple, dict]:
            model, spec = steps.build_baseline(cfg.model, splits, cfg.weights, cfg.seed, cfg.width)
            if cfg.device_exports != "none" or cfg.mcu != "none":  # an op TFLM or the C engine cannot run: an error now
                steps.check_device_export(model, spec, engine=cfg.mcu != "none",
                                          target=None if cfg.mcu == "none" else cfg.mcu)
            if cfg.sparsity is not None:  # wrong layer names are an error now, not after training
                resolve_sparsity_dict(cfg.sparsity, prunable_parameters(model), (n for n, _ in model.named_parameters()))
            if isinstance(cfg.export_bits, dict):  # so are wrong names in per-layer export bits
                QuantConfig(cfg.export_values, cfg.export_bits).check_names(model.state_dict())
            if cfg.channel_ratios is not None:  # the channel step itself, on the untrained model: names, output layer, ratios
                steps.prune_channels_step(model, spec, cfg.channel_ratios)  # taylor's batches come after training
            if cfg.epochs:
                tqdm.write(f"training the baseline {cfg.model} for {cfg.epochs} epochs on {device}")
            history = steps.train_baseline(model, splits, cfg.epochs, cfg.lr, device, cfg.seed)
            save_checkpoint(out / "baseline.safetensors", model, spec, info={"stage": "baseline"})
            plot_weight_distribution(model, out / "weight_distribution.png")
            return (model, spec, history), asdict(history)

        model, spec, history = _resumable(folder, "baseline", baseline, lambda info: (
            *load("baseline", steps.model_for_data(cfg.model, splits, cfg.width))[:2], TrainHistory(**info)))
        model.to(device)
        compared = [("Baseline", model, out / "baseline.safetensors")]

        # every fine-tuning may distil the dense baseline (a frozen copy: the baseline row stays what was trained)
        teacher = Teacher(copy.deepcopy(model), cfg.distill) if cfg.distill else None

        # 1b. Optionally: whole channels first (a smaller dense model), fine-tuned; fine-grained pruning starts from it.
        def channels() -> tuple:
            val_loader = make_loaders(splits, cfg.data.batch_size, cfg.seed)[1]
            batches = steps.taylor_batches(splits, cfg.seed) if cfg.channel_importance == "taylor" else None
            small, info = steps.prune_channels_step(model, spec, cfg.channel_ratios, cfg.target_macs, cfg.channel_importance,
                                                    val_loader, device, cfg.target_latency, batches)
            if info["channel_scan"] is not None:
                ChannelScanResult.from_dict(info["channel_scan"]).plot(out / "channel_scan.png", chosen=info["channel_ratios"])
            ch_history = steps.train_baseline(small, splits, cfg.finetune_epochs, cfg.lr, device, cfg.seed, teacher, cfg.lr_schedule)
            save_checkpoint(out / "channels.safetensors", small, spec, info={"stage": "channels", **info})
            return small, {**info, "history": asdict(ch_history)}

        source = model
        if cfg.channel_ratios is not None or cfg.target_macs is not None or cfg.target_latency is not None:
            source = _resumable(folder, "channels", channels, lambda info: load("channels", spec)[0])
            compared.append(("Channel-pruned + fine-tuned", source, out / "channels.safetensors"))

        # 2. Sensitivity scan (only when the planner needs it).
        def scan_step() -> tuple[ScanResult, dict]:
            result = steps.scan_model(source, splits, cfg.scan_split, cfg.scan_start, cfg.scan_step, cfg.scan_end,
                                      cfg.scan_method, device)
            result.to_json(out / "scan.json")
            return result, {}

        scan = None
        if cfg.sparsity is None and cfg.plan == "scan":
            scan = _resumable(folder, "scan", scan_step, lambda info: ScanResult.from_json(out / "scan.json"))

        # 3. Sparsity dict (given or planned), then prune a copy.
        def prune() -> tuple:
            if cfg.device_target is not None:
                sparsity, plan_info = steps.plan_for_device_target(source, scan, splits, out / "device_target", cfg.budget,
                                                                   cfg.target_instructions, cfg.target_flash, cfg.mcu,
                                                                   target_cycles=cfg.target_cycles)
            else:
                shape = spec.sample_shape
                sparsity, plan_info = steps.choose_sparsity(source, scan, cfg.sparsity, cfg.target_sparsity, cfg.max_drop,
                                                            plan=cfg.plan, budget=cfg.budget, input_shape=shape,
                                                            bytes_per_nonzero=steps.engine_unit_bytes(source, shape)
                                                            if cfg.budget == "flash" and cfg.plan == "scan" else None)
            if scan is not None and not cfg.force:  # never a silent collapse
                plan_info["collapse_check"] = steps.check_collapse(
                    source, scan, plan_info, max_loss, out, cfg.budget if cfg.budget != "flash" else "params",
                    spec.sample_shape)
            pruned, pruner = steps.prune_copy(source, sparsity, steps.recalibration_batches(source, splits, cfg.seed))
            write_json_atomic(out / "sparsity.json", pruner.sparsity_dict)
            write_json_atomic(out / "plan.json", plan_info)
            if scan is not None:
                scan.plot(out / "sensitivity.png", chosen=pruner.sparsity_dict)
            save_checkpoint(out / "pruned.safetensors", pruned, spec, pruner.masks, {"stage": "pruned"})
            return (pruned, pruner.masks, pruner.sparsity_dict, plan_info), {"sparsity_dict": pruner.sparsity_dict, "plan": plan_info}

        def load_pruned(info: dict) -> tuple:
            pruned, _, pruned_masks = load("pruned", spec)
            return pruned, pruned_masks, info["sparsity_dict"], info["plan"]

        pruned, pruned_masks, chosen, plan_info = _resumable(folder, "prune", prune, load_pruned)
        pruned.to(device)
        chosen = dict(chosen)

        # 4. Fine-tune with the masks held in the model (or prune gradually from the baseline while training);
        #    the best epoch on the validation split is kept.
        def finetune() -> tuple:
            if cfg.schedule == "oneshot":
                finetuned = copy.deepcopy(pruned)
                pruner = FineGrainedPruner.from_masks(pruned_masks)
                ft_history = steps.finetune_pruned(finetuned, pruner, splits, cfg.finetune_epochs, cfg.lr, device, cfg.seed,
                                                   cfg.lr_schedule, teacher)
            else:
                finetuned = copy.deepcopy(source)
                # a global plan is re-ranked across all layers at every pruning step; otherwise each layer ramps to its own target
                targets = cfg.target_sparsity if cfg.plan == "global" and cfg.sparsity is None else chosen
                pruner, ft_history = steps.prune_while_training(finetuned, targets, splits, cfg.finetune_epochs, cfg.schedule,
                                                                cfg.lr, device, cfg.seed, cfg.lr_schedule, teacher)
            save_checkpoint(out / "finetuned.safetensors", finetuned, spec, pruner.masks, {"stage": "finetuned"})
            plot_num_parameters_distribution(finetuned, out / "num_parameters.png")
            plot_weight_distribution(finetuned, out / "weight_distribution_finetuned.png", count_nonzero_only=True)
            return (finetuned, pruner.masks, ft_history), asdict(ft_history)

        def load_finetuned(info: dict) -> tuple:
            finetuned, _, masks = load("finetuned", spec)
            return finetuned, masks, TrainHistory(**info)

        finetuned, masks, ft_history = _resumable(folder, "finetune", finetune, load_finetuned)
        compared += [("Pruned", pruned, out / "pruned.safetensors"), ("Fine-tuned + pruned", finetuned, out / "finetuned.safetensors")]

        # 5. Optionally: share weights (k-means) and fine-tune the centroids, as Deep Compression does.
        #    With --export-bits auto the codebooks get the fine-tuned model's bits chosen on the validation split.
        def shared() -> tuple:
            bits, choice = cfg.export_bits, None
            if bits == AUTO:
                bits, choice = steps.export_bits_for(finetuned, "kmeans", bits, val_loader, device, task, export_tolerance)
            model_shared = steps.share_centroids(copy.deepcopy(finetuned), bits, splits, cfg.centroid_epochs, cfg.seed)
            save_checkpoint(out / "shared.safetensors", model_shared, spec, masks, {"stage": "shared"})
            return (model_shared, bits), {"bits": bits, "choice": None if choice is None else choice.to_dict()}

        if cfg.centroid_epochs:
            model_shared, shared_bits = _resumable(folder, "shared", shared, lambda info: (
                load("shared", spec)[0], info.get("bits", cfg.export_bits)))
            compared.append((f"+ {bits_label(shared_bits)}-bit centroids fine-tuned", model_shared, out / "shared.safetensors"))

        # 6. Compare on the test set, with the real compressed files; then the report.
        test_loader = make_loaders(splits, cfg.data.batch_size, cfg.seed)[2]
        shape = spec.sample_shape
        rows = steps.compare_models(compared, test_loader, device, out, cfg.export_values, cfg.export_bits, shape,
                                    [spec] * len(compared), task, val_loader, export_tolerance)
        # 7. The files devices load: ONNX and int8 TFLite, each scored in its own runtime; does the final model fit a board?
        fits = None
        if cfg.device_exports != "none":
            exported = range(len(rows)) if cfg.device_exports == "all" else [len(rows) - 1]
            for index in tqdm(exported, desc="device exports", leave=False):
                _, exported_model, path = compared[index]
                stem = out / Path(path).stem
                rows[index].update(steps.export_for_devices(exported_model, splits, stem.with_suffix(".onnx"),
                                                            stem.with_suffix(".tflite"),
                                                            c_source=out if index == len(rows) - 1 else None))
            final = rows[-1]
            fits = {"model": final["model"], "boards": fits_on(final["tflite_bytes"], final["tflite_arena_bytes"])}
        # 8. On the microcontroller: the baseline and the final model as the C engine in an emulated Cortex-M.
        on_mcu = None
        if cfg.mcu != "none" and distributed.is_main():  # one process measures: the others would only repeat it
            on_mcu = []
            for index in tqdm(sorted({0, len(rows) - 1}), desc=f"{cfg.mcu} in QEMU", leave=False):
                label, measured, path = compared[index]
                on_mcu.append({"model": label, **steps.mcu_model(measured, splits, out / "mcu" / Path(path).stem, cfg.mcu,
                                                                 cfg.mcu_images)})
        # the device target (planned and checked in QEMU before fine-tuning), checked again on the final model
        device_target = steps.check_device_target(plan_info["device"], on_mcu[-1]) if on_mcu and plan_info.get("device") else None
        results = {
            "config": cfg.to_dict(),
            "task": task.describe(),
            "data": splits.info,
            "model": asdict(spec),
            "macs_dense": count_macs(model, shape),
            "channels": steps.channels_summary(folder.done.get("channels")),
            "sparsity_dict": chosen,
            "plan": plan_info,
            "device_target": device_target,
            "baseline_training": asdict(history),
            "finetune": asdict(ft_history),
            "comparison": rows,
            "export_tolerance": export_tolerance,
            "fits_on": fits,
            "mcu": on_mcu,
            "layers": [s.to_dict() for s in layer_stats(finetuned)],
            "resumed_steps": resumed,
            "quality": steps.final_quality(rows[0][task.metric], rows[-1][task.metric], task, max_loss),
            "seconds": round(time.time() - start, 1),
        }
        write_json_atomic(out / "results.json", results)
        write_text_atomic(out / "report.md", run_report(results, cfg.model, cfg.scan_split, scanned=scan is not None))
        folder.mark_done("report", {})
    quality = results["quality"]
    if quality is not None and not quality["within"] and not cfg.force:
        raise steps.BelowLimit(f"the final model's {task.metric} is {task.format(quality['final'])} against the dense "
                               f"{task.format(quality['dense'])}: {quality['loss']:.2f} {task.drop_unit}, more than "
                               f"--max-loss {max_loss:g}; the report in {out} marks it (prune less, fine-tune longer, "
                               "or pass --force to accept it)")
    return results
