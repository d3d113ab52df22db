"""Channel sensitivity scan and MACs planner: tiny odd-sized nets, synthetic data, a hand-computed plan."""

import pytest
import torch
from torch import nn

from edgeprune.analyze.channel_scan import (
    ChannelScanResult,
    _greedy_plans,
    channel_sensitivity_scan,
    plan_channels_for_macs,
    prune_along_plans,
    prune_for_macs,
)
from edgeprune.analyze.metrics import count_macs
from edgeprune.prune.channels import prune_channels


class Net(nn.Module):
    """stem 3→6, residual block a 6→5, b 5→6 added to the stem (stem and b coupled), conv c 6→7, linear 7→3."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.a = nn.Conv2d(6, 5, 3, padding=1)
        self.b = nn.Conv2d(5, 6, 3, padding=1)
        self.c = nn.Conv2d(6, 7, 3, padding=1)
        self.fc = nn.Linear(7, 3, bias=False)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.b(torch.relu(self.a(x))))
        return self.fc(torch.relu(self.c(x)).mean((2, 3)))


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = Net().eval()
    inputs = torch.randn(22, 3, 5, 5)
    labels = model(inputs).argmax(1)  # the dense model is 100 % right on its own labels
    loader = [(inputs[:11], labels[:11]), (inputs[11:], labels[11:])]
    return model, loader, inputs[:2]


def test_scan_shapes_groups_and_monotonic_macs(setup):
    model, loader, example = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scan = channel_sensitivity_scan(model, loader, example, ratios=(0.2, 0.5), device="cpu")
    assert scan.dense_accuracy == 100.0
    assert scan.dense_macs == count_macs(model, (3, 5, 5))["total"]
    assert list(scan.accuracies) == ["stem", "a", "c"]  # b is coupled to stem; fc is the output layer
    assert sorted(scan.groups["stem"]) == ["b", "stem"] and scan.groups["a"] == ["a"]
    for name in scan.accuracies:
        assert len(scan.accuracies[name]) == len(scan.macs[name]) == 2
        assert scan.dense_macs > scan.macs[name][0] > scan.macs[name][1]
    # hand-computed: c 6→7 at 5x5 has 6*7*9*25 = 9450 MACs + fc 7*3 = 21; ratio 0.5 removes round(3.5)=4 of 7 channels
    assert scan.dense_macs - scan.macs["c"][1] == 4 * 6 * 9 * 25 + 4 * 3
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def _hand_scan() -> ChannelScanResult:
    return ChannelScanResult(
        ratios=[0.25, 0.5],
        accuracies={"A": [89.0, 80.0], "B": [88.0, 87.0], "C": [89.6, 70.0]},
        macs={"A": [900, 800], "B": [850, 700], "C": [950, 500]},
        dense_accuracy=90.0,
        dense_macs=1000,
    )


def test_planner_hand_computed():
    # MACs saved per point lost, step by step (target: at most 600 MACs, i.e. 400 saved):
    # 1: A 100/1=100, B 150/2=75, C 50/0.4=125 -> C@0.25 (saved 50)
    # 2: A 100, B 75, C 450/19.6=23 -> A@0.25 (150)
    # 3: A 100/9=11, B 75, C 23 -> B@0.25 (300)
    # 4: A 11, B 150/1=150, C 23 -> B@0.5 (450): 550 MACs <= 600, stop
    assert plan_channels_for_macs(_hand_scan(), 0.6) == {"A": 0.25, "B": 0.5, "C": 0.25}
    assert plan_channels_for_macs(_hand_scan(), 1.0) == {"A": 0.0, "B": 0.0, "C": 0.0}


def test_planner_prefers_free_steps():
    scan = _hand_scan()
    scan.accuracies["A"] = [90.5, 80.0]  # A@0.25 loses nothing (gains): it goes first, whatever the ratio
    assert plan_channels_for_macs(scan, 0.9) == {"A": 0.25, "B": 0.0, "C": 0.0}


def test_planner_unreachable_and_bad_target():
    # everything at 0.5 saves 200 + 300 + 500 = 1000: predicted 0 MACs; a scan of only A reaches 0.8 at best
    scan = _hand_scan()
    only_a = ChannelScanResult(ratios=scan.ratios, accuracies={"A": scan.accuracies["A"]},
                               macs={"A": scan.macs["A"]}, dense_accuracy=90.0, dense_macs=1000)
    with pytest.raises(ValueError, match="out of reach.*0.800"):
        plan_channels_for_macs(only_a, 0.7)
    for bad in (0.0, 1.5, True):
        with pytest.raises(ValueError, match="target MACs fraction"):
            plan_channels_for_macs(scan, bad)


def test_plan_applied_reaches_target(setup):
    model, loader, example = setup
    scan = channel_sensitivity_scan(model, loader, example, ratios=(0.2, 0.4, 0.6), device="cpu")
    for target in (0.9, 0.75, 0.5):
        plan = plan_channels_for_macs(scan, target)
        pruned = prune_channels(model, {k: v for k, v in plan.items() if v > 0}, example)
        assert count_macs(pruned, (3, 5, 5))["total"] <= target * scan.dense_macs


def assert_refined(chosen: dict, plans: list[dict], walked: int) -> None:
    """``chosen`` is grid plan ``walked`` with its last step's module at a ratio between its two grid values."""
    if walked == 0:
        assert chosen == plans[0]
        return
    before, after = plans[walked - 1], plans[walked]
    (moved,) = [n for n in after if after[n] != before[n]]
    assert {n: r for n, r in chosen.items() if n != moved} == {n: r for n, r in after.items() if n != moved}
    assert before[moved] < chosen[moved] <= after[moved]


def test_the_last_step_is_refined_to_the_smallest_ratio_that_meets(setup):
    """A limit between two grid plans: the refined ratio meets it, and one channel fewer removed would not."""
    model, loader, example = setup
    scan = channel_sensitivity_scan(model, loader, example, ratios=(0.2, 0.6), device="cpu")
    plans = [p for p, _ in _greedy_plans(scan)]

    def params(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    sizes = [params(prune_channels(model, {k: v for k, v in p.items() if v > 0}, example)) for p in plans]

    def moved(i: int) -> str:
        return next(n for n in plans[i] if plans[i][n] != plans[i - 1][n])

    def removed(ratio: float, name: str) -> int:
        return round(ratio * model.get_submodule(name).out_channels)

    # a step that removes at least two more channels of its module, so that a model between the grid plans exists
    step = next(i for i in range(1, len(plans)) if removed(plans[i][moved(i)], moved(i)) - removed(plans[i - 1][moved(i)], moved(i)) >= 2)
    limit = (sizes[step - 1] + sizes[step]) // 2
    small, chosen = prune_along_plans(model, scan, lambda m: params(m) <= limit, example)
    assert_refined(chosen, plans, step)
    assert sizes[step] < params(small) <= limit  # strictly between the grid plans: fewer channels removed than the grid's
    name = moved(step)
    outs = model.get_submodule(name).out_channels
    one_fewer = prune_channels(model, {**{k: v for k, v in chosen.items() if v > 0}, name: (removed(chosen[name], name) - 1) / outs},
                               example)
    assert params(one_fewer) > limit


def test_prune_for_macs_meets_target_where_additivity_fails(setup):
    model, loader, example = setup
    scan = channel_sensitivity_scan(model, loader, example, ratios=(0.2, 0.4, 0.6), device="cpu")
    target = 0.42
    plan = plan_channels_for_macs(scan, target)
    pruned = prune_channels(model, {k: v for k, v in plan.items() if v > 0}, example)
    predicted = scan.dense_macs - sum(scan.dense_macs - scan.macs[n][scan.ratios.index(r)] for n, r in plan.items() if r)
    real = count_macs(pruned, (3, 5, 5))["total"]
    assert predicted <= target * scan.dense_macs < real  # a and the stem group both pruned: b shrinks on both sides
    small, chosen = prune_for_macs(model, scan, target, example)
    real = count_macs(small, (3, 5, 5))["total"]
    assert real <= target * scan.dense_macs
    assert all(chosen[n] >= plan[n] for n in plan) and chosen != plan  # further along the same greedy sequence
    again = prune_channels(model, {k: v for k, v in chosen.items() if v > 0}, example)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in small.state_dict().items())
    plans = [p for p, _ in _greedy_plans(scan)]
    grid = [count_macs(prune_channels(model, {k: v for k, v in p.items() if v > 0}, example), (3, 5, 5))["total"] for p in plans]
    walked = next(i for i, m in enumerate(grid) if m <= target * scan.dense_macs)  # the earliest grid plan that meets it
    assert_refined(chosen, plans, walked)
    assert real >= grid[walked]  # the refined last step prunes no more than the grid plan
    with pytest.raises(ValueError, match="out of reach"):
        prune_for_macs(model, scan, 0.05, example)


def test_prune_along_plans_returns_the_earliest_plan_that_meets_any_test(setup):
    """Bisection finds what a plain walk along the greedy sequence finds; None when no plan meets the test."""
    model, loader, example = setup
    scan = channel_sensitivity_scan(model, loader, example, ratios=(0.2, 0.4, 0.6), device="cpu")
    plans = [p for p, _ in _greedy_plans(scan)]

    def params(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    sizes = [params(prune_channels(model, {k: v for k, v in p.items() if v > 0}, example)) for p in plans]
    for limit in (sizes[0], sizes[3] + 1, sizes[-1]):
        walked = next(i for i, size in enumerate(sizes) if size <= limit)
        small, chosen = prune_along_plans(model, scan, lambda m, limit=limit: params(m) <= limit, example)
        assert_refined(chosen, plans, walked)
        assert sizes[walked] <= params(small) <= limit
    assert prune_along_plans(model, scan, lambda m: params(m) < sizes[-1], example) is None


def test_plot_writes_a_png(tmp_path):
    _hand_scan().plot(tmp_path / "channels.png", chosen={"A": 0.5})
    assert (tmp_path / "channels.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_round_trip(tmp_path):
    scan = _hand_scan()
    scan.groups = {"A": ["A", "A2"]}
    scan.to_json(tmp_path / "scan.json")
    assert ChannelScanResult.from_json(tmp_path / "scan.json") == scan
    assert ChannelScanResult.from_dict(scan.to_dict()) == scan
    (tmp_path / "bad.json").write_text('{"format": "edgeprune.scan/1"}')
    with pytest.raises(ValueError, match="bad.json: not an edgeprune channel scan"):
        ChannelScanResult.from_json(tmp_path / "bad.json")


def test_scan_bad_arguments(setup):
    model, loader, example = setup
    with pytest.raises(ValueError, match="cannot scan module.*'fc'.*valid names: stem, a, b, c"):
        channel_sensitivity_scan(model, loader, example, ratios=(0.5,), layers=["fc"], device="cpu")
    with pytest.raises(ValueError, match="increasing and distinct"):
        channel_sensitivity_scan(model, loader, example, ratios=(0.5, 0.2), device="cpu")
    only_c = channel_sensitivity_scan(model, loader, example, ratios=(0.5,), layers=["c"], device="cpu")
    assert list(only_c.accuracies) == ["c"] and only_c.groups == {"c": ["c"]}
