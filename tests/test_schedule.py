"""Global magnitude pruning against independent rankings and torch's global_unstructured; AGP and iterative schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from edgeprune.prune.global_magnitude import (
    count_bounds,
    global_magnitude_counts,
    global_magnitude_sparsity,
    mask_from_scores,
    prune_scores,
    sparsity_for_count,
)
from edgeprune.prune.masks import num_pruned
from edgeprune.prune.pruner import FineGrainedPruner
from edgeprune.prune.schedule import GradualPruner, agp_sparsity, iterative_sparsities
from edgeprune.training import prune_gradually, train


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(7, 13), nn.ReLU(), nn.Linear(13, 5))  # 91 and 65 weights


def batches(count: int = 6, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(9, 7, generator=gen), torch.randint(0, 5, (9,), generator=gen)) for _ in range(count)]


def weights(seed: int = 3) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "a": torch.randn(7, 3, generator=gen),
        "b": torch.randn(17, generator=gen) * 0.01,  # tiny: the global ranking wants all of it
        "c": torch.randn(11, 5, generator=gen),
    }


def independent_counts(params: dict[str, torch.Tensor], k: int) -> dict[str, int]:
    """Rank all magnitudes together with torch.cat and a full sort; count the k smallest per layer."""
    flat = torch.cat([p.abs().flatten() for p in params.values()])
    owner = torch.cat([torch.full((p.numel(),), i) for i, p in enumerate(params.values())])
    smallest = owner[torch.argsort(flat)[:k]]
    return {name: int((smallest == i).sum()) for i, name in enumerate(params)}


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.77, 1.0])
def test_global_counts_match_an_independent_ranking_when_no_bound_binds(sparsity: float) -> None:
    params = weights()
    k = round(sparsity * 93)
    counts = global_magnitude_counts({n: p.abs() for n, p in params.items()}, k, max_sparsity=1.0, min_kept=0)
    assert counts == independent_counts(params, k)
    assert sum(counts.values()) == k


def test_global_dict_reproduces_torch_global_unstructured_through_the_pruner() -> None:
    ours, ref = tiny_model(), tiny_model()
    k = round(0.6 * (91 + 65))
    sparsity = global_magnitude_sparsity(
        {n: p for n, p in ours.named_parameters() if p.dim() > 1}, 0.6, max_sparsity=1.0, min_kept=0
    )
    pruner = FineGrainedPruner(ours, sparsity)
    torch_prune.global_unstructured([(ref[0], "weight"), (ref[2], "weight")], torch_prune.L1Unstructured, amount=k)
    assert torch.equal(pruner.masks["0.weight"], ref[0].weight_mask.bool())
    assert torch.equal(pruner.masks["2.weight"], ref[2].weight_mask.bool())
    assert sum(int((~m).sum()) for m in pruner.masks.values()) == k


def test_ceiling_keeps_a_weight_in_every_layer_and_the_total_stays_exact() -> None:
    params = weights()
    k = round(0.5 * 93)  # 47: the 17 tiny weights of "b" rank first
    counts = global_magnitude_counts({n: p.abs() for n, p in params.items()}, k, max_sparsity=0.99, min_kept=1)
    # "b" keeps exactly one weight (16 = min(floor(0.99*17), 17-1)); its refused weight goes to the others
    assert counts["b"] == 16
    others = {n: params[n] for n in ("a", "c")}
    assert {n: counts[n] for n in others} == independent_counts(others, k - 16)
    # through the pruner's round(s * n): exactly these counts
    sparsity = global_magnitude_sparsity(params, 0.5)
    assert {n: num_pruned(params[n].numel(), s) for n, s in sparsity.items()} == counts
    # the largest magnitude of "b" is the one it keeps
    mask = FineGrainedPruner.prune(nn.ParameterDict({"b": nn.Parameter(params["b"].clone())}), {"b": sparsity["b"]})["b"]
    assert int(mask.sum()) == 1 and bool(mask[params["b"].abs().argmax()])


def test_min_kept_binds_when_the_ceiling_does_not() -> None:
    counts = global_magnitude_counts({n: p.abs() for n, p in weights().items()}, 47, max_sparsity=1.0, min_kept=2)
    assert counts["b"] == 15 and sum(counts.values()) == 47


def test_weights_already_pruned_rank_below_unpruned_zeros() -> None:
    w = torch.tensor([0.0, 2.0, 0.0, 3.0, 1.0])
    scores = prune_scores(w, torch.tensor([True, True, False, True, True]))
    assert mask_from_scores(scores, 1, w.shape).tolist() == [True, True, False, True, True]
    assert mask_from_scores(prune_scores(w), 1, w.shape).tolist() == [False, True, True, True, True]


def test_floor_prunes_a_layer_the_ranking_would_spare() -> None:
    params = weights()
    scores = {n: p.abs() for n, p in params.items()}
    counts = global_magnitude_counts(scores, 60, min_sparsity=0.5, max_sparsity=1.0, min_kept=0)
    assert counts["b"] == 17  # all its tiny weights, floor or not
    assert counts["a"] >= math.ceil(0.5 * 21) and counts["c"] >= math.ceil(0.5 * 55)
    assert sum(counts.values()) == 60
    assert global_magnitude_counts(scores, 60, max_sparsity=1.0, min_kept=0)["c"] < math.ceil(0.5 * 55)


def test_ties_are_broken_by_layer_order_then_position() -> None:
    params = {"x": torch.ones(3, 2), "y": torch.ones(2, 2)}
    assert global_magnitude_counts(params, 7, max_sparsity=1.0, min_kept=0) == {"x": 6, "y": 1}
    assert global_magnitude_counts(params, 7, max_sparsity=0.99, min_kept=1) == {"x": 5, "y": 2}


def test_impossible_totals_and_bounds_are_value_errors() -> None:
    params = weights()
    with pytest.raises(ValueError, match="cannot prune 93"):
        global_magnitude_counts(params, 93)  # every layer must keep a weight
    with pytest.raises(ValueError, match="min_kept"):
        count_bounds(10, min_kept=-1)
    with pytest.raises(ValueError, match="between 0 and 1"):
        global_magnitude_sparsity(params, 1.5)
    assert count_bounds(100) == (0, 99) and count_bounds(3, 0.5, 0.99, 1) == (2, 2) and count_bounds(0) == (0, 0)


def test_sparsity_for_count_survives_the_pruner_rounding() -> None:
    for n in range(1, 260):
        for k in range(n + 1):
            assert num_pruned(n, sparsity_for_count(n, k)) == k
    with pytest.raises(ValueError, match="between 0 and 5"):
        sparsity_for_count(5, 6)


def test_agp_matches_hand_computed_values() -> None:
    # final + (initial - final) * (1 - j / n) ** 3 with initial 0, final 0.8, n = 4 prunes every 10 steps
    expected = {0: 0.0, 9: 0.0, 10: 0.4625, 15: 0.4625, 20: 0.7, 30: 0.7875, 40: 0.8, 1000: 0.8}
    for step, value in expected.items():
        assert agp_sparsity(step, 0.0, 0.8, 0, 4, 10) == pytest.approx(value, abs=1e-12)
    # starting later, from 0.5: step 8 is the first prune (0.9 - 0.4 * 0.125), step 11 the last
    assert agp_sparsity(5, 0.5, 0.9, 5, 2, 3) == 0.5
    assert agp_sparsity(8, 0.5, 0.9, 5, 2, 3) == pytest.approx(0.85)
    assert agp_sparsity(11, 0.5, 0.9, 5, 2, 3) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="num_prunes"):
        agp_sparsity(3, 0.0, 0.8, 0, 0, 10)


def test_iterative_rounds_remove_the_same_share_each_time() -> None:
    assert iterative_sparsities(0.96, 2) == pytest.approx([0.8, 0.96])
    assert iterative_sparsities(0.875, 3) == pytest.approx([0.5, 0.75, 0.875])
    assert iterative_sparsities(0.9, 1) == [0.9]
    with pytest.raises(ValueError, match="rounds"):
        iterative_sparsities(0.9, 0)


def test_gradual_pruner_grows_masks_along_the_schedule_during_training() -> None:
    model = tiny_model()
    gradual = GradualPruner(model, {"0.weight": 0.8, "2.weight": 0.6}, num_prunes=3, frequency=2)
    seen: list[dict[str, torch.Tensor]] = []

    def hook(m: nn.Module) -> None:
        gradual(m)
        for name, p in m.named_parameters():
            if name in gradual.masks:
                assert torch.all(p[~gradual.masks[name]] == 0)
        if seen:
            assert all(torch.all(seen[-1][n] >= gradual.masks[n]) for n in gradual.masks)  # kept only shrinks
        seen.append({n: m.clone() for n, m in gradual.masks.items()})

    train(model, batches(8), epochs=1, after_step=hook)
    pruned = [91 - int(s["0.weight"].sum()) for s in seen]
    # step 2: 0.8 * (1 - (2/3)^3) = 0.563 -> 51; step 4: 0.770 -> 70; step 6 and after: 0.8 -> 73
    assert pruned == [0, 51, 51, 70, 70, 73, 73, 73]
    assert 65 - int(seen[-1]["2.weight"].sum()) == round(0.6 * 65)
    fixed = gradual.fixed()
    assert isinstance(fixed, FineGrainedPruner) and fixed.masks.keys() == {"0.weight", "2.weight"}


def test_masks_never_shrink_even_when_a_final_target_is_below_the_initial_one() -> None:
    model = tiny_model()
    gradual = GradualPruner(model, {"0.weight": 0.3, "2.weight": 0.9}, num_prunes=2, frequency=1, initial=0.5)
    assert [int((~m).sum()) for m in gradual.masks.values()] == [round(0.5 * 91), round(0.5 * 65)]
    train(model, batches(3), epochs=1, after_step=gradual)
    assert [int((~m).sum()) for m in gradual.masks.values()] == [round(0.5 * 91), round(0.9 * 65)]


def test_gradual_global_target_prunes_the_exact_total() -> None:
    model = tiny_model()
    gradual = GradualPruner(model, 0.7, num_prunes=2, frequency=3)
    train(model, batches(7), epochs=1, after_step=gradual)
    assert sum(int((~m).sum()) for m in gradual.masks.values()) == round(0.7 * 156)
    assert all(int(m.sum()) >= 1 for m in gradual.masks.values())


@pytest.mark.parametrize("schedule", ["agp", "iterative"])
def test_prune_gradually_ends_at_the_targets_with_pruned_weights_zero(schedule: str) -> None:
    model = tiny_model()
    pruner, history = prune_gradually(model, batches(5), {"_default": 0.75}, epochs=3, schedule=schedule, eval_loader=batches(2, 9))
    assert len(history.loss) == 3 and len(history.accuracy) == 3 and 1 <= history.best_epoch <= 3
    for name, p in model.named_parameters():
        if p.dim() > 1:
            assert int((~pruner.masks[name]).sum()) == round(0.75 * p.numel())
            assert torch.all(p[~pruner.masks[name]] == 0)
    with pytest.raises(ValueError, match="unknown schedule"):
        prune_gradually(model, batches(2), 0.5, epochs=1, schedule="cubic")
