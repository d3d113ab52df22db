"""What a run is scored by: its *task*. Classification (accuracy, higher is better) or reconstruction (mean squared
error against the input, lower is better).

A task is a small immutable object that the loops are given (training, evaluation, the sensitivity scan, the planner's
tolerance, the comparison and the report); none of them tests a flag. It holds the training loss, how a batch adds to
the metric (:meth:`Task.batch_total` then :meth:`Task.finish`, so that the scan's fast path and :func:`evaluate` sum
the same numbers), and how a metric value compares with the dense model's (:meth:`Task.drop`, :meth:`Task.floor`).
"""

from __future__ import annotations

import math
import torch
from torch.nn import functional as F

__all__ = [
    "AUTOENCODERS", "CLASSIFICATION", "RECONSTRUCTION", "TASKS", "TASK_CHOICES", "Classification", "Reconstruction", "Task",
    "resolve_task", "task_named",
]


class Task:
    """A run's task: its name, its metric (name, unit, direction) and how a drop in it is counted.

    The *drop* of a metric value against the dense model's is what a planner tolerance (``max_drop``) bounds:

    * classification: accuracy points lost, ``dense - value`` (the seed's unit, and what every earlier run meant);
    * reconstruction: the relative increase of the MSE in percent, ``100 * (value - dense) / dense``. The MSE's
      scale is the data's (squared units of whatever the arrays hold), so an absolute tolerance would mean something
      different on every data set; a relative one reads the same everywhere ("at most 10 % worse") and, like
      accuracy points, is a number of the order of 1 to 100. A dense MSE of 0 counts any increase as unbounded.

    The default tolerance is the seed's lower bound for both: the error may grow to 1.5 times the dense model's
    (error rate ``100 - accuracy`` for classification, the MSE itself for reconstruction). The two tasks are
    :class:`Classification` and :class:`Reconstruction`; use the instances :data:`CLASSIFICATION` and
    :data:`RECONSTRUCTION` (or :func:`task_named`).
    """

    name: str
    metric: str  # the key of the metric in a comparison row and results.json
    unit: str
    higher_is_better: bool
    column: str  # the heading of the metric's column in a table
    drop_unit: str

    def loss(self, output: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training loss of a batch."""
        raise NotImplementedError

    def batch_total(self, output: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
        """A batch's (sum, count), added up over a loader and turned into the metric by :meth:`finish`."""
        raise NotImplementedError

    def finish(self, total: float, count: int) -> float:
        """The metric of summed batches."""
        raise NotImplementedError

    def drop(self, dense: float, value: float) -> float:
        """How much worse ``value`` is than ``dense``, in :attr:`drop_unit`."""
        raise NotImplementedError

    def floor(self, dense: float, max_drop: float) -> float:
        """The worst metric value within ``max_drop`` of ``dense`` (an accuracy floor, an MSE ceiling)."""
        raise NotImplementedError

    def lower_bound(self, dense: float) -> float:
        """The seed's bound: the metric value whose error is 1.5 times the dense model's."""
        raise NotImplementedError

    def worst_drop(self, dense: float) -> float:
        """The largest drop there is from ``dense``."""
        raise NotImplementedError

    def clamp(self, value: float) -> float:
        """A predicted metric value brought within what the metric can take."""
        raise NotImplementedError

    def within(self, value: float, floor: float) -> bool:
        """Whether ``value`` is at least as good as ``floor`` (:meth:`floor`)."""
        return value >= floor if self.higher_is_better else value <= floor

    def better(self, value: float, best: float | None) -> bool:
        """Whether ``value`` beats ``best`` (None: nothing yet)."""
        return best is None or (value > best if self.higher_is_better else value < best)

    def format(self, value: float) -> str:
        """A metric value as the report prints it: ``91.25 %`` or ``0.01234``."""
        return f"{value:.2f} %" if self.unit == "%" else f"{value:.5g}"

    def describe(self) -> dict:
        """The task as plain JSON data (``results.json``'s ``task``)."""
        return {"name": self.name, "metric": self.metric, "unit": self.unit, "higher_is_better": self.higher_is_better,
                "drop": self.drop_unit}


class Classification(Task):
    """Top-1 accuracy in percent; trained with cross-entropy; a drop is accuracy points lost."""

    name, metric, unit, higher_is_better, column, drop_unit = "classification", "accuracy", "%", True, "Accuracy (%)", "accuracy points lost"

    def loss(self, output: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the logits with the labels."""
        return F.cross_entropy(output, labels)

    def batch_total(self, output: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
        """(correct predictions, labels) of a batch."""
        return float(int((output.argmax(dim=1) == labels).sum())), labels.numel()

    def finish(self, total: float, count: int) -> float:
        """``100 * correct / labels``."""
        return 100.0 * total / _counted(count)

    def drop(self, dense: float, value: float) -> float:
        """Accuracy points lost: ``dense - value``."""
        return dense - value

    def floor(self, dense: float, max_drop: float) -> float:
        """The accuracy floor ``dense - max_drop``."""
        return dense - max_drop

    def lower_bound(self, dense: float) -> float:
        """The seed's floor ``100 - 1.5 * (100 - dense)``."""
        return 100.0 - 1.5 * (100.0 - dense)

    def worst_drop(self, dense: float) -> float:
        """All the accuracy: ``dense`` points."""
        return dense

    def clamp(self, value: float) -> float:
        """Within 0..100 %."""
        return min(100.0, max(0.0, value))


class Reconstruction(Task):
    """Mean squared error of the output against the input (an autoencoder); a drop is the MSE's relative increase in %."""

    name, metric, unit, higher_is_better, column, drop_unit = "reconstruction", "mse", "", False, "MSE", "relative MSE increase (%)"

    def loss(self, output: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The MSE of the output against the input (labels, if any, unused)."""
        return F.mse_loss(output, _like(output, inputs))

    def batch_total(self, output: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
        """(sum of squared errors in float64, elements) of a batch."""
        target = _like(output, inputs)
        return float((output.double() - target.double()).pow(2).sum()), target.numel()

    def finish(self, total: float, count: int) -> float:
        """``squared errors / elements``."""
        return total / _counted(count)

    def drop(self, dense: float, value: float) -> float:
        """``100 * (value - dense) / dense``; with a dense MSE of 0, any increase is unbounded."""
        if dense > 0:
            return 100.0 * (value - dense) / dense
        return 0.0 if value <= dense else math.inf

    def floor(self, dense: float, max_drop: float) -> float:
        """The MSE ceiling ``dense * (1 + max_drop / 100)``."""
        return dense * (1.0 + max_drop / 100.0)

    def lower_bound(self, dense: float) -> float:
        """``1.5 * dense``: the default tolerance, a 50 % increase."""
        return 1.5 * dense

    def worst_drop(self, dense: float) -> float:
        """Unbounded."""
        return math.inf

    def clamp(self, value: float) -> float:
        """At least 0."""
        return max(0.0, value)


def _counted(count: int) -> int:
    if count == 0:
        raise ValueError("the data loader yielded no samples to score")
    return count


def _like(output: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """The input as the reconstruction target, of the output's shape; a model whose output has another number of
    elements is an error naming both shapes."""
    if output.shape == inputs.shape:
        return inputs
    if output.numel() != inputs.numel():
        raise ValueError(f"reconstruction: the model's output {tuple(output.shape)} does not have the input's "
                         f"{tuple(inputs.shape)} elements; make the model return a tensor of the input's shape")
    return inputs.reshape(output.shape)


CLASSIFICATION = Classification()
RECONSTRUCTION = Reconstruction()
TASKS = {task.name: task for task in (CLASSIFICATION, RECONSTRUCTION)}
"""The tasks by name."""


TASK_CHOICES = ("auto", *TASKS)
"""What a run's ``task`` may be: ``auto`` (see :func:`resolve_task`) or a task's name."""
AUTOENCODERS = ("fc_autoencoder",)
"""Built-in models whose output is a reconstruction of their input, not classes."""


def resolve_task(requested: str, model: str, labeled: bool) -> Task:
    """The task of a run: ``requested`` by name, or for ``auto`` reconstruction when the data has no labels or
    ``model`` is an autoencoder (:data:`AUTOENCODERS`), else classification. Classification of data without labels is
    a one-line ValueError."""
    if requested not in TASK_CHOICES:
        raise ValueError(f"unknown task {requested!r}; use one of {', '.join(TASK_CHOICES)}")
    if requested == "auto":
        return RECONSTRUCTION if not labeled or model.lower() in AUTOENCODERS else CLASSIFICATION
    if requested == "classification" and not labeled:
        raise ValueError("task 'classification' needs labels but the data has none (no y_* arrays); save y_train and "
                         "y_test in the .npz, or use --task reconstruction (or auto)")
    return TASKS[requested]


def task_named(name: str) -> Task:
    """The task called ``name``; an unknown name is a one-line ValueError listing the names."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; use one of {', '.join(TASKS)}")
    return TASKS[name]
