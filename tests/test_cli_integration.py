"""End to end: `edgeprune run` on a slice of real Fashion-MNIST in a temporary folder, and CLI errors."""

import json

import pytest
import torch

from edgeprune.cli import main
from edgeprune.fileio import load_checkpoint

from conftest import FASHION_DIR


@pytest.mark.integration
@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="needs Debian's dataset-fashion-mnist")
def test_run_writes_report_on_real_fashion_mnist(tmp_path, capsys):
    out = tmp_path / "report"
    code = main([
        "run", "--limit", "1500", "--val-size", "500", "--epochs", "1", "--finetune-epochs", "1",
        "--scan-step", "0.25", "--export-values", "kmeans", "--export-bits", "4", "--out", str(out),
    ])
    assert code == 0
    for name in ("report.md", "results.json", "config.json", "scan.json", "sparsity.json", "plan.json",
                 "baseline.safetensors", "pruned.safetensors", "pruned.masks.safetensors", "finetuned.safetensors",
                 "finetuned.epz", "sensitivity.png", "weight_distribution.png", "num_parameters.png"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    rows = {r["model"]: r for r in results["comparison"]}
    assert list(rows) == ["Baseline", "Pruned", "Fine-tuned + pruned"]
    assert rows["Baseline"]["accuracy"] > 50  # one epoch on 1,000 real images learns something
    assert rows["Pruned"]["sparsity"] > 0.7 and rows["Pruned"]["theoretical_mib"] < rows["Baseline"]["theoretical_mib"]
    assert rows["Fine-tuned + pruned"]["compressed_bytes"] < rows["Fine-tuned + pruned"]["file_bytes"] / 8
    model, _, masks, _ = load_checkpoint(out / "finetuned.safetensors")
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert torch.all(params[name][~mask] == 0)
    report = (out / "report.md").read_text()
    assert "| Fine-tuned + pruned |" in report and "![sensitivity](sensitivity.png)" in report
    assert str(out / "report.md") in capsys.readouterr().out


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["prune", str(tmp_path / "missing.safetensors"), "--sparsity", "{}"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["run", "--dataset", "mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "--download" in capsys.readouterr().err
