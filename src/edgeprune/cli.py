"""The command line: thin subcommands over the pipeline's steps; each writes files and says where.

Every error a user can cause is one line naming the fix, with exit status 2; Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import signal
import os
import sys
import warnings
from dataclasses import asdict
from pathlib import Path

import torch

from . import __version__, distributed
from .analyze.metrics import count_macs, layer_stats, model_stats
from .analyze.plots import plot_num_parameters_distribution, plot_weight_distribution
from .analyze.scan import ScanResult
from .checkpoint import load_checkpoint, save_checkpoint
from .data import DATASETS, DataConfig, load_data, make_loaders, native_geometry
from .device import pick_device
from .export.c_source import fits_on, write_c_source
from .export.centroids import share_weights
from .export.onnx import compare_onnx, evaluate_onnx, export_onnx, onnx_latency
from .export.tflite import calibration_images, export_tflite
from .export.tflm import evaluate_tflite
from .files import writable_folder, write_json_atomic, write_text_atomic
from .models import ModelSpec
from .pipeline import (
    MAX_SEED,
    RunConfig,
    build_baseline,
    check_fits,
    choose_sparsity,
    compare_models,
    default_bits,
    export_compressed,
    finetune_pruned,
    fit_data_to_model,
    prune_copy,
    run_experiment,
    scan_model,
    train_baseline,
)
from .prune.channels import channel_counts, prune_channels
from .prune.importance import CRITERIA
from .prune.pruner import FineGrainedPruner
from .prune.settings import load_layer_settings
from .report import comparison_markdown, layers_markdown
from .training import evaluate

__all__ = ["main", "build_parser"]


# --------------------------------------------------------------------------- flag types: each names the fix


def _whole(low: int, high: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; write e.g. {max(low, 1)}") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{value} is out of range; give a whole number {bound}")
        return value

    return parse


def _real(low: float | None = None, high: float | None = None, positive: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number; write e.g. 0.5") from None
        if not math.isfinite(value) or (positive and value <= 0) or (low is not None and value < low) \
                or (high is not None and value > high):
            want = "a positive number" if positive else f"a number from {low} to {high}" if high is not None else f"a number of at least {low}"
            raise argparse.ArgumentTypeError(f"{text} is out of range; give {want}")
        return value

    return parse


SEED = _whole(0, MAX_SEED)
FRACTION = _real(0.0, 1.0)


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line naming ``--help``."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# --------------------------------------------------------------------------- shared helpers


def _data_config(args: argparse.Namespace) -> DataConfig:
    return fit_data_to_model(args.model, DataConfig(
        name=args.dataset, data_dir=args.data_dir, download=args.download, channels=args.channels,
        image_size=args.image_size, mean=args.mean, std=args.std, batch_size=args.batch_size,
        val_size=args.val_size, seed=args.seed, limit=args.limit,
    ))


def _spec(args: argparse.Namespace) -> ModelSpec | None:
    """The model spec the flags describe, without loading the data (None for imagefolder without --num-classes).

    Used for checkpoints that carry no spec of their own, such as the seed's ``.pth`` files.
    """
    cfg = _data_config(args)
    channels, size, classes = native_geometry(cfg.name) or (3, 32, args.num_classes)
    if classes is None:
        return None
    return ModelSpec(args.model, cfg.channels or channels, args.num_classes or classes, cfg.image_size or size)


def _load(args: argparse.Namespace, path: str):
    model, spec, masks, _ = load_checkpoint(path, _spec(args))
    return model.to(pick_device(args.device)), spec, masks


def _splits(args: argparse.Namespace, spec: ModelSpec | None = None):
    """The data splits; with ``spec``, checked to fit the model."""
    splits = load_data(_data_config(args))
    if spec is not None:
        check_fits(spec, splits)
    return splits


def _writable_file(path: str) -> Path:
    """``path`` as an output file, checked before any work: not a folder, in a folder we can write."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"--out {path}: is a folder; give a file name such as {path / 'model.safetensors'}")
    writable_folder(path.parent, f"--out {path}")
    return path


def _bits(text: str | None, values: str) -> int | dict | None:
    """k-means bits from ``--bits``: a number, or per layer as inline JSON / a file."""
    if values == "kmeans" and text is None:
        raise ValueError("--values kmeans needs a bit width: add --bits N (N from 2 to 8) or a per-layer dict")
    if text is None:
        return default_bits(values)
    return int(text) if text.isdigit() else load_layer_settings(text)


# --------------------------------------------------------------------------- subcommands


def cmd_train(args: argparse.Namespace) -> None:
    out = _writable_file(args.out)
    splits = _splits(args)
    model, spec = build_baseline(args.model, splits, seed=args.seed)
    history = train_baseline(model, splits, args.epochs, args.lr, args.device, args.seed)
    accuracy = evaluate(model, make_loaders(splits, args.batch_size)[2], args.device)
    if distributed.is_main():
        save_checkpoint(out, model, spec, info={"stage": "baseline", "test_accuracy": accuracy, "data": splits.info})
    print(f"test accuracy {accuracy:.2f} % (best epoch {history.best_epoch}); saved {out}")


def cmd_inspect(args: argparse.Namespace) -> None:
    out = writable_folder(args.out)
    model, spec, _ = _load(args, args.checkpoint)
    stats = {
        "model": asdict(spec), **model_stats(model, args.bit_width),
        "macs_dense": count_macs(model, (spec.in_channels, spec.image_size, spec.image_size)),
        "layers": [s.to_dict() for s in layer_stats(model, args.bit_width)],
        "channels": channel_counts(model),
    }
    write_json_atomic(out / "inspect.json", stats)
    plot_weight_distribution(model, out / "weight_distribution.png", count_nonzero_only=args.nonzero_only, show=args.show)
    plot_num_parameters_distribution(model, out / "num_parameters.png", show=args.show)
    print(layers_markdown(stats["layers"]))
    print("output channels: " + ", ".join(f"{name} {c['out']}" for name, c in stats["channels"].items()))
    print(f"{stats['params']:,} parameters, {stats['nonzeros']:,} non-zero ({100 * stats['sparsity']:.1f} % sparse), "
          f"{stats['theoretical_mib']:.3f} MiB at {args.bit_width} bit, {stats['macs_dense']['total']:,} MACs; wrote {out}/")


def cmd_scan(args: argparse.Namespace) -> None:
    out = writable_folder(args.out)
    model, spec, _ = _load(args, args.checkpoint)
    splits = _splits(args, spec)
    result = scan_model(model, splits, args.split, args.scan_start, args.scan_step, args.scan_end, args.method, args.device)
    result.meta.update(data=splits.info)
    if not distributed.is_main():
        return  # under torchrun the processes shared the scan out; one of them writes it
    result.to_json(out / "scan.json")
    result.plot(out / "sensitivity.png", show=args.show)
    print(f"dense accuracy {result.dense_accuracy:.2f} % on the {args.split} split; wrote {out}/scan.json and sensitivity.png")


def cmd_plan(args: argparse.Namespace) -> None:
    out = _writable_file(args.out)
    scan = ScanResult.from_json(args.scan)
    model = _load(args, args.checkpoint)[0] if args.checkpoint else None
    sparsity, plan = choose_sparsity(model, scan, None, args.target_sparsity, args.max_drop, args.target_bytes)
    write_json_atomic(out, sparsity)
    write_json_atomic(out.with_suffix(".plan.json"), plan)
    if args.plot:
        scan.plot(args.plot, chosen=sparsity)
    print(json.dumps(sparsity, indent=2))
    print(f"wrote {out}")


def cmd_prune(args: argparse.Namespace) -> None:
    if args.sparsity is None and args.channel_ratios is None:
        raise ValueError("prune needs --sparsity (fine-grained), --channel-ratios (whole channels), or both")
    out = _writable_file(args.out)
    model, spec, _ = _load(args, args.checkpoint)
    info: dict = {"stage": "pruned"}
    if args.channel_ratios is not None:  # whole channels first: a smaller dense model
        ratios = load_layer_settings(args.channel_ratios)
        example = torch.zeros(1, spec.in_channels, spec.image_size, spec.image_size)
        before = count_macs(model, example.shape[1:])["total"]
        batches = None
        if args.importance == "taylor":  # gradients from a few training batches
            batches = list(itertools.islice(make_loaders(_splits(args, spec), args.batch_size, args.seed)[0], 4))
        model = prune_channels(model, ratios, example, args.importance, batches)
        info.update(channel_pruned=True, channel_ratios=ratios, channel_importance=args.importance)
        print(f"channels pruned: {before:,} -> {count_macs(model, example.shape[1:])['total']:,} MACs; output channels: "
              + ", ".join(f"{name} {c['out']}" for name, c in channel_counts(model).items()))
        if args.sparsity is None:
            save_checkpoint(out, model, spec, None, info)
            print(f"saved {out}")
            return
    pruned, pruner = prune_copy(model, load_layer_settings(args.sparsity))
    save_checkpoint(out, pruned, spec, pruner.masks, {**info, "sparsity_dict": pruner.sparsity_dict})
    print(layers_markdown([s.to_dict() for s in layer_stats(pruned) if s.name in pruner.masks]))
    print(f"saved {out} with the masks of {len(pruner.masks)} layers")


def cmd_finetune(args: argparse.Namespace) -> None:
    out = _writable_file(args.out)
    model, spec, masks, info = load_checkpoint(args.checkpoint, _spec(args))
    model.to(pick_device(args.device))
    channels = {"channel_pruned": True} if info.get("channel_pruned") is True else {}  # stays loadable when saved again
    if masks is None and not channels:
        raise ValueError(f"{args.checkpoint} has no masks beside it; prune it first with 'edgeprune prune'")
    pruner = FineGrainedPruner.from_masks(masks or {})
    splits = _splits(args, spec)
    history = finetune_pruned(model, pruner, splits, args.epochs, args.lr, args.device, args.seed)
    accuracy = evaluate(model, make_loaders(splits, args.batch_size)[2], args.device)
    if distributed.is_main():
        save_checkpoint(out, model, spec, pruner.masks, {"stage": "finetuned", "test_accuracy": accuracy, **channels})
    print(f"test accuracy {accuracy:.2f} % (best epoch {history.best_epoch}); saved {out}")


def cmd_compare(args: argparse.Namespace) -> None:
    out = writable_folder(args.out)
    labels = args.labels.split(",") if args.labels else [Path(p).stem for p in args.checkpoints]
    if len(labels) != len(args.checkpoints):
        raise ValueError(f"--labels names {len(labels)} models but {len(args.checkpoints)} checkpoints were given")
    if args.export_values == "kmeans" and args.export_bits is None:
        raise ValueError("--export-values kmeans needs a bit width: add --export-bits N (N from 2 to 8)")
    loaded = [_load(args, path) for path in args.checkpoints]
    models = [(label, model, Path(path)) for label, (model, _, _), path in zip(labels, loaded, args.checkpoints)]
    test_loader = make_loaders(_splits(args, loaded[0][1]), args.batch_size)[2]
    export_dir = None if args.export_values == "none" else out
    bits = args.export_bits if args.export_bits is not None else default_bits(args.export_values)
    rows = compare_models(models, test_loader, args.device, export_dir, args.export_values, bits,
                          specs=[spec for _, spec, _ in loaded])
    table = comparison_markdown(rows)
    write_text_atomic(out / "comparison.md", table)
    write_json_atomic(out / "comparison.json", rows)
    print(table)
    print(f"wrote {out}/comparison.md and comparison.json")


EXPORT_FORMATS = {"epz": "model.epz", "onnx": "model.onnx", "tflite": "model.tflite"}  # format -> default --out


def _export_runtime(args: argparse.Namespace, model, spec: ModelSpec, out: Path) -> None:
    """``--format onnx`` / ``tflite``: write the file, then score it in its own runtime on the test split."""
    splits = _splits(args, spec)
    test_loader = make_loaders(splits, args.batch_size, args.seed)[2]
    model = model.cpu().eval()
    fp32 = evaluate(model, test_loader, "cpu")
    if args.format == "onnx":
        example = calibration_images(splits.test, 1)
        export_onnx(model, out, example)
        check, result = compare_onnx(model, out, test_loader), evaluate_onnx(out, test_loader)
        timing = onnx_latency(model, out, example)
        print(f"wrote {out} ({out.stat().st_size:,} bytes); onnxruntime accuracy {result['accuracy']:.2f} % on "
              f"{result['count']} test images (PyTorch {fp32:.2f} %); logits {'equal' if check['equal'] else 'NOT equal'} "
              f"within tolerance (max diff {check['max_abs_diff']:.1e}); batch-1 latency onnxruntime "
              f"{timing['onnx_ms']:.3f} ms, PyTorch {timing['torch_ms']:.3f} ms")
        return
    export_tflite(model, out, calibration_images(splits.train, args.calibration), softmax=args.softmax)
    result = evaluate_tflite(out, test_loader)
    print(f"wrote {out} ({result['model_bytes']:,} bytes, int8); TFLM accuracy {result['accuracy']:.2f} % on "
          f"{result['count']} test images (PyTorch fp32 {fp32:.2f} %); tensor arena {result['arena_bytes']:,} bytes")
    if args.c_source:
        cc, h = write_c_source(out, writable_folder(args.c_source, "--c-source"))
        print(f"wrote {cc} and {h}")
    for row in fits_on(result["model_bytes"], result["arena_bytes"]):
        print(f"  {row['board']}: model {100 * row['flash_used']:.1f} % of flash, arena {100 * row['ram_used']:.1f} % of RAM: "
              f"{'fits' if row['fits'] else 'does not fit'}")


def cmd_export(args: argparse.Namespace) -> None:
    out = _writable_file(args.out or EXPORT_FORMATS[args.format])
    model, spec, _ = _load(args, args.checkpoint)
    if args.format != "epz":
        if args.values != "fp32" or args.bits is not None or args.centroid_epochs:
            raise ValueError(f"--values, --bits and --centroid-epochs shape the compressed .epz file; drop them with --format {args.format}")
        _export_runtime(args, model, spec, out)
        return
    bits = _bits(args.bits, args.values)
    if args.centroid_epochs:
        if args.values != "kmeans":
            raise ValueError("--centroid-epochs fine-tunes k-means centroids: use it with --values kmeans")
        train_loader = make_loaders(_splits(args, spec), args.batch_size, args.seed)[0]
        share_weights(model, bits, train_loader, args.centroid_epochs, args.centroid_lr)
    export_compressed(model, out, args.values, bits, spec)
    print(f"wrote {out} ({out.stat().st_size:,} bytes; the dense checkpoint is {Path(args.checkpoint).stat().st_size:,})")


def cmd_run(args: argparse.Namespace) -> None:
    cfg = RunConfig(
        model=args.model, data=_data_config(args), weights=args.weights, epochs=args.epochs,
        finetune_epochs=args.finetune_epochs, lr=args.lr, lr_schedule=args.lr_schedule, distill=args.distill, sparsity=args.sparsity,
        channels=args.channel_ratios, target_macs=args.target_macs, target_latency=args.target_latency,
        channel_importance=args.channel_importance,
        plan=args.plan, target_sparsity=args.target_sparsity, schedule=args.schedule, max_drop=args.max_drop, scan_split=args.scan_on,
        scan_start=args.scan_start, scan_step=args.scan_step, scan_end=args.scan_end,
        export_values=args.export_values, export_bits=args.export_bits, centroid_epochs=args.centroid_epochs,
        device_exports=args.device_exports, out=args.out, device=args.device, seed=args.seed,
    )
    results = run_experiment(cfg, overwrite=args.overwrite, resume=args.resume)
    if distributed.is_main():
        print(comparison_markdown(results["comparison"]))
        print(f"report: {Path(cfg.out) / 'report.md'} (finished in {results['seconds']} s)")


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default="basiccnn", help="basiccnn, a torchvision classifier (resnet18, vgg11_bn, mobilenet_v2, ...) or module.path:factory")
    g.add_argument("--dataset", default="fashion-mnist", choices=DATASETS)
    g.add_argument("--data-dir", help="where the data set is (default: Debian's /usr/share/datasets/fashion-mnist for fashion-mnist)")
    g.add_argument("--download", action="store_true", help="allow torchvision to download the data set (needs the network)")
    g.add_argument("--channels", type=int, choices=(1, 3), help="convert images to this many channels (3 is automatic for torchvision models)")
    g.add_argument("--image-size", type=_whole(4, 4096), help="resize images to this side length")
    g.add_argument("--num-classes", type=_whole(2, 100_000), help="classes of an imagefolder data set")
    g.add_argument("--mean", type=_real(-1e6, 1e6), default=0.5, help="Normalize mean per channel (the seed's 0.5)")
    g.add_argument("--std", type=_real(positive=True), default=0.5, help="Normalize std per channel (the seed's 0.5)")
    g.add_argument("--batch-size", type=_whole(1, 1_000_000), default=64)
    g.add_argument("--val-size", type=_whole(0), default=5000, help="images held out of the training set for scans and model selection")
    g.add_argument("--seed", type=SEED, default=0)
    g.add_argument("--limit", type=_whole(1), help="use at most this many images of each split (quick trials)")
    g.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: cuda when present)")


def _add_scan_range(p: argparse.ArgumentParser, start: float, step: float) -> None:
    p.add_argument("--scan-start", type=FRACTION, default=start)
    p.add_argument("--scan-step", type=_real(positive=True), default=step)
    p.add_argument("--scan-end", type=_real(0.0, 2.0), default=1.0, help="exclusive, as in np.arange")


def build_parser() -> argparse.ArgumentParser:
    """The ``edgeprune`` argument parser with one subcommand per step of the pipeline."""
    parser = _Parser(prog="edgeprune", description="Fine-grained pruning for edge devices.")
    parser.add_argument("--version", action="version", version=f"edgeprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="the whole experiment: train, scan, plan, prune, fine-tune, export, compare, report")
    _add_common(p)
    p.add_argument("--weights", help="start from this baseline checkpoint instead of training (.safetensors or a .pth state_dict)")
    p.add_argument("--epochs", type=_whole(0, 10_000), help="baseline training epochs (default 5; 0 with --weights)")
    p.add_argument("--finetune-epochs", type=_whole(0, 10_000), default=RunConfig.finetune_epochs)
    p.add_argument("--lr", type=_real(positive=True), default=RunConfig.lr)
    p.add_argument("--sparsity", help="sparsity dict: inline JSON or a .json/.toml/.yaml file (default: planned from the scan)")
    p.add_argument("--target-sparsity", type=FRACTION, default=RunConfig.target_sparsity, help="planner budget: fraction of prunable weights removed")
    p.add_argument("--channel-ratios", help="channel pruning first: fraction of output channels removed per Conv2d/Linear module "
                   "name, as inline JSON or a file (e.g. '{\"_default\": 0.5}'); a smaller dense model, fine-tuned, then pruned fine-grained")
    p.add_argument("--target-macs", type=_real(0.0, 1.0), help="channel pruning first: remove the channels that the channel scan "
                   "says cost least, until MACs are at most this fraction of the dense model's (e.g. 0.5)")
    p.add_argument("--target-latency", type=_real(0.0, 1.0), help="channel pruning first, as --target-macs, until the batch-64 "
                   "latency measured here on --device is at most this fraction of the dense model's (e.g. 0.5)")
    p.add_argument("--channel-importance", choices=CRITERIA, default="l2",
                   help="how channels are ranked: l1/l2 magnitude, bn_scale, or taylor (first order, from 4 training batches)")
    p.add_argument("--lr-schedule", choices=("constant", "cosine", "step"), default="constant",
                   help="learning rate over the fine-tuning epochs: constant, cosine (annealed to 0) or step (x0.1 every third)")
    p.add_argument("--distill", type=_real(0.0, 1.0), default=0.0,
                   help="every fine-tuning also learns the dense baseline's outputs (knowledge distillation, temperature 4) "
                   "with this weight against the labels' (e.g. 0.5; default 0: off); k-means centroid fine-tuning does not")
    p.add_argument("--plan", choices=("scan", "global"), default="scan",
                   help="how the planner reaches --target-sparsity: from the sensitivity scan, or one global magnitude ranking")
    p.add_argument("--schedule", choices=("oneshot", "agp", "iterative"), default="oneshot",
                   help="oneshot: prune, then fine-tune; agp: cubic ramp to the targets while training; iterative: rounds of prune + fine-tune")
    p.add_argument("--max-drop", type=_real(0.0, 100.0), help="plan by tolerance instead: largest sparsity per layer within this accuracy drop")
    p.add_argument("--scan-on", choices=("val", "test"), default="val", help="scan on the validation split (default) or the test set")
    _add_scan_range(p, 0.0, 0.05)
    p.add_argument("--export-values", default=RunConfig.export_values, choices=("fp32", "fp16", "int8", "kmeans"))
    p.add_argument("--export-bits", type=_whole(2, 8), help="bits of the k-means codebook (default: 4 for kmeans, 8 for int8)")
    p.add_argument("--centroid-epochs", type=_whole(0, 10_000), default=0, help="with kmeans: fine-tune the shared centroids this many epochs")
    p.add_argument("--device-exports", choices=("final", "all", "none"), default="final",
                   help="ONNX and int8 TFLite files (+ model_data.cc/.h) scored in onnxruntime and TFLite Micro: "
                   "for the final model (default), every model, or none")
    p.add_argument("--out", default=RunConfig.out, help="report folder")
    again = p.add_mutually_exclusive_group()
    again.add_argument("--overwrite", action="store_true", help="replace the files of an earlier run in --out (only those)")
    again.add_argument("--resume", action="store_true", help="continue an interrupted run in --out from its last finished step")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("train", help="train a baseline (Adam, lr 1e-3, batch 64, seeded) and save the checkpoint")
    _add_common(p)
    p.add_argument("--epochs", type=_whole(0, 10_000), default=5)
    p.add_argument("--lr", type=_real(positive=True), default=RunConfig.lr)
    p.add_argument("--out", default="baseline.safetensors")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("inspect", help="parameters, non-zeros, sizes and MACs per layer; weight and parameter plots")
    _add_common(p)
    p.add_argument("checkpoint")
    p.add_argument("--bit-width", type=_whole(1, 64), default=32)
    p.add_argument("--nonzero-only", action="store_true", help="histograms of non-zero weights only")
    p.add_argument("--show", action="store_true", help="also open the plots in a window (needs a display)")
    p.add_argument("--out", default="inspect")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("scan", help="per-layer sensitivity scan: accuracy against sparsity")
    _add_common(p)
    p.add_argument("checkpoint")
    p.add_argument("--split", choices=("val", "test"), default="val", help="scan on the validation split (default) or the test set")
    _add_scan_range(p, 0.4, 0.1)
    p.add_argument("--method", choices=("auto", "fast", "naive"), default="auto")
    p.add_argument("--show", action="store_true")
    p.add_argument("--out", default="scan")
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("plan", help="choose a sparsity dict from a scan: by budget or by tolerance")
    _add_common(p)
    p.add_argument("scan", help="scan.json written by 'edgeprune scan'")
    p.add_argument("--checkpoint", help="the scanned model (needed for a budget plan)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-sparsity", type=FRACTION, help="budget: fraction of prunable weights to remove overall")
    target.add_argument("--target-bytes", type=_whole(0), help="budget: bytes of the remaining non-zeros (32 bit) of the prunable layers")
    target.add_argument("--max-drop", type=_real(0.0, 100.0), help="tolerance: accuracy drop allowed per layer, in points")
    p.add_argument("--plot", help="also write the curves with the chosen sparsities to this PNG")
    p.add_argument("--out", default="sparsity.json")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("prune", help="fine-grained magnitude pruning by a sparsity dict (saves the masks), and/or whole channels")
    _add_common(p)
    p.add_argument("checkpoint")
    p.add_argument("--sparsity", help="inline JSON or a .json/.toml/.yaml file; keys: names, 're:' regexes, '_default'")
    p.add_argument("--channel-ratios", help="fraction of output channels removed per Conv2d/Linear module name, as --sparsity "
                   "(e.g. '{\"_default\": 0.5}'): a smaller dense model, pruned before --sparsity; the classes layer is kept")
    p.add_argument("--importance", choices=CRITERIA, default="l2",
                   help="channel importance for --channel-ratios (taylor: first order, from 4 training batches)")
    p.add_argument("--out", default="pruned.safetensors")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("finetune", help="fine-tune a pruned checkpoint, masks re-applied after every step")
    _add_common(p)
    p.add_argument("checkpoint")
    p.add_argument("--epochs", type=_whole(0, 10_000), default=RunConfig.finetune_epochs)
    p.add_argument("--lr", type=_real(positive=True), default=RunConfig.lr)
    p.add_argument("--out", default="finetuned.safetensors")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("compare", help="the seed's comparison table for any set of checkpoints (Markdown and JSON)")
    _add_common(p)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--labels", help="comma-separated names for the rows")
    p.add_argument("--export-values", default="fp32", choices=("fp32", "fp16", "int8", "kmeans", "none"),
                   help="export each model compressed this way and evaluate it decoded ('none' to skip)")
    p.add_argument("--export-bits", type=_whole(2, 8), default=None)
    p.add_argument("--out", default="compare")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("export", help="write a compressed model file (sparse, quantized, entropy-coded), an ONNX or an int8 TFLite file")
    _add_common(p)
    p.add_argument("checkpoint")
    p.add_argument("--values", default="fp32", choices=("fp32", "fp16", "int8", "kmeans"))
    p.add_argument("--bits", help="k-means bits: a number, or per layer as inline JSON / a file like the sparsity dict")
    p.add_argument("--centroid-epochs", type=_whole(0, 10_000), default=0, help="fine-tune the k-means centroids for this many epochs first")
    p.add_argument("--centroid-lr", type=_real(positive=True), default=1e-4)
    p.add_argument("--format", default="epz", choices=tuple(EXPORT_FORMATS),
                   help="epz: compressed file (default); onnx: checked in onnxruntime; tflite: fully int8, checked in TensorFlow Lite Micro")
    p.add_argument("--calibration", type=_whole(1), default=500, help="tflite: training images that calibrate the int8 activations")
    p.add_argument("--softmax", action="store_true", help="tflite: end the graph with an int8 softmax")
    p.add_argument("--c-source", help="tflite: also write model_data.cc and model_data.h into this folder")
    p.add_argument("--out", help="output file (default: model.epz, model.onnx or model.tflite by --format)")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``edgeprune`` command: 0 on success, 2 with one line on a user's error, 130 on Ctrl-C.

    ``EDGEPRUNE_DEBUG=1`` shows the full traceback of an unexpected error.
    """
    args = build_parser().parse_args(argv)
    where = f"edgeprune {args.command}"
    warnings.showwarning = lambda message, *rest, **kw: print(f"{where}: warning: {message}", file=sys.stderr)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # a kill still cleans up its files
    try:
        distributed.init_from_env()  # under torchrun: join the other processes
        args.func(args)
    except KeyboardInterrupt:
        hint = "; continue it with the same flags and --resume" if args.command == "run" else ""
        print(f"{where}: interrupted{hint}", file=sys.stderr)
        return 130
    except (ValueError, OSError) as exc:  # bad input, files, folders: the message names the fix
        if os.environ.get("EDGEPRUNE_DEBUG"):
            raise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"{where}: error: {message}", file=sys.stderr)
        return 2
    except Exception as exc:  # anything else is a bug of ours: still one line, and how to report it
        if os.environ.get("EDGEPRUNE_DEBUG"):
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(f"{where}: internal error: {type(exc).__name__}: {first}; rerun with EDGEPRUNE_DEBUG=1 for the "
              "traceback and report it", file=sys.stderr)
        return 1
    finally:
        distributed.shutdown()
    return 0
