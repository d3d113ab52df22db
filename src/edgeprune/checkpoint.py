"""Model files: one reader per file format and one writer beside it, each with the model spec in its header.

- ``.safetensors`` checkpoints: :func:`save_checkpoint` writes them, masks beside them in
  ``<stem>.masks.safetensors`` (:func:`save_masks`, :func:`load_masks`);
- ``.epz`` compressed exports: :func:`save_compressed_model` writes them (the format of
  :mod:`edgeprune.export.epz`, with the same spec header);
- plain PyTorch ``.pth`` state_dicts (the seed's): read only, with ``torch.load(weights_only=True)``.

:func:`open_model_file` reads any of them with its format's reader: the stored tensor shapes and
the header come from the checked file header, and the tensors are read only when asked for.
:func:`load_checkpoint` checks the spec against those shapes (on the ``meta`` device) first.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import nn

from .export.epz import read_compressed, save_compressed
from .files import check_is_file, load_pth, load_safetensors, safetensors_header, save_tensors
from .models import ModelSpec, build_skeleton, resize_to_state_dict

__all__ = [
    "save_checkpoint", "save_compressed_model", "save_masks", "load_masks", "load_checkpoint", "open_model_file",
    "StoredModel", "model_header", "check_shapes", "shape_mismatches", "read_tensors", "masks_path_for",
    "CHECKPOINT_FORMAT", "MASKS_FORMAT", "MODEL_FLAGS",
]

CHECKPOINT_FORMAT = "edgeprune.checkpoint/1"
MASKS_FORMAT = "edgeprune.masks/1"
NO_SPEC = "pass spec=ModelSpec(name, in_channels, num_classes, image_size) for the model it holds"


def model_header(model: nn.Module, spec: ModelSpec, info: dict | None = None) -> dict[str, str]:
    """The header fields that rebuild ``model``: its ``spec`` and ``info`` as JSON, ``channel_pruned`` marked in ``info``
    when its tensors are smaller than ``spec`` builds (used by checkpoints and by ``.epz`` exports)."""
    full = {name: tuple(t.shape) for name, t in build_skeleton(spec).state_dict().items()}
    info = dict(info or {})
    if any(full.get(name) != tuple(t.shape) for name, t in model.state_dict().items()):
        info["channel_pruned"] = True
    fields = {key: value for key, value in asdict(spec).items() if value is not None}  # unset optional fields stay out
    return {"spec": json.dumps(fields), "info": json.dumps(info)}


@dataclass(frozen=True)
class StoredModel:
    """What a model file holds, from its checked header: tensor shapes, header fields, and a reader of its tensors."""

    shapes: dict[str, tuple[int, ...]]
    header: dict[str, str]
    read: Callable[[], dict[str, torch.Tensor]]


# --------------------------------------------------------------------------- safetensors checkpoints, and their masks


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
    A model whose tensors are smaller than ``spec`` builds (channel pruning) is marked
    ``channel_pruned`` in ``info``, so that loading resizes its layers.
    """
    path = Path(path)
    meta = {"format": CHECKPOINT_FORMAT, **model_header(model, spec, info)}
    masks_path_for(path).unlink(missing_ok=True)  # never leave old masks beside new weights
    save_tensors(path, model.state_dict(), meta)
    if masks:
        save_masks(masks_path_for(path), masks)
    return path


def _open_safetensors(path: Path) -> StoredModel:
    shapes, header = safetensors_header(path)
    return StoredModel(shapes, header, lambda: load_safetensors(path)[0])


def masks_path_for(path: str | os.PathLike) -> Path:
    """Where the masks of checkpoint ``path`` live: ``model.safetensors`` -> ``model.masks.safetensors``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.masks.safetensors")


def save_masks(path: str | os.PathLike, masks: Mapping[str, torch.Tensor]) -> None:
    """Write pruning masks (parameter name -> bool mask) as a safetensors file, atomically."""
    save_tensors(path, dict(masks), {"format": MASKS_FORMAT})


def load_masks(path: str | os.PathLike, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Masks written by :func:`save_masks`; with ``model``, each is checked to fit its parameter before any is read."""
    shapes, _ = safetensors_header(path)
    if model is not None:
        params = {name: tuple(p.shape) for name, p in model.named_parameters()}
        for name, shape in shapes.items():
            if params.get(name) != shape:
                raise ValueError(f"{path}: mask {name!r} does not match the model; delete the file or re-prune")
    masks, _ = load_safetensors(path)
    if any(mask.dtype != torch.bool for mask in masks.values()):
        raise ValueError(f"{path}: holds masks that are not bool tensors; delete the file or re-prune")
    return masks


# --------------------------------------------------------------------------- compressed .epz exports


def save_compressed_model(
    path: str | os.PathLike,
    model: nn.Module,
    spec: ModelSpec | None = None,
    values: str | Mapping[str, str] = "kmeans",
    bits: int | Mapping[str, int] | None = None,
) -> Path:
    """Write ``model`` as a compressed ``.epz`` file (sparse, quantized, entropy-coded); return the path.

    With ``spec`` the file's header carries it (and whether channels were pruned), so that :func:`load_checkpoint`
    and every CLI command load the file without model flags, a channel-pruned model included."""
    header = model_header(model, spec, {"stage": "export"}) if spec is not None else None
    save_compressed(model.state_dict(), path, values=values, bits=bits, header=header)
    return Path(path)


def _open_epz(path: Path) -> StoredModel:
    file = read_compressed(path)  # checksum and every header field checked; decoded only by read()
    return StoredModel(file.shapes(), file.header, file.decode)


# --------------------------------------------------------------------------- plain PyTorch state_dicts (read only)


def _open_pth(path: Path) -> StoredModel:
    state = load_pth(path)  # a pickle has no header: its tensors are its shapes
    return StoredModel({name: tuple(t.shape) for name, t in state.items()}, {}, lambda: state)


# --------------------------------------------------------------------------- any model file, by its suffix


READERS: dict[str, Callable[[Path], StoredModel]] = {".safetensors": _open_safetensors, ".epz": _open_epz}
"""The reader of each file suffix; any other file is read as a PyTorch state_dict (``.pth``, ``.pt``)."""


def open_model_file(path: str | os.PathLike) -> StoredModel:
    """Open a checkpoint, a plain ``.pth`` state_dict or a compressed ``.epz`` export with its format's reader."""
    path = check_is_file(path)
    return READERS.get(path.suffix, _open_pth)(path)


def read_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header of a checkpoint, a plain ``.pth`` state_dict or a compressed ``.epz`` export."""
    stored = open_model_file(path)
    return stored.read(), stored.header


# --------------------------------------------------------------------------- loading a model


MODEL_FLAGS = "--model, --dataset, --channels, --image-size, --num-classes"


def shape_mismatches(
    stored: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]
) -> tuple[list[str], list[str], list[tuple[str, tuple[int, ...], tuple[int, ...]]]]:
    """(names the file lacks, names the model lacks, (name, stored shape, expected shape) that differ), in the model's order."""
    missing = [name for name in expected if name not in stored]
    unexpected = [name for name in stored if name not in expected]
    differ = [
        (name, tuple(stored[name]), tuple(shape))
        for name, shape in expected.items()
        if name in stored and tuple(stored[name]) != tuple(shape)
    ]
    return missing, unexpected, differ


def _and_more(items: list) -> str:
    return f" (and {len(items) - 1} more)" if len(items) > 1 else ""


def _basiccnn_flags(stored: dict[str, tuple[int, ...]], spec: ModelSpec) -> str | None:
    """The flags that make ``spec`` fit a BasicCNN file, read off its shapes (only those that differ, with what it holds);
    None when the file is not a BasicCNN of the seed's channel counts, or no flag differs."""
    keys = {f"{layer}.{kind}" for layer in ("conv1", "conv2", "fc1", "fc2") for kind in ("weight", "bias")}
    if set(stored) != keys or len(stored["conv1.weight"]) != 4 or len(stored["fc2.weight"]) != 2 or len(stored["fc1.weight"]) != 2:
        return None
    side = math.isqrt(stored["fc1.weight"][1] // 32)
    if 32 * side * side != stored["fc1.weight"][1] or side < 1:
        return None
    channels, classes = stored["conv1.weight"][1], stored["fc2.weight"][0]
    flags = [("--model", "basiccnn", spec.name.lower() == "basiccnn"), ("--channels", channels, spec.in_channels == channels),
             ("--image-size", 4 * side, 4 * side <= spec.image_size <= 4 * side + 3), ("--num-classes", classes, spec.num_classes == classes)]
    differ = " ".join(f"{flag} {value}" for flag, value, fits in flags if not fits)
    held = f"{channels}-channel images of {4 * side} to {4 * side + 3} pixels and {classes} classes"
    return f"give {differ} (the file holds a basiccnn for {held})" if differ else None


def check_shapes(
    path: str | os.PathLike, spec: ModelSpec, stored: dict[str, tuple[int, ...]], channel_pruned: bool = False
) -> nn.Module:
    """Check that the tensors a file stores (names and shapes) are exactly those of ``spec``'s model; return its skeleton.

    The model is built on the ``meta`` device (no memory) to learn its shapes, so a file whose
    header promises a huge model is refused before anything is allocated. The error names the
    first missing and unexpected tensor, the first shape that differs, and the flags to give.
    A ``channel_pruned`` file may store fewer channels, never more: its layers are resized to the
    stored shapes (on ``meta``) before the comparison.
    """
    skeleton = build_skeleton(spec)
    if channel_pruned:
        full = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
        larger = [name for name, shape in stored.items() if name in full and
                  (len(shape) != len(full[name]) or any(a > b for a, b in zip(shape, full[name])))]
        if larger:
            raise ValueError(f"{path}: channel-pruned tensor {larger[0]!r} is stored as {list(stored[larger[0]])}, larger than "
                             f"model {spec.name!r}'s {list(full[larger[0]])}; re-save it or give the options it was trained with")
        resize_to_state_dict(skeleton, {name: torch.empty(shape, device="meta") for name, shape in stored.items()})
    expected = {name: tuple(t.shape) for name, t in skeleton.state_dict().items()}
    missing, unexpected, differ = shape_mismatches(stored, expected)
    if missing or unexpected or differ:
        found = []
        if missing:
            found.append(f"missing {missing[0]!r}{_and_more(missing)}")
        if unexpected:
            found.append(f"unexpected {unexpected[0]!r}{_and_more(unexpected)}")
        if differ:
            name, have, want = differ[0]
            found.append(f"{name!r} is stored as {list(have)} but the model has {list(want)}{_and_more(differ)}")
        fix = _basiccnn_flags(stored, spec) or f"give the options it was trained with ({MODEL_FLAGS})"
        raise ValueError(
            f"{path}: its tensors do not fit model {spec.name!r} (in_channels={spec.in_channels}, "
            f"image_size={spec.image_size}, num_classes={spec.num_classes}): {'; '.join(found)}; {fix}"
        )
    return skeleton


def _json_header(path: str | os.PathLike, meta: dict[str, str], key: str) -> object:
    try:
        return json.loads(meta.get(key) or "{}")
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{path}: its {key!r} header is damaged ({str(exc)[:100]}); retrain or re-save it") from exc


def _header_spec(path: Path, meta: dict[str, str], spec: ModelSpec | None, missing: str) -> ModelSpec:
    """The spec in the file's header when it has one (checked), else ``spec``; neither is a one-line error naming ``missing``."""
    if "spec" not in meta:
        if spec is None:
            raise ValueError(f"{path}: has no model spec of its own; {missing}")
        return spec
    fields = _json_header(path, meta, "spec")
    try:
        if not isinstance(fields, dict):
            raise TypeError(f"a JSON {type(fields).__name__}, not an object")
        header_spec = ModelSpec(**fields)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: its model spec header is damaged ({str(exc).splitlines()[0]}); retrain or re-save it") from exc
    if ":" in header_spec.name and (spec is None or spec.name != header_spec.name):
        raise ValueError(
            f"{path}: was saved from your own model factory {header_spec.name!r}; loading it imports and runs "
            f"that code, so say so: pass --model {header_spec.name} (in Python: spec=ModelSpec({header_spec.name!r}, ...))"
        )
    return header_spec


def load_checkpoint(
    path: str | os.PathLike, spec: ModelSpec | None = None, missing: str = NO_SPEC
) -> tuple[nn.Module, ModelSpec, dict[str, torch.Tensor] | None, dict]:
    """Rebuild a model from a checkpoint; return (model, spec, masks or None, info).

    A safetensors checkpoint or ``.epz`` export written by edgeprune carries its spec; for a plain
    ``.pth`` state_dict (such as the seed's), give ``spec``, else the error says ``missing`` (how to give it).
    Nothing is trusted before it is checked: the spec's fields are bounded (``ModelSpec``), and every
    stored tensor's name and shape (from the file's header, before any tensor is read) must match the
    model the spec builds on the ``meta`` device; only then are the model and its tensors allocated.
    """
    path = Path(path)
    stored = open_model_file(path)
    spec = _header_spec(path, stored.header, spec, missing)
    info = _json_header(path, stored.header, "info")
    channel_pruned = isinstance(info, dict) and info.get("channel_pruned") is True
    skeleton = check_shapes(path, spec, stored.shapes, channel_pruned)
    state = stored.read()
    if any(t.is_meta for t in skeleton.state_dict().values()):
        model = spec.build()
        if channel_pruned:  # a smaller dense model: its layers take the stored shapes
            resize_to_state_dict(model, state)
    else:
        model = skeleton
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # names and shapes fit; a dtype that cannot be copied is left
        raise ValueError(f"{path}: its tensors cannot be copied into model {spec.name!r} ({str(exc).splitlines()[0]}); re-save it") from exc
    masks_path = masks_path_for(path)
    masks = load_masks(masks_path, model) if masks_path.exists() else None
    return model, spec, masks, info if isinstance(info, dict) else {}
