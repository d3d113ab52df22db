"""Channel pruning: tiny models for every graph shape, checked against hand-computed shapes and zeroed-channel references."""

import copy

import pytest
import torch
import torchvision
from torch import nn

from edgeprune.files import load_state_dict_file, save_tensors
from edgeprune.prune.channels import channel_counts, load_channel_pruned, output_layer_names, prune_channels
from edgeprune.prune.importance import channel_scores, channels_to_remove, num_channels_removed


class Chain(nn.Module):
    """conv 3→7 → conv 7→5 → global average → linear 5→4; no BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 7, 3, padding=1)
        self.conv2 = nn.Conv2d(7, 5, 3, padding=1)
        self.fc = nn.Linear(5, 4)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


class FlattenLinear(nn.Module):
    """conv 2→5 on 3x3 images → flatten (45) → linear 45→6 → linear 6→3."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 5, 3, padding=1)
        self.fc1 = nn.Linear(5 * 3 * 3, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        x = torch.relu(self.conv(x)).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


class Residual(nn.Module):
    """stem 3→6, block a 6→4, b 4→6 added to the stem's output, linear 6→3; stem and b are coupled."""

    def __init__(self, bn: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.a = nn.Conv2d(6, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6) if bn else nn.Identity()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(x + self.bn(self.b(torch.relu(self.a(x)))))
        return self.fc(x.mean((2, 3)))


class Depthwise(nn.Module):
    """pointwise 3→6, depthwise 6 (groups 6), pointwise 6→5, linear 5→4: pw1 and dw are coupled."""

    def __init__(self) -> None:
        super().__init__()
        self.pw1 = nn.Conv2d(3, 6, 1)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.pw2 = nn.Conv2d(6, 5, 1)
        self.fc = nn.Linear(5, 4)

    def forward(self, x):
        x = torch.relu(self.dw(torch.relu(self.pw1(x))))
        return self.fc(torch.relu(self.pw2(x)).mean((2, 3)))


def _seeded(cls, *args):
    torch.manual_seed(0)
    return cls(*args).eval()


def _kept(original: torch.Tensor, pruned: torch.Tensor) -> list[int]:
    """Which rows of ``original`` survive in ``pruned``, found by comparing values (independent of the surgery)."""
    return [i for i in range(original.shape[0]) if any(torch.equal(original[i], row) for row in pruned)]


def _zeroed(model: nn.Module, removed: dict[str, list[int]]) -> nn.Module:
    """A copy of ``model`` with the given output channels' weights and biases set to zero."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name, channels in removed.items():
            module = ref.get_submodule(name)
            module.weight[channels] = 0
            if module.bias is not None:
                module.bias[channels] = 0
    return ref


def _l2_by_hand(*slices: torch.Tensor) -> torch.Tensor:
    """sqrt of the sum of squares of every slice, per channel (dim 0 of each slice)."""
    return torch.stack([s.reshape(s.shape[0], -1).pow(2).sum(1) for s in slices]).sum(0).sqrt()


def test_chain_shapes_params_and_zeroed_equivalence():
    model = _seeded(Chain)
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(4, 3, 6, 6)
    small = prune_channels(model, {"_default": 0.5}, x[:1])
    # round(0.5 * 7) = 4 removed -> 3 kept; round(0.5 * 5) = 2 removed -> 3 kept; fc keeps its 4 classes
    assert small.conv1.weight.shape == (3, 3, 3, 3) and small.conv2.weight.shape == (3, 3, 3, 3)
    assert small.fc.weight.shape == (4, 3)
    assert sum(p.numel() for p in small.parameters()) == (81 + 3) + (81 + 3) + (12 + 4)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), "the original model was changed"
    # which channels go, by hand: L2 of conv1's filter together with conv2's input slice
    w1, w2 = model.conv1.weight.detach(), model.conv2.weight.detach()
    scores1 = _l2_by_hand(w1, w2.transpose(0, 1))
    removed1 = sorted(torch.argsort(scores1)[:4].tolist())
    scores2 = _l2_by_hand(model.conv2.weight.detach(), model.fc.weight.detach().t())
    removed2 = sorted(torch.argsort(scores2)[:2].tolist())
    kept1 = [i for i in range(7) if i not in removed1]
    kept2 = [i for i in range(5) if i not in removed2]
    assert torch.equal(small.conv1.weight, w1[kept1])  # bit for bit
    assert torch.equal(small.conv2.weight, w2[kept2][:, kept1])
    assert torch.equal(small.fc.weight, model.fc.weight[:, kept2])
    ref = _zeroed(model, {"conv1": removed1, "conv2": removed2})
    torch.testing.assert_close(small(x), ref(x), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(small(x), model(x))


def test_flatten_linear_expands_channels_to_features():
    model = _seeded(FlattenLinear)
    x = torch.randn(3, 2, 3, 3)
    small = prune_channels(model, {"conv": 0.4, "fc1": 0.5}, x[:1])
    kept = _kept(model.conv.weight.detach(), small.conv.weight)
    assert len(kept) == 3  # round(0.4 * 5) = 2 removed
    assert small.fc1.in_features == 3 * 9 and small.fc1.out_features == 3
    features = [c * 9 + k for c in kept for k in range(9)]
    fc1_kept = _kept(model.fc1.weight.detach()[:, features], small.fc1.weight)
    assert torch.equal(small.fc1.weight, model.fc1.weight[fc1_kept][:, features])
    removed = {"conv": [c for c in range(5) if c not in kept], "fc1": [r for r in range(6) if r not in fc1_kept]}
    torch.testing.assert_close(small(x), _zeroed(model, removed)(x), rtol=1e-5, atol=1e-6)


def test_residual_prunes_coupled_channels_together():
    model = _seeded(Residual)
    x = torch.randn(2, 3, 5, 5)
    small = prune_channels(model, {"stem": 0.5, "a": 0.25}, x[:1])
    assert small.stem.out_channels == small.b.out_channels == small.a.in_channels == small.fc.in_features == 3
    assert small.a.out_channels == small.b.in_channels == 3  # round(0.25 * 4) = 1 removed
    kept = _kept(model.stem.weight.detach(), small.stem.weight)
    assert kept == _kept(model.b.weight.detach()[:, _kept(model.a.weight.detach()[:, kept], small.a.weight)], small.b.weight)
    removed_res = [c for c in range(6) if c not in kept]
    removed_a = [c for c in range(4) if c not in _kept(model.a.weight.detach()[:, kept], small.a.weight)]
    ref = _zeroed(model, {"stem": removed_res, "b": removed_res, "a": removed_a})
    torch.testing.assert_close(small(x), ref(x), rtol=1e-5, atol=1e-6)


def test_depthwise_stays_depthwise_and_matches_zeroed():
    model = _seeded(Depthwise)
    x = torch.randn(2, 3, 4, 4)
    small = prune_channels(model, {"re:pw.*": 0.5}, x[:1])
    assert small.pw1.out_channels == small.dw.in_channels == small.dw.out_channels == small.dw.groups == 3
    assert small.pw2.out_channels == 3  # round(0.5 * 5) = 2 removed (banker's rounding of 2.5)
    kept = _kept(model.pw1.weight.detach(), small.pw1.weight)
    assert torch.equal(small.dw.weight, model.dw.weight[kept])
    removed = [c for c in range(6) if c not in kept]
    removed_pw2 = [c for c in range(5) if c not in _kept(model.pw2.weight.detach()[:, kept], small.pw2.weight)]
    ref = _zeroed(model, {"pw1": removed, "dw": removed, "pw2": removed_pw2})
    torch.testing.assert_close(small(x), ref(x), rtol=1e-5, atol=1e-6)


def test_output_layer_is_never_pruned():
    model = _seeded(FlattenLinear)
    x = torch.randn(1, 2, 3, 3)
    assert output_layer_names(model, x) == ["fc2"]
    small = prune_channels(model, {"_default": 0.9}, x)
    assert small.fc2.out_features == 3
    assert small.conv.out_channels == 1 and small.fc1.out_features == 1  # round(0.9 * n), one always kept
    with pytest.raises(ValueError, match="output layer"):
        prune_channels(model, {"fc2": 0.5}, x)


class TwoHeads(nn.Module):
    """The classes are the sum of two linear heads, so both heads' outputs are coupled with the output."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 6)
        self.head_a = nn.Linear(6, 3)
        self.head_b = nn.Linear(6, 3)

    def forward(self, x):
        x = torch.relu(self.body(x))
        return self.head_a(x) + self.head_b(x)


def test_layers_coupled_with_the_output_are_never_pruned():
    model = _seeded(TwoHeads)
    x = torch.randn(2, 4)
    small = prune_channels(model, {"_default": 0.5}, x[:1])
    assert small.head_a.out_features == small.head_b.out_features == 3
    assert small.body.out_features == 3
    assert small(x).shape == (2, 3)


def test_ratio_errors_and_conflicts():
    model = _seeded(Residual)
    x = torch.randn(1, 3, 5, 5)
    with pytest.raises(ValueError, match="unknown module name 'stemm'"):
        prune_channels(model, {"stemm": 0.5}, x)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        prune_channels(model, {"stem": 1.0}, x)
    with pytest.raises(ValueError, match="coupled"):
        prune_channels(model, {"stem": 0.5, "b": 0.25}, x)
    with pytest.raises(ValueError, match="one input tensor"):
        prune_channels(model, {"stem": 0.5}, (x,))
    # an exact key wins over _default for the whole coupled group
    small = prune_channels(model, {"b": 0.5, "_default": 0.0}, x)
    assert small.stem.out_channels == 3 and small.a.out_channels == 4


def test_batchnorm_model_keeps_running_stats_and_original():
    model = _seeded(Residual, True)
    with torch.no_grad():
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.weight.copy_(torch.tensor([0.9, 0.05, 0.7, 0.01, 0.8, 0.6]))
    model.train()
    before = copy.deepcopy(model.state_dict())
    small = prune_channels(model, {"stem": 0.34}, torch.randn(1, 3, 5, 5), importance="bn_scale")
    assert model.training and small.training
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # bn_scale removes the two smallest |gamma| channels, 1 and 3
    assert torch.equal(small.bn.weight, before["bn.weight"][[0, 2, 4, 5]])
    assert torch.equal(small.bn.running_mean, before["bn.running_mean"][[0, 2, 4, 5]])


def test_taylor_removes_the_channel_the_loss_does_not_see():
    model = _seeded(Chain)
    with torch.no_grad():
        model.conv1.weight[2] *= 10  # largest filter by magnitude ...
        model.conv2.weight[:, 2] = 0  # ... but nothing reads it
    x = torch.randn(8, 3, 6, 6)
    batches = [(x, torch.randint(0, 4, (8,)))]
    ratios = {"conv1": 1 / 7}
    assert 2 in _kept(model.conv1.weight.detach(), prune_channels(model, ratios, x[:1], "l2").conv1.weight)
    small = prune_channels(model, ratios, x[:1], "taylor", batches=batches)
    assert 2 not in _kept(model.conv1.weight.detach(), small.conv1.weight)
    assert all(p.grad is None for p in model.parameters()) and all(p.grad is None for p in small.parameters())
    with pytest.raises(ValueError, match="batches"):
        prune_channels(model, ratios, x[:1], "taylor")


def test_grouped_conv_is_left_whole_with_a_warning():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.Conv2d(8, 6, 3, groups=2), nn.Flatten(), nn.Linear(6 * 2 * 2, 5), nn.ReLU(), nn.Linear(5, 3)
    ).eval()
    x = torch.randn(2, 3, 6, 6)
    with pytest.warns(UserWarning, match="grouped conv 1"):
        small = prune_channels(model, {"_default": 0.5}, x[:1])
    assert small[0].out_channels == 8 and small[1].out_channels == 6  # both touch the grouped conv
    assert small[3].out_features == 3 and small[5].out_features == 3
    assert small(x).shape == (2, 3)


@pytest.mark.parametrize("cls", [Chain, FlattenLinear, Residual, Depthwise])
def test_checkpoint_roundtrip_into_a_fresh_model(cls, tmp_path):
    model = _seeded(cls)
    x = torch.randn(2, *{Chain: (3, 6, 6), FlattenLinear: (2, 3, 3), Residual: (3, 5, 5), Depthwise: (3, 4, 4)}[cls])
    small = prune_channels(model, {"_default": 0.5}, x[:1]).eval()
    save_tensors(tmp_path / "small.safetensors", small.state_dict())
    state, _ = load_state_dict_file(tmp_path / "small.safetensors")
    torch.manual_seed(1)
    fresh = load_channel_pruned(cls().eval(), state)
    assert channel_counts(fresh) == channel_counts(small)
    assert torch.equal(fresh(x), small(x))


@pytest.mark.parametrize("build", [torchvision.models.resnet18, torchvision.models.mobilenet_v2, torchvision.models.vgg11_bn])
def test_torchvision_models_get_smaller_and_run(build):
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(0)
    model = build(num_classes=7).eval()
    small = prune_channels(model, {"_default": 0.5}, x[:1]).eval()
    params = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in small.parameters()) < 0.4 * params
    assert small(x).shape == (2, 7)
    fresh = load_channel_pruned(build(num_classes=7).eval(), small.state_dict())
    assert torch.equal(fresh(x), small(x))


def test_importance_arithmetic_by_hand():
    rows = [
        (torch.tensor([[3.0, -4.0], [1.0, 0.0], [0.0, 0.0]]), torch.tensor([0, 1, 2])),
        (torch.tensor([[0.0], [2.0], [-1.0], [1.0]]), torch.tensor([0, 1, 2, 2])),  # channel 2 spans two rows
    ]
    assert torch.equal(channel_scores(rows, 3, "l1"), torch.tensor([7.0, 3.0, 2.0], dtype=torch.float64))
    assert torch.allclose(channel_scores(rows, 3, "l2"), torch.tensor([5.0, 5**0.5, 2**0.5], dtype=torch.float64))
    assert torch.equal(channel_scores(rows, 3, "taylor"), torch.tensor([1.0, 9.0, 0.0], dtype=torch.float64))
    assert num_channels_removed(7, 0.5) == 4 and num_channels_removed(5, 0.5) == 2 and num_channels_removed(3, 0.99) == 2
    assert channels_to_remove(torch.tensor([2.0, 1.0, 1.0, 3.0]), 0.5) == [1, 2]
    assert channels_to_remove(torch.tensor([1.0, 1.0, 1.0]), 0.34) == [0]  # ties go to the lower index
    with pytest.raises(ValueError, match="importance"):
        channel_scores(rows, 3, "l3")


def test_cli_prune_channel_ratios_writes_a_smaller_checkpoint(tmp_path, capsys):
    from edgeprune.checkpoint import masks_path_for, save_checkpoint
    from edgeprune.cli import main
    from edgeprune.models import BasicCNN, ModelSpec

    torch.manual_seed(0)
    spec = ModelSpec("basiccnn", 1, 10, 28)
    model = BasicCNN(1, 10, 28)
    save_checkpoint(tmp_path / "base.safetensors", model, spec)
    out = tmp_path / "small.safetensors"
    assert main(["prune", str(tmp_path / "base.safetensors"), "--channel-ratios", '{"_default": 0.5}', "--out", str(out)]) == 0
    assert "conv1 8, conv2 16, fc1 60, fc2 10" in capsys.readouterr().out
    state, meta = load_state_dict_file(out)
    # conv1 16 -> 8, conv2 32 -> 16 (its inputs 8), fc1 120 -> 60 (its inputs 16 channels x 7 x 7), fc2 keeps 10 classes
    assert state["conv1.weight"].shape == (8, 1, 5, 5) and state["conv2.weight"].shape == (16, 8, 5, 5)
    assert state["fc1.weight"].shape == (60, 16 * 7 * 7) and state["fc2.weight"].shape == (10, 60)
    assert '"channel_pruned": true' in meta["info"] and not masks_path_for(out).exists()
    x = torch.randn(2, 1, 28, 28)
    expected = prune_channels(model, {"_default": 0.5}, x[:1]).eval()
    assert torch.equal(load_channel_pruned(spec.build().eval(), state)(x), expected(x))
    both = tmp_path / "both.safetensors"
    argv = ["prune", str(tmp_path / "base.safetensors"), "--channel-ratios", '{"conv2": 0.25}', "--sparsity", '{"_default": 0.5}']
    assert main([*argv, "--out", str(both)]) == 0
    masks, _ = load_state_dict_file(masks_path_for(both))
    assert masks["conv2.weight"].shape == (24, 16, 5, 5) and masks["fc1.weight"].shape == (120, 24 * 7 * 7)
    assert main(["prune", str(tmp_path / "base.safetensors"), "--out", str(both)]) == 2


def test_cli_prune_with_taylor_importance_takes_its_gradients_from_training_batches(tmp_path, fashion_slice):
    import itertools

    from edgeprune.checkpoint import load_checkpoint, save_checkpoint
    from edgeprune.cli import main
    from edgeprune.data import DataConfig, load_data, make_loaders
    from edgeprune.models import ModelSpec

    spec = ModelSpec("basiccnn", 1, 10, 28)
    model = spec.build(seed=0).eval()
    save_checkpoint(tmp_path / "base.safetensors", model, spec)
    out = tmp_path / "taylor.safetensors"
    argv = ["prune", str(tmp_path / "base.safetensors"), "--channel-ratios", '{"_default": 0.5}', "--importance", "taylor",
            "--data-dir", fashion_slice, "--val-size", "100", "--out", str(out)]
    assert main(argv) == 0
    small, _, _, info = load_checkpoint(out)
    assert info["channel_importance"] == "taylor"
    splits = load_data(DataConfig(data_dir=fashion_slice, val_size=100))
    batches = list(itertools.islice(make_loaders(splits, 64, 0)[0], 4))
    expected = prune_channels(model, {"_default": 0.5}, torch.zeros(1, 1, 28, 28), "taylor", batches)
    assert all(torch.equal(a, b) for a, b in zip(small.state_dict().values(), expected.state_dict().values()))
    by_l2 = prune_channels(model, {"_default": 0.5}, torch.zeros(1, 1, 28, 28), "l2")
    assert not torch.equal(by_l2.conv1.weight, expected.conv1.weight)  # another criterion keeps other channels


def test_cli_channel_pruned_checkpoint_inspects_and_finetunes(tmp_path, capsys, fashion_slice):
    from edgeprune.checkpoint import load_checkpoint
    from edgeprune.cli import main

    d = ["--data-dir", fashion_slice, "--limit", "200", "--val-size", "100"]
    base, small, tuned = tmp_path / "base.safetensors", tmp_path / "small.safetensors", tmp_path / "tuned.safetensors"
    assert main(["train", *d, "--epochs", "1", "--out", str(base)]) == 0
    assert main(["prune", *d, str(base), "--channel-ratios", '{"re:conv.*": 0.5, "fc1": 0.25}', "--out", str(small)]) == 0
    assert main(["inspect", *d, str(small), "--out", str(tmp_path / "inspect")]) == 0
    assert "output channels: conv1 8, conv2 16, fc1 90, fc2 10" in capsys.readouterr().out
    assert main(["finetune", *d, str(small), "--epochs", "1", "--out", str(tuned)]) == 0
    model, _, masks, info = load_checkpoint(tuned)
    assert masks is None and info["channel_pruned"] is True
    assert model.fc1.weight.shape == (90, 16 * 7 * 7) and model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_latency_target_walks_the_channel_plan_until_the_timed_ratio_meets_it(monkeypatch):
    """prune_channels_step(target_latency=...) takes the first plan whose timed ratio meets the target.

    The timing is replaced by each candidate's parameter fraction (deterministic), so the plan it picks must be
    the one a parameter target picks by walking the same greedy plans."""
    from edgeprune import steps
    from edgeprune.models import ModelSpec

    model = _seeded(Chain).eval()
    spec = ModelSpec("chain", 3, 4, 32)

    def params(m):
        return sum(p.numel() for p in m.parameters())

    def fake_ratio(small, reference, *args):
        assert reference is model
        return params(small) / params(model)

    monkeypatch.setattr(steps.pruning, "latency_ratio", fake_ratio)
    torch.manual_seed(0)
    images = torch.randn(16, 3, 32, 32)
    loader = [(images, model(images).argmax(1))]
    small, info = steps.prune_channels_step(model, spec, loader=loader, device="cpu", target_latency=0.6)
    assert info["latency_fraction_b64"] == params(small) / params(model) <= 0.6
    assert info["channel_scan"] is not None  # planned from the scan, not the uniform fallback
    from edgeprune.analyze.channel_scan import ChannelScanResult, _greedy_plans

    plans = [p for p, _ in _greedy_plans(ChannelScanResult.from_dict(info["channel_scan"]))]
    fractions = [params(prune_channels(model, {k: v for k, v in p.items() if v > 0}, images[:1])) / params(model) for p in plans]
    walked = next(i for i, f in enumerate(fractions) if f <= 0.6)  # the earliest grid plan that meets it
    chosen, before, after = info["channel_ratios"], plans[walked - 1], plans[walked]
    assert all(chosen[n] == after[n] or before[n] < chosen[n] < after[n] for n in after)  # its last step refined
    assert fractions[walked] <= info["latency_fraction_b64"]
    with pytest.raises(ValueError, match="exactly one"):
        steps.prune_channels_step(model, spec, {"_default": 0.5}, target_latency=0.5)
    with pytest.raises(ValueError, match="target MACs fraction"):
        steps.prune_channels_step(model, spec, target_macs=1.5)
