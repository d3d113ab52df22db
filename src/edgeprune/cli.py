"""The command line: each subcommand parses its flags, calls one step of :mod:`edgeprune.steps` (or the run) and prints.

Every error a user can cause is one line naming the fix, with exit status 2; Ctrl-C exits with 130. The flags of
``run`` are made from :class:`~edgeprune.config.RunConfig`'s fields (help, bounds and the one set of defaults).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import warnings
from pathlib import Path

from . import __version__, distributed, steps
from .config import CRITERIA, EXPORT_VALUES, MCU_TARGETS, METHODS, SCAN_SPLITS, SPARSE_MODES, TASKS, Flag, RunConfig, data_config, flags, \
    read_config_file, run_config
from .report import comparison_markdown, engine_markdown, export_check_line, layers_markdown, mcu_table
from .run import run_experiment
from .task import task_named

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


FRACTION = _real(0.0, 1.0)


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line naming ``--help``."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# --------------------------------------------------------------------------- flags from the config's fields


def _add_flag(group, dest: str, flag: Flag, default: object, suppress: bool = False) -> None:
    """Add ``flag`` for the config field ``dest`` (``data.<field>`` for the data), its help naming ``default``.

    With ``suppress`` (``run``) a flag not given stays out of the namespace, so that a --config file can set it.
    """
    text = flag.help if default is None or default is False or "default" in flag.help else f"{flag.help} (default: {default})"
    name = dest.removeprefix("data.")
    kwargs = {"default": argparse.SUPPRESS if suppress else default, "dest": dest, "help": text}
    if flag.kind == "bool":
        group.add_argument(flag.name(name), action="store_true", **kwargs)
        return
    parse = {"int": lambda: _whole(int(flag.low), None if flag.high is None else int(flag.high)),
             "float": lambda: _real(flag.low, flag.high, flag.positive), "str": lambda: str}[flag.kind]()
    group.add_argument(flag.name(name), type=parse, choices=flag.choices, metavar=None if flag.choices else name.upper(), **kwargs)


COMMON = ("model", "width", "seed", "device")
"""The run's fields that every subcommand takes, besides the data's."""


def _add_common(p: argparse.ArgumentParser) -> None:
    """The model and data flags of the step-by-step subcommands, with RunConfig's and DataConfig's defaults."""
    g = p.add_argument_group("model and data")
    for dest, flag, default in flags():
        if dest in COMMON or dest.startswith("data."):
            _add_flag(g, dest, flag, default)
    g.add_argument("--num-classes", type=_whole(2, 100_000), help="classes of an imagefolder data set")


def _data(args: argparse.Namespace):
    """The data config of the common flags."""
    given = {dest.removeprefix("data."): value for dest, value in vars(args).items() if dest.startswith("data.")}
    return data_config(args.model, {**given, "seed": args.seed})


def _metric(metric: str, value: float) -> str:
    """``accuracy 91.25 %`` or ``mse 0.01234``: a metric value named."""
    return f"{metric} " + next(task.format(value) for task in TASKS.values() if task.metric == metric)


def _spec(args: argparse.Namespace):
    return steps.model_spec_from_flags(args.model, _data(args), args.num_classes, args.width)


# --------------------------------------------------------------------------- subcommands


def cmd_train(args: argparse.Namespace) -> None:
    accuracy, history, out = steps.train_checkpoint(args.model, _data(args), args.epochs, args.lr, args.device, args.seed, args.out,
                                                    args.width)
    print(f"test {_metric(history.metric, accuracy)} (best epoch {history.best_epoch}); saved {out}")


def cmd_inspect(args: argparse.Namespace) -> None:
    model, spec, _, _ = steps.load_model(args.checkpoint, _spec(args), args.device)
    stats = steps.inspect_model(model, spec, args.out, args.bit_width, args.nonzero_only, args.show)
    print(layers_markdown(stats["layers"]))
    print("output channels: " + ", ".join(f"{name} {c['out']}" for name, c in stats["channels"].items()))
    print(f"{stats['params']:,} parameters, {stats['nonzeros']:,} non-zero ({100 * stats['sparsity']:.1f} % sparse), "
          f"{stats['theoretical_mib']:.3f} MiB at {args.bit_width} bit, {stats['macs_dense']['total']:,} MACs; wrote {args.out}/")


def cmd_scan(args: argparse.Namespace) -> None:
    result = steps.scan_checkpoint(args.checkpoint, _spec(args), _data(args), args.scan_split, args.scan_start, args.scan_step,
                                   args.scan_end, args.scan_method, args.device, args.out, args.show)
    if result is not None:
        print(f"dense {_metric(result.metric_task.metric, result.dense_accuracy)} on the {args.scan_split} split; "
              f"wrote {args.out}/scan.json and sensitivity.png")


def cmd_plan(args: argparse.Namespace) -> None:
    sparsity = steps.plan_from_scan(args.scan, args.checkpoint, _spec(args), args.out, args.target_sparsity, args.max_drop,
                                    args.target_bytes, args.plot, args.device, args.budget)
    print(json.dumps(sparsity, indent=2))
    print(f"wrote {args.out}")


def cmd_prune(args: argparse.Namespace) -> None:
    result = steps.prune_checkpoint(args.checkpoint, _spec(args), _data(args), args.out, args.sparsity, args.channel_ratios,
                                    args.importance, args.device, args.seed)
    channels = result["channels"]
    if channels is not None:
        print(f"channels pruned: {channels['macs_dense']:,} -> {channels['macs']:,} MACs; output channels: "
              + ", ".join(f"{name} {c['out']}" for name, c in channels["channels"].items()))
    if result["layers"] is None:
        print(f"saved {result['path']}")
        return
    print(layers_markdown(result["layers"]))
    print(f"saved {result['path']} with the masks of {len(result['layers'])} layers")


def cmd_finetune(args: argparse.Namespace) -> None:
    accuracy, history, out = steps.finetune_checkpoint(args.checkpoint, _spec(args), _data(args), args.epochs, args.lr,
                                                       args.device, args.seed, args.out)
    print(f"test {_metric(history.metric, accuracy)} (best epoch {history.best_epoch}); saved {out}")


def cmd_compare(args: argparse.Namespace) -> None:
    values = None if args.export_values == "none" else args.export_values
    steps.compare_checkpoints(args.checkpoints, args.labels.split(",") if args.labels else None, _spec(args),
                              _data(args), args.device, args.out, values, args.export_bits, args.export_tolerance)
    print((Path(args.out) / "comparison.md").read_text(encoding="utf-8"))  # headed by the data's task's metric
    print(f"wrote {args.out}/comparison.md and comparison.json")


WEIGHT_BUDGET_HELP = ("c: at most this many bytes of weights and index, e.g. 15KB or 15KiB: layers take slower, more "
                      "compact sparse formats (4-bit entries) where that costs the fewest instructions per byte saved")
EXPORT_TOLERANCE_HELP = ("epz: how much the file may lose against the checkpoint on the validation split, what --bits "
                         "auto chooses by (default: 1 accuracy point; for a reconstruction 5, the MSE's increase in percent)")
EXPORT_FORMATS = {"epz": "model.epz", "onnx": "model.onnx", "tflite": "model.tflite", "c": "model_c"}  # format -> default --out


def cmd_export(args: argparse.Namespace) -> None:
    out = args.out or EXPORT_FORMATS[args.format]
    if args.format == "c":
        report = steps.c_engine_checkpoint(args.checkpoint, _spec(args), _data(args), out, args.sparse, args.device,
                                           args.weight_budget)
        print(engine_markdown(report))
        print(f"wrote the C engine into {out}/ (edgeprune_model.h, edgeprune_model.c, the kernels, layers.json) "
              f"from {report['tflite']}")
        return
    if Path(args.checkpoint).suffix == ".tflite":
        raise ValueError(f"{args.checkpoint} is already a .tflite: it exports only to the C engine (--format c)")
    row = steps.export_checkpoint(args.checkpoint, _spec(args), _data(args), out, args.format, args.values, args.bits,
                                  args.centroid_epochs, args.centroid_lr, args.calibration, args.softmax, args.c_source,
                                  args.device, args.seed, args.tolerance)
    if args.format == "epz":
        bits = row["bits"]
        per_layer = (", bits per layer " + ", ".join(f"{name} {b}" for name, b in bits.items())) if isinstance(bits, dict) else ""
        print(f"wrote {out} ({row['bytes']:,} bytes; the dense checkpoint is {row['checkpoint_bytes']:,}){per_layer}")
        check = row["check"]
        if check is not None:
            task = task_named(row["task"])
            if check["within"]:
                print(f"decoded on the validation split: {_metric(task.metric, check['decoded'])} against "
                      f"{task.format(check['reference'])}, within the tolerance {check['tolerance']:g}")
            else:
                print(f"warning: {export_check_line(Path(out).name, check, task)}")
        return
    task = task_named(row["task"])
    m = task.metric
    if args.format == "onnx":
        timing = row["onnx_latency"][1]
        print(f"wrote {out} ({Path(out).stat().st_size:,} bytes); onnxruntime {m} {task.format(row[f'onnx_{m}'])} on "
              f"{row['test_images']} test samples (PyTorch {task.format(row[m])}); outputs {'equal' if row['onnx_equal'] else 'NOT equal'} "
              f"within tolerance (max diff {row['onnx_max_abs_diff']:.1e}); batch-1 latency onnxruntime "
              f"{timing['onnx_ms']:.3f} ms, PyTorch {timing['torch_ms']:.3f} ms")
    else:
        print(f"wrote {out} ({row['tflite_bytes']:,} bytes, int8); TFLM {m} {task.format(row[f'tflite_{m}'])} on "
              f"{row['test_images']} test samples (PyTorch fp32 {task.format(row[m])}); tensor arena {row['tflite_arena_bytes']:,} bytes")
        if "c_source" in row:
            print(f"wrote {' and '.join(row['c_source'])}")
        for board in row["fits_on"]:
            print(f"  {board['board']}: model {100 * board['flash_used']:.1f} % of flash, arena {100 * board['ram_used']:.1f} % "
                  f"of RAM: {'fits' if board['fits'] else 'does not fit'}")


def cmd_mcu(args: argparse.Namespace) -> None:
    result = steps.mcu_checkpoint(args.checkpoint, _spec(args), _data(args), args.out, args.target, args.images, args.sparse,
                                  args.device, args.weight_budget, args.inputs, args.labels, args.seed, args.clock)
    print(mcu_table(result, result.get("clock_hz")))
    print(f"wrote {args.out}/mcu.json (and the engine, the builds and the run's files beside it)")


def cmd_run(args: argparse.Namespace) -> None:
    given = {dest: getattr(args, dest) for dest, _, _ in flags() if hasattr(args, dest)}
    cfg = run_config(read_config_file(args.config) if args.config else {}, given)
    results = run_experiment(cfg, overwrite=args.overwrite, resume=args.resume)
    if distributed.is_main():
        print(comparison_markdown(results["comparison"], TASKS[results["task"]["name"]]))
        print(f"report: {Path(cfg.out) / 'report.md'} (finished in {results['seconds']} s)")


def _add_scan_range(p: argparse.ArgumentParser, start: float, step: float) -> None:
    for dest, flag, default in flags():
        if dest in ("scan_start", "scan_step", "scan_end"):
            _add_flag(p, dest, flag, {"scan_start": start, "scan_step": step}.get(dest, default))


def build_parser() -> argparse.ArgumentParser:
    """The ``edgeprune`` argument parser with one subcommand per step of the pipeline."""
    parser = _Parser(prog="edgeprune", description="Fine-grained pruning for edge devices.")
    parser.add_argument("--version", action="version", version=f"edgeprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="the whole experiment: train, scan, plan, prune, fine-tune, export, compare, report",
                       description="Every flag is a field of the run config; flags given override a --config file.")
    p.add_argument("--config", help="a run config: .json (such as a run's config.json), .toml or .yaml with the fields "
                   "below as keys ('data' a table of the data flags); flags given override it")
    groups = {"model": p.add_argument_group("model and data"), "run": p.add_argument_group("the run")}
    for dest, flag, default in flags():
        group = groups["model" if dest in COMMON or dest.startswith("data.") else "run"]
        _add_flag(group, dest, flag, default, suppress=True)
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
    p.add_argument("--scan-split", choices=SCAN_SPLITS, default=RunConfig.scan_split,
                   help="scan on the validation split (default) or the test set")
    _add_scan_range(p, 0.4, 0.1)
    p.add_argument("--scan-method", choices=METHODS, default=RunConfig.scan_method)
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
    target.add_argument("--max-drop", type=_real(0.0, 100.0), help="tolerance: drop allowed per layer: accuracy points, or for a "
                        "reconstruction scan the MSE's increase in percent")
    for dest, flag, default in flags():  # the run's --budget, its help and default
        if dest == "budget":
            _add_flag(p, dest, flag, default)
    p.add_argument("--plot", help="also write the curves with the chosen sparsities to this PNG")
    p.add_argument("--out", default="sparsity.json")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("prune", help="fine-grained magnitude pruning by a sparsity dict (saves the masks), and/or whole channels")
    _add_common(p)
    p.add_argument("checkpoint")
    p.add_argument("--sparsity", help="inline JSON or a .json/.toml/.yaml file; keys: names, 're:' regexes, '_default'")
    p.add_argument("--channel-ratios", help="fraction of output channels removed per Conv2d/Linear module name, as --sparsity "
                   "(e.g. '{\"_default\": 0.5}'): a smaller dense model, pruned before --sparsity; the classes layer is kept")
    p.add_argument("--importance", choices=CRITERIA, default=RunConfig.channel_importance,
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
    p.add_argument("--export-values", default="fp32", choices=(*EXPORT_VALUES, "none"),
                   help="export each model compressed this way and evaluate it decoded ('none' to skip)")
    p.add_argument("--export-bits", help="bits of the k-means codebooks: auto (the default for kmeans: each model's "
                   "fewest per layer within --export-tolerance on the validation split), a number from 2 to 8, or per "
                   "layer as inline JSON / a file; 8 for int8")
    p.add_argument("--export-tolerance", type=_real(0.0), help=EXPORT_TOLERANCE_HELP)
    p.add_argument("--out", default="compare")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("export", help="write a compressed model file (sparse, quantized, entropy-coded), an ONNX or an int8 TFLite file")
    _add_common(p)
    p.add_argument("checkpoint")
    p.add_argument("--values", default="fp32", choices=EXPORT_VALUES)
    p.add_argument("--bits", help="k-means bits: auto (the default for kmeans: per layer, the fewest from 2 to 8 whose "
                   "decoded file stays within --tolerance on the validation split), a number, or per layer as inline JSON "
                   "/ a file like the sparsity dict; 8 for int8")
    p.add_argument("--tolerance", type=_real(0.0), help=EXPORT_TOLERANCE_HELP)
    p.add_argument("--centroid-epochs", type=_whole(0, 10_000), default=0, help="fine-tune the k-means centroids for this many epochs first")
    p.add_argument("--centroid-lr", type=_real(positive=True), default=steps.CENTROID_LR)
    p.add_argument("--format", default="epz", choices=tuple(EXPORT_FORMATS),
                   help="epz: compressed file (default); onnx: checked in onnxruntime; tflite: fully int8, checked in TensorFlow "
                   "Lite Micro; c: the C engine for Cortex-M (from the checkpoint's int8 .tflite, or from a .tflite given)")
    p.add_argument("--sparse", choices=SPARSE_MODES, default="auto",
                   help="c: sparse kernels per layer by the lower predicted cost (auto), for every conv/linear (always) or none (never)")
    p.add_argument("--weight-budget", help=WEIGHT_BUDGET_HELP)
    p.add_argument("--calibration", type=_whole(1), default=steps.CALIBRATION_IMAGES,
                   help="tflite: training images that calibrate the int8 activations")
    p.add_argument("--softmax", action="store_true", help="tflite: end the graph with an int8 softmax")
    p.add_argument("--c-source", help="tflite: also write model_data.cc and model_data.h into this folder")
    p.add_argument("--out", help="output file (default: model.epz, model.onnx or model.tflite by --format; the folder model_c for c)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("mcu", help="run a model on an emulated Cortex-M: the C engine in QEMU, outputs checked against "
                       "TFLite Micro, flash, RAM and instructions per layer")
    _add_common(p)
    p.add_argument("checkpoint", help="a checkpoint (exported to int8 .tflite first) or a fully int8 .tflite")
    p.add_argument("--target", choices=MCU_TARGETS, default="cortex-m4",
                   help="the core and its QEMU board: cortex-m4 (mps2-an386), cortex-m7 (mps2-an500), cortex-m55 (mps3-an547)")
    p.add_argument("--images", type=_whole(1, 100_000), default=steps.MCU_IMAGES,
                   help="a checkpoint: test samples run through the engine; a .tflite without --inputs: seeded random inputs")
    p.add_argument("--inputs", help="a .tflite: a .npy of inputs in the model's input dtype and shape (N x the input shape "
                   "without its batch); default: --images random inputs, no accuracy")
    p.add_argument("--labels", help="a .npy of N integer classes for --inputs: adds the accuracy")
    p.add_argument("--sparse", choices=SPARSE_MODES, default="auto", help="sparse kernels: auto (per layer, by cost), always, never")
    p.add_argument("--weight-budget", help=WEIGHT_BUDGET_HELP)
    p.add_argument("--clock", help="the core clock, e.g. 120MHz (Hz, kHz, MHz, GHz): adds the estimated "
                   "milliseconds per inference (estimated cycles / clock; a target without timing rules has none)")
    p.add_argument("--out", default="mcu")
    p.set_defaults(func=cmd_mcu)
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
    except steps.BelowLimit as exc:  # the run finished, but its model lost more than --max-loss
        print(f"{where}: error: {exc}", file=sys.stderr)
        return 1
    except steps.EngineMismatch as exc:  # the C engine differs from TFLM: our bug, never a result
        print(f"{where}: error: {exc}", file=sys.stderr)
        return 1
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
