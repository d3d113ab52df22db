"""End to end: the CLI on real Fashion-MNIST in a temporary folder, and CLI errors.

Every test runs on the 600 + 300 images shipped in tests/data (``fashion_slice``), so none is
ever skipped; the ``integration`` run also goes through Debian's full data set at its default
location (``fashion_full``: skipped when absent, a failure when EDGEPRUNE_REQUIRE_DATASET=1).
"""

import json

import pytest
import torch

from edgeprune.cli import main
from edgeprune.checkpoint import load_checkpoint


RUN_DATA = [
    # the shipped slice, given as --data-dir: 400 training, 200 validation and 300 test images
    pytest.param("fashion_slice", ["--val-size", "200"], (400, 200, 300), 40, id="slice"),
    # Debian's full data set, found at its default location: no --data-dir
    pytest.param(
        "fashion_full", ["--limit", "1500", "--val-size", "500"], (1500, 500, 1500), 50,
        id="debian", marks=pytest.mark.integration,
    ),
]


@pytest.mark.parametrize("source, data_flags, images, min_accuracy", RUN_DATA)
def test_run_writes_report_on_real_fashion_mnist(tmp_path, capsys, request, source, data_flags, images, min_accuracy):
    data_dir = request.getfixturevalue(source)
    if source == "fashion_slice":
        data_flags = ["--data-dir", data_dir, *data_flags]
    out = tmp_path / "report"
    code = main([
        "run", *data_flags, "--epochs", "1", "--finetune-epochs", "1",
        "--scan-step", "0.3", "--export-values", "kmeans", "--export-bits", "4", "--mcu-images", "12", "--out", str(out),
    ])
    assert code == 0
    for name in ("report.md", "results.json", "config.json", "scan.json", "sparsity.json", "plan.json",
                 "baseline.safetensors", "pruned.safetensors", "pruned.masks.safetensors", "finetuned.safetensors",
                 "finetuned.epz", "sensitivity.png", "weight_distribution.png", "num_parameters.png"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    data = results["data"]
    assert (data["train_images"], data["val_images"], data["test_images"]) == images
    rows = {r["model"]: r for r in results["comparison"]}
    assert list(rows) == ["Baseline", "Pruned", "Fine-tuned + pruned"]
    assert rows["Baseline"]["accuracy"] > min_accuracy  # one epoch on real images learns something (chance: 10)
    assert rows["Pruned"]["sparsity"] > 0.7 and rows["Pruned"]["theoretical_mib"] < rows["Baseline"]["theoretical_mib"]
    assert rows["Fine-tuned + pruned"]["compressed_bytes"] < rows["Fine-tuned + pruned"]["file_bytes"] / 8
    model, _, masks, _ = load_checkpoint(out / "finetuned.safetensors")
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert torch.all(params[name][~mask] == 0)
    report = (out / "report.md").read_text()
    assert "| Fine-tuned + pruned |" in report and "![sensitivity](sensitivity.png)" in report
    # the baseline and the final model ran as the C engine in the emulated Cortex-M4, each output equal to TFLM's
    assert [r["model"] for r in results["mcu"]] == ["Baseline", "Fine-tuned + pruned"]
    for row in results["mcu"]:
        assert row["equal_to_tflm"] == row["images_run"] == 12 and row["target"] == "cortex-m4"
    assert all((out / "mcu" / stem / "mcu.json").is_file() for stem in ("baseline", "finetuned"))
    final = results["mcu"][-1]
    assert final["weight_bytes"] < results["mcu"][0]["weight_bytes"]  # pruned weights cost no flash on the device
    assert "## On the microcontroller (emulated Cortex-M4)" in report and "| Fine-tuned + pruned | 12 / 12 |" in report
    assert str(out / "report.md") in capsys.readouterr().out


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["prune", str(tmp_path / "missing.safetensors"), "--sparsity", "{}"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["run", "--dataset", "mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "--download" in capsys.readouterr().err


def test_step_by_step_commands(tmp_path, capsys, fashion_slice):
    d = ["--data-dir", fashion_slice, "--limit", "300", "--val-size", "200"]
    base, pruned, tuned = tmp_path / "base.safetensors", tmp_path / "pruned.safetensors", tmp_path / "tuned.safetensors"
    assert main(["train", *d, "--epochs", "1", "--out", str(base)]) == 0
    assert main(["inspect", *d, str(base), "--out", str(tmp_path / "inspect")]) == 0
    assert json.loads((tmp_path / "inspect" / "inspect.json").read_text())["params"] == 202738
    assert main(["scan", *d, str(base), "--out", str(tmp_path / "scan")]) == 0
    scan = json.loads((tmp_path / "scan" / "scan.json").read_text())
    assert scan["sparsities"] == [0.4, 0.5, 0.6, 0.7, 0.8, 0.9] and scan["meta"]["split"] == "val"
    plan = tmp_path / "sparsity.json"
    assert main(["plan", *d, str(tmp_path / "scan" / "scan.json"), "--checkpoint", str(base),
                 "--target-sparsity", "0.7", "--out", str(plan)]) == 0
    for budget in ("macs", "flash"):  # the same scan planned in what the device pays
        assert main(["plan", *d, str(tmp_path / "scan" / "scan.json"), "--checkpoint", str(base), "--budget", budget,
                     "--target-sparsity", "0.7", "--out", str(tmp_path / f"{budget}.json")]) == 0
        assert json.loads((tmp_path / f"{budget}.plan.json").read_text())["budget"] == budget
    by_params, by_macs = (json.loads(p.read_text()) for p in (plan, tmp_path / "macs.json"))
    assert by_macs["conv2.weight"] > by_params["conv2.weight"] and by_macs["fc1.weight"] < by_params["fc1.weight"]
    capsys.readouterr()
    assert main(["plan", str(tmp_path / "scan" / "scan.json"), "--budget", "macs", "--target-sparsity", "0.7"]) == 2
    assert "give --target-sparsity and --checkpoint" in capsys.readouterr().err
    assert main(["prune", *d, str(base), "--sparsity", str(plan), "--out", str(pruned)]) == 0
    model, _, masks, _ = load_checkpoint(pruned)
    zeros = sum(int((~m).sum()) for m in masks.values())
    assert zeros >= 0.7 * sum(p.numel() for p in model.parameters() if p.dim() > 1)
    assert main(["finetune", *d, str(pruned), "--epochs", "1", "--out", str(tuned)]) == 0
    assert main(["export", *d, str(tuned), "--values", "int8", "--out", str(tmp_path / "tuned.epz")]) == 0
    assert (tmp_path / "tuned.epz").stat().st_size < tuned.stat().st_size / 4
    assert main(["compare", *d, str(base), str(pruned), str(tuned), str(tmp_path / "tuned.epz"),
                 "--labels", "base,pruned,tuned,tuned-int8", "--out", str(tmp_path / "cmp")]) == 0
    rows = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert [r["model"] for r in rows] == ["base", "pruned", "tuned", "tuned-int8"]
    assert rows[2]["decoded_accuracy"] == rows[2]["accuracy"]  # the default fp32 export is exact
    assert rows[3]["sparsity"] >= rows[2]["sparsity"] and abs(rows[3]["accuracy"] - rows[2]["accuracy"]) < 2
    assert main(["prune", *d, str(base), "--sparsity", '{"fc9.weight": 0.5}', "--out", str(pruned)]) == 2
    assert "valid names: conv1.weight" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_torchvision_models_train_prune_and_compare(tmp_path, name, fashion_slice):
    d = ["--model", name, "--data-dir", fashion_slice, "--limit", "64", "--val-size", "32", "--batch-size", "32"]
    base, pruned = tmp_path / "base.safetensors", tmp_path / "pruned.safetensors"
    assert main(["train", *d, "--epochs", "1", "--out", str(base)]) == 0
    assert main(["prune", *d, str(base), "--sparsity", '{"re:.*conv.*": 0.6, "_default": 0.3}', "--out", str(pruned)]) == 0
    model, spec, masks, info = load_checkpoint(pruned)
    assert spec.name == name and spec.in_channels == 3  # grey images repeated to RGB for torchvision models
    # BatchNorm statistics re-estimated on the pruned model, on the 64 training images there are (two batches of 32)
    assert info["batchnorm_recalibrated_on"] == 64
    dense_state, state = load_checkpoint(base)[0].state_dict(), model.state_dict()
    first = next(key for key in state if key.endswith("running_mean"))
    assert not torch.equal(state[first], dense_state[first])
    params = dict(model.named_parameters())
    for pname, mask in masks.items():
        expected = 0.6 if "conv" in pname else 0.3
        assert int((~mask).sum()) == round(expected * mask.numel()) and torch.all(params[pname][~mask] == 0)
    assert main(["compare", *d, str(base), str(pruned), "--out", str(tmp_path / "cmp")]) == 0
    rows = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert rows[1]["compressed_bytes"] < rows[0]["compressed_bytes"]


def test_model_that_does_not_fit_the_data_is_a_clear_error(tmp_path, capsys, fashion_slice):
    from edgeprune.checkpoint import save_checkpoint
    from edgeprune.models import ModelSpec
    from edgeprune.models import BasicCNN

    cifar = save_checkpoint(tmp_path / "cifar.safetensors", BasicCNN(), ModelSpec("basiccnn", 3, 10, 32))
    scan = ["scan", str(cifar), "--data-dir", fashion_slice, "--limit", "50", "--val-size", "20"]
    assert main([*scan, "--out", str(tmp_path / "s")]) == 2
    assert "use the --dataset" in capsys.readouterr().err


def test_device_and_plan_flags_are_checked(tmp_path, capsys):
    from edgeprune.device import pick_device

    with pytest.raises(ValueError, match="unknown device"):
        pick_device("bogus")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cpu"):
            pick_device("cuda")
    with pytest.raises(SystemExit):  # argparse: a plan takes one budget or one tolerance
        main(["plan", "scan.json", "--target-sparsity", "0.5", "--max-drop", "1"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_an_error_in_a_fresh_process_is_exactly_one_line(tmp_path):
    """The whole stderr of a real process, imports included: one line (no library's import-time log, no traceback)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "edgeprune", "inspect", str(tmp_path / "missing.safetensors")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("edgeprune inspect: error:"), done.stderr
