"""Plans from a scan: tolerance picks the right sparsity; a budget is met when the plan is applied."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from edgeprune.prune.masks import fine_grained_prune
from edgeprune.analyze.plan import SparsityPlan, layer_unit_costs, make_plan, plan_by_budget, plan_by_tolerance
from edgeprune.prune.global_magnitude import global_magnitude_counts
from edgeprune.analyze.scan import ScanResult

SPARSITIES = [0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def two_layer_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(11, 23), nn.ReLU(), nn.Linear(23, 37))  # 253 and 851 weights


def scan_for(model: nn.Module, accuracies: dict[str, list[float]], dense: float = 90.0) -> ScanResult:
    sizes = {name: p.numel() for name, p in model.named_parameters() if name in accuracies}
    return ScanResult(SPARSITIES, accuracies, dense, method="fast", layer_sizes=sizes)


def apply(model: nn.Module, sparsity: dict[str, float]) -> int:
    """Prune a copy of the weights as the pruner would; return the number of zero prunable weights."""
    params = dict(model.named_parameters())
    zeros = 0
    for name, p in params.items():
        if p.dim() > 1:
            w = p.detach().clone()
            if name in sparsity:
                fine_grained_prune(w, sparsity[name])
            zeros += int((w == 0).sum())
    return zeros


def test_tolerance_picks_largest_sparsity_above_the_seed_lower_bound() -> None:
    scan = ScanResult(
        SPARSITIES,
        {
            "a": [90.0, 89.0, 87.0, 84.0, 80.0, 60.0],
            "b": [84.0, 80.0, 70.0, 60.0, 50.0, 40.0],
            "c": [88.0, 80.0, 86.0, 70.0, 60.0, 50.0],  # not monotone: the largest qualifying point counts
        },
        dense_accuracy=90.0,
        layer_sizes={"a": 100, "b": 10, "c": 30},
    )
    assert scan.lower_bound == 85.0  # 100 - 1.5 * (100 - 90)
    plan = plan_by_tolerance(scan)
    assert plan.sparsity_dict == {"a": 0.6, "b": 0.0, "c": 0.6}
    assert plan.predicted_accuracy == {"a": 87.0, "b": 90.0, "c": 86.0}
    assert plan.target == {"max_drop": 5.0}
    assert plan.predicted_overall_sparsity == pytest.approx((60 + 0 + 18) / 140)
    assert plan_by_tolerance(scan, max_drop=1.0).sparsity_dict == {"a": 0.5, "b": 0.0, "c": 0.0}
    with pytest.raises(ValueError):
        plan_by_tolerance(scan, max_drop=-1.0)


def test_budget_prefers_the_insensitive_layer_and_meets_the_target() -> None:
    model = two_layer_model()
    scan = scan_for(model, {
        "0.weight": [80.0, 70.0, 60.0, 50.0, 40.0, 30.0],  # sensitive
        "2.weight": [90.0, 90.0, 89.9, 89.8, 89.0, 88.0],  # insensitive
    })
    total = 253 + 851
    plan = plan_by_budget(scan, model, target_sparsity=0.6)
    assert plan.sparsity_dict["0.weight"] == 0.0
    assert 0.6 * total / 851 <= plan.sparsity_dict["2.weight"] <= 0.9
    assert apply(model, plan.sparsity_dict) >= math.ceil(0.6 * total)
    assert plan.predicted_overall_sparsity == apply(model, plan.sparsity_dict) / total
    assert 89.0 < plan.predicted_accuracy["2.weight"] < 90.0
    assert plan.method == "budget" and plan.target == {"target_sparsity": 0.6}


def test_budget_in_bytes_counts_non_zero_weights() -> None:
    model = two_layer_model()
    scan = scan_for(model, {"0.weight": [89.0] * 6, "2.weight": [88.0] * 6})
    plan = plan_by_budget(scan, model, target_bytes=1000, bit_width=8)  # at most 1000 non-zeros of 1104
    assert 1104 - apply(model, plan.sparsity_dict) <= 1000
    assert plan.target == {"target_bytes": 1000.0, "bit_width": 8}


def global_ranking_counts(model: nn.Module, names: list[str], k: int) -> dict[str, int]:
    """Independently: sort all |w| of the named layers together, count the k smallest per layer."""
    params = dict(model.named_parameters())
    flat = torch.cat([params[n].detach().abs().flatten() for n in names])
    owner = torch.cat([torch.full((params[n].numel(),), i) for i, n in enumerate(names)])
    smallest = owner[torch.argsort(flat)[:k]]
    return {n: int((smallest == i).sum()) for i, n in enumerate(names)}


def pruned_counts(model: nn.Module, sparsity: dict[str, float]) -> dict[str, int]:
    params = dict(model.named_parameters())
    counts = {}
    for name, s in sparsity.items():
        w = params[name].detach().clone()
        counts[name] = int((~fine_grained_prune(w, s)).sum())
    return counts


def test_budget_beyond_the_scanned_range_follows_the_global_ranking_with_the_exact_total() -> None:
    model = two_layer_model()
    scan = scan_for(model, {"0.weight": [89.0] * 6, "2.weight": [88.0] * 6})  # the grid ends at 0.9
    with pytest.warns(UserWarning, match="2.weight beyond the scanned sparsities"):
        plan = plan_by_budget(scan, model, target_sparsity=0.95)
    required = math.ceil(0.95 * 1104)
    assert apply(model, plan.sparsity_dict) == required
    assert plan.sparsity_dict["0.weight"] != plan.sparsity_dict["2.weight"]  # not 0.95 everywhere
    assert plan.sparsity_dict["2.weight"] > 0.95 > plan.sparsity_dict["0.weight"]
    # the global ranking alone would empty 2.weight; the 99 % ceiling keeps 9 of its weights, 0.weight gives the rest
    assert global_ranking_counts(model, ["0.weight", "2.weight"], required)["2.weight"] == 851
    assert pruned_counts(model, plan.sparsity_dict) == {"0.weight": required - 842, "2.weight": 842}


def test_budget_at_the_end_of_the_grid_is_not_uniform() -> None:
    """The CIFAR-10 failure: grid 0.0..0.95, target 0.95 used to give every layer exactly 0.95."""
    model = two_layer_model()
    grid = [round(0.05 * i, 2) for i in range(20)]
    flat = {name: [90.0 - 40.0 * s for s in grid] for name in ("0.weight", "2.weight")}
    scan = ScanResult(grid, flat, 90.0, method="fast", layer_sizes={"0.weight": 253, "2.weight": 851})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = plan_by_budget(scan, model, target_sparsity=0.95)
    assert apply(model, plan.sparsity_dict) == math.ceil(0.95 * 1104)
    assert len(set(plan.sparsity_dict.values())) == 2


def test_budget_without_a_predicted_gain_is_the_global_ranking() -> None:
    model = two_layer_model()
    scan = scan_for(model, {"0.weight": [90.0] * 6, "2.weight": [90.0] * 6})  # pruning costs nothing anywhere
    plan = plan_by_budget(scan, model, target_sparsity=0.5)
    assert pruned_counts(model, plan.sparsity_dict) == global_ranking_counts(model, ["0.weight", "2.weight"], 552)


def test_budget_arguments_are_checked() -> None:
    model = two_layer_model()
    scan = scan_for(model, {"0.weight": [89.0] * 6})
    with pytest.raises(ValueError, match="exactly one"):
        plan_by_budget(scan, model)
    with pytest.raises(ValueError, match="exactly one"):
        plan_by_budget(scan, model, target_sparsity=0.5, target_bytes=100)
    with pytest.raises(ValueError, match="between 0 and 1"):
        plan_by_budget(scan, model, target_sparsity=1.5)
    with pytest.raises(ValueError, match="scan more layers"):
        plan_by_budget(scan, model, target_sparsity=0.9)  # only 253 of 1104 weights are scanned
    foreign = ScanResult(SPARSITIES, {"fc9.weight": [89.0] * 6}, 90.0)
    with pytest.raises(ValueError, match="fc9.weight"):
        plan_by_budget(foreign, model, target_sparsity=0.5)


@settings(max_examples=40, deadline=None)
@given(
    target=st.floats(0.0, 1.0),
    curves=st.lists(st.lists(st.floats(0.0, 100.0), min_size=6, max_size=6), min_size=2, max_size=2),
)
def test_budget_always_meets_target_when_applied(target: float, curves: list[list[float]]) -> None:
    model = two_layer_model()
    scan = scan_for(model, {"0.weight": curves[0], "2.weight": curves[1]})
    required = math.ceil(round(target * 1104, 6))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = plan_by_budget(scan, model, target_sparsity=target)
    beyond = [n for n, k in pruned_counts(model, plan.sparsity_dict).items() if k > round(0.9 * dict(model.named_parameters())[n].numel())]
    assert bool(caught) == bool(beyond)  # warns exactly when a layer goes past the grid's 0.9
    zeros = apply(model, plan.sparsity_dict)
    assert zeros == required  # enough, and no more pruning than needed
    assert plan.predicted_overall_sparsity == zeros / 1104


def test_plan_json(tmp_path) -> None:
    model = two_layer_model()
    scan = scan_for(model, {"0.weight": [89.0] * 6, "2.weight": [88.0] * 6})
    plan = plan_by_budget(scan, model, target_sparsity=0.5)
    path = tmp_path / "plan.json"
    plan.to_json(path)
    data = json.loads(path.read_text())
    assert data["format"] == "edgeprune.plan/1"
    assert SparsityPlan(**{k: v for k, v in data.items() if k != "format"}) == plan


# --- budgets in MACs and flash bytes -------------------------------------------------------------


class ConvThenLinear(nn.Module):
    """Odd sizes: a 3->5 conv (kernel 3x2, stride 2, padding 1) inside a Sequential, a linear applied
    to each of its output pixels (5->6), and a linear on everything (120->7)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.features = nn.Sequential(nn.Conv2d(3, 5, (3, 2), stride=2, padding=1))
        self.mix = nn.Linear(5, 6)
        self.head = nn.Linear(120, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.features(x)  # (1, 5, 4, 5)
        y = self.mix(y.flatten(2).transpose(1, 2))  # (1, 20, 6)
        return self.head(y.flatten(1))


INPUT = (3, 7, 9)
# By hand: the conv's output is ((7 + 2 - 3) // 2 + 1) x ((9 + 2 - 2) // 2 + 1) = 4 x 5 pixels, and
# each of its weights is used once per output pixel; mix runs on 20 rows; head on one.
HAND_MACS_PER_WEIGHT = {"features.0.weight": 20.0, "mix.weight": 20.0, "head.weight": 1.0}
SIZES = {"features.0.weight": 5 * 3 * 3 * 2, "mix.weight": 6 * 5, "head.weight": 7 * 120}
FLASH = {"features.0.weight": 1.5, "mix.weight": 2.25, "head.weight": 1.1}


def test_unit_costs_by_hand() -> None:
    model = ConvThenLinear()
    assert layer_unit_costs(model, INPUT, "macs") == HAND_MACS_PER_WEIGHT
    assert layer_unit_costs(model, None, "params") == dict.fromkeys(SIZES, 1.0)
    assert layer_unit_costs(model, None, "flash") == dict.fromkeys(SIZES, 2.0)  # the placeholder: value + index byte
    assert layer_unit_costs(model, None, "flash", FLASH) == FLASH
    by_width = layer_unit_costs(model, None, "flash", lambda name, w: 1 + (1 if w.shape[-1] <= 8 else 2))
    assert by_width == {"features.0.weight": 2.0, "mix.weight": 2.0, "head.weight": 3.0}
    with pytest.raises(ValueError, match="input shape"):
        layer_unit_costs(model, None, "macs")
    with pytest.raises(ValueError, match="no price for head.weight"):
        layer_unit_costs(model, None, "flash", {"features.0.weight": 2.0, "mix.weight": 2.0})
    with pytest.raises(ValueError, match="positive"):
        layer_unit_costs(model, None, "flash", {**FLASH, "mix.weight": 0})
    with pytest.raises(ValueError, match="unknown budget 'time'"):
        layer_unit_costs(model, INPUT, "time")
    model.table = nn.Parameter(torch.ones(2, 2))  # owned by the root, which has sub-modules: no MACs of its own
    with pytest.raises(ValueError, match="cannot count the MACs of each weight of table"):
        layer_unit_costs(model, INPUT, "macs")
    with pytest.raises(ValueError, match="weight of a, b "):
        layer_unit_costs(TwoMatrices(), (3,), "macs")


class TwoMatrices(nn.Module):
    """One module, two weight matrices: its 12 + 8 MACs cannot be told apart by module."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.ones(4, 3))
        self.b = nn.Parameter(torch.ones(2, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.a.T @ self.b.T


def equal_scan(model: nn.Module) -> ScanResult:
    """Every layer loses the same accuracy at the same sparsity, the drop growing faster and faster."""
    curve = [89.5, 89.0, 88.0, 86.0, 82.0, 74.0]
    return scan_for(model, {name: list(curve) for name in SIZES})


def test_macs_budget_prunes_the_layers_with_many_macs_per_weight_harder() -> None:
    model = ConvThenLinear()
    scan = equal_scan(model)
    by_params = plan_by_budget(scan, model, target_sparsity=0.5).sparsity_dict
    plan = plan_by_budget(scan, model, target_sparsity=0.5, budget="macs", input_shape=INPUT)
    by_macs = plan.sparsity_dict
    assert by_macs["features.0.weight"] > by_params["features.0.weight"]
    assert by_macs["mix.weight"] > by_params["mix.weight"]
    assert by_macs["head.weight"] < by_params["head.weight"]
    # By hand. The curve's drops at 0, .4, .5, .6, .7 are 0, .5, 1, 2, 4 points: hull slopes 1.25, 5,
    # 10, 20 points per unit of sparsity; a layer's piece costs slope / (weights x unit) per unit freed.
    # params (480 weights): head (840 weights) takes its pieces to .4, .5, then 60 more weights, alone.
    assert pruned_counts(model, by_params) == {"features.0.weight": 0, "mix.weight": 0, "head.weight": 480}
    # macs (1620 of 3240): per MAC the conv (1800) piece 1, head (840) piece 1, mix (600) piece 1,
    # conv piece 2 (5/1800 < 5/840), then conv piece 3 (10/1800 < 5/840) for the last
    # 1620 - 720 - 336 - 240 - 180 = 144 MACs: 8 weights of 20 MACs.
    assert pruned_counts(model, by_macs) == {"features.0.weight": 45 + 8, "mix.weight": 12, "head.weight": 336}
    assert plan.budget == "macs" and plan.dense_cost == 20 * 90 + 20 * 30 + 840
    removed = sum(HAND_MACS_PER_WEIGHT[n] * k for n, k in pruned_counts(model, by_macs).items())
    assert plan.predicted_cost_removed == pytest.approx(removed / 3240)
    assert plan.to_dict()["budget"] == "macs"


def ranking_walked_to_cost(model: nn.Module, units: dict[str, float], cost: float) -> dict[str, int]:
    """Independently: all weights sorted by |w| / unit cost, taken one by one until their costs reach ``cost``."""
    params = dict(model.named_parameters())
    names = list(units)
    score = torch.cat([params[n].detach().abs().flatten() / units[n] for n in names])
    owner = torch.cat([torch.full((params[n].numel(),), i) for i, n in enumerate(names)])
    counts, spent = dict.fromkeys(names, 0), 0.0
    for i in torch.argsort(score, stable=True).tolist():
        if spent >= cost:
            break
        counts[names[owner[i]]] += 1
        spent += units[names[owner[i]]]
    return counts


def test_macs_budget_without_a_predicted_gain_is_the_ranking_per_unit_of_cost() -> None:
    model = ConvThenLinear()
    scan = scan_for(model, dict.fromkeys(SIZES, [90.0] * 6))  # pruning costs nothing anywhere
    plan = plan_by_budget(scan, model, target_sparsity=0.5, budget="macs", input_shape=INPUT)
    assert pruned_counts(model, plan.sparsity_dict) == ranking_walked_to_cost(model, HAND_MACS_PER_WEIGHT, 0.5 * 3240)


def test_macs_budget_stays_within_the_scanned_range_when_it_can() -> None:
    model = ConvThenLinear()
    # at 70 % of the MACs the ranking alone takes the conv to the 99 % cap, past the grid's 0.9
    assert ranking_walked_to_cost(model, HAND_MACS_PER_WEIGHT, 0.7 * 3240)["features.0.weight"] > 0.9 * 90
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no layer beyond the scanned sparsities
        plan = plan_by_budget(equal_scan(model), model, target_sparsity=0.7, budget="macs", input_shape=INPUT)
    counts = pruned_counts(model, plan.sparsity_dict)
    assert all(counts[n] <= round(0.9 * SIZES[n]) for n in SIZES)
    assert sum(HAND_MACS_PER_WEIGHT[n] * k for n, k in counts.items()) >= 0.7 * 3240


@settings(max_examples=30, deadline=None)
@given(
    target=st.floats(0.0, 1.0),
    budget=st.sampled_from(["macs", "flash"]),
    curves=st.lists(st.lists(st.floats(0.0, 100.0), min_size=6, max_size=6), min_size=3, max_size=3),
)
def test_cost_target_is_met_exactly_or_by_less_than_one_weight(target: float, budget: str, curves: list[list[float]]) -> None:
    model = ConvThenLinear()
    units = HAND_MACS_PER_WEIGHT if budget == "macs" else FLASH
    scan = scan_for(model, dict(zip(SIZES, curves)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = plan_by_budget(scan, model, target_sparsity=target, budget=budget, input_shape=INPUT, bytes_per_nonzero=FLASH)
    dense = sum(units[n] * SIZES[n] for n in SIZES)
    removed = sum(units[n] * k for n, k in pruned_counts(model, plan.sparsity_dict).items())
    assert target * dense - 1e-6 <= removed < target * dense + max(units.values())
    assert plan.predicted_cost_removed == pytest.approx(removed / dense)


def test_flash_bytes_target_and_budget_arguments() -> None:
    model = ConvThenLinear()
    scan = equal_scan(model)
    plan = plan_by_budget(scan, model, target_bytes=700, budget="flash", bytes_per_nonzero=FLASH)
    kept = {n: SIZES[n] - k for n, k in pruned_counts(model, plan.sparsity_dict).items()}
    assert 700 - max(FLASH.values()) < sum(FLASH[n] * kept[n] for n in SIZES) <= 700
    assert plan.target == {"target_bytes": 700.0} and plan.budget == "flash"
    # the same price everywhere is the params plan: only the ratios of unit costs matter
    same = make_plan(scan, model, target_sparsity=0.6, budget="flash")
    assert same.sparsity_dict == make_plan(scan, model, target_sparsity=0.6).sparsity_dict
    assert same.dense_cost == 2.0 * 960
    with pytest.raises(ValueError, match="not a number of MACs"):
        plan_by_budget(scan, model, target_bytes=700, budget="macs", input_shape=INPUT)
    with pytest.raises(ValueError, match="--max-drop plans by accuracy alone"):
        make_plan(scan, model, max_drop=1.0, budget="macs")


def test_global_ranking_walked_to_a_cost_by_hand() -> None:
    scores = {"a": torch.tensor([0.1, 0.5, 0.9]), "b": torch.tensor([0.2, 0.3])}
    walk = dict(max_sparsity=1.0, min_kept=0, unit_costs={"a": 1.0, "b": 3.0})
    # ascending: 0.1 (a, 1) -> 1; 0.2 (b, 3) -> 4; 0.3 (b, 3) -> 7 >= 5: stop
    assert global_magnitude_counts(scores, 5, **walk) == {"a": 1, "b": 2}
    assert global_magnitude_counts(scores, 4, **walk) == {"a": 1, "b": 1}
    assert global_magnitude_counts(scores, 7.5, **walk) == {"a": 2, "b": 2}
    assert global_magnitude_counts(scores, 5, max_sparsity=1.0, min_kept=0) == {"a": 3, "b": 2}  # counts, not costs
    with pytest.raises(ValueError, match="between 0.0 and 9.0"):
        global_magnitude_counts(scores, 9.5, **walk)
