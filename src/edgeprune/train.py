"""Loops: evaluate, train, and fine-tune with fixed masks. They take a model and a loader; no CLI here."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = ["pick_device", "evaluate", "train", "finetune", "TrainHistory"]


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, else CUDA when present, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    device: str | torch.device | None = None,
    progress: bool = False,
    desc: str = "eval",
) -> float:
    """Top-1 accuracy of ``model`` on ``loader``, in percent (100 * correct / total)."""
    device = pick_device(device)
    was_training = model.training
    model.eval().to(device)
    correct = total = 0
    for images, labels in tqdm(loader, desc=desc, leave=False, disable=not progress):
        images, labels = images.to(device), labels.to(device)
        correct += int((model(images).argmax(dim=1) == labels).sum())
        total += labels.numel()
    model.train(was_training)
    if total == 0:
        raise ValueError("evaluate: the data loader yielded no samples")
    return 100.0 * correct / total
