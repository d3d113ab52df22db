"""Fine-grained pruning semantics on hand-computed tiny tensors, and against torch.nn.utils.prune."""

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from edgeprune.prune.masks import check_sparsity, fine_grained_mask, fine_grained_prune, num_pruned, size_in_bits, sparsity_of
from edgeprune.models import BasicCNN


def test_hand_computed_mask():
    t = torch.tensor([[0.5, -0.1, 0.3], [-0.9, 0.05, 0.2]])
    mask = fine_grained_prune(t, 0.5)  # k = 3: 0.05, -0.1, 0.2 go
    assert mask.tolist() == [[True, False, True], [True, False, False]]
    assert torch.equal(t, torch.tensor([[0.5, 0.0, 0.3], [-0.9, 0.0, 0.0]]))
    assert not torch.signbit(t[~mask]).any()  # +0.0, never -0.0


def test_seed_rule_without_ties():
    torch.manual_seed(1)
    t = torch.randn(37, 11)
    for s in (0.1, 0.33, 0.5, 0.67, 0.9):
        k = round(s * t.numel())
        threshold = torch.kthvalue(t.abs().flatten(), k).values
        assert torch.equal(fine_grained_mask(t, s), t.abs() > threshold)


def test_ties_keep_exact_count_and_are_deterministic():
    t = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 1.0, -1.0, 2.0])
    mask = fine_grained_mask(t, 0.75)  # k = 6: four zeros, then the first two of the tied 1s
    assert int((~mask).sum()) == 6
    assert mask.tolist() == [False, False, False, False, False, False, True, True]
    assert torch.equal(mask, fine_grained_mask(t.clone(), 0.75))


def test_zero_and_one():
    t = torch.randn(4, 3)
    assert fine_grained_mask(t, 0.0).all()
    assert not fine_grained_mask(t, 1.0).any()
    one = torch.tensor([[3.0]])
    assert fine_grained_prune(one, 0.4).item() is True and one.item() == 3.0  # round(0.4) = 0
    assert fine_grained_prune(one, 0.6).item() is False and one.item() == 0.0


def test_python_round_is_used():
    assert num_pruned(10, 0.25) == 2  # round(2.5) == 2, banker's rounding as in Python
    assert num_pruned(10, 0.35) == round(0.35 * 10)
    t = torch.arange(1.0, 11.0)
    assert int((~fine_grained_mask(t, 0.25)).sum()) == 2


@pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan, True, "0.5", None])
def test_bad_sparsity_is_rejected(bad):
    with pytest.raises(ValueError, match="sparsity"):
        check_sparsity(bad)


def test_seed_dict_on_seed_cnn_gives_seed_zero_counts():
    torch.manual_seed(0)
    model = BasicCNN()
    biases = {n: p.clone() for n, p in model.named_parameters() if n.endswith("bias")}
    seed_dict = {"conv1.weight": 0.4, "conv2.weight": 0.6, "fc1.weight": 0.67, "fc2.weight": 0.5}
    params = dict(model.named_parameters())
    for name, s in seed_dict.items():
        fine_grained_prune(params[name], s)
    zeros = {n: params[n].numel() - int(params[n].count_nonzero()) for n in seed_dict}
    assert zeros == {"conv1.weight": 480, "conv2.weight": 7680, "fc1.weight": 164659, "fc2.weight": 600}
    for n, b in biases.items():
        assert torch.equal(params[n], b)


def test_matches_torch_prune_l1_unstructured():
    torch.manual_seed(2)
    for shape, s in [((13, 7), 0.3), ((5, 3, 3, 3), 0.77), ((1, 9), 0.5)]:
        layer = nn.Linear(shape[1], shape[0]) if len(shape) == 2 else nn.Conv2d(3, 5, 3)
        ours = layer.weight.detach().clone()
        mask = fine_grained_mask(ours, s)
        torch_prune.l1_unstructured(layer, "weight", amount=round(s * ours.numel()))
        assert torch.equal(mask, layer.weight_mask.bool())


def test_sparsity_and_size():
    t = torch.tensor([0.0, 1.0, 0.0, 2.0])
    assert sparsity_of(t) == 0.5
    assert size_in_bits(t, 32) == 64
    assert size_in_bits(t, 8, count_nonzero_only=False) == 32
