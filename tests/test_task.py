"""The task: metrics on hand-computed tensors, the drop and its tolerance, the run config's inference, and a scan and
plan of a reconstruction model scored by MSE."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from edgeprune.analyze.plan import make_plan, plan_by_tolerance
from edgeprune.analyze.scan import ScanResult, sensitivity_scan
from edgeprune.config import RunConfig
from edgeprune.data import DataConfig
from edgeprune.task import CLASSIFICATION, RECONSTRUCTION, resolve_task
from edgeprune.training import evaluate, train


class Fixed(nn.Module):
    """Returns the given outputs batch by batch, whatever the input."""

    def __init__(self, outputs: torch.Tensor) -> None:
        super().__init__()
        self.outputs, self.at = outputs, 0
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.outputs[self.at:self.at + len(x)]
        self.at += len(x)
        return out


def test_mse_and_accuracy_of_known_values() -> None:
    inputs = torch.tensor([[1.0, 2.0], [0.0, -1.0], [3.0, 3.0]])
    outputs = torch.tensor([[1.5, 2.0], [0.0, 1.0], [2.0, 3.0]])
    # squared errors 0.25, 0, 0, 4, 1, 0: 5.25 over 6 elements; batches of 2 and 1 sum to the same
    loader = DataLoader(TensorDataset(inputs, torch.full((3,), -1)), batch_size=2)
    assert evaluate(Fixed(outputs), loader, "cpu", RECONSTRUCTION) == pytest.approx(5.25 / 6, abs=1e-12)
    assert RECONSTRUCTION.loss(outputs, inputs, None).item() == pytest.approx(5.25 / 6)
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 4.0, 0.0], [5.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])  # argmax 0, 2, 1, 0: two right of four
    loader = DataLoader(TensorDataset(torch.zeros(4, 1), labels), batch_size=3)
    assert evaluate(Fixed(logits), loader, "cpu", CLASSIFICATION) == 50.0
    assert evaluate(Fixed(logits), loader, "cpu") == 50.0  # classification is the default
    expected = -sum(torch.log_softmax(logits, 1)[i, labels[i]].item() for i in range(4)) / 4
    assert CLASSIFICATION.loss(logits, None, labels).item() == pytest.approx(expected, rel=1e-6)


def test_a_flat_output_reconstructs_a_shaped_input() -> None:
    inputs = torch.arange(12.0).reshape(2, 1, 2, 3)
    assert RECONSTRUCTION.batch_total(inputs.reshape(2, 6) + 1, inputs, None) == (12.0, 12)
    with pytest.raises(ValueError, match=r"output \(2, 5\) does not have the input's \(2, 1, 2, 3\) elements"):
        RECONSTRUCTION.loss(torch.zeros(2, 5), inputs, None)


def test_drop_floor_and_default_bound() -> None:
    assert CLASSIFICATION.drop(90.0, 87.5) == 2.5 and CLASSIFICATION.floor(90.0, 2.5) == 87.5
    assert RECONSTRUCTION.drop(0.02, 0.025) == pytest.approx(25.0)  # 25 % more error
    assert RECONSTRUCTION.floor(0.02, 25.0) == pytest.approx(0.025)
    assert RECONSTRUCTION.within(0.024, 0.025) and not RECONSTRUCTION.within(0.026, 0.025)
    assert CLASSIFICATION.within(88.0, 87.5) and not CLASSIFICATION.within(87.0, 87.5)
    assert RECONSTRUCTION.better(0.1, 0.2) and CLASSIFICATION.better(0.2, 0.1) and RECONSTRUCTION.better(5.0, None)
    # the seed's bound: the error may grow by half
    assert CLASSIFICATION.lower_bound(90.0) == 85.0 and RECONSTRUCTION.lower_bound(0.02) == pytest.approx(0.03)
    assert RECONSTRUCTION.drop(0.0, 0.0) == 0.0 and math.isinf(RECONSTRUCTION.drop(0.0, 1e-9))


def test_training_minimises_the_reconstruction_error() -> None:
    torch.manual_seed(0)
    data = torch.randn(256, 6) @ torch.randn(6, 6)
    loader = DataLoader(TensorDataset(data, torch.full((256,), -1)), batch_size=32)
    model = nn.Sequential(nn.Linear(6, 6))
    before = evaluate(model, loader, "cpu", RECONSTRUCTION)
    history = train(model, loader, 5, loader, lr=0.05, device="cpu", keep_best=True, task=RECONSTRUCTION)
    assert history.metric == "mse" and history.accuracy[history.best_epoch - 1] == min(history.accuracy)
    assert evaluate(model, loader, "cpu", RECONSTRUCTION) == pytest.approx(min(history.accuracy))
    assert min(history.accuracy) < before / 4


def tiny_autoencoder() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    data = torch.randn(128, 8)
    loader = DataLoader(TensorDataset(data, torch.full((128,), -1)), batch_size=32)
    train(model, loader, 20, lr=0.02, device="cpu", task=RECONSTRUCTION)
    return model, loader


@pytest.mark.parametrize("method", ["naive", "fast"])
def test_scan_of_a_reconstruction_model_measures_mse(method: str) -> None:
    model, loader = tiny_autoencoder()
    scan = sensitivity_scan(model, loader, scan_step=0.25, scan_start=0.0, scan_end=1.01, method=method, device="cpu",
                            progress=False, task=RECONSTRUCTION)
    assert scan.task == "reconstruction" and scan.method == method
    assert scan.dense_accuracy == pytest.approx(evaluate(model, loader, "cpu", RECONSTRUCTION))
    for name, values in scan.accuracies.items():
        assert values[0] == pytest.approx(scan.dense_accuracy)  # sparsity 0 is the dense model
        assert values[-1] > 2 * scan.dense_accuracy  # a layer pruned away reconstructs far worse
        # an independent check: prune that layer by hand and compute the MSE with numpy
        pruned = {k: v.clone() for k, v in model.state_dict().items()}
        weight = pruned[name]
        k = round(0.5 * weight.numel())
        threshold = weight.abs().flatten().kthvalue(k).values
        pruned[name] = torch.where(weight.abs() > threshold, weight, torch.zeros(()))
        copy = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
        copy.load_state_dict(pruned)
        x = torch.cat([b for b, _ in loader]).numpy()
        with torch.no_grad():
            y = copy(torch.from_numpy(x)).numpy()
        assert values[scan.sparsities.index(0.5)] == pytest.approx(float(np.mean((y.astype(np.float64) - x) ** 2)), rel=1e-5)


def test_fast_and_naive_reconstruction_scans_agree() -> None:
    model, loader = tiny_autoencoder()
    kwargs = dict(scan_step=0.2, scan_start=0.0, scan_end=1.0, device="cpu", progress=False, task=RECONSTRUCTION)
    fast, naive = sensitivity_scan(model, loader, method="fast", **kwargs), sensitivity_scan(model, loader, method="naive", **kwargs)
    assert fast.accuracies == naive.accuracies and fast.dense_accuracy == naive.dense_accuracy


def mse_scan() -> ScanResult:
    """MSE rising with sparsity: layer a slowly (0, 4, 20 % worse), layer b fast (30, 100, 800 %); dense MSE 0.1."""
    return ScanResult(sparsities=[0.25, 0.5, 0.75], accuracies={"a": [0.1, 0.104, 0.12], "b": [0.13, 0.2, 0.9]},
                      dense_accuracy=0.1, layer_sizes={"a": 100, "b": 100}, task="reconstruction")


def test_tolerance_plan_picks_sparsities_by_mse() -> None:
    scan = mse_scan()
    # 5 %: a's MSE may reach 0.105 (0.104 at 0.5 is within, 0.12 is not); b's 0.13 at 0.25 is 30 % worse
    assert plan_by_tolerance(scan, 5.0).sparsity_dict == {"a": 0.5, "b": 0.0}
    assert plan_by_tolerance(scan, 20.0).sparsity_dict == {"a": 0.75, "b": 0.0}
    assert plan_by_tolerance(scan, 30.0).sparsity_dict == {"a": 0.75, "b": 0.25}
    # the default: the seed's bound, MSE at most 1.5 x the dense (a 50 % increase)
    default = plan_by_tolerance(scan)
    assert default.sparsity_dict == {"a": 0.75, "b": 0.25} and default.target == {"max_drop": pytest.approx(50.0)}
    assert default.predicted_accuracy == {"a": pytest.approx(0.12), "b": pytest.approx(0.13)}


def test_budget_plan_prunes_the_layer_whose_mse_rises_least() -> None:
    scan = mse_scan()
    torch.manual_seed(0)
    model = nn.Module()
    model.a, model.b = nn.Parameter(torch.randn(10, 10)), nn.Parameter(torch.randn(10, 10))
    # 75 of 200 weights: a to 0.75 costs 20 % of MSE, a to 0.5 and b to 0.25 cost 4 + 30 %
    plan = make_plan(scan, model, target_sparsity=0.375)
    assert plan.sparsity_dict == {"a": 0.75, "b": 0.0}
    # read as accuracies (higher is better) every pruned value is "better" than dense: no layer costs anything and
    # the plan is the magnitude ranking's, which prunes both
    as_accuracy = ScanResult(scan.sparsities, scan.accuracies, scan.dense_accuracy, layer_sizes=scan.layer_sizes)
    assert make_plan(as_accuracy, model, target_sparsity=0.375).sparsity_dict["b"] > 0


def test_scan_file_keeps_the_task(tmp_path: Path) -> None:
    scan = mse_scan()
    scan.to_json(tmp_path / "scan.json")
    back = ScanResult.from_json(tmp_path / "scan.json")
    assert back.task == "reconstruction" and back.lower_bound == pytest.approx(0.15)
    scan.plot(tmp_path / "scan.png")
    with pytest.raises(ValueError, match="unknown task 'regression'"):
        ScanResult([0.5], {}, 1.0, task="regression")


def npz(tmp_path: Path, labels: bool) -> str:
    rng = np.random.default_rng(0)
    found = {"x_train": rng.normal(size=(20, 4)), "x_test": rng.normal(size=(5, 4))}
    if labels:
        found.update(y_train=np.arange(20) % 2, y_test=np.arange(5) % 2)
    path = tmp_path / ("labelled.npz" if labels else "unlabelled.npz")
    np.savez(path, **found)
    return str(path)


def config(path: str, **fields) -> RunConfig:
    return RunConfig(model="tests.test_task:tiny", data=DataConfig("tensors", path, val_size=5), mcu="none",
                     device_exports="none", **fields)


def test_run_config_infers_the_task(tmp_path: Path) -> None:
    labelled, unlabelled = npz(tmp_path, True), npz(tmp_path, False)
    assert config(labelled).resolved_task is CLASSIFICATION
    assert config(unlabelled).resolved_task is RECONSTRUCTION
    assert config(labelled, task="reconstruction").resolved_task is RECONSTRUCTION
    assert config(labelled).to_dict()["task"] == "auto"  # saved as given: a resumed run compares like with like
    assert RunConfig(model="basiccnn", mcu="none").resolved_task is CLASSIFICATION
    assert resolve_task("auto", "fc_autoencoder", True) is RECONSTRUCTION


def test_run_config_refuses_a_task_the_data_contradicts(tmp_path: Path) -> None:
    unlabelled = npz(tmp_path, False)
    with pytest.raises(ValueError, match="task 'classification' needs labels but the data has none") as info:
        config(unlabelled, task="classification")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="--distill, --target-flash train or score by class labels"):
        RunConfig(model="x:y", data=DataConfig("tensors", unlabelled), distill=0.5, target_flash="32KiB")
    RunConfig(model="x:y", data=DataConfig("tensors", unlabelled))  # the device exports and the engine score by MSE
    with pytest.raises(ValueError, match="unknown task 'regression'"):
        config(unlabelled, task="regression")


def tiny() -> nn.Module:
    return nn.Linear(4, 2)
