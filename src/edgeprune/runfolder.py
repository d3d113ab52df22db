"""A run's output folder: locked while a run writes it, never mixed with another run's files, resumable.

``RunFolder(path, config)`` is a context manager. On entry it checks that ``path`` is (or can
become) a writable folder, takes the lock ``.edgeprune.lock`` (a second run into the same folder is
refused while the first one's process lives), and then:

- an empty folder, or one without run files, is used as it is;
- a folder holding another run's files is refused, unless ``overwrite`` (the run files, and only
  those, are removed first) or ``resume`` (the saved ``config.json`` must equal this run's config;
  the steps recorded in ``progress.json`` are then skipped by the pipeline).

``mark_done(step, info)`` records a finished step atomically; ``done`` maps each finished step to its info.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Callable, Mapping

from .files import pid_alive, writable_folder, write_json_atomic

__all__ = ["RunFolder", "RUN_FILES", "LOCK_NAME"]

LOCK_NAME = ".edgeprune.lock"
PROGRESS_FORMAT = "edgeprune.progress/1"
RUN_FILES = (
    "config.json", "progress.json", "results.json", "report.md", "scan.json", "plan.json", "sparsity.json",
    "baseline.safetensors", "pruned.safetensors", "pruned.masks.safetensors", "finetuned.safetensors",
    "finetuned.masks.safetensors", "shared.safetensors", "shared.masks.safetensors",
    "channels.safetensors", "baseline.epz", "channels.epz", "pruned.epz", "finetuned.epz", "shared.epz",
    *(f"{stem}.{ext}" for stem in ("baseline", "channels", "pruned", "finetuned", "shared") for ext in ("onnx", "tflite")),
    "model_data.cc", "model_data.h",
    "sensitivity.png", "channel_scan.png", "weight_distribution.png", "weight_distribution_finetuned.png", "num_parameters.png",
)
"""Every file a run writes; ``overwrite`` removes these and nothing else."""

# Keys of the config that may change between an interrupted run and its resumption.
_MAY_DIFFER = ("out", "device", "force", "max_loss")  # the guard may be relaxed to continue a refused plan


class RunFolder:
    """The output folder of one run; see the module docstring."""

    def __init__(
        self, path: str | os.PathLike, config: Mapping, overwrite: bool = False, resume: bool = False,
        upgrade: Callable[[Mapping], Mapping] | None = None,
    ) -> None:
        if overwrite and resume:
            raise ValueError("choose one of --overwrite (start again) and --resume (continue), not both")
        self.path = Path(path)
        self.config = json.loads(json.dumps(dict(config)))  # as it will read back from config.json
        self.overwrite, self.resume = overwrite, resume
        self.upgrade = upgrade  # reads a config saved by an older version: renamed keys, defaults of keys it lacks
        self.done: dict[str, dict] = {}
        self._locked = False
        self._started = False  # this run wrote config.json afresh

    # ------------------------------------------------------------------ entry and exit

    def __enter__(self) -> "RunFolder":
        writable_folder(self.path)
        self._lock()
        try:
            self._prepare()
        except BaseException:
            self._unlock()
            raise
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is not None and self._started and not self.done:
            # stopped before any step finished (a check that failed, Ctrl-C in the first step): leave no run behind,
            # so that the same command, corrected, needs neither --overwrite nor --resume
            for name in ("config.json", "progress.json"):
                (self.path / name).unlink(missing_ok=True)
        self._unlock()

    def _lock(self) -> None:
        lock = self.path / LOCK_NAME
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._lock_holder(lock)
                if holder is not None:
                    raise ValueError(
                        f"--out {self.path}: another edgeprune run (pid {holder['pid']} on {holder['host']}) is writing "
                        "this folder; wait for it to finish or choose another --out"
                    ) from None
                lock.unlink(missing_ok=True)  # its writer is gone: a stale lock
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self._locked = True
            return
        raise ValueError(f"--out {self.path}: cannot take the lock {lock}; remove it if no run is writing the folder")

    @staticmethod
    def _lock_holder(lock: Path) -> dict | None:
        """Who holds ``lock``, or None when the lock is stale (its process is gone) or unreadable."""
        try:
            holder = json.loads(lock.read_text())
            pid, host = int(holder["pid"]), str(holder["host"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if host == socket.gethostname() and not pid_alive(pid):
            return None
        return {"pid": pid, "host": host}

    def _unlock(self) -> None:
        if self._locked:
            (self.path / LOCK_NAME).unlink(missing_ok=True)
            self._locked = False

    # ------------------------------------------------------------------ earlier runs

    def run_files(self) -> list[str]:
        """The run files present in the folder."""
        return [name for name in RUN_FILES if (self.path / name).exists()]

    def _prepare(self) -> None:
        present = self.run_files()
        if self.resume:
            self._load_progress()
        elif present and not self.overwrite:
            raise ValueError(
                f"--out {self.path}: holds the files of an earlier run ({', '.join(present[:3])}"
                f"{', ...' if len(present) > 3 else ''}); pass --resume to continue it, --overwrite to replace it, "
                "or choose another --out"
            )
        elif present:
            for name in present:
                (self.path / name).unlink()
        if not self.resume or not (self.path / "config.json").exists():
            write_json_atomic(self.path / "config.json", self.config)
            self._write_progress()
            self._started = True

    def _load_progress(self) -> None:
        config_path, progress_path = self.path / "config.json", self.path / "progress.json"
        if not config_path.exists():
            return  # nothing to resume: a fresh start
        try:
            saved = json.loads(config_path.read_text(encoding="utf-8"))
            progress = json.loads(progress_path.read_text(encoding="utf-8")) if progress_path.exists() else {}
        except (OSError, ValueError) as exc:
            raise ValueError(f"--resume: cannot read the saved run in {self.path} ({exc}); use --overwrite to start again") from exc
        if not isinstance(saved, dict) or not isinstance(progress, dict) or progress.get("format", PROGRESS_FORMAT) != PROGRESS_FORMAT:
            raise ValueError(f"--resume: {self.path} holds no edgeprune run state; use --overwrite to start again")
        if self.upgrade is not None:
            try:
                saved = json.loads(json.dumps(dict(self.upgrade(saved))))
            except ValueError as exc:
                raise ValueError(f"--resume: the saved config in {self.path} cannot be read ({exc}); use --overwrite to start again") from exc
        differ = sorted(k for k in set(saved) | set(self.config) if k not in _MAY_DIFFER and saved.get(k) != self.config.get(k))
        if differ:
            shown = "; ".join(f"{k}: saved {saved.get(k)!r}, now {self.config.get(k)!r}" for k in differ[:3])
            raise ValueError(
                f"--resume: the saved run in {self.path} has another config ({shown}); "
                "give the same flags as the interrupted run, or --overwrite to start again"
            )
        steps = progress.get("done", {})
        if not isinstance(steps, dict):
            raise ValueError(f"--resume: {self.path / 'progress.json'} is damaged; use --overwrite to start again")
        self.done = steps

    def _write_progress(self) -> None:
        write_json_atomic(self.path / "progress.json", {"format": PROGRESS_FORMAT, "done": self.done})

    def mark_done(self, step: str, info: Mapping) -> None:
        """Record that ``step`` finished (its files are written), with what resuming it needs."""
        self.done[step] = json.loads(json.dumps(dict(info)))
        self._write_progress()
