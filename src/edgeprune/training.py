"""Loops: evaluate, train, and fine-tune with fixed masks. They take a model and a loader; no CLI here."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from . import distributed
from .device import pick_device
from .prune.pruner import FineGrainedPruner

__all__ = ["evaluate", "train", "finetune", "TrainHistory", "LR_SCHEDULES"]

LR_SCHEDULES = ("constant", "cosine", "step")


@torch.inference_mode()
def evaluate(model: nn.Module, loader: Iterable, device: str | torch.device | None = None) -> float:
    """Top-1 accuracy of ``model`` on ``loader``, in percent (100 * correct / total)."""
    device = pick_device(device)
    was_training = model.training
    model.eval().to(device)
    correct = total = 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        correct += int((model(images).argmax(dim=1) == labels).sum())
        total += labels.numel()
    model.train(was_training)
    if total == 0:
        raise ValueError("evaluate: the data loader yielded no samples")
    return 100.0 * correct / total


@dataclass
class TrainHistory:
    """Per-epoch training loss and evaluation accuracy (%), and the epoch kept (1-based)."""

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    best_epoch: int = 0


def _train_epoch(model, loader, optimizer, device, after_step, desc) -> float:
    model.train()
    criterion = nn.CrossEntropyLoss()
    total_loss, batches = 0.0, 0
    for images, labels in tqdm(loader, desc=desc, leave=False, disable=not distributed.is_main()):
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = criterion(model(images), labels)
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step(model.module if isinstance(model, DistributedDataParallel) else model)
        total_loss += loss.item()
        batches += 1
    return total_loss / max(batches, 1)


def train(
    model: nn.Module,
    train_loader: Iterable,
    epochs: int,
    eval_loader: Iterable | None = None,
    lr: float = 1e-3,
    device: str | torch.device | None = None,
    seed: int = 0,
    after_step: Callable[[nn.Module], None] | None = None,
    keep_best: bool = False,
    lr_schedule: str = "constant",
) -> TrainHistory:
    """Train with Adam and cross-entropy, as the seed does; evaluate after each epoch when given a loader.

    ``after_step(model)`` runs after every optimizer step.
    With ``keep_best`` the weights of the epoch with the best evaluation accuracy are restored at the end.
    ``lr_schedule``: ``constant``, ``cosine`` (annealed to 0 over the epochs) or ``step`` (x0.1 every third of them).
    Under ``torchrun`` (see :mod:`edgeprune.distributed`) the model is wrapped in DistributedDataParallel
    and each process trains on its shard of every epoch; every process ends with the same weights.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be at least 0, got {epochs}")
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {lr_schedule!r}; use one of {', '.join(LR_SCHEDULES)}")
    torch.manual_seed(seed)
    device = pick_device(device)
    model.to(device)
    net, sampler = model, None
    if distributed.is_distributed() and epochs:
        train_loader, sampler = distributed.sharded_loader(train_loader, seed)
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    # fused Adam: one kernel for every tensor; with masks attached it costs +1.7 % a step against +7 % for the
    # per-tensor loop, whose sqrt of the all-zero state at pruned positions is slow on CPUs (docs/benchmarks.md)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=device.type in ("cpu", "cuda"))
    scheduler = None
    if lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    elif lr_schedule == "step":
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, epochs // 3), gamma=0.1)
    history = TrainHistory()
    best_state, best_acc = None, -1.0
    for epoch in range(1, epochs + 1):
        if sampler is not None:
            sampler.set_epoch(epoch)
        history.loss.append(_train_epoch(net, train_loader, optimizer, device, after_step, f"epoch {epoch}/{epochs}"))
        if scheduler is not None:
            scheduler.step()
        if eval_loader is not None:
            acc = evaluate(model, eval_loader, device)
            history.accuracy.append(acc)
            if distributed.is_main():
                tqdm.write(f"epoch {epoch}/{epochs}: loss {history.loss[-1]:.4f}, accuracy {acc:.2f} %")
            if keep_best and acc > best_acc:
                best_acc, history.best_epoch = acc, epoch
                best_state = copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    elif epochs:
        history.best_epoch = epochs
    return history


def finetune(
    model: nn.Module,
    pruner: FineGrainedPruner,
    train_loader: Iterable,
    epochs: int,
    eval_loader: Iterable | None = None,
    lr: float = 1e-3,
    device: str | torch.device | None = None,
    seed: int = 0,
    lr_schedule: str = "constant",
) -> TrainHistory:
    """Fine-tune a pruned model with the pruner's masks attached (:meth:`FineGrainedPruner.attach`).

    Gradients at pruned positions are zero and the pruned weights are re-zeroed after every
    optimizer step, so they are exactly zero throughout. Keeps the best epoch by ``eval_loader``
    accuracy. The masks stay attached on return; ``edgeprune.prune.pruner.remove(model)`` detaches them.
    """
    pruner.attach(model)
    return train(model, train_loader, epochs, eval_loader, lr, device, seed, keep_best=True, lr_schedule=lr_schedule)
