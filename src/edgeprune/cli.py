"""The command line: thin subcommands over the library; each writes files and says where."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from . import __version__
from .export.epz import save_compressed
from .data import DATASETS, DataConfig, load_data, make_loaders, native_geometry
from .pipeline import RunConfig, check_fits, compare_models, model_for_data, run_experiment
from .checkpoint import load_checkpoint, save_checkpoint
from .device import pick_device
from .files import write_json_atomic, write_text_atomic
from .models import ModelSpec
from .analyze.metrics import count_macs, layer_stats, model_stats
from .analyze.plan import make_plan
from .analyze.plots import plot_num_parameters_distribution, plot_weight_distribution
from .prune.pruner import FineGrainedPruner
from .export.centroids import share_weights
from .report import comparison_markdown, layers_markdown
from .analyze.scan import ScanResult, sensitivity_scan
from .prune.settings import load_layer_settings
from .training import evaluate, finetune, train

__all__ = ["main", "build_parser"]


def _is_torchvision(model: str) -> bool:
    return model.lower() != "basiccnn" and ":" not in model


def _data_config(args: argparse.Namespace) -> DataConfig:
    channels, image_size = args.channels, args.image_size
    native = native_geometry(args.dataset)
    if _is_torchvision(args.model) and native:
        if channels is None and native[0] == 1:
            channels = 3  # torchvision classifiers take RGB: repeat the grey channel
        if image_size is None and native[1] < 32:
            image_size = 32  # VGG's five poolings need at least 32 pixels
    return DataConfig(
        name=args.dataset, data_dir=args.data_dir, download=args.download, channels=channels,
        image_size=image_size, mean=args.mean, std=args.std, batch_size=args.batch_size,
        val_size=args.val_size, seed=args.seed, limit=args.limit,
    )


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


def _loaders(args: argparse.Namespace, spec: ModelSpec | None = None):
    """(splits, train, validation or None, test) loaders; with ``spec``, check the model fits the data."""
    splits = load_data(_data_config(args))
    if spec is not None:
        check_fits(spec, splits)
    return (splits, *make_loaders(splits, args.batch_size, args.seed))


def _bits(text: str | None, values: str) -> int | dict | None:
    """k-means bits from ``--bits``: a number, or per layer as inline JSON / a file."""
    if values == "kmeans" and text is None:
        raise ValueError("--values kmeans needs a bit width: add --bits N (N from 2 to 8) or a per-layer dict")
    if text is None:
        return None
    return int(text) if text.isdigit() else load_layer_settings(text)


def cmd_train(args: argparse.Namespace) -> None:
    splits, train_loader, val_loader, test_loader = _loaders(args)
    spec = model_for_data(args.model, splits)
    model = spec.build(seed=args.seed)
    history = train(model, train_loader, args.epochs, val_loader, args.lr, args.device, args.seed, keep_best=val_loader is not None)
    accuracy = evaluate(model, test_loader, args.device)
    save_checkpoint(args.out, model, spec, info={"stage": "baseline", "test_accuracy": accuracy, "data": splits.info})
    print(f"test accuracy {accuracy:.2f} % (best epoch {history.best_epoch}); saved {args.out}")


def cmd_inspect(args: argparse.Namespace) -> None:
    model, spec, _ = _load(args, args.checkpoint)
    out = Path(args.out)
    stats = {
        "model": asdict(spec), **model_stats(model, args.bit_width),
        "macs_dense": count_macs(model, (spec.in_channels, spec.image_size, spec.image_size)),
        "layers": [s.to_dict() for s in layer_stats(model, args.bit_width)],
    }
    write_json_atomic(out / "inspect.json", stats)
    plot_weight_distribution(model, out / "weight_distribution.png", count_nonzero_only=args.nonzero_only, show=args.show)
    plot_num_parameters_distribution(model, out / "num_parameters.png", show=args.show)
    print(layers_markdown(stats["layers"]))
    print(f"{stats['params']:,} parameters, {stats['nonzeros']:,} non-zero ({100 * stats['sparsity']:.1f} % sparse), "
          f"{stats['theoretical_mib']:.3f} MiB at {args.bit_width} bit, {stats['macs_dense']['total']:,} MACs; wrote {out}/")


def cmd_scan(args: argparse.Namespace) -> None:
    model, spec, _ = _load(args, args.checkpoint)
    splits, _, val_loader, test_loader = _loaders(args, spec)
    if args.split == "val" and val_loader is None:
        raise ValueError("scanning on the validation split needs --val-size > 0 (or --split test)")
    loader = val_loader if args.split == "val" else test_loader
    result = sensitivity_scan(model, loader, args.scan_step, args.scan_start, args.scan_end, method=args.method, device=args.device)
    result.meta.update(split=args.split, images=len(loader.dataset), data=splits.info)
    out = Path(args.out)
    result.to_json(out / "scan.json")
    result.plot(out / "sensitivity.png", show=args.show)
    print(f"dense accuracy {result.dense_accuracy:.2f} % on the {args.split} split; wrote {out}/scan.json and sensitivity.png")


def cmd_plan(args: argparse.Namespace) -> None:
    scan = ScanResult.from_json(args.scan)
    model = _load(args, args.checkpoint)[0] if args.checkpoint else None
    plan = make_plan(scan, model, args.target_sparsity, args.target_bytes, args.max_drop)
    write_json_atomic(args.out, plan.sparsity_dict)
    write_json_atomic(Path(args.out).with_suffix(".plan.json"), plan.to_dict())
    if args.plot:
        scan.plot(args.plot, chosen=plan.sparsity_dict)
    print(json.dumps(plan.sparsity_dict, indent=2))
    print(f"wrote {args.out}")


def cmd_prune(args: argparse.Namespace) -> None:
    model, spec, _ = _load(args, args.checkpoint)
    pruner = FineGrainedPruner(model, load_layer_settings(args.sparsity))
    save_checkpoint(args.out, model, spec, pruner.masks, {"stage": "pruned", "sparsity_dict": pruner.sparsity_dict})
    print(layers_markdown([s.to_dict() for s in layer_stats(model) if s.name in pruner.masks]))
    print(f"saved {args.out} with its masks")


def cmd_finetune(args: argparse.Namespace) -> None:
    model, spec, masks = _load(args, args.checkpoint)
    if masks is None:
        raise ValueError(f"{args.checkpoint} has no masks beside it; prune it first with 'edgeprune prune'")
    pruner = FineGrainedPruner.from_masks(masks)
    _, train_loader, val_loader, test_loader = _loaders(args, spec)
    history = finetune(model, pruner, train_loader, args.epochs, val_loader, args.lr, args.device, args.seed)
    accuracy = evaluate(model, test_loader, args.device)
    save_checkpoint(args.out, model, spec, pruner.masks, {"stage": "finetuned", "test_accuracy": accuracy})
    print(f"test accuracy {accuracy:.2f} % (best epoch {history.best_epoch}); saved {args.out}")


def cmd_compare(args: argparse.Namespace) -> None:
    labels = args.labels.split(",") if args.labels else [Path(p).stem for p in args.checkpoints]
    if len(labels) != len(args.checkpoints):
        raise ValueError(f"--labels names {len(labels)} models but {len(args.checkpoints)} checkpoints were given")
    loaded = [_load(args, path) for path in args.checkpoints]
    models = [(label, model, Path(path)) for label, (model, _, _), path in zip(labels, loaded, args.checkpoints)]
    _, _, _, test_loader = _loaders(args, loaded[0][1])
    out = Path(args.out)
    export_dir = None if args.export_values == "none" else out
    if args.export_values == "kmeans" and args.export_bits is None:
        raise ValueError("--export-values kmeans needs a bit width: add --export-bits N (N from 2 to 8)")
    rows = compare_models(models, test_loader, args.device, export_dir, args.export_values, args.export_bits)
    table = comparison_markdown(rows)
    write_text_atomic(out / "comparison.md", table)
    write_json_atomic(out / "comparison.json", rows)
    print(table)
    print(f"wrote {out}/comparison.md and comparison.json")


def cmd_export(args: argparse.Namespace) -> None:
    model, spec, _ = _load(args, args.checkpoint)
    bits = _bits(args.bits, args.values)
    if args.centroid_epochs:
        if args.values != "kmeans":
            raise ValueError("--centroid-epochs fine-tunes k-means centroids: use it with --values kmeans")
        share_weights(model, bits, _loaders(args, spec)[1], args.centroid_epochs, args.centroid_lr)
    save_compressed(model.state_dict(), args.out, values=args.values, bits=bits)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size:,} bytes; the dense checkpoint is {Path(args.checkpoint).stat().st_size:,})")


def cmd_run(args: argparse.Namespace) -> None:
    epochs = args.epochs if args.epochs is not None else 0 if args.weights else RunConfig.epochs
    cfg = RunConfig(
        model=args.model, data=_data_config(args), weights=args.weights, epochs=epochs,
        finetune_epochs=args.finetune_epochs, lr=args.lr, sparsity=args.sparsity,
        target_sparsity=args.target_sparsity, max_drop=args.max_drop, scan_split=args.scan_on,
        scan_start=args.scan_start, scan_step=args.scan_step, scan_end=args.scan_end,
        export_values=args.export_values, export_bits=args.export_bits, centroid_epochs=args.centroid_epochs, out=args.out, device=args.device, seed=args.seed,
    )
    results = run_experiment(cfg)
    print(comparison_markdown(results["comparison"]))
    print(f"report: {Path(cfg.out) / 'report.md'} (finished in {results['seconds']} s)")


def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default="basiccnn", help="basiccnn, a torchvision classifier (resnet18, vgg11_bn, mobilenet_v2, ...) or module.path:factory")
    g.add_argument("--dataset", default="fashion-mnist", choices=DATASETS)
    g.add_argument("--data-dir", help="where the data set is (default: Debian's /usr/share/datasets/fashion-mnist for fashion-mnist)")
    g.add_argument("--download", action="store_true", help="allow torchvision to download the data set (needs the network)")
    g.add_argument("--channels", type=int, choices=(1, 3), help="convert images to this many channels (3 is automatic for torchvision models)")
    g.add_argument("--image-size", type=int, help="resize images to this side length")
    g.add_argument("--num-classes", type=int, help="classes of an imagefolder data set")
    g.add_argument("--mean", type=float, default=0.5, help="Normalize mean per channel (the seed's 0.5)")
    g.add_argument("--std", type=float, default=0.5, help="Normalize std per channel (the seed's 0.5)")
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--val-size", type=int, default=5000, help="images held out of the training set for scans and model selection")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--limit", type=int, help="use at most this many images of each split (quick trials)")
    g.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")


def _add_scan_range(p: argparse.ArgumentParser, start: float, step: float) -> None:
    p.add_argument("--scan-start", type=float, default=start)
    p.add_argument("--scan-step", type=float, default=step)
    p.add_argument("--scan-end", type=float, default=1.0, help="exclusive, as in np.arange")


def build_parser() -> argparse.ArgumentParser:
    """The ``edgeprune`` argument parser with one subcommand per step of the pipeline."""
    parser = argparse.ArgumentParser(prog="edgeprune", description="Fine-grained pruning for edge devices.")
    parser.add_argument("--version", action="version", version=f"edgeprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="the whole experiment: train, scan, plan, prune, fine-tune, export, compare, report")
    _add_common(p)
    p.add_argument("--weights", help="start from this baseline checkpoint instead of training (.safetensors or a .pth state_dict)")
    p.add_argument("--epochs", type=int, help=f"baseline training epochs (default {RunConfig.epochs}; 0 with --weights)")
    p.add_argument("--finetune-epochs", type=int, default=RunConfig.finetune_epochs)
    p.add_argument("--lr", type=float, default=RunConfig.lr)
    p.add_argument("--sparsity", help="sparsity dict: inline JSON or a .json/.toml/.yaml file (default: planned from the scan)")
    p.add_argument("--target-sparsity", type=float, default=RunConfig.target_sparsity, help="planner budget: fraction of prunable weights removed")
    p.add_argument("--max-drop", type=float, help="plan by tolerance instead: largest sparsity per layer within this accuracy drop")
    p.add_argument("--scan-on", choices=("val", "test"), default="val", help="scan on the validation split (default) or the test set")
    _add_scan_range(p, 0.0, 0.05)
    p.add_argument("--export-values", default=RunConfig.export_values, choices=("fp32", "fp16", "int8", "kmeans"))
    p.add_argument("--export-bits", type=int, default=RunConfig.export_bits, help="bits of the k-means codebook")
    p.add_argument("--centroid-epochs", type=int, default=0, help="with kmeans: fine-tune the shared centroids this many epochs")
    p.add_argument("--out", default=RunConfig.out, help="report folder")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("train", help="train a baseline (Adam, lr 1e-3, batch 64, seeded) and save the checkpoint")
    _add_common(p)
    p.add_argument("--epochs", type=int, default=RunConfig.epochs)
    p.add_argument("--lr", type=float, default=RunConfig.lr)
    p.add_argument("--out", default="baseline.safetensors")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("inspect", help="parameters, non-zeros, sizes and MACs per layer; weight and parameter plots")
    _add_common(p)
    p.add_argument("checkpoint")
    p.add_argument("--bit-width", type=int, default=32)
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
    target.add_argument("--target-sparsity", type=float, help="budget: fraction of prunable weights to remove overall")
    target.add_argument("--target-bytes", type=int, help="budget: bytes of the remaining non-zeros (32 bit) of the prunable layers")
    target.add_argument("--max-drop", type=float, help="tolerance: accuracy drop allowed per layer, in points")
    p.add_argument("--plot", help="also write the curves with the chosen sparsities to this PNG")
    p.add_argument("--out", default="sparsity.json")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("prune", help="fine-grained magnitude pruning by a sparsity dict; saves the masks")
    _add_common(p)
    p.add_argument("checkpoint")
    p.add_argument("--sparsity", required=True, help="inline JSON or a .json/.toml/.yaml file; keys: names, 're:' regexes, '_default'")
    p.add_argument("--out", default="pruned.safetensors")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("finetune", help="fine-tune a pruned checkpoint, masks re-applied after every step")
    _add_common(p)
    p.add_argument("checkpoint")
    p.add_argument("--epochs", type=int, default=RunConfig.finetune_epochs)
    p.add_argument("--lr", type=float, default=RunConfig.lr)
    p.add_argument("--out", default="finetuned.safetensors")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("compare", help="the seed's comparison table for any set of checkpoints (Markdown and JSON)")
    _add_common(p)
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--labels", help="comma-separated names for the rows")
    p.add_argument("--export-values", default="fp32", choices=("fp32", "fp16", "int8", "kmeans", "none"),
                   help="export each model compressed this way and evaluate it decoded ('none' to skip)")
    p.add_argument("--export-bits", type=int, default=None)
    p.add_argument("--out", default="compare")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("export", help="write a compressed model file (sparse, quantized, entropy-coded)")
    _add_common(p)
    p.add_argument("checkpoint")
    p.add_argument("--values", default="fp32", choices=("fp32", "fp16", "int8", "kmeans"))
    p.add_argument("--bits", help="k-means bits: a number, or per layer as inline JSON / a file like the sparsity dict")
    p.add_argument("--centroid-epochs", type=int, default=0, help="fine-tune the k-means centroids for this many epochs first")
    p.add_argument("--centroid-lr", type=float, default=1e-4)
    p.add_argument("--out", default="model.epz")
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``edgeprune`` command; errors are printed as one clear line, exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"edgeprune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0
