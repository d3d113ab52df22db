"""Model checkpoints: safetensors files with the model spec in their header, masks beside them."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from .export.epz import load_compressed
from .files import load_state_dict_file, save_tensors
from .models import ModelSpec
from .prune.pruner import MASKS_FORMAT

__all__ = ["save_checkpoint", "load_checkpoint", "read_tensors", "masks_path_for", "CHECKPOINT_FORMAT", "MASKS_FORMAT"]

CHECKPOINT_FORMAT = "edgeprune.checkpoint/1"


def read_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header of a checkpoint, a plain ``.pth`` state_dict or a compressed ``.epz`` export."""
    if Path(path).suffix == ".epz":
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such file; give the path of a file written by 'edgeprune export'")
        return load_compressed(path), {}
    return load_state_dict_file(path)


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


def load_checkpoint(
    path: str | os.PathLike, spec: ModelSpec | None = None
) -> tuple[nn.Module, ModelSpec, dict[str, torch.Tensor] | None, dict]:
    """Rebuild a model from a checkpoint; return (model, spec, masks or None, info).

    A safetensors checkpoint written by edgeprune carries its spec; for a plain
    ``.pth`` state_dict (such as the seed's), give ``spec``.
    """
    state, meta = read_tensors(path)
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
