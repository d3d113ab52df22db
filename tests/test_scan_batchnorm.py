"""The fast sensitivity scan of BatchNorm models: with the statistics re-estimated after each pruning, it gives
exactly the naive loop's numbers (compared with ==), re-estimating only the BatchNorms downstream of the pruned layer.

The data are built so that re-estimating matters: the recalibration batches are scaled and shifted away from the
validation images, and the labels are the recalibrated dense model's predictions with a fifth of them changed. A scan
that left the downstream statistics as the dense model's would measure other numbers (``stale_accuracies``)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models.resnet import BasicBlock

from edgeprune.analyze.scan import ScanResult, sensitivity_scan
from edgeprune.models import build_model, prunable_parameters
from edgeprune.prune.masks import fine_grained_prune
from edgeprune.task import RECONSTRUCTION
from edgeprune.training import evaluate, recalibrate_batchnorm


def conv_bn_chain() -> nn.Module:
    """Three conv-BN-ReLU stages (the second without bias) and a linear head: input 2 x 11 x 11, 5 classes."""
    return nn.Sequential(
        nn.Conv2d(2, 6, 3), nn.BatchNorm2d(6), nn.ReLU(inplace=True),
        nn.Conv2d(6, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 7 * 7, 5),
    )


class ResidualBN(nn.Module):
    """A conv-BN stem and torchvision's BasicBlock with a conv-BN downsample branch (in-place ReLU and ``+=``), a linear
    head over every pixel (a mean over them would leave a tiny random net predicting one class)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        downsample = nn.Sequential(nn.Conv2d(6, 10, 1, stride=2, bias=False), nn.BatchNorm2d(10))
        self.block = BasicBlock(6, 10, stride=2, downsample=downsample)
        self.head = nn.Linear(10 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(x)))
        return self.head(self.block(x).flatten(1))


class DepthwiseSeparable(nn.Module):
    """A conv-BN stem, then a depthwise conv-BN-ReLU and a pointwise conv-BN-ReLU (DS-CNN's block), max pooling, a
    head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(2, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.pointwise = nn.Conv2d(8, 12, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(12)
        self.head = nn.Linear(12 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(self.bn2(self.pointwise(F.relu(self.bn1(self.depthwise(x))))))
        return self.head(F.max_pool2d(x, 2).flatten(1))


class Sequence1d(nn.Module):
    """Conv1d-BatchNorm1d over a 2 x 121 signal, a BatchNorm without running statistics, Linear-BatchNorm1d, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 6, 5, stride=2)
        self.bn = nn.BatchNorm1d(6)
        self.batch_only = nn.BatchNorm1d(6, track_running_stats=False)  # always normalises by the batch
        self.fc = nn.Linear(6 * 59, 16)
        self.bn_fc = nn.BatchNorm1d(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.batch_only(F.relu(self.bn(self.conv(x.flatten(2)))))
        return self.head(F.relu(self.bn_fc(self.fc(x.flatten(1)))))


class SharedNorm(nn.Module):
    """One BatchNorm module called twice, before and after ``conv``: its statistics mix both calls."""

    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Conv2d(2, 4, 3, padding=1)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn(self.pre(x)))
        b = F.relu(self.bn(self.conv(a)))
        return self.head(b.mean((2, 3)))


class OwnNorm(nn.BatchNorm2d):
    """A BatchNorm defined outside torch.nn: torch.fx traces into its forward, with ``self.training`` frozen."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        momentum = 0.1 if self.momentum is None else self.momentum
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training, momentum,
                            self.eps)


def traced_through_norm() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 4, 3), OwnNorm(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 9 * 9, 5))


def prepare(model: nn.Module) -> nn.Module:
    """Small biases, BatchNorm with real statistics and scales, so that the tiny nets do not predict one class."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) and m.bias is not None:
            m.bias.data.uniform_(-0.05, 0.05)
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def recalibration_batches(shape, count: int = 3, size: int = 16) -> list:
    """Training-like batches whose statistics differ from the validation images' (scaled by 2, shifted by 0.5)."""
    g = torch.Generator().manual_seed(7)
    return [(torch.randn(size, *shape, generator=g) * 2 + 0.5, torch.zeros(size, dtype=torch.long)) for _ in range(count)]


def recalibrated(model: nn.Module, batches) -> nn.Module:
    copied = copy.deepcopy(model)
    recalibrate_batchnorm(copied, batches)
    return copied


def make_loader(model: nn.Module, batches, shape, n: int = 96, batch_size: int = 32) -> DataLoader:
    """Seeded images labelled by the recalibrated dense model, a fifth of the labels changed."""
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n, *shape, generator=g)
    with torch.no_grad():
        labels = recalibrated(model, batches).eval()(images).argmax(1)
    flip = torch.rand(n, generator=g) < 0.2
    labels[flip] = torch.randint(0, 5, (int(flip.sum()),), generator=g)
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert list(after) == list(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), k


def assert_identical(naive: ScanResult, fast: ScanResult) -> None:
    assert fast.sparsities == naive.sparsities
    assert fast.dense_accuracy == naive.dense_accuracy
    assert list(fast.accuracies) == list(naive.accuracies)
    for name in naive.accuracies:
        assert fast.accuracies[name] == naive.accuracies[name], name


def scan_both(model: nn.Module, loader, batches, allow_naive: bool = False, **kwargs) -> tuple[ScanResult, ScanResult]:
    """The naive and the fast scan with re-estimation; the weights and buffers are restored after each. Unless
    ``allow_naive``, the fast scan may not leave a layer to the naive loop (its warnings are errors)."""
    kwargs = {"scan_start": 0.3, "scan_step": 0.3, "progress": False, "recalibration": batches, **kwargs}
    before = snapshot(model)
    naive = sensitivity_scan(model, loader, method="naive", **kwargs)
    assert_unchanged(model, before)
    with warnings.catch_warnings():
        if not allow_naive:
            warnings.simplefilter("error")
        fast = sensitivity_scan(model, loader, method="fast", **kwargs)
    assert_unchanged(model, before)
    assert (naive.method, fast.method) == ("naive", "fast")
    assert fast.meta["batchnorm_recalibrated_on"] == sum(len(labels) for _, labels in batches)
    return naive, fast


def stale_accuracies(model: nn.Module, loader, batches, sparsities, task=None) -> dict[str, list[float]]:
    """What a scan would measure if it re-estimated the statistics of the dense model only (never after pruning):
    each pruned model evaluated with the dense model's re-estimated statistics."""
    dense = recalibrated(model, batches)
    result = {}
    for name in prunable_parameters(dense):
        result[name] = []
        for sparsity in sparsities:
            pruned = copy.deepcopy(dense)
            fine_grained_prune(prunable_parameters(pruned)[name], sparsity)
            result[name].append(evaluate(pruned, loader, task=task) if task else evaluate(pruned, loader))
    return result


CASES = {
    "conv_bn_chain": (conv_bn_chain, (2, 11, 11)),
    "residual": (ResidualBN, (2, 11, 11)),
    "depthwise_separable": (DepthwiseSeparable, (2, 11, 11)),
    "sequence_1d": (Sequence1d, (2, 121)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fast_equals_naive_with_batchnorm_reestimated(case: str) -> None:
    factory, shape = CASES[case]
    model = prepare(factory())
    batches = recalibration_batches(shape)
    loader = make_loader(model, batches, shape)
    naive, fast = scan_both(model, loader, batches)
    assert "naive_layers" not in fast.meta
    assert_identical(naive, fast)
    assert naive.dense_accuracy == evaluate(recalibrated(model, batches), loader)
    # the downstream re-estimation matters: without it some number differs, so a scan that skipped it would fail
    stale = stale_accuracies(model, loader, batches, fast.sparsities)
    assert any(stale[name] != fast.accuracies[name] for name in fast.accuracies)
    assert any(accs != [fast.dense_accuracy] * len(accs) for accs in fast.accuracies.values())


def test_first_layer_pruned_reestimates_every_batchnorm_and_last_layer_none() -> None:
    """conv 0 feeds all three BatchNorms, the head none: its numbers are those of evaluate() with no re-estimation."""
    model = prepare(conv_bn_chain())
    shape = (2, 11, 11)
    batches = recalibration_batches(shape)
    loader = make_loader(model, batches, shape)
    fast = sensitivity_scan(model, loader, method="fast", scan_start=0.3, scan_step=0.3, progress=False,
                            recalibration=batches, layers=["0.weight", "10.weight"])
    stale = stale_accuracies(model, loader, batches, fast.sparsities)
    assert fast.accuracies["10.weight"] == stale["10.weight"]  # nothing after the head to re-estimate
    assert fast.accuracies["0.weight"] != stale["0.weight"]
    for i, sparsity in enumerate(fast.sparsities):  # the pruned model recalibrated by hand, from scratch
        pruned = copy.deepcopy(model)
        fine_grained_prune(pruned[0].weight, sparsity)
        assert fast.accuracies["0.weight"][i] == evaluate(recalibrated(pruned, batches), loader)


@pytest.mark.parametrize("name, input_shape, classes", [("resnet8", (3, 16, 16), 10), ("dscnn", (1, 49, 10), 12)])
def test_mlperf_tiny_models(name: str, input_shape, classes: int) -> None:
    """MLPerf Tiny's ResNet-8 (on 16 x 16 images, to be quick) and DS-CNN as built for a run (DS-CNN's Dropout stays
    off while re-estimating), one sparsity."""
    torch.manual_seed(0)
    if name == "resnet8":
        model = build_model(name, 3, classes, input_shape[-1])
    else:
        model = build_model(name, 1, classes, 49, input_shape=input_shape)
    model = prepare(model)
    batches = recalibration_batches(input_shape, count=2, size=8)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(24, *input_shape, generator=g)
    loader = DataLoader(TensorDataset(images, torch.randint(0, classes, (24,), generator=g)), batch_size=16)
    naive, fast = scan_both(model, loader, batches, scan_start=0.6, scan_end=0.7, scan_step=0.1)
    assert_identical(naive, fast)


def test_reconstruction_metric_is_identical() -> None:
    """An autoencoder with BatchNorm1d, scored by MSE (float64 sums): the same number, to the last bit."""
    torch.manual_seed(0)
    model = prepare(nn.Sequential(nn.Flatten(), nn.Linear(24, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 24),
                                  nn.BatchNorm1d(24)))
    batches = recalibration_batches((24,))
    images = torch.randn(50, 24, generator=torch.Generator().manual_seed(1))
    loader = DataLoader(TensorDataset(images, torch.zeros(50, dtype=torch.long)), batch_size=16)
    naive, fast = scan_both(model, loader, batches, task=RECONSTRUCTION)
    assert_identical(naive, fast)
    stale = stale_accuracies(model, loader, batches, fast.sparsities, task=RECONSTRUCTION)
    assert stale["1.weight"] != fast.accuracies["1.weight"]


def test_batchnorm_shared_upstream_and_downstream_falls_back_for_that_layer() -> None:
    model = prepare(SharedNorm())
    shape = (2, 11, 11)
    batches = recalibration_batches(shape)
    loader = make_loader(model, batches, shape)
    with pytest.warns(UserWarning, match=r"conv\.weight \(a BatchNorm its downstream part calls is also called upstream"):
        naive, fast = scan_both(model, loader, batches, allow_naive=True)
    assert list(fast.meta["naive_layers"]) == ["conv.weight"]
    assert_identical(naive, fast)


def test_graph_that_cannot_reestimate_falls_back_to_naive() -> None:
    """torch.fx froze OwnNorm in eval mode: the graph's re-estimation would differ, so no layer is scanned fast."""
    model = prepare(traced_through_norm())
    shape = (2, 11, 11)
    batches = recalibration_batches(shape)
    loader = make_loader(model, batches, shape)
    with pytest.warns(UserWarning, match="while BatchNorm statistics are re-estimated"):
        naive, fast = scan_both(model, loader, batches, allow_naive=True)
    assert sorted(fast.meta["naive_layers"]) == ["0.weight", "4.weight"]
    assert_identical(naive, fast)


def test_without_recalibration_batches_nothing_is_reestimated() -> None:
    model = prepare(conv_bn_chain())
    shape = (2, 11, 11)
    batches = recalibration_batches(shape)
    loader = make_loader(model, batches, shape)
    before = snapshot(model)
    naive = sensitivity_scan(model, loader, method="naive", scan_start=0.3, scan_step=0.3, progress=False)
    fast = sensitivity_scan(model, loader, method="fast", scan_start=0.3, scan_step=0.3, progress=False)
    assert_unchanged(model, before)
    assert_identical(naive, fast)
    assert naive.dense_accuracy == evaluate(model, loader) and "batchnorm_recalibrated_on" not in fast.meta


@pytest.mark.parametrize("case", ["residual", "depthwise_separable"])
def test_reestimated_statistics_are_the_pruned_models_bit_for_bit(case: str) -> None:
    """Below the accuracies: for every layer and sparsity, the statistics the fast scan re-estimates for the downstream
    BatchNorms equal, bit for bit, those recalibrate_batchnorm gives the pruned model, and the pruned model's upstream
    BatchNorms re-estimate to the dense model's re-estimated values, which the scan keeps."""
    from edgeprune.analyze.fx_scan import _STATISTICS, _last_uses, _masks, _plan_layer, _probe, _recalibrate, trace

    factory, shape = CASES[case]
    model = prepare(factory())
    batches = recalibration_batches(shape)
    graph, _ = trace(model)
    nodes = list(graph.nodes)
    uses, changes, faithful = _probe(model, nodes, batches[0][0])
    assert faithful
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    params = prunable_parameters(model)
    originals = {name: p.detach().clone() for name, p in params.items()}
    sparsities = [0.3, 0.6, 0.9]
    position = {node: i for i, node in enumerate(nodes)}
    runs = [_plan_layer(model, nodes, position, uses, changes, name, p, norms) for name, p in params.items()]
    for run in runs:
        run.masks = _masks(originals[run.name], sparsities)
    assert _recalibrate(model, nodes, _last_uses(nodes), runs, norms, batches, originals, "cpu", False) == ""
    names = {id(m): name for name, m in model.named_modules()}
    assert_unchanged(model, snapshot(recalibrated(model, batches)))  # the dense model's statistics are left in it
    downstream_counts = []
    for run in runs:
        downstream_counts.append(len(run.norms))
        for i, sparsity in enumerate(sparsities):
            pruned = copy.deepcopy(model)
            fine_grained_prune(prunable_parameters(pruned)[run.name], sparsity)
            recalibrate_batchnorm(pruned, batches)
            for norm in norms:
                theirs = pruned.get_submodule(names[id(norm)])
                ours = run.states[i][norm] if norm in run.norms else tuple(getattr(norm, k) for k in _STATISTICS)
                for key, tensor in zip(_STATISTICS, ours):
                    assert torch.equal(getattr(theirs, key), tensor), (run.name, sparsity, names[id(norm)], key)
    assert downstream_counts[0] == len(norms) and downstream_counts[-1] == 0  # the first layer feeds all, the head none
