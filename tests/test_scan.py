"""Sensitivity scan: the fast method gives exactly the naive loop's numbers and restores the weights."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models.resnet import BasicBlock

from edgeprune.prune.masks import fine_grained_mask
from edgeprune.models import BasicCNN
from edgeprune.analyze.scan import ScanResult, scan_sparsities, sensitivity_scan
from edgeprune.training import evaluate, recalibrate_batchnorm


def chain_model() -> nn.Module:
    """Odd sizes, an in-place ReLU; input 2 x 11 x 11, 5 classes."""
    return nn.Sequential(
        nn.Conv2d(2, 5, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(5, 7, 3, padding=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(7 * 4 * 4, 13), nn.ReLU(), nn.Linear(13, 5),
    )


class TinyResNet(nn.Module):
    """A stem, torchvision's BasicBlock with a downsample branch (skip connection, in-place ops), a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 6, 3, padding=1)
        downsample = nn.Sequential(nn.Conv2d(6, 10, 1, stride=2, bias=False), nn.BatchNorm2d(10))
        self.block = BasicBlock(6, 10, stride=2, downsample=downsample)
        self.head = nn.Linear(10, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        return self.head(self.block(x).mean((2, 3)))


class OwnResidual(nn.Module):
    """Hand-written skip connections: ``+=``, ``add_`` on a cached value, a module called twice, a raw weight."""

    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Conv2d(2, 4, 3, padding=1)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.shared = nn.Conv2d(4, 4, 1)
        self.weight = nn.Parameter(torch.randn(5, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.pre(x)
        b = self.conv(a)
        a.add_(b)  # changes a value computed before the layer, in place
        c = self.shared(F.relu(a))
        c += self.shared(b)
        return F.linear(c.mean((2, 3)), self.weight)


class LateInPlace(nn.Module):
    """A value the scanned layer's part reads is changed in place later: conv must fall back to naive."""

    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Conv2d(2, 4, 3, padding=1)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.pre(x)
        b = self.conv(a)
        a.relu_()
        return self.head((b + a).mean((2, 3)))


class Untraceable(nn.Module):
    """Control flow on a tensor's value: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2 * 11 * 11, 9)
        self.fc2 = nn.Linear(9, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x.flatten(1))
        if h.sum() > 0:
            h = F.relu(h)
        return self.fc2(h)


def prepare(model: nn.Module) -> nn.Module:
    """Zero the biases (else tiny random nets predict one class) and give BatchNorm real statistics."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            m.bias.data.zero_()
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model


def make_loader(model: nn.Module, n: int = 70, batch_size: int = 16, shape=(2, 11, 11)) -> DataLoader:
    """Seeded images; labels are the dense model's predictions with a few flipped, so pruning hurts."""
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n, *shape, generator=g)
    with torch.no_grad():
        labels = model.eval()(images).argmax(1)
    flip = torch.rand(n, generator=g) < 0.2
    labels[flip] = torch.randint(0, 5, (int(flip.sum()),), generator=g)
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_weights(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k


def scan_both(model: nn.Module, loader: DataLoader, **kwargs) -> tuple[ScanResult, ScanResult]:
    before = snapshot(model)
    naive = sensitivity_scan(model, loader, method="naive", progress=False, **kwargs)
    assert_same_weights(model, before)
    fast = sensitivity_scan(model, loader, method="fast", progress=False, **kwargs)
    assert_same_weights(model, before)
    return naive, fast


def assert_identical(naive: ScanResult, fast: ScanResult) -> None:
    assert fast.sparsities == naive.sparsities
    assert fast.dense_accuracy == naive.dense_accuracy
    assert list(fast.accuracies) == list(naive.accuracies)
    for name in naive.accuracies:
        assert fast.accuracies[name] == naive.accuracies[name], name


@pytest.mark.parametrize("factory", [chain_model, TinyResNet, OwnResidual])
def test_fast_equals_naive_exactly(factory) -> None:
    torch.manual_seed(0)
    model = prepare(factory())
    loader = make_loader(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no layer may fall back to the naive loop
        naive, fast = scan_both(model, loader, scan_start=0.1, scan_step=0.2)
    assert (naive.method, fast.method) == ("naive", "fast")
    assert "naive_layers" not in fast.meta
    assert_identical(naive, fast)
    assert naive.dense_accuracy == evaluate(model, loader)
    assert any(accs != [naive.dense_accuracy] * len(accs) for accs in naive.accuracies.values())


def test_fast_equals_naive_on_basiccnn_with_tied_weights() -> None:
    """Quantized weights tie: masks must break ties exactly like fine_grained_mask."""
    torch.manual_seed(0)
    model = prepare(BasicCNN(in_channels=2, image_size=11))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.round(p * 20) / 20)
    loader = make_loader(model, n=40, batch_size=13)
    naive, fast = scan_both(model, loader, scan_start=0.0, scan_step=0.25, scan_end=1.01)
    assert fast.sparsities == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert_identical(naive, fast)
    assert all(accs[0] == naive.dense_accuracy for accs in naive.accuracies.values())


def test_layer_that_is_unsafe_to_cache_uses_naive_loop() -> None:
    torch.manual_seed(0)
    model = prepare(LateInPlace())
    loader = make_loader(model)
    naive = sensitivity_scan(model, loader, method="naive", progress=False)
    with pytest.warns(UserWarning, match="conv.weight"):
        fast = sensitivity_scan(model, loader, method="fast", progress=False)
    assert list(fast.meta["naive_layers"]) == ["conv.weight"]
    assert_identical(naive, fast)


def test_untraceable_model_falls_back_to_naive_with_warning() -> None:
    torch.manual_seed(0)
    model = prepare(Untraceable())
    loader = make_loader(model)
    before = snapshot(model)
    with pytest.warns(UserWarning, match="naive loop"):
        result = sensitivity_scan(model, loader, method="auto", progress=False)
    assert result.method == "naive"
    assert_same_weights(model, before)
    assert_identical(sensitivity_scan(model, loader, method="naive", progress=False), result)
    with pytest.raises(ValueError, match="cannot be traced"):
        sensitivity_scan(model, loader, method="fast", progress=False)


def test_layers_subset_and_unknown_names() -> None:
    model = prepare(chain_model())
    loader = make_loader(model, n=20)
    result = sensitivity_scan(model, loader, layers=["6.weight", "0.weight"], progress=False)
    assert list(result.accuracies) == ["6.weight", "0.weight"]
    assert result.layer_sizes == {"6.weight": 13 * 112, "0.weight": 5 * 2 * 9}
    with pytest.raises(ValueError, match="valid names: 0.weight, 3.weight, 6.weight, 8.weight"):
        sensitivity_scan(model, loader, layers=["fc9.weight"], progress=False)
    with pytest.raises(ValueError, match="unknown scan method"):
        sensitivity_scan(model, loader, method="quick", progress=False)


def test_scan_sparsities_follow_numpy_arange() -> None:
    assert scan_sparsities() == [0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert scan_sparsities(0.0, 1.0, 0.3) == [0.0, 0.3, 0.6, 0.9]
    assert len(scan_sparsities(0.0, 1.0, 0.05)) == 20
    with pytest.raises(ValueError):
        scan_sparsities(0.5, 0.5, 0.1)


def test_masks_match_fine_grained_mask() -> None:
    from edgeprune.analyze.fx_scan import _masks

    w = torch.round(torch.randn(7, 3, 5) * 4) / 4
    sparsities = [0.0, 0.33, 0.5, 0.95, 1.0]
    for s, mask in zip(sparsities, _masks(w, sparsities)):
        assert torch.equal(mask, fine_grained_mask(w, s))


def example_result() -> ScanResult:
    return ScanResult(
        sparsities=[0.4, 0.5, 0.6],
        accuracies={"conv1.weight": [91.5, 90.25, 80.0], "fc.weight": [92.0, 91.9, 91.8]},
        dense_accuracy=92.125,
        method="fast",
        meta={"split": "validation, 500 images"},
        layer_sizes={"conv1.weight": 450, "fc.weight": 1300},
    )


def test_json_round_trip(tmp_path) -> None:
    result = example_result()
    path = tmp_path / "scan.json"
    result.to_json(path)
    assert ScanResult.from_json(path) == result
    assert [p.name for p in tmp_path.iterdir()] == ["scan.json"]  # no temporary file left behind


@pytest.mark.parametrize(
    "text, message",
    [
        ("{not json", "not valid JSON"),
        ('{"format": "something.else/1"}', "not an edgeprune scan result"),
        ("[1, 2]", "not an edgeprune scan result"),
        ('{"format": "edgeprune.scan/1", "sparsities": [0.5]}', "damaged"),
        (
            '{"format": "edgeprune.scan/1", "sparsities": [0.5, 0.6], "dense_accuracy": 90,'
            ' "accuracies": {"a": [1.0]}}',
            "has 1 accuracies for 2 sparsities",
        ),
    ],
)
def test_from_json_rejects_corrupt_files(tmp_path, text: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        ScanResult.from_json(path)
    assert "bad.json" in str(info.value)


def test_plot_writes_png(tmp_path) -> None:
    result = example_result()
    result.accuracies.update({f"layer{i}.weight": [90.0, 85.0, 70.0] for i in range(5)})
    path = tmp_path / "scan.png"
    result.plot(path, chosen={"conv1.weight": 0.5})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(json.dumps(result.to_dict()))["format"] == "edgeprune.scan/1"


def _batchnorm_stats_by_hand(model: nn.Module, norm: nn.BatchNorm2d, batches) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel mean and unbiased variance of what ``norm`` receives, averaged over the batches (PyTorch's
    cumulative running statistics), read from the inputs with a hook in eval mode."""
    seen = []
    hook = norm.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    with torch.no_grad():
        for images, _ in batches:
            model.eval()(images)
    hook.remove()
    means = torch.stack([x.mean((0, 2, 3)) for x in seen])
    variances = torch.stack([x.transpose(0, 1).reshape(x.shape[1], -1).var(1, unbiased=True) for x in seen])
    return means.mean(0), variances.mean(0)


def test_recalibrate_batchnorm_by_hand() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, bias=False), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 5 * 5, 4))
    batches = [(torch.randn(8, 2, 7, 7) * 2 + 1, torch.zeros(8)) for _ in range(3)]
    mean, var = _batchnorm_stats_by_hand(model, model[1], batches)
    weights = snapshot(model)
    assert recalibrate_batchnorm(model, batches) and not model.training
    torch.testing.assert_close(model[1].running_mean, mean)
    torch.testing.assert_close(model[1].running_var, var)
    assert model[1].momentum == 0.1 and all(torch.equal(p, weights[n]) for n, p in model.named_parameters())
    plain = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten())
    before = snapshot(plain)
    assert not recalibrate_batchnorm(plain, batches)
    assert_same_weights(plain, before)


def _recalibrated_by_hand(model: nn.Module, batches) -> nn.Module:
    """A copy whose BatchNorm statistics are re-estimated on ``batches`` with PyTorch's idiom, written out."""
    copied = copy.deepcopy(model).eval()
    for norm in [m for m in copied.modules() if isinstance(m, nn.BatchNorm2d)]:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    with torch.no_grad():
        for images, _ in batches:
            copied(images)
    return copied.eval()


def bn_chain() -> nn.Module:
    """Two convs, each followed by BatchNorm, and a linear head over every pixel: input 2 x 11 x 11, 5 classes."""
    return nn.Sequential(nn.Conv2d(2, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3), nn.BatchNorm2d(4),
                         nn.ReLU(), nn.Flatten(), nn.Linear(4 * 7 * 7, 5))


def test_scan_recalibrates_batchnorm_after_pruning_a_layer() -> None:
    """Each pruned model's accuracy, and the dense one, are those it has once its BatchNorm statistics are
    re-estimated on the recalibration batches; the weights and buffers are restored, and without the batches the
    numbers differ."""
    torch.manual_seed(0)
    model = prepare(bn_chain())
    g = torch.Generator().manual_seed(7)
    batches = [(torch.randn(16, 2, 11, 11, generator=g) * 4 + 2, torch.zeros(16)) for _ in range(2)]
    dense = _recalibrated_by_hand(model, batches)
    loader = make_loader(dense)  # labelled by the recalibrated dense model (a few flipped)
    before = snapshot(model)
    scan = sensitivity_scan(model, loader, scan_start=0.5, scan_end=0.95, scan_step=0.4, progress=False,
                            recalibration=batches, method="naive")
    assert_same_weights(model, before)
    assert scan.method == "naive" and scan.meta["batchnorm_recalibrated_on"] == 32
    assert scan.dense_accuracy == evaluate(dense, loader) != evaluate(model, loader)
    name, sparsity = "3.weight", scan.sparsities[1]
    pruned = copy.deepcopy(model)
    weight = dict(pruned.named_parameters())[name]
    with torch.no_grad():
        weight.mul_(fine_grained_mask(weight, sparsity))
    assert scan.accuracies[name][1] == evaluate(_recalibrated_by_hand(pruned, batches), loader)
    plain = sensitivity_scan(model, loader, scan_start=0.5, scan_end=0.95, scan_step=0.4, progress=False)
    assert plain.accuracies != scan.accuracies
    fast = sensitivity_scan(model, loader, scan_start=0.5, scan_end=0.95, scan_step=0.4, progress=False,
                            recalibration=batches)  # auto: the fast method (tests/test_scan_batchnorm.py)
    assert fast.method == "fast" and fast.meta["batchnorm_recalibrated_on"] == 32
    assert_identical(scan, fast)
    assert_same_weights(model, before)
