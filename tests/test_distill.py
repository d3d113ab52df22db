"""Knowledge distillation while fine-tuning: the blended loss by hand, and its effect through train and the run."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from edgeprune.config import RunConfig
from edgeprune.prune.pruner import FineGrainedPruner
from edgeprune.training import Teacher, finetune, train


def _by_hand(logits, teacher_logits, labels, weight, t):
    """(1 - w) * CE + w * T^2 * mean over the batch of sum_k p_k (log p_k - log q_k), with plain Python sums."""
    total_ce = total_kl = 0.0
    for s_row, t_row, y in zip(logits.tolist(), teacher_logits.tolist(), labels.tolist()):
        s_log_norm = math.log(sum(math.exp(v) for v in s_row))
        total_ce += s_log_norm - s_row[y]
        q = [math.exp(v / t) for v in s_row]
        p = [math.exp(v / t) for v in t_row]
        q = [v / sum(q) for v in q]
        p = [v / sum(p) for v in p]
        total_kl += sum(pk * (math.log(pk) - math.log(qk)) for pk, qk in zip(p, q))
    n = len(labels)
    return (1 - weight) * total_ce / n + weight * t * t * total_kl / n


class Fixed(nn.Module):
    """A 'model' that returns the same logits for any batch."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, x):
        return self.logits


@pytest.mark.parametrize("weight, temperature", [(0.5, 4.0), (0.9, 2.0), (1.0, 1.0)])
def test_the_blended_loss_matches_a_hand_computation(weight, temperature):
    torch.manual_seed(0)
    student, teacher_logits = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    labels = torch.tensor([0, 2, 1, 1, 0])
    loss = Teacher(Fixed(teacher_logits), weight, temperature).loss(student, labels, torch.zeros(5, 1))
    assert loss.item() == pytest.approx(_by_hand(student, teacher_logits, labels, weight, temperature), rel=1e-9)


def test_a_student_equal_to_its_teacher_feels_only_the_labels():
    torch.manual_seed(0)
    logits = torch.randn(4, 3, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 0])
    loss = Teacher(Fixed(logits.detach().clone()), 0.25).loss(logits, labels, torch.zeros(4, 1))
    assert loss.item() == pytest.approx(0.75 * nn.functional.cross_entropy(logits, labels).item(), rel=1e-6)


@pytest.mark.parametrize("kwargs, match", [({"weight": 0.0}, "weight"), ({"weight": 1.5}, "weight"),
                                           ({"temperature": 0.0}, "temperature"), ({"model": "resnet"}, "nn.Module")])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Teacher(**{"model": nn.Linear(2, 2), **kwargs})
    with pytest.raises(ValueError, match="distill"):
        RunConfig(distill=1.5)


def test_finetuning_with_a_teacher_pulls_the_student_to_it_and_keeps_the_masks():
    """Pure distillation (weight 1) on labels the teacher contradicts: the student ends up agreeing with the teacher."""
    torch.manual_seed(0)
    images = torch.randn(64, 6)
    teacher = nn.Linear(6, 3)
    wrong = (teacher(images).argmax(1) + 1) % 3  # labels that always disagree with the teacher
    loader = DataLoader(TensorDataset(images, wrong), batch_size=16)
    runs = {}
    for name, given in (("labels", None), ("teacher", Teacher(teacher, weight=1.0, temperature=1.0))):
        torch.manual_seed(1)
        student = nn.Sequential(nn.Linear(6, 7), nn.ReLU(), nn.Linear(7, 3))
        pruner = FineGrainedPruner(student, {"0.weight": 0.5, "2.weight": 0.0})
        finetune(student, pruner, loader, 30, lr=1e-2, teacher=given)
        assert int((student[0].weight == 0).sum()) == 21  # half of 42 weights stay pruned
        with torch.no_grad():
            runs[name] = (student(images).argmax(1) == teacher(images).argmax(1)).float().mean().item()
    assert runs["teacher"] > 0.8 > 0.2 > runs["labels"]
    with pytest.raises(ValueError, match="weight"):
        train(nn.Linear(6, 3), loader, 1, teacher=Teacher(teacher, weight=-1.0))
