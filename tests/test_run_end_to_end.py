"""The run described by one config file, and the run's branches end to end on the shipped Fashion-MNIST slice:
a saved config.json reruns to the same results, k-means centroid fine-tuning resumed after its step,
distillation, device exports of every model, and a measured latency target."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from edgeprune.checkpoint import load_checkpoint
from edgeprune.cli import build_parser, main
from edgeprune.config import RunConfig, read_config_file, run_config, upgrade_saved
from edgeprune.export.epz import load_compressed, read_header
from edgeprune.runfolder import RunFolder

SLICE = str(Path(__file__).parent / "data" / "fashion-mnist")  # the shipped slice (conftest's fashion_slice)
BASE = ["run", "--mcu", "none", "--data-dir", SLICE, "--val-size", "50", "--limit", "150", "--epochs", "1", "--finetune-epochs", "1",
        "--scan-step", "0.3", "--export-values", "fp16", "--device-exports", "none", "--force"]  # 150 images: no guard


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)[0].state_dict()


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plain") / "run"
    assert main([*BASE, "--out", str(out)]) == 0
    return out


# --------------------------------------------------------------------------- a run described by one config file


def test_flags_given_override_the_config_file_and_seed_seeds_the_data_split():
    base = {"lr": 0.01, "seed": 3, "finetune_epochs": 2, "data": {"limit": 300, "val_size": 100}}
    cfg = run_config(base, {"lr": 0.02, "data.batch_size": 32})
    assert (cfg.lr, cfg.finetune_epochs, cfg.seed) == (0.02, 2, 3)
    assert (cfg.data.limit, cfg.data.val_size, cfg.data.batch_size, cfg.data.seed) == (300, 100, 32, 3)
    assert run_config(base, {"seed": 5}).data.seed == 5  # --seed seeds the split too
    assert run_config({**base, "data": {**base["data"], "seed": 7}}, {}).data.seed == 7  # the file's own data.seed
    assert run_config({}, {}) == RunConfig()  # nothing given: RunConfig's defaults, the CLI's too


def test_only_the_run_flags_given_reach_the_config():
    args = vars(build_parser().parse_args(["run", "--lr", "0.5", "--batch-size", "16", "--channel-ratios", '{"_default": 0.5}']))
    given = {k: v for k, v in args.items() if k not in ("command", "func", "config", "overwrite", "resume")}
    assert given == {"lr": 0.5, "data.batch_size": 16, "channel_ratios": '{"_default": 0.5}'}


@pytest.mark.parametrize("suffix, text", [
    (".toml", 'finetune_epochs = 2\nchannel_ratios = {_default = 0.25}\n[data]\nlimit = 300\n'),
    (".yaml", "finetune_epochs: 2\nchannel_ratios: {_default: 0.25}\ndata:\n  limit: 300\n"),
])
def test_a_toml_or_yaml_file_describes_a_run(tmp_path, suffix, text):
    path = tmp_path / f"run{suffix}"
    path.write_text(text)
    cfg = run_config(read_config_file(path), {})
    assert (cfg.finetune_epochs, cfg.channel_ratios, cfg.data.limit) == (2, {"_default": 0.25}, 300)


def test_a_config_saved_with_the_old_key_channels_still_loads_and_resumes(tmp_path, capsys):
    old = {**RunConfig().to_dict(), "channels": {"_default": 0.5}}
    del old["channel_ratios"]
    assert RunConfig.from_dict(old).channel_ratios == {"_default": 0.5}
    with pytest.raises(ValueError, match="both 'channels' and its new name 'channel_ratios'"):
        RunConfig.from_dict({**old, "channel_ratios": None})
    (tmp_path / "config.json").write_text(json.dumps(old))
    (tmp_path / "progress.json").write_text(json.dumps({"format": "edgeprune.progress/1", "done": {"baseline": {}}}))
    now = RunConfig(channel_ratios={"_default": 0.5}).to_dict()
    with RunFolder(tmp_path, now, resume=True, upgrade=upgrade_saved) as folder:
        assert list(folder.done) == ["baseline"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [0.1\n")
    assert main(["run", "--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.yaml" in err and "YAML" in err


def test_the_saved_config_json_reruns_to_the_same_results(tmp_path, plain, comparable):
    again = tmp_path / "again"
    assert main(["run", "--config", str(plain / "config.json"), "--out", str(again)]) == 0
    assert json.loads((again / "config.json").read_text()) == {**json.loads((plain / "config.json").read_text()),
                                                               "out": str(again)}
    assert comparable(again) == comparable(plain)


# --------------------------------------------------------------------------- branches of the run


def test_centroid_fine_tuning_resumes_after_its_step_and_matches_export(tmp_path, interrupt_then_resume, comparable):
    argv = [*BASE, "--centroid-epochs", "1", "--export-values", "kmeans", "--export-bits", "4"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main([*argv, "--out", str(whole)]) == 0
    rows = json.loads((whole / "results.json").read_text())["comparison"]
    assert [r["model"] for r in rows][-1] == "+ 4-bit centroids fine-tuned"
    shared = _tensors(whole / "shared.safetensors")
    finetuned = _tensors(whole / "finetuned.safetensors")
    for name, weight in shared.items():
        if weight.dim() > 1:
            assert len(torch.unique(weight[weight != 0])) <= 16, name  # 4-bit codebook
            assert torch.equal(weight == 0, finetuned[name] == 0), name  # the pruned weights stay pruned

    resumed = interrupt_then_resume([*argv, "--out", str(parts)], at="compare_models", not_again="share_centroids")
    assert resumed["resumed_steps"] == ["baseline", "scan", "prune", "finetune", "shared"]
    assert comparable(parts) == comparable(whole)

    # the CLI's export takes the same seeded centroid step: the same weights as the run's
    epz = tmp_path / "shared.epz"
    assert main(["export", str(whole / "finetuned.safetensors"), "--data-dir", SLICE, "--val-size", "50", "--limit", "150",
                 "--values", "kmeans", "--bits", "4", "--centroid-epochs", "1", "--out", str(epz)]) == 0
    exported, ran = load_compressed(epz), load_compressed(whole / "shared.epz")
    assert exported.keys() == ran.keys() and all(torch.equal(exported[k], ran[k]) for k in ran)


def test_distillation_changes_only_the_fine_tuning(tmp_path, plain):
    out = tmp_path / "distill"
    assert main([*BASE, "--distill", "0.5", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["distill"] == 0.5
    baseline, base_plain = _tensors(out / "baseline.safetensors"), _tensors(plain / "baseline.safetensors")
    assert all(torch.equal(baseline[k], base_plain[k]) for k in baseline)  # the teacher is the same baseline
    tuned, tuned_plain = _tensors(out / "finetuned.safetensors"), _tensors(plain / "finetuned.safetensors")
    assert any(not torch.equal(tuned[k], tuned_plain[k]) for k in tuned)  # its outputs entered the fine-tuning loss
    for name, weight in tuned.items():  # the same masks: distillation changes the values, not what is pruned
        assert torch.equal(weight == 0, tuned_plain[name] == 0), name


def test_device_exports_all_scores_every_model_in_its_runtime(tmp_path):
    out = tmp_path / "all"
    at = BASE.index("--device-exports") + 1
    argv = [*BASE[:at], "all", *BASE[at + 1:]]
    assert main([*argv, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    for row, stem in zip(results["comparison"], ("baseline", "pruned", "finetuned")):
        for kind in ("onnx", "tflite"):
            assert Path(row[f"{kind}_file"]) == out / f"{stem}.{kind}" and (out / f"{stem}.{kind}").is_file()
        assert abs(row["onnx_accuracy"] - row["accuracy"]) <= 100 / 150 and row["onnx_equal"]  # one test image may flip
        assert abs(row["tflite_accuracy"] - row["accuracy"]) <= 5.0 and row["tflite_arena_bytes"] > 0
        assert row["tflite_bytes"] == (out / f"{stem}.tflite").stat().st_size and row["test_images"] == 150
    assert [("c_source" in row) for row in results["comparison"]] == [False, False, True]  # the final model's C array
    assert results["fits_on"]["model"] == "Fine-tuned + pruned"
    assert (out / "report.md").read_text().count("| Baseline |") == 2  # the comparison and the device table


def latency_net() -> nn.Module:
    """A small CNN for 1x28x28 images whose batch-64 time is mostly its one convolution: fewer channels, less time."""
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(), nn.Linear(32 * 7 * 7, 10))


def test_a_latency_target_chooses_a_model_that_met_it_when_timed(tmp_path):
    out = tmp_path / "latency"
    assert main([*BASE, "--model", f"{__name__}:latency_net", "--target-latency", "0.7", "--plan", "global",
                 "--target-sparsity", "0.5", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    channels = results["channels"]
    assert channels["latency_fraction_b64"] <= 0.7  # as timed against the dense model when it was chosen
    assert channels["macs"] < channels["macs_dense"] and channels["macs"] == results["comparison"][1]["macs"]
    assert channels["channels"]["0"]["out"] < 32 and channels["channels"]["4"]["out"] == 10  # the classes are kept
    rows = [r["model"] for r in results["comparison"]]
    assert rows == ["Baseline", "Channel-pruned + fine-tuned", "Pruned", "Fine-tuned + pruned"]
    assert "measured batch-64 latency" in (out / "report.md").read_text()


def test_export_and_compare_default_kmeans_to_auto_bits_as_the_run_does(tmp_path, plain, capsys):
    tuned = str(plain / "finetuned.safetensors")
    data = ["--data-dir", SLICE, "--val-size", "50", "--limit", "150"]
    capsys.readouterr()
    for name, bits in (("default.epz", []), ("auto.epz", ["--bits", "auto"]), ("four.epz", ["--bits", "4"])):
        assert main(["export", tuned, *data, "--values", "kmeans", *bits, "--out", str(tmp_path / name)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("bits per layer") == 2 and printed.count("decoded on the validation split") == 2
    default, auto, four = (load_compressed(tmp_path / f"{n}.epz") for n in ("default", "auto", "four"))
    assert default.keys() == auto.keys() and all(torch.equal(default[k], auto[k]) for k in auto)
    assert read_header(tmp_path / "default.epz") == read_header(tmp_path / "four.epz")
    assert len(torch.unique(four["fc1.weight"])) <= 2**4 + 1  # 16 centroids and the zeros: given bits as before
    capsys.readouterr()
    assert main(["compare", tuned, *data, "--export-values", "kmeans", "--out", str(tmp_path / "cmp")]) == 0
    row = json.loads((tmp_path / "cmp" / "comparison.json").read_text())[0]
    assert RunConfig().export_bits == "auto" and isinstance(row["compressed_bits"], dict)
    for name, bits in row["compressed_bits"].items():  # the compare's own choice: the export's file has its widths
        assert len(torch.unique(default[name][default[name] != 0])) <= 2**bits, name
    assert row["export_check"]["within"] and row["export_check"]["searched"]
    assert capsys.readouterr().out.startswith((tmp_path / "cmp" / "comparison.md").read_text())  # the table it printed


def test_the_run_chooses_bits_per_row_on_the_validation_split_and_flags_a_file_that_loses_more(
        tmp_path, monkeypatch, capsys):
    """Every row's .epz gets its own bits, chosen on the 50 validation images (never the 150 test images); a row whose
    files all lose too much (the scorer of the second row is made to see that) is one printed line, a red line in the
    report, and ``within: false`` with 8 bits everywhere in results.json."""
    import edgeprune.steps.exports as exports

    real, sizes = exports.state_scorer, []

    def scorer(model, loader, device=None, task=None):
        sizes.append(len(loader.dataset))
        score, row = real(model, loader, device, task), len(sizes)

        def seen(state):
            own = all(torch.equal(state[k], v.cpu()) for k, v in model.state_dict().items())
            return score(state) - (0.0 if own or row != 2 else 50.0)

        return seen

    monkeypatch.setattr(exports, "state_scorer", scorer)
    out = tmp_path / "run"
    argv = [a if a != "fp16" else "kmeans" for a in BASE]
    capsys.readouterr()
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert sizes == [50, 50, 50]  # three rows, each scored on the validation split
    results = json.loads((out / "results.json").read_text())
    rows = results["comparison"]
    assert [r["model"] for r in rows] == ["Baseline", "Pruned", "Fine-tuned + pruned"]
    assert results["export_tolerance"] == 1.0
    for index, row in enumerate(rows):
        check, bits = row["export_check"], row["compressed_bits"]
        assert isinstance(bits, dict) and set(bits) == {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"}
        assert check["bits"] == bits and check["within"] == (index != 1)
        file = load_compressed(row["compressed_file"])
        for name, width in bits.items():
            assert len(torch.unique(file[name][file[name] != 0])) <= 2**width, name
    assert set(rows[1]["compressed_bits"].values()) == {8} and rows[1]["export_check"]["loss"] > 1.0
    report = (out / "report.md").read_text()
    assert report.count('color:red">Pruned: its compressed .epz') == 1 and "even 8 bits everywhere" in report
    assert "| Weight tensor | Baseline | Pruned | Fine-tuned + pruned |" in report
    assert sum("Pruned: its compressed .epz" in line for line in printed.splitlines()) == 2  # the run's line, and the printed table's note
