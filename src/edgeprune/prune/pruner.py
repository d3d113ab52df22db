"""The seed's FineGrainedPruner: prunes a model on construction, owns the masks, re-applies them."""

from __future__ import annotations

import os
from typing import Mapping

import torch
from torch import nn

from ..files import load_state_dict_file, save_tensors
from .masks import fine_grained_prune
from ..models import prunable_parameters
from .settings import resolve_sparsity_dict

__all__ = ["FineGrainedPruner", "MASKS_FORMAT"]

MASKS_FORMAT = "edgeprune.masks/1"


class FineGrainedPruner:
    """Fine-grained magnitude pruning by a per-parameter sparsity dict, as in the seed.

    ``FineGrainedPruner(model, sparsity_dict)`` prunes ``model`` in place and keeps
    ``masks`` (parameter name -> bool mask, True = kept). ``apply(model)`` zeroes the
    pruned weights again, e.g. after an optimizer step.
    """

    def __init__(self, model: nn.Module, sparsity_dict: Mapping[str, object]) -> None:
        self.sparsity_dict = resolve_sparsity_dict(
            sparsity_dict, prunable_parameters(model), (name for name, _ in model.named_parameters())
        )
        self.masks = self.prune(model, self.sparsity_dict)

    @staticmethod
    @torch.no_grad()
    def prune(model: nn.Module, sparsity_dict: Mapping[str, float]) -> dict[str, torch.Tensor]:
        """Prune each named parameter of ``model`` in place; return the masks."""
        params = dict(model.named_parameters())
        return {name: fine_grained_prune(params[name], sparsity) for name, sparsity in sparsity_dict.items()}

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        """Zero every pruned weight of ``model`` (masks are moved to each parameter's device)."""
        params = dict(model.named_parameters())
        for name, mask in self.masks.items():
            if mask.device != params[name].device:
                self.masks[name] = mask = mask.to(params[name].device)
            params[name].masked_fill_(~mask, 0.0)

    @classmethod
    def from_masks(cls, masks: Mapping[str, torch.Tensor]) -> "FineGrainedPruner":
        """A pruner that owns given masks (loaded from a checkpoint) without pruning anything."""
        pruner = cls.__new__(cls)
        pruner.masks = dict(masks)
        pruner.sparsity_dict = {
            name: 1.0 - int(mask.sum()) / mask.numel() if mask.numel() else 0.0 for name, mask in masks.items()
        }
        return pruner

    def save(self, path: str | os.PathLike) -> None:
        """Save the masks as a safetensors file (atomically)."""
        save_tensors(path, self.masks, {"format": MASKS_FORMAT})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FineGrainedPruner":
        """Load masks saved by :meth:`save`."""
        masks, _ = load_state_dict_file(path)
        return cls.from_masks(masks)
