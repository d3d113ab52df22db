"""Files: atomic writes, and safe loading of tensor files from elsewhere (no code runs, no model is built here)."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

__all__ = [
    "atomic_path", "remove_stale_temporaries", "write_text_atomic", "write_json_atomic", "save_tensors",
    "load_safetensors", "load_pth", "load_state_dict_file", "safetensors_header", "check_is_file", "pid_alive",
    "writable_folder", "npy_header",
]


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid > 0
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that killed writers of ``path`` left beside it; return them.

    :func:`atomic_path` names its temporary ``.<name>.<pid>.<random>.tmp``. A process killed
    while writing (SIGKILL, SIGTERM, power loss) cannot remove it, so the next write of the same
    ``path`` does: every such file whose writer process no longer runs goes. Files of live
    writers, and files not named this way, are left alone.
    """
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2 : -len(".tmp")].split(".")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def writable_folder(path: str | os.PathLike, flag: str | None = None) -> Path:
    """``path`` as an output folder, made if missing and checked writable before any work; ``flag`` names it in errors."""
    path = Path(path)
    flag = flag or f"--out {path}"
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag}: is a file, not a folder; give a folder name (e.g. runs/demo)")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ValueError(f"{flag}: cannot write there ({exc.strerror or exc}); choose a folder you can write") from None
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    On any exception (KeyboardInterrupt included) the temporary file is removed; one left by a
    killed process is removed by the next write of ``path`` (:func:`remove_stale_temporaries`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    umask = os.umask(0)
    os.umask(umask)
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, data: object) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` to a safetensors file atomically (copied to the CPU, so tied weights are stored twice)."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def check_is_file(path: str | os.PathLike, what: str = "a checkpoint written by 'edgeprune train'") -> Path:
    """``path`` as a Path when it is a file; a folder or a missing path is a one-line error saying what to pass."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(
            p for p in path.iterdir()
            if p.suffix in (".safetensors", ".pth", ".pt", ".epz") and not p.name.endswith(".masks.safetensors")
        )
        hint = f"pass a file inside it, e.g. {inside[0]}" if inside else f"pass the path of {what}"
        raise ValueError(f"{path}: is a directory, not a file; {hint}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; give the path of {what}")
    return path


def safetensors_header(path: str | os.PathLike) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Shapes of the tensors in a safetensors file and its metadata, from the header alone (no tensor is read).

    The safetensors library refuses a header whose shapes, dtypes and offsets do not cover
    the file exactly, so these shapes are what loading the file would allocate.
    """
    path = check_is_file(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}, f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise _unreadable(path, exc) from exc


def _unreadable(path: Path, exc: Exception) -> ValueError:
    return ValueError(f"{path}: not a readable safetensors file ({exc}); re-save it or check the path")


def load_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of a safetensors file and its header metadata (the file's shapes and offsets are checked by safetensors)."""
    path = check_is_file(path)
    _, meta = safetensors_header(path)
    try:
        return load_file(str(path)), meta
    except (SafetensorError, OSError, ValueError) as exc:
        raise _unreadable(path, exc) from exc


def load_pth(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a plain PyTorch state_dict file (``torch.save(model.state_dict(), path)``; the seed's ``.pth``).

    Nothing is unpickled but tensors: it goes through ``torch.load(weights_only=True)``. A dict
    holding the state dict under ``"state_dict"`` (as training frameworks save it) is unwrapped.
    """
    path = check_is_file(path)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; the error below says what matters
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or corrupt files
        raise ValueError(
            f"{path}: cannot be read as a PyTorch state_dict with weights_only=True ({type(exc).__name__}: "
            f"{str(exc).split('. ')[0].splitlines()[0] if str(exc) else ''}); it may hold code, which is never run: "
            "save only tensors, with torch.save(model.state_dict(), path)"
        ) from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a state_dict of tensors; save model.state_dict()")
    return obj


def load_state_dict_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read tensors from a ``.safetensors`` file or a plain PyTorch ``.pth`` state_dict; return (tensors, header metadata)."""
    if Path(path).suffix == ".safetensors":
        return load_safetensors(path)
    return load_pth(path), {}


def npy_header(stream) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, header bytes) of the ``.npy`` array that ``stream`` is at the start of, read without its data
    and without pickle; ValueError for a format version other than 1.0 and 2.0. The dtype (object arrays need pickle)
    and the bytes the shape claims, ``prod(shape) * dtype.itemsize``, are the caller's to check against the file."""
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
    else:
        raise ValueError(f"npy format version {version[0]}.{version[1]} is not 1.0 or 2.0")
    return tuple(int(d) for d in shape), dtype, stream.tell()
