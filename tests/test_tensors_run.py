"""``edgeprune run`` on a tensors data set end to end: a classifier of non-square 1x12x8 samples, and an autoencoder
of unlabelled 16-feature samples scored by MSE; every number checked against one computed here with numpy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgeprune.checkpoint import load_checkpoint
from edgeprune.cli import main
from edgeprune.export.tflm import make_interpreter, run_int8
from edgeprune.models import ModelSpec
from edgeprune.steps import sample_indices

COMMON = ["run", "--dataset", "tensors", "--val-size", "100", "--finetune-epochs", "1", "--scan-step", "0.3",
          "--export-values", "fp16", "--mcu-images", "12", "--batch-size", "32"]


def small_cnn() -> nn.Module:
    """A classifier of 1x12x8 samples into 3 classes."""
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 6 * 4, 3))


def small_autoencoder() -> nn.Module:
    """16 features through a bottleneck of 6 and back."""
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 6), nn.Linear(6, 16))


def classes_npz(path: Path) -> dict:
    """600 train and 200 test samples of shape 1x12x8, 3 classes: each class is its own pattern plus noise."""
    rng = np.random.default_rng(1)
    patterns = rng.normal(size=(3, 1, 12, 8))
    data = {}
    for split, n in (("train", 600), ("test", 200)):
        labels = rng.integers(0, 3, n)
        data[f"x_{split}"] = (patterns[labels] + rng.normal(scale=1.5, size=(n, 1, 12, 8))).astype(np.float32)
        data[f"y_{split}"] = labels
    np.savez(path, **data)
    return data


def unlabelled_npz(path: Path) -> dict:
    """600 train and 200 test samples of 16 features lying near a 4-dimensional subspace; no labels."""
    rng = np.random.default_rng(2)
    basis = rng.normal(size=(4, 16))
    data = {f"x_{split}": (rng.normal(size=(n, 4)) @ basis + rng.normal(scale=0.05, size=(n, 16))).astype(np.float32)
            for split, n in (("train", 600), ("test", 200))}
    np.savez(path, **data)
    return data


def model_output(folder: Path, name: str, x: np.ndarray) -> np.ndarray:
    spec = ModelSpec(**json.loads((folder / "results.json").read_text())["model"])
    model = load_checkpoint(folder / f"{name}.safetensors", spec)[0].eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def test_a_classifier_of_non_square_samples_runs_end_to_end(tmp_path: Path) -> None:
    data = classes_npz(tmp_path / "data.npz")
    out = tmp_path / "run"
    assert main([*COMMON, "--data-dir", str(tmp_path / "data.npz"), "--model", f"{__name__}:small_cnn", "--epochs", "3",
                 "--max-drop", "5", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task"]["name"] == "classification" and results["task"]["metric"] == "accuracy"
    assert results["data"]["input_shape"] == [1, 12, 8] and results["model"]["input_shape"] == [1, 12, 8]
    assert (results["data"]["train_images"], results["data"]["val_images"], results["data"]["test_images"]) == (500, 100, 200)
    rows = {row["model"]: row for row in results["comparison"]}
    for label, name in (("Baseline", "baseline"), ("Fine-tuned + pruned", "finetuned")):
        predicted = model_output(out, name, data["x_test"]).argmax(axis=1)
        assert rows[label]["accuracy"] == pytest.approx(100.0 * np.mean(predicted == data["y_test"]))
    assert rows["Baseline"]["accuracy"] > 60  # chance is 33 %
    assert json.loads((out / "scan.json").read_text())["task"] == "classification"
    # on the devices: int8 TFLite in TFLM and the C engine in QEMU, every output equal to TFLM's, on a stratified sample
    final = rows["Fine-tuned + pruned"]
    assert abs(final["tflite_accuracy"] - final["accuracy"]) <= 5.0 and abs(final["onnx_accuracy"] - final["accuracy"]) <= 1.0
    for measured in results["mcu"]:
        assert measured["equal_to_tflm"] == measured["images_run"] == 12 and measured["accuracy"] is not None
        assert measured["sample"] == "12 of 200 test samples, seeded (0), stratified by class"
    report = (out / "report.md").read_text()
    assert "| Accuracy (%) |" in report and "Samples of shape 1 x 12 x 8" in report and "MSE" not in report


def test_an_autoencoder_of_unlabelled_data_is_scored_by_mse(tmp_path: Path, capsys) -> None:
    data = unlabelled_npz(tmp_path / "data.npz")
    out = tmp_path / "run"
    assert main([*COMMON, "--data-dir", str(tmp_path / "data.npz"), "--model", f"{__name__}:small_autoencoder",
                 "--epochs", "8", "--lr", "0.01", "--max-drop", "20", "--force", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == {"name": "reconstruction", "metric": "mse", "unit": "", "higher_is_better": False,
                               "drop": "relative MSE increase (%)"}
    assert results["config"]["task"] == "auto" and results["finetune"]["metric"] == "mse"
    rows = {row["model"]: row for row in results["comparison"]}
    for label, name in (("Baseline", "baseline"), ("Fine-tuned + pruned", "finetuned")):
        row = rows[label]
        assert "accuracy" not in row and "decoded_accuracy" not in row
        error = model_output(out, name, data["x_test"]).astype(np.float64) - data["x_test"]
        assert row["mse"] == pytest.approx(float(np.mean(error ** 2)), rel=1e-5)
        assert row["decoded_mse"] == pytest.approx(row["mse"], rel=0.05)  # fp16 weights read back
    assert rows["Baseline"]["mse"] < 0.5 * float(np.var(data["x_test"]))  # it learned to reconstruct
    # the plan's tolerance is by MSE: each layer's chosen sparsity is the largest scanned within 20 % of the dense MSE
    scan = json.loads((out / "scan.json").read_text())
    assert scan["task"] == "reconstruction"
    ceiling = scan["dense_accuracy"] * 1.2
    for name, chosen in results["sparsity_dict"].items():
        within = [s for s, mse in zip(scan["sparsities"], scan["accuracies"][name]) if mse <= ceiling]
        assert chosen == max(within, default=0.0)
    assert any(mse > ceiling for values in scan["accuracies"].values() for mse in values)  # the tolerance bit somewhere
    # on the devices, scored by MSE too: TFLM's int8 file close to PyTorch, the engine equal to TFLM on every output
    final = rows["Fine-tuned + pruned"]
    assert final["tflite_mse"] == pytest.approx(final["mse"], rel=0.2) and final["onnx_mse"] == pytest.approx(final["mse"], rel=1e-4)
    for measured, name in zip(results["mcu"], ("baseline", "finetuned")):
        assert measured["equal_to_tflm"] == measured["images_run"] == 12 and measured["accuracy"] is None
        # the MSE of TFLM's outputs, dequantized here, on the samples the engine ran (its inputs.bin, quantized)
        folder = out / "mcu" / name
        tflite = (folder / "model.tflite").read_bytes()
        inputs = np.fromfile(folder / "run" / "inputs.bin", np.int8).reshape(12, 16)
        scale, zero_point = (make_interpreter(tflite).get_output_details(0)["quantization_parameters"][k][0]
                             for k in ("scales", "zero_points"))
        outputs = (run_int8(tflite, inputs).astype(np.float64) - zero_point) * scale
        chosen = sample_indices([-1] * 200, 12, seed=0)
        assert measured["mse"] == pytest.approx(float(np.mean((outputs - data["x_test"][chosen]) ** 2)), rel=1e-5)
    report = (out / "report.md").read_text()
    assert "| MSE |" in report and "MSE decoded" in report and "Accuracy (%)" not in report
    assert "| Model | MSE PyTorch | ONNX | TFLite int8 |" in report and "| Model | Equal to TFLM | MSE |" in report
    assert "reconstruction of the input, scored by its mean squared error" in report


def test_the_cli_refuses_bad_tensors_files_and_contradicting_tasks_in_one_line(tmp_path: Path, capsys) -> None:
    data = unlabelled_npz(tmp_path / "plain.npz")
    argv = [*COMMON, "--model", f"{__name__}:small_autoencoder", "--epochs", "1", "--out", str(tmp_path / "r")]
    assert main([*argv, "--data-dir", str(tmp_path / "plain.npz"), "--task", "classification"]) == 2
    err = capsys.readouterr().err.strip()
    assert "task 'classification' needs labels" in err and "\n" not in err
    np.savez(tmp_path / "half.npz", **data, y_train=np.zeros(600, np.int64))
    assert main([*argv, "--data-dir", str(tmp_path / "half.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert "half.npz: key 'y_test' missing; save it with np.savez(..., y_test=labels)" in err and "\n" not in err
    assert not (tmp_path / "r").exists()  # refused before any work


def test_the_engine_sample_is_seeded_and_stratified_by_class() -> None:
    """10 samples sorted by class (6, 3, 1), 5 drawn: shares 3, 1.5 and 0.5 give 3 + 1 + 0 and one by the largest
    remainder, the tie between classes 1 and 2 going to the lower class: (3, 2, 0). The first 5 would be class 0 only."""
    labels = [0] * 6 + [1] * 3 + [2]
    chosen = sample_indices(labels, 5, seed=0)
    assert chosen == sorted(set(chosen)) and len(chosen) == 5
    assert [sum(labels[i] == c for i in chosen) for c in (0, 1, 2)] == [3, 2, 0]
    assert sample_indices(labels, 5, seed=0) == chosen
    assert {tuple(sample_indices(labels, 5, seed=s)) for s in range(10)} != {tuple(chosen)}  # the seed draws
    assert sample_indices([-1] * 10, 4, seed=3) == sorted(torch.randperm(10, generator=torch.Generator().manual_seed(3))[:4].tolist())


def test_the_sample_reads_labels_where_the_data_sets_keep_them() -> None:
    """A Subset of a TensorDataset, and a data set with ``targets``: the labels the samples themselves carry."""
    from torch.utils.data import Subset, TensorDataset

    from edgeprune.steps.mcu import _labels_of

    data = TensorDataset(torch.zeros(7, 2), torch.tensor([3, 1, 4, 1, 5, 9, 2]))
    subset = Subset(Subset(data, [6, 5, 4, 3, 2]), [4, 0, 2])
    assert _labels_of(subset) == [int(subset[i][1]) for i in range(len(subset))] == [4, 2, 5]

    class Targets(torch.utils.data.Dataset):
        targets = [2, 0, 1]

        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int):
            raise AssertionError("a sample was decoded to read its label")

    assert _labels_of(Targets()) == [2, 0, 1]
