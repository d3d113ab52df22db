"""RunConfig checks a whole run before work; run folders are locked and never mixed; a resumed run equals an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import edgeprune.steps as steps
from edgeprune.cli import main
from edgeprune.data import DataConfig
from edgeprune.config import RunConfig, upgrade_saved
from edgeprune.runfolder import LOCK_NAME, RunFolder


# --------------------------------------------------------------------------- RunConfig


def test_bits_default_to_what_the_export_mode_needs():
    assert RunConfig(export_values="fp32").export_bits is None
    assert RunConfig(export_values="fp16").export_bits is None
    assert RunConfig(export_values="int8").export_bits == 8
    assert RunConfig(export_values="kmeans").export_bits == "auto"  # per layer, within --export-tolerance (issue 24)
    assert RunConfig(export_values="kmeans", export_bits=3).export_bits == 3
    assert RunConfig(export_values="kmeans", export_bits="3").export_bits == 3  # as the flag gives it
    assert RunConfig(export_bits='{"_default": 4, "fc1.weight": 3}').export_bits == {"_default": 4, "fc1.weight": 3}


@pytest.mark.parametrize("kwargs, match", [
    ({"export_values": "fp16", "export_bits": 4}, "bits"),
    ({"export_values": "int8", "export_bits": 4}, "bits"),
    ({"export_values": "int8", "export_bits": "auto"}, "auto"),
    ({"export_bits": 9}, "bits"),
    ({"export_tolerance": -1.0}, "export_tolerance"),
    ({"data": {"val_size": 0}, "scan_split": "test"}, "val-size"),
    ({"export_values": "zip"}, "export values"),
    ({"epochs": 0}, "weights"),
    ({"epochs": -1}, "epochs"),
    ({"epochs": 2.5}, "epochs"),
    ({"seed": 10**23}, "seed"),
    ({"seed": True}, "seed"),
    ({"lr": 0.0}, "lr"),
    ({"lr": float("nan")}, "lr"),
    ({"sparsity": {}}, "empty"),
    ({"sparsity": {"fc1.weight": 1.5}}, "fc1.weight"),
    ({"target_sparsity": 1.2}, "target_sparsity"),
    ({"max_drop": -1.0}, "max_drop"),
    ({"scan_step": 0.0}, "scan_step"),
    ({"scan_method": "quick"}, "scan method"),
    ({"centroid_epochs": 1, "export_values": "fp32"}, "kmeans"),
    ({"weights": "/nonexistent/baseline.safetensors"}, "no such file"),
    ({"schedule": "cubic"}, "schedule"),
    ({"schedule": "agp", "finetune_epochs": 0}, "finetune_epochs"),
    ({"plan": "random"}, "plan"),
    ({"plan": "global", "max_drop": 1.0}, "max_drop"),
    ({"target_latency": 0.0}, "target_latency"),
    ({"target_latency": True}, "target_latency"),
    ({"target_macs": 1.5}, "target_macs"),
    ({"target_macs": 0.5, "target_latency": 0.5}, "not several"),
    ({"channel_ratios": {"_default": 0.5}, "target_latency": 0.5}, "not several"),
    ({"device": "cuda:7" if not __import__("torch").cuda.is_available() else "nonsense"}, "device|CUDA"),
])
def test_a_bad_config_is_refused_on_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RunConfig(**kwargs)


def test_torchvision_models_get_their_data_geometry_from_the_library():
    """The CLI and the Python API make the same decision: 3 channels and 32 pixels for torchvision models."""
    cfg = RunConfig(model="resnet18")
    assert (cfg.data.channels, cfg.data.image_size) == (3, 32)
    assert (RunConfig().data.channels, RunConfig().data.image_size) == (None, None)
    assert RunConfig(model="resnet18", data=DataConfig(channels=1)).data.channels == 1


def test_config_round_trips_through_json():
    cfg = RunConfig(sparsity='{"_default": 0.5}', export_values="int8")
    again = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.sparsity == {"_default": 0.5}
    with pytest.raises(ValueError, match="unknown run config keys"):
        RunConfig.from_dict({**cfg.to_dict(), "epoch": 3})


def test_run_with_a_bad_export_config_fails_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(steps.common, "load_data", lambda *a: pytest.fail("data loaded before the config was checked"))
    out = tmp_path / "r"
    assert main(["run", "--export-values", "fp16", "--export-bits", "4", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bits" in err
    assert not out.exists()


def test_wrong_layer_name_in_sparsity_is_refused_before_training(tmp_path, capsys, monkeypatch, fashion_slice):
    monkeypatch.setattr(steps, "train_baseline", lambda *a, **k: pytest.fail("trained before the dict was checked"))
    code = main(["run", "--data-dir", fashion_slice, "--val-size", "100", "--sparsity", '{"fc9.weight": 0.5}',
                 "--out", str(tmp_path / "r")])
    assert code == 2 and "fc9.weight" in capsys.readouterr().err


@pytest.mark.parametrize("ratios, message", [('{"conv9": 0.5}', "'conv9'"), ('{"fc2": 0.5}', "output layer")])
def test_bad_channel_ratios_are_refused_before_training(tmp_path, capsys, monkeypatch, fashion_slice, ratios, message):
    monkeypatch.setattr(steps, "train_baseline", lambda *a, **k: pytest.fail("trained before the ratios were checked"))
    code = main(["run", "--data-dir", fashion_slice, "--val-size", "100", "--channel-ratios", ratios, "--out", str(tmp_path / "r")])
    assert code == 2 and message in capsys.readouterr().err


def test_global_plan_with_agp_schedule_skips_the_scan_and_hits_the_target(tmp_path, fashion_slice):
    out = tmp_path / "run"
    assert main(["run", "--mcu", "none", "--data-dir", fashion_slice, "--val-size", "100", "--limit", "300", "--epochs", "1",
                 "--finetune-epochs", "2", "--plan", "global", "--schedule", "agp", "--target-sparsity", "0.9",
                 "--out", str(out)]) == 0
    assert not (out / "scan.json").exists()
    results = json.loads((out / "results.json").read_text())
    assert results["plan"]["method"] == "global magnitude"
    layers = [layer for layer in results["layers"] if len(layer["shape"]) > 1]
    zeros = sum(layer["params"] - layer["nonzeros"] for layer in layers)
    assert zeros == round(0.9 * sum(layer["params"] for layer in layers))  # the exact global count, kept through AGP
    final = results["comparison"][-1]  # the final model went to ONNX and int8 TFLite, scored in their runtimes
    for name in ("finetuned.onnx", "finetuned.tflite", "model_data.cc", "model_data.h"):
        assert (out / name).is_file(), name
    assert abs(final["onnx_accuracy"] - final["accuracy"]) <= 100 / 300  # at most one test image flips
    assert abs(final["tflite_accuracy"] - final["accuracy"]) <= 5.0 and final["tflite_arena_bytes"] > 0
    assert final["tflite_bytes"] == (out / "finetuned.tflite").stat().st_size
    boards = {b["board"].split()[0]: b["fits"] for b in results["fits_on"]["boards"]}
    assert boards["STM32L476RG"] is True  # BasicCNN int8 (~210 KB flash, ~20 KB arena) fits 1 MB / 128 KB
    assert "## On the device" in (out / "report.md").read_text()


# --------------------------------------------------------------------------- run folders


def test_a_folder_with_another_runs_files_is_refused(tmp_path):
    (tmp_path / "report.md").write_text("an earlier run")
    with pytest.raises(ValueError, match="--resume.*--overwrite"):
        with RunFolder(tmp_path, {"a": 1}):
            pass
    assert (tmp_path / "report.md").read_text() == "an earlier run"
    assert not (tmp_path / LOCK_NAME).exists()


def test_overwrite_removes_only_the_files_a_run_writes(tmp_path):
    for name in ("report.md", "finetuned.epz", "shared.safetensors", "notes.txt"):
        (tmp_path / name).write_text("old")
    with RunFolder(tmp_path, {"a": 1}, overwrite=True) as folder:
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([LOCK_NAME, "config.json", "notes.txt", "progress.json"])
        assert folder.done == {}
    assert (tmp_path / "notes.txt").read_text() == "old"
    assert not (tmp_path / LOCK_NAME).exists()


def test_resume_reads_a_key_missing_from_an_older_saved_config_as_its_default(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"epochs": 1}))  # written before 'distill' existed
    (tmp_path / "progress.json").write_text(json.dumps({"format": "edgeprune.progress/1", "done": {"baseline": {}}}))
    now = {**upgrade_saved({}), "epochs": 1}
    with RunFolder(tmp_path, now, resume=True, upgrade=upgrade_saved) as folder:
        assert list(folder.done) == ["baseline"]
    with pytest.raises(ValueError, match="distill: saved 0.0, now 0.5"):
        with RunFolder(tmp_path, {**now, "distill": 0.5}, resume=True, upgrade=upgrade_saved):
            pass


def test_a_run_stopped_before_its_first_step_leaves_no_run_behind(tmp_path):
    with pytest.raises(ValueError, match="bad layer"):
        with RunFolder(tmp_path, {"a": 1}):
            raise ValueError("bad layer")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the corrected command needs no --overwrite
    with pytest.raises(KeyboardInterrupt):
        with RunFolder(tmp_path, {"a": 1}) as folder:
            folder.mark_done("baseline", {})
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "progress.json"]  # a finished step is kept


def test_a_bad_layer_name_fails_before_training_and_the_corrected_run_needs_no_overwrite(tmp_path, capsys, fashion_slice):
    argv = ["run", "--mcu", "none", "--data-dir", fashion_slice, "--val-size", "100", "--limit", "300", "--epochs", "1", "--finetune-epochs", "1",
            "--device-exports", "none", "--out", str(tmp_path)]
    assert main([*argv, "--sparsity", '{"conv9.weight": 0.5}']) == 2
    assert "conv9.weight" in capsys.readouterr().err and list(tmp_path.iterdir()) == []
    assert main([*argv, "--sparsity", '{"_default": 0.5}']) == 0


def test_a_second_run_into_a_locked_folder_is_refused(tmp_path):
    with RunFolder(tmp_path / "out", {"a": 1}):
        with pytest.raises(ValueError, match="another edgeprune run"):
            with RunFolder(tmp_path / "out", {"a": 1}, overwrite=True):
                pass
        assert (tmp_path / "out" / "config.json").exists()  # the first run's files are untouched


def test_a_stale_lock_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    with RunFolder(tmp_path, {"a": 1}):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_resume_refuses_another_config_and_names_the_difference(tmp_path):
    with RunFolder(tmp_path, {"epochs": 1, "out": "x"}) as folder:
        folder.mark_done("baseline", {"loss": [1.0]})
    with pytest.raises(ValueError, match="epochs: saved 1, now 2"):
        with RunFolder(tmp_path, {"epochs": 2, "out": "x"}, resume=True):
            pass
    with RunFolder(tmp_path, {"epochs": 1, "out": "y"}, resume=True) as folder:
        assert folder.done == {"baseline": {"loss": [1.0]}}


@pytest.mark.parametrize("out", ["file", "/proc/edgeprune-cannot-write-here"])
def test_unusable_out_is_one_line_before_any_work(tmp_path, capsys, monkeypatch, out):
    monkeypatch.setattr(steps, "train_baseline", lambda *a, **k: pytest.fail("trained before --out was checked"))
    expected = "cannot write there"
    if out == "file":
        out = tmp_path / "a-file"
        out.write_text("x")
        expected = "is a file, not a folder"
    for argv in (["run", "--out", str(out)], ["train", "--out", str(Path(out) / "b.safetensors")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--out" in err and expected in err and "Traceback" not in err


# --------------------------------------------------------------------------- resume


RUN = ["run", "--mcu", "none", "--val-size", "100", "--limit", "400", "--epochs", "1", "--finetune-epochs", "1", "--scan-step", "0.3"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    data = str(Path(__file__).parent / "data" / "fashion-mnist")  # the shipped slice (conftest's fashion_slice)
    out = tmp_path_factory.mktemp("whole") / "run"
    assert main([*RUN, "--data-dir", data, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("interrupt_at, already_done", [
    ("scan_model", ["baseline"]),
    ("choose_sparsity", ["baseline", "scan"]),
    ("finetune_pruned", ["baseline", "scan", "prune"]),
    ("compare_models", ["baseline", "scan", "prune", "finetune"]),
])
def test_an_interrupted_run_resumes_to_the_same_results(tmp_path, monkeypatch, capsys, uninterrupted, fashion_slice,
                                                         interrupt_at, already_done, comparable):
    out = tmp_path / "run"
    real = getattr(steps, interrupt_at)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(steps, interrupt_at, interrupt)
    assert main([*RUN, "--data-dir", fashion_slice, "--out", str(out)]) == 130
    assert "--resume" in capsys.readouterr().err
    assert not (out / LOCK_NAME).exists() and not (out / "report.md").exists()
    assert main([*RUN, "--data-dir", fashion_slice, "--out", str(out)]) == 2  # no silent restart over it
    monkeypatch.setattr(steps, interrupt_at, real)
    monkeypatch.setattr(steps, "train_baseline", lambda *a, **k: pytest.fail("the baseline was trained again"))
    assert main([*RUN, "--data-dir", fashion_slice, "--out", str(out), "--resume"]) == 0
    assert json.loads((out / "results.json").read_text())["resumed_steps"] == already_done
    assert comparable(out) == comparable(uninterrupted)


def test_ctrl_c_in_a_real_process_exits_130_with_one_line(tmp_path, fashion_slice):
    """A real SIGINT while training: exit status 130, one line on stderr (no traceback), and the folder unlocked."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "edgeprune", "run", "--mcu", "none", "--data-dir", fashion_slice, "--val-size", "100",
           "--epochs", "50", "--out", str(out)]
    # a shell's background job ignores SIGINT, and its children inherit that: give the run the default, as a terminal does
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TQDM_DISABLE": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while not (out / "config.json").exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # into the training loop
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "edgeprune run: interrupted; continue it with the same flags and --resume"
    assert not (out / LOCK_NAME).exists()


@pytest.mark.parametrize("schedule, expected", [
    ("constant", [0.1, 0.1, 0.1, 0.1]),
    ("cosine", [0.1 * (1 + __import__("math").cos(__import__("math").pi * e / 4)) / 2 for e in range(4)]),
    ("step", [0.1, 0.01, 0.001, 0.0001]),
])
def test_lr_schedules_give_the_hand_computed_rates(monkeypatch, tiny_net, schedule, expected):
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from edgeprune.training import train

    seen = []

    class Recording(torch.optim.Adam):
        def step(self, *args, **kwargs):
            seen.append(self.param_groups[0]["lr"])
            return super().step(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", Recording)
    data = TensorDataset(torch.randn(8, 3, 5, 5), torch.randint(0, 7, (8,)))
    train(tiny_net, DataLoader(data, batch_size=8), 4, lr=0.1, lr_schedule=schedule)
    assert seen == pytest.approx(expected, rel=1e-9)


def test_channels_first_then_fine_grained_in_one_run_and_resumed(tmp_path, fashion_slice, interrupt_then_resume, comparable):
    """--target-macs: a smaller dense model (MACs at most half), then fine-grained pruning; resumable after it."""
    argv = ["run", "--mcu", "none", "--data-dir", fashion_slice, "--val-size", "100", "--limit", "300", "--epochs", "1",
            "--finetune-epochs", "1", "--target-macs", "0.5", "--plan", "global", "--target-sparsity", "0.5"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main([*argv, "--out", str(whole)]) == 0
    rows = {r["model"]: r for r in json.loads((whole / "results.json").read_text())["comparison"]}
    assert list(rows) == ["Baseline", "Channel-pruned + fine-tuned", "Pruned", "Fine-tuned + pruned"]
    assert rows["Channel-pruned + fine-tuned"]["macs"] <= 0.5 * rows["Baseline"]["macs"]
    assert rows["Channel-pruned + fine-tuned"]["params"] < rows["Baseline"]["params"]
    assert rows["Fine-tuned + pruned"]["params"] == rows["Channel-pruned + fine-tuned"]["params"]
    assert all(set(r["latency_ms"]) == {"1", "64"} for r in rows.values())  # keyed by batch size (JSON keys)
    channels = json.loads((whole / "progress.json").read_text())["done"]["channels"]
    assert channels["channel_scan"]["ratios"] and channels["macs_fraction"] <= 0.5  # planned from the channel scan
    assert (whole / "channel_scan.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((whole / "results.json").read_text())["channels"]
    assert summary["scanned"] and "channel_scan" not in summary and summary["macs"] == rows["Channel-pruned + fine-tuned"]["macs"]
    report = (whole / "report.md").read_text()
    assert "## Whole channels removed first" in report and "![channel scan](channel_scan.png)" in report

    resumed = interrupt_then_resume([*argv, "--out", str(parts)], at="choose_sparsity", not_again="prune_channels_step")
    assert resumed["resumed_steps"] == ["baseline", "channels"]
    assert comparable(parts) == comparable(whole)


def test_a_named_data_dir_that_does_not_exist_is_an_error_not_a_fallback(tmp_path, capsys):
    assert main(["train", "--data-dir", str(tmp_path / "nowhere"), "--epochs", "1", "--out", str(tmp_path / "b.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--data-dir" in err and not (tmp_path / "b.safetensors").exists()


def test_empty_sparsity_dict_and_warnings_are_one_line_each(tmp_path, capsys, fashion_slice):
    base = tmp_path / "b.safetensors"
    assert main(["train", "--data-dir", fashion_slice, "--val-size", "100", "--limit", "200", "--epochs", "1", "--out", str(base)]) == 0
    capsys.readouterr()
    assert main(["prune", str(base), "--data-dir", fashion_slice, "--sparsity", "{}", "--out", str(tmp_path / "p.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "empty" in err and not (tmp_path / "p.safetensors").exists()
    assert main(["prune", str(base), "--data-dir", fashion_slice, "--sparsity", '{"fc1.weight": 0.5}',
                 "--out", str(tmp_path / "p.safetensors")]) == 0
    err = capsys.readouterr().err
    assert err == "edgeprune prune: warning: the sparsity dict does not name conv1.weight, conv2.weight, fc2.weight; left dense\n"
