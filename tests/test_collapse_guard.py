"""No silent collapse: a plan whose scan predicts that one layer alone loses more than --max-loss stops before pruning,
with the trade-off the scan gives; a final model beyond the limit fails the run (unless --force) and the report says so."""

from __future__ import annotations

import json

import pytest
from torch import nn

from edgeprune.analyze.plan import make_plan
from edgeprune.analyze.scan import ScanResult
from edgeprune.steps import check_collapse, final_quality, worst_layer_loss
from edgeprune.task import CLASSIFICATION, RECONSTRUCTION


def two_layers() -> nn.Module:
    return nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 4))  # 200 and 80 weights


def scan_of(model: nn.Module) -> ScanResult:
    """Layer 0 is robust (90 % -> 89 % at any sparsity up to 0.9); layer 2 collapses past 0.5 (to 20 % at 0.9)."""
    sparsities = [0.1, 0.3, 0.5, 0.7, 0.9]
    return ScanResult(sparsities, {"0.weight": [90.0, 90.0, 89.5, 89.0, 89.0], "2.weight": [90.0, 89.0, 88.0, 60.0, 20.0]},
                      90.0, layer_sizes={"0.weight": 200, "2.weight": 80})


def test_the_worst_layer_alone_by_hand():
    plan = {"predicted_accuracy": {"0.weight": 89.0, "2.weight": 60.0}}
    assert worst_layer_loss(scan_of(two_layers()), plan) == ("2.weight", 30.0)
    assert worst_layer_loss(scan_of(two_layers()), {"method": "given"}) is None


def test_a_plan_that_collapses_stops_with_the_trade_off(tmp_path):
    model = two_layers()
    scan = scan_of(model)
    plan = make_plan(scan, model, target_sparsity=0.9).to_dict()
    assert plan["sparsity_dict"]["2.weight"] > 0.5  # 90 % of 280 weights: layer 2 cannot be spared
    with pytest.raises(ValueError) as refused:
        check_collapse(model, scan, plan, 5.0, tmp_path)
    text = str(refused.value)
    assert "\n" not in text and text.startswith("the plan would collapse the model: the scan predicts 2.weight alone loses")
    assert "more than --max-loss 5" in text and "pass --force" in text
    table = json.loads((tmp_path / "tradeoff.json").read_text())
    rows = {round(r["fraction"], 2): r for r in table["rows"]}
    assert rows[0.3]["loss"] <= 5.0 < rows[0.9]["loss"]  # the table shows where the loss starts
    within = max(f for f, r in rows.items() if r["loss"] <= 5.0)
    assert f"the largest params fraction within it is {within:.2f}" in text
    assert "| 0.90 |" in (tmp_path / "tradeoff.md").read_text() and (tmp_path / "tradeoff.png").stat().st_size > 0
    # a modest target passes, and says what it checked
    modest = make_plan(scan, model, target_sparsity=0.3).to_dict()
    check = check_collapse(model, scan, modest, 5.0, tmp_path / "ok")
    assert check["predicted_loss"] <= 5.0 and not (tmp_path / "ok" / "tradeoff.md").exists()


def test_the_final_quality_by_hand():
    assert final_quality(90.0, 84.0, CLASSIFICATION, 5.0) == {"dense": 90.0, "final": 84.0, "loss": 6.0, "max_loss": 5.0,
                                                             "within": False}
    assert final_quality(90.0, 86.0, CLASSIFICATION, 5.0)["within"]
    assert final_quality(0.2, 0.25, RECONSTRUCTION, 20.0)["loss"] == pytest.approx(25.0)  # the MSE 25 % worse
    assert final_quality(90.0, 10.0, CLASSIFICATION, None) is None


def test_the_run_stops_before_pruning_then_resumes_with_force(tmp_path, fashion_slice, capsys):
    from edgeprune.cli import main

    out = tmp_path / "run"
    argv = ["run", "--data-dir", fashion_slice, "--limit", "300", "--val-size", "100", "--epochs", "1",
            "--finetune-epochs", "1", "--scan-step", "0.3", "--target-sparsity", "0.98", "--max-loss", "1",
            "--device-exports", "none", "--mcu", "none", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("edgeprune run: error: the plan would collapse the model")
    assert (out / "tradeoff.md").is_file() and not (out / "pruned.safetensors").exists()
    # the baseline and the scan are kept: --resume --force goes on from them, and the final check marks the loss
    assert main([*argv, "--resume", "--force"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["resumed_steps"] == ["baseline", "scan"] and results["quality"]["max_loss"] == 1
    report = (out / "report.md").read_text()
    if results["quality"]["within"]:
        assert "Final model within `--max-loss 1`" in report
    else:
        assert "Below the limit: the final model loses" in report


def test_a_final_model_beyond_the_limit_fails_the_run(tmp_path, fashion_slice, capsys):
    from edgeprune.cli import main

    argv = ["run", "--data-dir", fashion_slice, "--limit", "300", "--val-size", "100", "--epochs", "1",
            "--finetune-epochs", "0", "--sparsity", '{"_default": 0.97}', "--max-loss", "0",
            "--device-exports", "none", "--mcu", "none"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars
    assert err.startswith("edgeprune run: error: the final model's accuracy is") and "more than --max-loss 0" in err
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert not results["quality"]["within"] and results["quality"]["loss"] > 0
    assert "Below the limit" in (tmp_path / "a" / "report.md").read_text()
    assert main([*argv, "--force", "--out", str(tmp_path / "b")]) == 0
