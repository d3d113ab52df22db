"""Files: atomic writes, model checkpoints (safetensors) and safe loading of files from elsewhere."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .models import build_model

__all__ = [
    "ModelSpec",
    "atomic_path",
    "write_text_atomic",
    "write_json_atomic",
    "save_tensors",
    "save_checkpoint",
    "load_checkpoint",
    "load_state_dict_file",
    "masks_path_for",
]

CHECKPOINT_FORMAT = "edgeprune.checkpoint/1"
MASKS_FORMAT = "edgeprune.masks/1"


@dataclass(frozen=True)
class ModelSpec:
    """What is needed to rebuild a model before loading its weights."""

    name: str = "basiccnn"
    in_channels: int = 1
    num_classes: int = 10
    image_size: int = 28

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"model name must be a non-empty string, got {self.name!r}")
        for field_name in ("in_channels", "num_classes", "image_size"):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field_name} must be a positive int, got {value!r}")

    def build(self, seed: int | None = None) -> nn.Module:
        """A freshly initialised model of this spec; its initial weights are seeded when ``seed`` is given."""
        if seed is not None:
            torch.manual_seed(seed)
        return build_model(self.name, self.in_channels, self.num_classes, self.image_size)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
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


def masks_path_for(path: str | os.PathLike) -> Path:
    """Where the masks of checkpoint ``path`` live: ``model.safetensors`` -> ``model.masks.safetensors``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.masks.safetensors")


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    spec: ModelSpec,
    masks: dict[str, torch.Tensor] | None = None,
    info: dict | None = None,
) -> Path:
    """Save the model's state_dict as safetensors with its spec in the header; masks go beside it.

    The weights file holds only the weights, so its size on disk is what a dense
    format costs; the masks (one bool per pruned weight) are in ``<stem>.masks.safetensors``.
    """
    path = Path(path)
    meta = {"format": CHECKPOINT_FORMAT, "spec": json.dumps(asdict(spec)), "info": json.dumps(info or {})}
    masks_path_for(path).unlink(missing_ok=True)  # never leave old masks beside new weights
    save_tensors(path, model.state_dict(), meta)
    if masks:
        save_tensors(masks_path_for(path), masks, {"format": MASKS_FORMAT})
    return path


def load_state_dict_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read tensors from a ``.safetensors`` file, a compressed ``.epz`` export or a plain PyTorch ``.pth`` state_dict.

    Nothing is unpickled: ``.pth`` files go through ``torch.load(weights_only=True)``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; give the path of a checkpoint written by 'edgeprune train'")
    if path.suffix == ".epz":
        from .compress import load_compressed  # compress imports this module

        return load_compressed(path), {}
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            return load_file(str(path)), meta
        except (SafetensorError, OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a readable safetensors file ({exc}); re-save it or check the path") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or corrupt files
        raise ValueError(
            f"{path}: cannot be read as a PyTorch state_dict with weights_only=True ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); save it with torch.save(model.state_dict(), path)"
        ) from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a state_dict of tensors; save model.state_dict()")
    return obj, {}


def load_checkpoint(
    path: str | os.PathLike, spec: ModelSpec | None = None
) -> tuple[nn.Module, ModelSpec, dict[str, torch.Tensor] | None, dict]:
    """Rebuild a model from a checkpoint; return (model, spec, masks or None, info).

    A safetensors checkpoint written by edgeprune carries its spec; for a plain
    ``.pth`` state_dict (such as the seed's), give ``spec``.
    """
    state, meta = load_state_dict_file(path)
    if "spec" in meta:
        try:
            stored = ModelSpec(**json.loads(meta["spec"]))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: its model spec header is damaged ({exc}); retrain or re-save it") from exc
        if ":" in stored.name and (spec is None or spec.name != stored.name):
            raise ValueError(
                f"{path}: was saved from your own model factory {stored.name!r}; loading it imports and runs "
                f"that code, so say so: pass --model {stored.name} (in Python: spec=ModelSpec({stored.name!r}, ...))"
            )
        spec = stored
    elif spec is None:
        raise ValueError(f"{path}: has no model spec; say which model it is (--model, --in-channels, --image-size)")
    model = spec.build()
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(
            f"{path}: its tensors do not fit model {spec.name!r} "
            f"(in_channels={spec.in_channels}, image_size={spec.image_size}, num_classes={spec.num_classes}): "
            f"{str(exc).splitlines()[0]}; give the model options the checkpoint was trained with"
        ) from exc
    masks = None
    mpath = masks_path_for(path)
    if mpath.exists():
        masks, _ = load_state_dict_file(mpath)
        params = dict(model.named_parameters())
        for name, mask in masks.items():
            if name not in params or params[name].shape != mask.shape or mask.dtype != torch.bool:
                raise ValueError(f"{mpath}: mask {name!r} does not match the model; delete the file or re-prune")
    info = json.loads(meta.get("info", "{}") or "{}")
    return model, spec, masks, info
