"""Loops: evaluate, train, fine-tune with fixed masks, and prune while training. They take a model and a loader; no CLI here."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from . import distributed
from .device import pick_device
from .prune.pruner import FineGrainedPruner
from .prune.schedule import SCHEDULES, GradualPruner, iterative_sparsities
from .task import CLASSIFICATION, Task

__all__ = ["batchnorm_layers", "evaluate", "recalibrate_batchnorm", "train", "finetune", "prune_gradually", "prune_iteratively", "Teacher", "TrainHistory", "LR_SCHEDULES"]

LR_SCHEDULES = ("constant", "cosine", "step")


@torch.inference_mode()
def evaluate(model: nn.Module, loader: Iterable, device: str | torch.device | None = None, task: Task = CLASSIFICATION) -> float:
    """The ``task``'s metric of ``model`` on ``loader``: by default top-1 accuracy in percent (100 * correct / total);
    for :data:`~edgeprune.task.RECONSTRUCTION` the mean squared error of the output against the input."""
    device = pick_device(device)
    was_training = model.training
    model.eval().to(device)
    total, count = 0.0, 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        batch_total, batch_count = task.batch_total(model(images), images, labels)
        total += batch_total
        count += batch_count
    model.train(was_training)
    if count == 0:
        raise ValueError("evaluate: the data loader yielded no samples")
    return task.finish(total, count)


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The model's BatchNorm layers that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable, device: str | torch.device | None = None) -> bool:
    """Re-estimate every BatchNorm's running mean and variance from ``batches`` ((images, labels) pairs) with the
    weights as they are now, as a plain average over the batches; nothing else changes (the other layers stay in
    eval mode). Pruning shifts what a layer feeds its BatchNorm, and the statistics of the dense model then
    mislead it: ResNet-8 at 50 % falls to 22 % accuracy, 75 % once recalibrated. Returns False, touching
    nothing, for a model without BatchNorm."""
    norms = batchnorm_layers(model)
    if not norms:
        return False
    device = next(model.parameters()).device if device is None else pick_device(device)
    was_training, momenta = model.training, [m.momentum for m in norms]
    model.eval().to(device)
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
        m.train()
    try:
        for images, _ in batches:
            model(images.to(device))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    return True


@dataclass
class TrainHistory:
    """Per-epoch training loss and evaluation metric, and the epoch kept (1-based).

    ``accuracy`` holds the task's metric after each epoch, named by ``metric`` (``accuracy`` in %, or ``mse``)."""

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    best_epoch: int = 0
    metric: str = "accuracy"


@dataclass
class Teacher:
    """Knowledge distillation (Hinton et al. 2015) from ``model``, usually the dense baseline of a pruned model.

    The loss becomes ``(1 - weight) * cross-entropy + weight * T² * KL(teacher ‖ student)`` on the logits
    divided by ``temperature`` T. The teacher is only evaluated (eval mode, no gradients).
    """

    model: nn.Module
    weight: float = 0.5
    temperature: float = 4.0

    def __post_init__(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise ValueError(f"the teacher must be an nn.Module, got {type(self.model).__name__}")
        if isinstance(self.weight, bool) or not 0.0 < self.weight <= 1.0:
            raise ValueError(f"distillation weight must be in (0, 1], got {self.weight!r}; e.g. 0.5")
        if isinstance(self.temperature, bool) or not self.temperature > 0:
            raise ValueError(f"distillation temperature must be positive, got {self.temperature!r}; e.g. 4")

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """The blended loss of a batch of student ``logits``."""
        with torch.no_grad():
            target = self.model(images)
        t = self.temperature
        soft = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(target / t, dim=1), reduction="batchmean", log_target=True)
        return (1.0 - self.weight) * F.cross_entropy(logits, labels) + self.weight * t * t * soft


def _train_epoch(model, loader, optimizer, device, after_step, desc, teacher: Teacher | None = None,
                 task: Task = CLASSIFICATION) -> float:
    model.train()
    total_loss, batches = 0.0, 0
    for images, labels in tqdm(loader, desc=desc, leave=False, disable=not distributed.is_main()):
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        logits = model(images)
        loss = task.loss(logits, images, labels) if teacher is None else teacher.loss(logits, labels, images)
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
    teacher: Teacher | None = None,
    task: Task = CLASSIFICATION,
) -> TrainHistory:
    """Train with Adam and the ``task``'s loss (cross-entropy, as the seed does); evaluate after each epoch when given a loader.

    ``after_step(model)`` runs after every optimizer step.
    With ``keep_best`` the weights of the epoch with the best evaluation metric are restored at the end.
    ``lr_schedule``: ``constant``, ``cosine`` (annealed to 0 over the epochs) or ``step`` (x0.1 every third of them).
    With a ``teacher`` the loss also distils the teacher's outputs (:class:`Teacher`; its model is moved to ``device``).
    Under ``torchrun`` (see :mod:`edgeprune.distributed`) the model is wrapped in DistributedDataParallel
    and each process trains on its shard of every epoch; every process ends with the same weights.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be at least 0, got {epochs}")
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {lr_schedule!r}; use one of {', '.join(LR_SCHEDULES)}")
    if teacher is not None and task is not CLASSIFICATION:
        raise ValueError(f"distillation matches a teacher's class probabilities: it does not apply to task {task.name!r}; "
                         "leave --distill out")
    torch.manual_seed(seed)
    device = pick_device(device)
    model.to(device)
    if teacher is not None:
        teacher.model.to(device).eval()
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
    history = TrainHistory(metric=task.metric)
    best_state, best_score = None, None
    for epoch in range(1, epochs + 1):
        if sampler is not None:
            sampler.set_epoch(epoch)
        history.loss.append(_train_epoch(net, train_loader, optimizer, device, after_step, f"epoch {epoch}/{epochs}", teacher, task))
        if scheduler is not None:
            scheduler.step()
        if eval_loader is not None:
            score = evaluate(model, eval_loader, device, task)
            history.accuracy.append(score)
            if distributed.is_main():
                tqdm.write(f"epoch {epoch}/{epochs}: loss {history.loss[-1]:.4f}, {task.metric} {task.format(score)}")
            if keep_best and task.better(score, best_score):
                best_score, history.best_epoch = score, epoch
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
    teacher: Teacher | None = None,
    task: Task = CLASSIFICATION,
) -> TrainHistory:
    """Fine-tune a pruned model with the pruner's masks attached (:meth:`FineGrainedPruner.attach`).

    Gradients at pruned positions are zero and the pruned weights are re-zeroed after every
    optimizer step, so they are exactly zero throughout. Keeps the best epoch by the ``task``'s metric on
    ``eval_loader``. The masks stay attached on return; ``edgeprune.prune.pruner.remove(model)`` detaches them.
    """
    pruner.attach(model)
    return train(model, train_loader, epochs, eval_loader, lr, device, seed, keep_best=True, lr_schedule=lr_schedule,
                 teacher=teacher, task=task)


def prune_gradually(
    model: nn.Module,
    train_loader: Iterable,
    targets: float | Mapping[str, object],
    epochs: int,
    schedule: str = "agp",
    eval_loader: Iterable | None = None,
    lr: float = 1e-3,
    device: str | torch.device | None = None,
    seed: int = 0,
    ramp_epochs: int | None = None,
    prunes_per_epoch: int = 10,
    initial: float = 0.0,
    max_sparsity: float = 0.99,
    lr_schedule: str = "constant",
    teacher: Teacher | None = None,
    task: Task = CLASSIFICATION,
) -> tuple[FineGrainedPruner, TrainHistory]:
    """Prune ``model`` to ``targets`` while training it ``epochs`` epochs in all; return the pruner and the history.

    ``schedule="agp"``: for ``ramp_epochs`` (default: all but a third of ``epochs``, at least 1)
    the sparsity follows :func:`~edgeprune.prune.schedule.agp_sparsity` from ``initial`` up to the targets, pruning
    ``prunes_per_epoch`` times an epoch and reaching the final sparsity at the ramp's last step;
    the remaining epochs fine-tune with the masks fixed (the best epoch on ``eval_loader`` kept).
    ``schedule="iterative"``: ``ramp_epochs`` (default ``epochs``) rounds of prune, then
    fine-tune, see :func:`prune_iteratively`. ``targets`` is a float (global magnitude across
    the prunable layers) or a sparsity dict. On return every pruned weight is exactly zero.
    ``lr_schedule`` applies to each phase on its own (the ramp, then the fine-tuning; each round
    of ``iterative``): a ``cosine`` schedule anneals to 0 at the end of each and restarts. With a ``teacher`` every
    phase distils it (:class:`Teacher`).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if epochs < 1:
        raise ValueError(f"gradual pruning trains while it prunes: epochs must be at least 1, got {epochs}")
    if schedule == "iterative":
        return prune_iteratively(
            model, train_loader, targets, ramp_epochs or epochs, epochs, eval_loader, lr, device, seed, max_sparsity,
            lr_schedule, teacher, task,
        )
    ramp = ramp_epochs if ramp_epochs is not None else max(1, epochs - epochs // 3)
    if not 1 <= ramp <= epochs or prunes_per_epoch < 1:
        raise ValueError(f"ramp_epochs must be between 1 and epochs ({epochs}) and prunes_per_epoch >= 1, got {ramp} and {prunes_per_epoch}")
    steps = ramp * len(train_loader)
    num_prunes = min(steps, ramp * prunes_per_epoch)
    frequency = max(1, steps // num_prunes)
    gradual = GradualPruner(model, targets, num_prunes, frequency, begin_step=steps - num_prunes * frequency,
                            initial=initial, max_sparsity=max_sparsity)
    history = train(model, train_loader, ramp, eval_loader, lr, device, seed, after_step=gradual, lr_schedule=lr_schedule,
                    teacher=teacher, task=task)
    pruner = gradual.fixed()
    if epochs > ramp:
        more = finetune(model, pruner, train_loader, epochs - ramp, eval_loader, lr, device, seed + 1, lr_schedule, teacher, task)
        history = _joined(history, more, ramp)
    return pruner, history


def prune_iteratively(
    model: nn.Module,
    train_loader: Iterable,
    targets: float | Mapping[str, object],
    rounds: int,
    epochs: int,
    eval_loader: Iterable | None = None,
    lr: float = 1e-3,
    device: str | torch.device | None = None,
    seed: int = 0,
    max_sparsity: float = 0.99,
    lr_schedule: str = "constant",
    teacher: Teacher | None = None,
    task: Task = CLASSIFICATION,
) -> tuple[FineGrainedPruner, TrainHistory]:
    """Han et al.'s iterative pruning: ``rounds`` rounds of prune by magnitude, then fine-tune, ``epochs`` epochs in all.

    Round ``r`` prunes to :func:`~edgeprune.prune.schedule.iterative_sparsities` (each layer's, or the global fraction),
    keeping what earlier rounds pruned, then fine-tunes with the masks fixed (epochs spread as
    evenly as possible, the last rounds getting the extra ones).
    """
    if not 1 <= rounds <= epochs:
        raise ValueError(f"rounds must be between 1 and epochs ({epochs}), got {rounds}; every round fine-tunes at least one epoch")
    gradual = GradualPruner(model, targets, num_prunes=rounds, frequency=1, max_sparsity=max_sparsity)
    final = gradual.final
    if isinstance(final, float):
        steps: list[float | dict[str, float]] = list(iterative_sparsities(final, rounds))
    else:
        per_layer = {name: iterative_sparsities(s, rounds) for name, s in final.items()}
        steps = [{name: values[r] for name, values in per_layer.items()} for r in range(rounds)]
    history, done = TrainHistory(metric=task.metric), 0
    for r, target in enumerate(steps):
        gradual.prune_to(model, target)
        share = epochs // rounds + (1 if r >= rounds - epochs % rounds else 0)
        more = finetune(model, gradual.fixed(), train_loader, share, eval_loader, lr, device, seed + r, lr_schedule, teacher, task)
        history = _joined(history, more, done)
        done += share
    return gradual.fixed(), history


def _joined(first: TrainHistory, second: TrainHistory, offset: int) -> TrainHistory:
    """Two histories one after the other; the kept epoch is the second's, counted after ``offset`` epochs."""
    return TrainHistory(first.loss + second.loss, first.accuracy + second.accuracy, offset + second.best_epoch, second.metric)
