"""Reliability probe: run the ``edgeprune`` CLI on bad input, hostile files, odd folders and signals; tabulate what it says.

Every case is a real subprocess (``python -m edgeprune ...``) in its own temporary folder, on
the shipped Fashion-MNIST slice (``tests/data/fashion-mnist``) with tiny ``--limit``/``--epochs``.
For each case the exit status and the last line of stderr are recorded; a case is flagged when
its status differs from the expected one (2 for bad input, 130 for Ctrl-C, 0 where the command
should work), when stderr holds a ``Traceback``, when stderr has more than one line that is not
a progress bar, or when its own check fails (e.g. a pickle payload created its marker file).

    .venv/bin/python benchmarks/probe_reliability.py            # writes docs/reliability.md
    .venv/bin/python benchmarks/probe_reliability.py --only epz  # a subset, printed, nothing written

The fixtures are built from one real ``edgeprune run`` on the slice: its checkpoints and export
are then truncated, bit-flipped or given forged headers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pickle
import platform
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy
import safetensors.torch
import torch
from PIL import Image
from torch import nn

__all__ = ["Case", "Outcome", "build_cases", "main", "make_fixtures", "message_lines", "render", "run_case"]

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv" / "bin" / "python"
SLICE = ROOT / "tests" / "data" / "fashion-mnist"
QUICK = ["--data-dir", "slice", "--limit", "300", "--val-size", "100"]
"""Data flags of most cases, shown as ``[quick]`` in the table."""
TINY_RUN = ["run", *QUICK, "--epochs", "1", "--finetune-epochs", "1", "--scan-step", "0.5"]
CASE_TIMEOUT = 600
PROGRESS = re.compile(r"\d+%\|.*\||\[\d\d:\d\d<|\d+(\.\d+)?(it/s|s/it)\]")


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    """One probe: ``edgeprune <args>`` run in a fresh folder holding ``fx`` and ``slice`` links."""

    area: str
    name: str
    args: list[str]
    expect: int = 2
    setup: Callable[[Path], None] | None = None
    check: Callable[[Path], str] | None = None
    """Returns a problem ('' when fine), looked at after the command ends; gets the case folder."""
    interrupt_after: str | None = None
    """Send SIGINT once a stdout line matches this regex."""
    env: dict[str, str] = field(default_factory=dict)
    phase: int = 1
    """Phase-2 cases use what phase-1 cases left behind (fixture folders named in their args)."""


@dataclass
class Outcome:
    """What one case did."""

    case: Case
    status: int | None
    message: str
    problems: list[str]
    stderr: str
    seconds: float


def message_lines(stderr: str) -> list[str]:
    """The lines of ``stderr`` that are not tqdm progress bars (a bar redraws with ``\\r``)."""
    lines = []
    for line in stderr.split("\n"):
        for part in line.split("\r"):
            if part.strip() and not PROGRESS.search(part):
                lines.append(part.rstrip())
    return lines


def _copy_run(folder: str, extra: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
    def setup(case_dir: Path) -> None:
        shutil.copytree(case_dir / "fx" / "run", case_dir / folder)
        if extra:
            extra(case_dir / folder)
    return setup


def _lock(pid: int) -> Callable[[Path], None]:
    def setup(case_dir: Path) -> None:
        (case_dir / "r").mkdir()
        (case_dir / "r" / ".edgeprune.lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    return setup


def _absent(name: str) -> Callable[[Path], str]:
    def check(case_dir: Path) -> str:
        for place in (case_dir, case_dir / "fx"):
            if (place / name).exists():
                return f"{name} was created: code from the file ran"
        return ""
    return check


def _present(*names: str) -> Callable[[Path], str]:
    def check(case_dir: Path) -> str:
        missing = [n for n in names if not (case_dir / n).exists()]
        return f"missing after the command: {', '.join(missing)}" if missing else ""
    return check


def _no_lock(case_dir: Path) -> str:
    """The interrupted run's folder (``../interrupted``) must not stay locked."""
    return "the lock file was left behind" if (case_dir.parent / "interrupted" / ".edgeprune.lock").exists() else ""


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def build_cases() -> list[Case]:
    """Every probe, in table order."""
    base, prune = "fx/baseline.safetensors", ["prune", "fx/baseline.safetensors", "--sparsity"]
    insp = ["inspect"]
    train = ["train", *QUICK, "--epochs", "1"]
    cases = [
        Case("run", "tiny run on the slice (its folder fx/run is reused below)", [*TINY_RUN, "--out", "fx/run"], expect=0),
        # ---------------------------------------------------------------- sparsity dicts
        Case("sparsity", "bad JSON", [*prune, '{"conv1.weight": 0.5']),
        Case("sparsity", "value 1.5", [*prune, '{"conv1.weight": 1.5}']),
        Case("sparsity", "value -0.1", [*prune, '{"conv1.weight": -0.1}']),
        Case("sparsity", "value NaN", [*prune, '{"conv1.weight": NaN}']),
        Case("sparsity", "value true", [*prune, '{"conv1.weight": true}']),
        Case("sparsity", 'value "0.5" (a string)', [*prune, '{"conv1.weight": "0.5"}']),
        Case("sparsity", "unknown name", [*prune, '{"conv9.weight": 0.5}']),
        Case("sparsity", "only a bias named", [*prune, '{"conv1.bias": 0.5}'], expect=0),
        Case("sparsity", "bad regex", [*prune, '{"re:conv[": 0.5}']),
        Case("sparsity", "regex matching nothing", [*prune, '{"re:decoder\\\\..*": 0.5}']),
        Case("sparsity", "empty dict (prune)", [*prune, "{}"]),
        Case("sparsity", "empty dict (run)", [*TINY_RUN, "--sparsity", "{}", "--out", "r"]),
        Case("sparsity", "YAML with a python tag", [*prune, "fx/evil.yaml"], check=_absent("PWNED_yaml")),
        Case("sparsity", "TOML file (valid)", [*prune, "fx/good.toml"], expect=0),
        Case("sparsity", "TOML file (broken)", [*prune, "fx/bad.toml"]),
        Case("sparsity", "missing file", [*prune, "nowhere.json"]),
        Case("sparsity", "wrong name in run (before training)", [*TINY_RUN, "--sparsity", '{"fc9.weight": 0.5}', "--out", "r"]),
        # ---------------------------------------------------------------- checkpoints
        Case("checkpoint", "missing file", [*insp, "missing.safetensors"]),
        Case("checkpoint", "a directory", [*insp, "fx"]),
        Case("checkpoint", "empty file", [*insp, "fx/empty.safetensors"]),
        Case("checkpoint", "truncated safetensors", [*insp, "fx/truncated.safetensors"]),
        Case("checkpoint", "header length 2**60", [*insp, "fx/badheader.safetensors"]),
        Case("checkpoint", "header spec in_channels=1e6", [*insp, "fx/huge_in.safetensors"]),
        Case("checkpoint", "header spec num_classes=1e6", [*insp, "fx/huge_classes.safetensors"]),
        Case("checkpoint", "header spec image_size=1e9", [*insp, "fx/huge_image.safetensors"]),
        Case("checkpoint", "header spec is not JSON", [*insp, "fx/badspec.safetensors"]),
        Case("checkpoint", ".pth of another architecture", [*insp, "fx/other_arch.pth"]),
        Case("checkpoint", "seed .pth with --dataset cifar10", [*insp, "fx/seed_cifar.pth", "--dataset", "cifar10"], expect=0),
        Case("checkpoint", "seed .pth without flags (wrong geometry)", [*insp, "fx/seed_cifar.pth"]),
        Case("checkpoint", ".pth (zip) with a pickle payload", [*insp, "fx/evil_zip.pth"], check=_absent("PWNED_zip")),
        Case("checkpoint", ".pth (plain pickle) with a payload", [*insp, "fx/evil_raw.pth"], check=_absent("PWNED_raw")),
        Case("checkpoint", "factory checkpoint without --model", [*insp, "fx/factory.safetensors"],
             check=_absent("FACTORY_RAN"), env={"PYTHONPATH": "fx"}),
        Case("checkpoint", "factory checkpoint with --model", [*insp, "fx/factory.safetensors", "--model", "probe_factory:make"],
             expect=0, env={"PYTHONPATH": "fx"}),
        Case("checkpoint", "masks file beside it corrupt", ["finetune", "fx/badmasks.safetensors", *QUICK, "--epochs", "1"]),
        Case("checkpoint", "finetune a checkpoint without masks", ["finetune", base, *QUICK, "--epochs", "1"]),
        Case("checkpoint", "run --weights missing", [*TINY_RUN, "--weights", "missing.safetensors", "--out", "r"]),
        # ---------------------------------------------------------------- compressed files
        Case("epz", "valid export read back", [*insp, "fx/model.epz"], expect=0),
        Case("epz", "truncated", [*insp, "fx/truncated.epz"]),
        Case("epz", "bit flipped in a zstd stream", [*insp, "fx/flipped.epz"]),
        Case("epz", "claims a 2**40-element tensor (count disagrees)", [*insp, "fx/huge.epz"]),
        Case("epz", "claims 256 GiB, header consistent", [*insp, "fx/huge_consistent.epz"]),
        Case("epz", "claims a 1 TB raw stream", [*insp, "fx/huge_stream.epz"]),
        Case("epz", "tensors header not JSON", [*insp, "fx/badjson.epz"]),
        Case("epz", "one digit of the spec header changed (28 -> 29 pixels), checksum not updated", [*insp, "fx/spec_digit.epz"]),
        Case("epz", "a checkpoint renamed .epz", [*insp, "fx/not_really.epz"]),
        Case("epz", "export --bits 9", ["export", base, "--values", "kmeans", "--bits", "9"]),
        # ---------------------------------------------------------------- the C engine and device plans
        Case("mcu", "export --format c from a .tflite", ["export", "fx/model.tflite", "--format", "c", "--out", "c"], expect=0),
        Case("mcu", "--weight-budget 10 (below the most compact formats)",
             ["export", "fx/model.tflite", "--format", "c", "--weight-budget", "10", "--out", "c"]),
        Case("mcu", "--weight-budget '12 parsecs'", ["export", "fx/model.tflite", "--format", "c", "--weight-budget", "12 parsecs"]),
        Case("mcu", "--weight-budget with --sparse never",
             ["export", "fx/model.tflite", "--format", "c", "--weight-budget", "1MB", "--sparse", "never"]),
        Case("mcu", "a .tflite exported to --format tflite", ["export", "fx/model.tflite", "--format", "tflite"]),
        Case("mcu", "mcu on a truncated .tflite", ["mcu", "fx/truncated.tflite", "--data-dir", "slice", "--out", "m"]),
        Case("mcu", "mcu on a .tflite with a flipped byte in its weights", ["mcu", "fx/flipped.tflite", "--data-dir", "slice",
                                                                            "--val-size", "100", "--images", "2", "--out", "m"],
             expect=0),
        Case("mcu", "mcu on a missing .tflite", ["mcu", "nowhere.tflite", "--data-dir", "slice", "--out", "m"]),
        Case("mcu", "mcu --images 0", ["mcu", "fx/model.tflite", "--data-dir", "slice", "--images", "0"]),
        Case("mcu", "mcu --inputs of the wrong dtype", ["mcu", "fx/model.tflite", "--inputs", "fx/float_inputs.npy",
                                                         "--out", "m"]),
        Case("mcu", "mcu --inputs holding pickled objects", ["mcu", "fx/model.tflite", "--inputs", "fx/objects.npy",
                                                              "--out", "m"], check=_absent("PWNED_npy")),
        Case("mcu", "mcu --labels without --inputs", ["mcu", "fx/model.tflite", "--labels", "fx/labels.npy", "--out", "m"]),
        Case("mcu", "mcu --inputs for a checkpoint", ["mcu", "fx/baseline.safetensors", "--data-dir", "slice",
                                                       "--inputs", "fx/int8_inputs.npy", "--out", "m"]),
        Case("mcu", "mcu on an LSTM .tflite (unsupported op)", ["mcu", "fx/lstm.tflite", "--out", "m"]),
        Case("mcu", "mcu --inputs, --labels (valid)", ["mcu", "fx/model.tflite", "--inputs", "fx/int8_inputs.npy",
                                                        "--labels", "fx/labels.npy", "--out", "m"], expect=0),
        Case("mcu", "run a model too big for --mcu cortex-m0", [*TINY_RUN, "--model", "resnet8", "--channels", "3",
                                                               "--mcu", "cortex-m0", "--out", "r"]),
        # ---------------------------------------------------------------- tensors data sets (.npz)
        Case("tensors", "an .npz without x_test", ["train", "--dataset", "tensors", "--data-dir", "fx/no_test.npz",
                                                   "--model", "probe_factory:mlp", "--epochs", "1"]),
        Case("tensors", "an .npz holding a pickled object array", ["train", "--dataset", "tensors", "--data-dir",
                                                                   "fx/objects.npz", "--epochs", "1"],
             check=_absent("PWNED_npz")),
        Case("tensors", "an .npz whose header claims 2**40 floats", ["train", "--dataset", "tensors", "--data-dir",
                                                                     "fx/huge.npz", "--epochs", "1"]),
        Case("tensors", "an .npz with a label out of range", ["train", "--dataset", "tensors", "--data-dir",
                                                              "fx/bad_labels.npz", "--epochs", "1"]),
        Case("tensors", "an .npz (valid) with a model that cannot take its samples",
             ["train", "--dataset", "tensors", "--data-dir", "fx/good.npz", "--val-size", "10", "--epochs", "1"]),
        Case("mcu", "plan --budget macs without --checkpoint", ["plan", "fx/run/scan.json", "--budget", "macs",
                                                                "--target-sparsity", "0.5"], phase=2),
        Case("mcu", "run --target-flash 32 parsecs", [*TINY_RUN, "--target-flash", "32 parsecs", "--out", "r"]),
        Case("mcu", "run --target-flash 1KB (below the sparsest plan)", [*TINY_RUN, "--target-flash", "1KB", "--out", "r"]),
        # ---------------------------------------------------------------- data
        Case("data", "mnist, --data-dir missing", ["train", "--dataset", "mnist", "--data-dir", "nowhere", "--epochs", "1"]),
        Case("data", "fashion-mnist, --data-dir missing", ["train", "--data-dir", "nowhere", "--limit", "300", "--val-size", "100", "--epochs", "1"]),
        Case("data", "--data-dir is a file", ["train", "--dataset", "mnist", "--data-dir", "fx/afile", "--epochs", "1"]),
        Case("data", "imagefolder missing", ["train", "--dataset", "imagefolder", "--data-dir", "nowhere", "--epochs", "1"]),
        Case("data", "imagefolder, valid", ["train", "--dataset", "imagefolder", "--data-dir", "fx/images_ok", "--val-size", "2",
                                           "--image-size", "8", "--epochs", "1"], expect=0),
        Case("data", "imagefolder, test class not in train", ["train", "--dataset", "imagefolder", "--data-dir", "fx/images_mismatch",
                                                              "--val-size", "2", "--image-size", "8", "--epochs", "1"]),
        Case("data", "imagefolder, empty class folder", ["train", "--dataset", "imagefolder", "--data-dir", "fx/images_empty",
                                                         "--val-size", "2", "--image-size", "8", "--epochs", "1"]),
        Case("data", "imagefolder, corrupt JPEG", ["train", "--dataset", "imagefolder", "--data-dir", "fx/images_corrupt",
                                                   "--val-size", "2", "--image-size", "8", "--epochs", "1"]),
        Case("data", "--val-size larger than the set", ["train", "--data-dir", "slice", "--val-size", "100000", "--epochs", "1"]),
        Case("data", "checkpoint does not fit the data", ["scan", base, "--dataset", "imagefolder", "--data-dir", "fx/images_ok",
                                                         "--val-size", "2"]),
        # ---------------------------------------------------------------- output folders
        Case("output", "train --out is a folder", [*train, "--out", "fx"]),
        Case("output", "train --out under /proc", [*train, "--out", "/proc/x/model.safetensors"]),
        Case("output", "run --out is a file", [*TINY_RUN, "--out", "fx/afile"]),
        Case("output", "run --out /proc/x", [*TINY_RUN, "--out", "/proc/x"]),
        Case("output", "inspect --out /proc/x", [*insp, base, "--out", "/proc/x"]),
        Case("output", "run into another run's folder", [*TINY_RUN, "--out", "r"], setup=_copy_run("r"), phase=2),
        Case("output", "--overwrite (own notes.txt kept)", [*TINY_RUN, "--out", "r", "--overwrite"], expect=0, phase=2,
             setup=_copy_run("r", lambda d: (d / "notes.txt").write_text("mine")), check=_present("r/notes.txt", "r/report.md")),
        Case("output", "--resume, same config, finished run", [*TINY_RUN, "--out", "r", "--resume"], expect=0,
             setup=_copy_run("r"), phase=2),
        Case("output", "--resume with a different config", [*TINY_RUN, "--out", "r", "--resume", "--seed", "1"],
             setup=_copy_run("r"), phase=2),
        Case("output", "--overwrite with --resume", [*TINY_RUN, "--out", "r", "--overwrite", "--resume"]),
        Case("output", "folder locked by a live run", [*TINY_RUN, "--out", "r"], setup=_lock(os.getpid())),
        Case("output", "stale lock (its process is gone)", [*TINY_RUN, "--out", "r"], expect=0, setup=_lock(_dead_pid()),
             check=_present("r/report.md")),
        # ---------------------------------------------------------------- signals
        Case("signal", "SIGINT during run training", ["run", *QUICK, "--epochs", "5", "--finetune-epochs", "1", "--scan-step", "0.5",
                                                      "--out", "../interrupted"],
             expect=130, interrupt_after=r"^epoch 1/5", check=_no_lock),
        Case("signal", "SIGINT during train", ["train", "--data-dir", "slice", "--val-size", "100", "--epochs", "200"],
             expect=130, interrupt_after=r"^epoch 1/", check=lambda d: "" if not (d / "baseline.safetensors").exists()
             else "a checkpoint was written"),
        Case("signal", "SIGINT during finetune", ["finetune", "fx/run/pruned.safetensors", "--data-dir", "slice", "--val-size", "100",
                                                  "--epochs", "200"], expect=130, interrupt_after=r"^epoch 1/", phase=2),
        Case("signal", "--resume after the SIGINT", ["run", *QUICK, "--epochs", "5", "--finetune-epochs", "1", "--scan-step", "0.5",
                                                    "--out", "../interrupted", "--resume"], expect=0, phase=2,
             check=lambda d: _present("../interrupted/report.md")(d)),
        # ---------------------------------------------------------------- numeric flags
        Case("flags", "--seed 1e23", [*train, "--seed", "1e23"]),
        Case("flags", "--seed -1", [*train, "--seed", "-1"]),
        Case("flags", "--epochs -1", [*train[:-2], "--epochs", "-1"]),
        Case("flags", "--lr 0", [*train, "--lr", "0"]),
        Case("flags", "--lr nan", [*train, "--lr", "nan"]),
        Case("flags", "--target-sparsity 1.5", [*TINY_RUN, "--target-sparsity", "1.5", "--out", "r"]),
        Case("flags", "--export-bits 9", [*TINY_RUN, "--export-bits", "9", "--out", "r"]),
        Case("flags", "--export-values fp16 --export-bits 4", [*TINY_RUN, "--export-values", "fp16", "--export-bits", "4", "--out", "r"]),
        Case("flags", "--scan-step 0", ["scan", base, *QUICK, "--scan-step", "0"]),
        Case("flags", "--scan-start 0.9 --scan-end 0.5", ["scan", base, *QUICK, "--scan-start", "0.9", "--scan-end", "0.5"]),
        Case("flags", "--batch-size 0", [*train, "--batch-size", "0"]),
        Case("flags", "--limit 0", ["train", "--data-dir", "slice", "--limit", "0", "--epochs", "1"]),
        Case("flags", "--device meta", [*train, "--device", "meta"]),
        Case("flags", "--device cuda:9", [*train, "--device", "cuda:9"]),
        Case("flags", "--image-size 1", [*train, "--image-size", "1"]),
        Case("flags", "--model nosuchnet", [*train, "--model", "nosuchnet"]),
        Case("flags", "--model resnet18 --channels 1", [*train, "--model", "resnet18", "--channels", "1"]),
        Case("flags", "--model os:getcwd (returns a str)", [*train, "--model", "os:getcwd"]),
    ]
    return cases


# --------------------------------------------------------------------------- fixtures


class _Payload:
    """Unpickling this runs ``touch <marker>``: what a hostile .pth does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _forged(path: Path, state: dict, spec: object) -> None:
    from edgeprune.checkpoint import CHECKPOINT_FORMAT

    meta = {"format": CHECKPOINT_FORMAT, "spec": spec if isinstance(spec, str) else json.dumps(spec), "info": "{}"}
    safetensors.torch.save_file(state, str(path), metadata=meta)


def _reheader(src: Path, dst: Path, edit: Callable[[dict, list], None], signed: bool = True) -> None:
    """Copy a compressed file with its JSON records changed by ``edit(metadata, records)``.

    ``signed``: give it the checksum of its new content, as a forger would, so that the checks behind the checksum are
    probed; unsigned, the checksum itself is.
    """
    from edgeprune.export.epz import file_checksum

    with safetensors.safe_open(str(src), framework="numpy") as f:
        meta = dict(f.metadata())
        arrays = {key: f.get_tensor(key) for key in f.keys()}
    original = meta["tensors"]
    records = json.loads(original)
    edit(meta, records)
    if meta["tensors"] == original:  # the edit changed the records, not the raw text
        meta["tensors"] = json.dumps(records)
    if signed:
        meta["checksum"] = file_checksum(meta, {key: array.tobytes() for key, array in arrays.items()})
    safetensors.numpy.save_file(arrays, str(dst), metadata=meta)


def _images(root: Path, train: dict[str, int], test: dict[str, int], corrupt: bool = False) -> None:
    rng = np.random.default_rng(0)
    for split, classes in (("train", train), ("test", test)):
        for name, count in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    if corrupt:
        (root / "train" / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(rng.integers(0, 255, 300, dtype=np.uint8)))


def _forge_npz_shape(path: Path, member: str, old: str, new: str) -> None:
    """Rewrite the shape in one ``.npy`` header inside an ``.npz`` (the padding absorbs the longer text)."""
    with zipfile.ZipFile(path) as z:
        members = {name: z.read(name) for name in z.namelist()}
    raw = members[member]
    end = raw.index(b"\n")
    header = raw[:end].replace(old.encode(), new.encode())
    members[member] = header[:end] + raw[end:]
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


def make_fixtures(fx: Path) -> None:
    """Files the cases read: a real checkpoint and export of a seeded BasicCNN, then damaged or forged copies."""
    from edgeprune.checkpoint import save_checkpoint, save_compressed_model
    from edgeprune.models import BasicCNN, ModelSpec

    torch.manual_seed(0)
    model = BasicCNN(in_channels=1, num_classes=10, image_size=28)
    save_checkpoint(fx / "baseline.safetensors", model, ModelSpec("basiccnn", 1, 10, 28), info={"stage": "baseline"})
    save_compressed_model(fx / "model.epz", model, ModelSpec("basiccnn", 1, 10, 28), "kmeans", 4)
    state = safetensors.torch.load_file(str(fx / "baseline.safetensors"))
    raw = (fx / "baseline.safetensors").read_bytes()
    (fx / "empty.safetensors").write_bytes(b"")
    (fx / "truncated.safetensors").write_bytes(raw[: len(raw) // 2])
    (fx / "badheader.safetensors").write_bytes((2**60).to_bytes(8, "little") + raw[8:200])
    good = {"name": "basiccnn", "in_channels": 1, "num_classes": 10, "image_size": 28}
    _forged(fx / "huge_in.safetensors", state, {**good, "in_channels": 10**6})
    _forged(fx / "huge_classes.safetensors", state, {**good, "num_classes": 10**6})
    _forged(fx / "huge_image.safetensors", state, {**good, "image_size": 10**9})
    _forged(fx / "badspec.safetensors", state, '{"name": "basiccnn", "in_ch')
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).state_dict(), fx / "other_arch.pth")
    torch.manual_seed(0)
    torch.save(BasicCNN().state_dict(), fx / "seed_cifar.pth")
    torch.save({"conv1.weight": _Payload(fx / "PWNED_zip")}, fx / "evil_zip.pth")
    with open(fx / "evil_raw.pth", "wb") as f:
        pickle.dump({"conv1.weight": _Payload(fx / "PWNED_raw")}, f)
    (fx / "probe_factory.py").write_text(
        "from pathlib import Path\nfrom torch import nn\nPath('FACTORY_RAN').touch()\n\n\n"
        "def make():\n    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))\n"
    )
    # saving checks the model against its spec, which imports the factory: do it in fx, then drop its marker
    cwd = os.getcwd()
    sys.path.insert(0, str(fx))
    try:
        os.chdir(fx)
        save_checkpoint(fx / "factory.safetensors", nn.Sequential(nn.Flatten(), nn.Linear(784, 10)),
                        ModelSpec("probe_factory:make", 1, 10, 28))
    finally:
        os.chdir(cwd)
        sys.path.remove(str(fx))
        sys.modules.pop("probe_factory", None)
        (fx / "FACTORY_RAN").unlink(missing_ok=True)
    shutil.copy(fx / "baseline.safetensors", fx / "badmasks.safetensors")
    (fx / "badmasks.masks.safetensors").write_bytes(b"not a safetensors file at all")
    # int8 .tflite files: a real one, cut short, and one weight byte flipped (a different model, still valid)
    from edgeprune.export.tflite import export_tflite

    tflite = export_tflite(model, fx / "model.tflite", torch.randn(16, 1, 28, 28)).read_bytes()
    (fx / "truncated.tflite").write_bytes(tflite[: len(tflite) // 3])
    (fx / "flipped.tflite").write_bytes(tflite[:-2000] + bytes([tflite[-2000] ^ 0x01]) + tflite[-1999:])
    # .npy inputs for mcu, .npz data sets, and a .tflite holding an op the engine lacks (its FULLY_CONNECTED made LSTM)
    rng = np.random.default_rng(0)
    np.save(fx / "int8_inputs.npy", rng.integers(-128, 128, size=(3, 28, 28, 1), dtype=np.int8))
    np.save(fx / "float_inputs.npy", rng.normal(size=(3, 28, 28, 1)).astype(np.float32))
    np.save(fx / "labels.npy", np.array([0, 1, 2]))
    np.save(fx / "objects.npy", np.array([_Payload(fx / "PWNED_npy")], dtype=object), allow_pickle=True)
    x, y = rng.normal(size=(60, 12)).astype(np.float32), rng.integers(0, 3, 60)
    np.savez(fx / "good.npz", x_train=x, y_train=y, x_test=x[:20], y_test=y[:20])
    np.savez(fx / "no_test.npz", x_train=x, y_train=y)
    np.savez(fx / "bad_labels.npz", x_train=x, y_train=y, x_test=x[:20], y_test=y[:20] + 5)
    np.savez(fx / "objects.npz", x_train=np.array([_Payload(fx / "PWNED_npz")] * 2, dtype=object), x_test=x[:2],
             allow_pickle=True)
    np.savez(fx / "huge.npz", x_train=x, x_test=x[:20])
    _forge_npz_shape(fx / "huge.npz", "x_train.npy", "(60, 12)", "(1099511627776, 1)")
    with open(fx / "probe_factory.py", "a") as f:
        f.write("\n\ndef mlp():\n    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))\n")
    import tflite as schema

    model_bytes = bytearray(tflite)
    m = schema.Model.GetRootAs(tflite, 0)
    for i in range(m.OperatorCodesLength()):
        code = m.OperatorCodes(i)
        if code.BuiltinCode() == 9:  # FULLY_CONNECTED -> LSTM (16), both fields
            for field, fmt in ((10, "<i"), (4, "<b")):
                struct.pack_into(fmt, model_bytes, code._tab.Pos + code._tab.Offset(field), 16)
    (fx / "lstm.tflite").write_bytes(bytes(model_bytes))
    # compressed files
    epz = (fx / "model.epz").read_bytes()
    (fx / "truncated.epz").write_bytes(epz[: len(epz) - 100])
    flipped = bytearray(epz)
    flipped[len(epz) - 50] ^= 0x10
    (fx / "flipped.epz").write_bytes(bytes(flipped))

    def huge_shape(meta: dict, records: list) -> None:
        target = next(r for r in records if r["name"] == "fc1.weight")
        target["shape"] = [2**20, 2**20]

    def huge_consistent(meta: dict, records: list) -> None:  # every field agrees: 2**36 floats, 256 GiB decoded
        target = next(r for r in records if r["layout"] == "raw" and r["dtype"] == "float32")
        target.update(shape=[2**18, 2**18], count=2**36)
        target["streams"]["data"]["raw_length"] = 4 * 2**36

    def huge_stream(meta: dict, records: list) -> None:
        stream = next(iter(records[0]["streams"].values()))
        stream["raw_length"] = 10**12

    _reheader(fx / "model.epz", fx / "huge.epz", huge_shape)
    _reheader(fx / "model.epz", fx / "huge_consistent.epz", huge_consistent)
    _reheader(fx / "model.epz", fx / "huge_stream.epz", huge_stream)
    _reheader(fx / "model.epz", fx / "badjson.epz", lambda meta, records: meta.update(tensors="[{\"name\": "))
    spec_digit = lambda meta, records: meta.update(spec=meta["spec"].replace('"image_size": 28', '"image_size": 29'))  # noqa: E731
    _reheader(fx / "model.epz", fx / "spec_digit.epz", spec_digit, signed=False)
    shutil.copy(fx / "baseline.safetensors", fx / "not_really.epz")
    # sparsity files
    (fx / "evil.yaml").write_text(f'conv1.weight: !!python/object/apply:os.system ["touch {fx / "PWNED_yaml"}"]\n')
    (fx / "good.toml").write_text('"conv1.weight" = 0.5\n_default = 0.3\n')
    (fx / "bad.toml").write_text('"conv1.weight" = \n')
    (fx / "sparsity.txt").write_text('{"_default": 0.5}\n')
    (fx / "afile").write_text("just a file\n")
    # image folders
    _images(fx / "images_ok", {"a": 4, "b": 4}, {"a": 2, "b": 2})
    _images(fx / "images_mismatch", {"a": 4, "b": 4}, {"a": 2, "c": 2})
    _images(fx / "images_empty", {"a": 4}, {"a": 2})
    (fx / "images_empty" / "train" / "b").mkdir()
    _images(fx / "images_corrupt", {"a": 4, "b": 4}, {"a": 2, "b": 2}, corrupt=True)


# --------------------------------------------------------------------------- running


def _env(case: Case, case_dir: Path, src: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "EDGEPRUNE_DEBUG"}
    env.update(TQDM_DISABLE="1", PYTHONUNBUFFERED="1", **case.env)
    env["PYTHONPATH"] = os.pathsep.join([str(src), *([str(case_dir / case.env["PYTHONPATH"])] if "PYTHONPATH" in case.env else [])])
    return env


def run_case(case: Case, case_dir: Path, src: Path) -> Outcome:
    """Run one case in ``case_dir`` (made by :func:`_prepare`) with the package from ``src``; judge its output."""
    case_dir.mkdir(parents=True, exist_ok=True)
    if case.setup:
        try:
            case.setup(case_dir)
        except OSError as exc:  # e.g. the run folder it copies was not made
            return Outcome(case, None, f"(setup failed: {exc})", ["setup failed"], "", 0.0)
    cmd = [str(PYTHON), "-m", "edgeprune", *case.args]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=case_dir, env=_env(case, case_dir, src), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace")
    out_lines: list[str] = []
    err_chunks: list[str] = []
    signalled = threading.Event()

    def read_stdout() -> None:
        for line in proc.stdout:
            out_lines.append(line)
            if case.interrupt_after and not signalled.is_set() and re.search(case.interrupt_after, line):
                signalled.set()
                proc.send_signal(signal.SIGINT)

    readers = [threading.Thread(target=read_stdout), threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()))]
    for t in readers:
        t.start()
    try:
        status = proc.wait(timeout=CASE_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        status = None
    for t in readers:
        t.join()
    stderr = "".join(err_chunks).replace(str(src.parent) + os.sep, "")  # src/edgeprune/..., not a temporary path
    lines = message_lines(stderr)
    problems = []
    if status != case.expect:
        problems.append("timed out" if status is None else f"exit status {status}, expected {case.expect}")
    if case.interrupt_after and not signalled.is_set():
        problems.append("never reached the point to interrupt")
    if "Traceback" in stderr:
        problems.append("traceback on stderr")
    if len(lines) > 1:
        problems.append(f"{len(lines)} lines on stderr")
    if case.check:
        problem = case.check(case_dir)
        if problem:
            problems.append(problem)
    if lines:  # a Python warning's second line is its indented source line: show the warning
        message = ([line for line in lines if not line[0].isspace()] or lines)[-1]
    else:
        last = [line.strip() for line in out_lines if line.strip()]
        message = f"(stdout) {last[-1]}" if last else "(nothing)"
    return Outcome(case, status, message, problems, stderr, round(time.monotonic() - start, 1))


def _prepare(case_dir: Path, fx: Path) -> Path:
    case_dir.mkdir(parents=True)
    (case_dir / "fx").symlink_to(fx)
    (case_dir / "slice").symlink_to(SLICE)
    return case_dir


# --------------------------------------------------------------------------- report


def _cell(text: str, limit: int = 240) -> str:
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("|", "\\|").replace("<", "&lt;")


def _command(args: list[str]) -> str:
    shown = " ".join(a if re.fullmatch(r"[\w./:=+,-]+", a) else "'" + a + "'" for a in args)
    quick = " ".join(QUICK)
    shown = shown.replace(quick, "[quick]")
    return "`edgeprune " + _cell(shown, 150).replace("`", "'") + "`"


def render(outcomes: list[Outcome], seconds: float, jobs: int, code: str) -> str:
    """docs/reliability.md: intro, the probe table, the summary and the stderr of flagged cases."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {'CUDA' if torch.cuda.is_available() else 'no GPU'}, " \
              f"Python {platform.python_version()}, torch {torch.__version__}"
    load = os.getloadavg()[0]
    flagged = [o for o in outcomes if o.problems]
    tracebacks = sum("traceback on stderr" in o.problems for o in outcomes)
    wrong = sum(o.status != o.case.expect for o in outcomes)
    noisy = sum(any(p.endswith("lines on stderr") for p in o.problems) for o in outcomes)
    checks = sum(any(not (p.startswith("exit status") or p.endswith("on stderr") or p == "timed out") for p in o.problems)
                 for o in outcomes)
    parts = [
        "# Reliability probes",
        "",
        "What the `edgeprune` command line does when given bad input, hostile or damaged files, odd output folders,",
        "signals and out-of-range numbers. Each row is a real subprocess (`python -m edgeprune ...`, `TQDM_DISABLE=1`)",
        "run in its own temporary folder, where `slice/` is the shipped Fashion-MNIST slice `tests/data/fashion-mnist`",
        "and `fx/` holds the fixtures: a real checkpoint and k-means export of a seeded BasicCNN and damaged or forged",
        "copies of them (truncated, bit-flipped, headers rewritten), hostile `.pth`/YAML files, image folders, and",
        "`fx/run`, the folder of the first row's real run, which the later run-folder rows copy.",
        f"`[quick]` stands for `{' '.join(QUICK)}`.",
        "",
        "Expected exit status: 2 for bad input (one line naming the fix), 130 for Ctrl-C, 0 where the command should",
        "work. A row is flagged (**✗**) when the status differs, when stderr holds a `Traceback`, when stderr has more",
        "than one line that is not a progress bar, or when the case's own check fails (a pickle or YAML payload must not",
        "create its marker file; a factory module must not be imported unless `--model` names it; `--overwrite` must keep",
        "files that are not the run's). The message is the last line of stderr (or of stdout, marked, when stderr is empty).",
        "",
        (f"Regenerate: `.venv/bin/python benchmarks/probe_reliability.py` ({jobs} cases at a time; it took "
         f"{max(1, round(seconds / 60))} minutes here, on a machine shared with other work: load average {load:.0f} at the end)."),
        "",
        f"Measured {now} on {machine}; code: {code}.",
        "",
        "| area | case | command | exit status | message |",
        "|---|---|---|---|---|",
    ]
    for o in outcomes:
        status = "timeout" if o.status is None else str(o.status)
        status = f"{status} ✓" if not o.problems else f"**{status}** ✗" + (f" (want {o.case.expect})" if o.status != o.case.expect else "")
        message = _cell(o.message)
        others = [p for p in o.problems if not p.startswith("exit status")]
        if others:
            message = f"**[{_cell('; '.join(others))}]** {message}"
        parts.append(f"| {o.case.area} | {_cell(o.case.name)} | {_command(o.case.args)} | {status} | {message} |")
    parts += [
        "",
        "## Summary",
        "",
        f"- cases: {len(outcomes)}",
        f"- flagged: {len(flagged)}",
        f"- with a traceback: {tracebacks}",
        f"- wrong exit status: {wrong}",
        f"- more than one stderr line: {noisy}",
        f"- own check failed (payload ran, files lost, lock left, ...): {checks}",
        "",
    ]
    if flagged:
        parts += ["## Flagged cases: their stderr", ""]
        for o in flagged:
            lines = message_lines(o.stderr)
            shown = lines[-12:] if lines else ["(empty)"]
            parts += [f"**{o.case.area} / {o.case.name}** — {'; '.join(o.problems)}", "", "```",
                      "\n".join(line[:300] for line in shown), "```", ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    """Run the probes; write the table (unless ``--only``); 0 when nothing is flagged, else 1."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=6, help="cases run at once")
    parser.add_argument("--only", help="run only cases whose area or name contains this text (and the run that later cases reuse); print, write nothing")
    parser.add_argument("--out", default=str(ROOT / "docs" / "reliability.md"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--tree", action="store_true", help="probe the working tree instead of a snapshot of the commit HEAD")
    args = parser.parse_args(argv)
    # A shell starts background jobs with SIGINT ignored, and children inherit that: restore it for the signal cases.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    start = time.monotonic()
    cases = build_cases()
    if args.only:
        wanted = [c for c in cases if args.only in c.area or args.only in c.name]
        cases = ([cases[0]] if any(c.phase == 2 for c in wanted) and cases[0] not in wanted else []) + wanted  # fx/run
    tmp = Path(tempfile.mkdtemp(prefix="edgeprune-probe-"))
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        if args.tree:
            src, code = ROOT / "src", f"the working tree of that moment (HEAD was {head})"
        else:  # a snapshot, so that others' uncommitted edits do not change the answers half-way
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD", "src"], capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
            src, code = tmp / "src", f"commit {head} (a `git archive` of HEAD; `--tree` probes the working tree)"
        sys.path.insert(0, str(src))
        from edgeprune.files import write_text_atomic

        fx = tmp / "fx"
        fx.mkdir()
        make_fixtures(fx)
        outcomes: dict[int, Outcome] = {}
        for phase in (1, 2):
            todo = [(i, c) for i, c in enumerate(cases) if c.phase == phase]

            def one(item: tuple[int, Case]) -> None:
                i, case = item
                outcomes[i] = run_case(case, _prepare(tmp / f"case-{i:03d}", fx), src)
                o = outcomes[i]
                print(f"[{o.seconds:6.1f} s] {o.status} {'FLAG' if o.problems else 'ok  '} {case.area}/{case.name}: "
                      f"{o.message[:150]}{' -- ' + '; '.join(o.problems) if o.problems else ''}", flush=True)

            with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
                list(pool.map(one, todo))
        ordered = [outcomes[i] for i in range(len(cases))]
        seconds = time.monotonic() - start
        if not args.only:
            write_text_atomic(args.out, render(ordered, seconds, args.jobs, code))
            print(f"wrote {args.out}")
        flagged = [o for o in ordered if o.problems]
        print(f"{len(ordered)} cases, {len(flagged)} flagged, {seconds:.0f} s")
        return 1 if flagged else 0
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
