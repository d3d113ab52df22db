"""The one latency timer: its structure, its round-robin order, masks detached for timing, and the direction of ratios.

No test asserts a timing: only structure, call order, the state seen by the forward pass, and the
direction of a ratio between two models whose work differs twofold.
"""

import itertools
import statistics
import time

import pytest
import torch
from torch import nn

from edgeprune.analyze.latency import (MIN_CALLS, compute_key, equal_compute_groups, latency_ratio, measure_latency, spread,
                                       time_calls, time_models, timing_copy)
from edgeprune.analyze import latency
from edgeprune.steps import compare_models
from edgeprune.prune.pruner import FineGrainedPruner, is_pruned

CALLS: list[dict] = []  # every forward pass of a Recorder, in order (a module-level list: deep copies share it)


class Recorder(nn.Module):
    """A small linear classifier whose forward pass records its tag and the state it runs in."""

    def __init__(self, tag: str, features: int = 4) -> None:
        super().__init__()
        self.tag = tag
        self.fc = nn.Linear(features, 3)

    def forward(self, x):
        CALLS.append({"tag": self.tag, "batch": x.shape[0], "inference": torch.is_inference_mode_enabled(),
                      "training": self.training, "pruned": is_pruned(self), "device": x.device.type,
                      "rows": None if x.is_meta else x.flatten(1)[:, 0].tolist()})
        return self.fc(x.flatten(1))


class Nap(nn.Module):
    """A layer that sleeps 2 ms: its wall time hardly depends on how busy the shared CPU is."""

    def forward(self, x):
        time.sleep(0.002)
        return x


class Repeat(nn.Module):
    """``body`` applied ``times`` times: ``times=2`` is exactly twice the work of ``times=1``."""

    def __init__(self, body: nn.Module, times: int) -> None:
        super().__init__()
        self.body, self.times = body, times

    def forward(self, x):
        for _ in range(self.times):
            x = self.body(x)
        return x


@pytest.fixture(autouse=True)
def _clear_calls():
    CALLS.clear()
    yield
    CALLS.clear()


def _runs(calls: list[dict]) -> list[tuple[str, int]]:
    """(tag, length) of each run of consecutive calls by the same model."""
    return [(tag, len(list(group))) for tag, group in itertools.groupby(c["tag"] for c in calls)]


def test_time_models_structure_and_medians():
    models = [Recorder("a"), Recorder("b")]
    models[0].train()
    before = {k: v.clone() for k, v in models[0].state_dict().items()}
    example = torch.randn(5, 4)
    results = time_models(models, example, batch_sizes=(1, 3), device="cpu", rounds=3, number=2)
    assert len(results) == 2
    for result in results:
        assert set(result) == {"latency_ms", "rounds_ms", "spread", "number", "rounds", "threads", "device"}
        assert result["device"] == "cpu" and result["rounds"] == 4 and result["threads"] == torch.get_num_threads()
        assert result["number"] == {1: 2, 3: 2}
        for batch in (1, 3):
            times = result["rounds_ms"][batch]
            assert len(times) == 4 and all(t > 0 for t in times)  # 3 rounds rounded up to a multiple of 2 models
            assert result["latency_ms"][batch] == statistics.median(times)
            assert result["spread"][batch] == spread(times)
    assert {c["batch"] for c in CALLS} == {1, 3}
    timed = [c["rows"] for c in CALLS if c["batch"] == 3]  # the example's samples in turn fill the batch
    assert timed and all(rows == pytest.approx(example[:3, 0].tolist()) for rows in timed)
    assert models[0].training  # the caller's model is not put in eval mode, moved or changed
    assert all(torch.equal(v, models[0].state_dict()[k]) for k, v in before.items())


def test_models_are_timed_round_robin_in_eval_and_inference_mode():
    models = [Recorder("a"), Recorder("b"), Recorder("c")]
    time_models(models, torch.randn(1, 4), batch_sizes=(2,), device="cpu", rounds=4, number=3)
    runs = _runs(CALLS)
    # each round every model once, the order rotating: 4 rounds become 6, each model first twice
    assert [tag for tag, _ in runs] == list("abc" "bca" "cab" "abc" "bca" "cab")
    assert len({length for _, length in runs}) == 1  # the same calls per model and round (warm-up + 3 timed)
    assert all(c["inference"] and not c["training"] for c in CALLS)


def test_time_calls_picks_one_number_for_all_and_checks_its_input():
    times, number = time_calls([lambda: None, lambda: sum(range(1000))], rounds=2)
    assert number >= 1 and len(times) == 2 and all(len(t) == 2 for t in times)
    for bad in ({"calls": []}, {"calls": [print], "rounds": 0}, {"calls": [print], "number": 0}):
        with pytest.raises(ValueError):
            time_calls(**{"rounds": 1, **bad})
    with pytest.raises(ValueError, match="batch_sizes"):
        time_models([Recorder("a")], torch.randn(1, 4), batch_sizes=(0,))


def test_masks_are_detached_for_timing_but_the_caller_keeps_them():
    model = Recorder("masked", features=16)
    pruner = FineGrainedPruner(model, {"_default": 0.5})
    mask = model.fc.weight_mask.clone()
    assert is_pruned(model) and int((mask == 0).sum()) == 24  # half of the 3 x 16 weights
    time_models([model], torch.randn(1, 16), batch_sizes=(1,), device="cpu", rounds=2, number=1)
    assert CALLS and not any(c["pruned"] for c in CALLS)  # the timed copy had no masks
    assert is_pruned(model) and torch.equal(model.fc.weight_mask, mask) and pruner.masks
    assert torch.equal(model.fc.weight == 0, mask == 0)  # the pruned weights are still zero


def test_measure_latency_structure():
    result = measure_latency(Recorder("a"), torch.randn(1, 4), batch_sizes=(1, 64), device="cpu", rounds=3, number=1)
    assert result["threads"] == torch.get_num_threads() and result["rounds"] == 3
    assert set(result["latency_ms"]) == {"cpu"} and set(result["latency_ms"]["cpu"]) == {1, 64}
    times = result["rounds_ms"]["cpu"]
    assert all(len(v) == 3 for v in times.values())
    assert result["latency_ms"]["cpu"][64] == statistics.median(times[64]) == sorted(times[64])[1]


def test_latency_ratio_puts_the_model_over_the_reference():
    once, twice = Repeat(Nap(), 1), Repeat(Nap(), 2)
    example = torch.randn(1, 8)
    assert latency_ratio(twice, once, example, batch_size=4, device="cpu", rounds=5, number=2) > 1  # about 2
    assert latency_ratio(once, twice, example, batch_size=4, device="cpu", rounds=5, number=2) < 1  # about 0.5
    with pytest.raises(ValueError, match="batch_size"):
        latency_ratio(once, twice, example, batch_size=0)


def test_compare_models_times_the_table_interleaved(tmp_path, monkeypatch):
    monkeypatch.setattr(latency, "BLOCK_MS", 5.0)
    models = []
    for tag in "xyz":
        path = tmp_path / f"{tag}.safetensors"
        path.write_bytes(b"0")
        models.append((tag, Recorder(tag), path))
    loader = [(torch.randn(5, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1]))]
    rows = compare_models(models, loader, device="cpu", input_shape=(1, 2, 2))
    assert [set(r["latency_ms"]) for r in rows] == [{1, 64}] * 3
    assert all(r["latency_threads"] == torch.get_num_threads() for r in rows)
    assert all(r["latency_rounds"] == 12 and r["latency_calls"][64] >= MIN_CALLS for r in rows)
    assert all(set(r["latency_spread"]) == {1, 64} for r in rows)
    timed = [c for c in CALLS if c["batch"] == 64]
    tags = [tag for tag, _ in _runs(timed)][3:]  # after the block of each that chooses the block size
    rounds = [tags[i:i + 3] for i in range(0, len(tags), 3)]
    assert len(tags) == 36 and all(sorted(r) == ["x", "y", "z"] for r in rounds)  # 12 rounds, each model once a round
    assert [r[0] for r in rounds] == list("xyz" * 4)  # each first equally often, in turn
    assert all(any(c["rows"]) for c in timed)  # the loader's images, not a zero input


# ---- issue 23: the report claimed a speedup between three copies of one dense network ----


def test_rotation_puts_each_callable_first_equally_often_and_fixed_order_stays_available():
    order: list[str] = []
    calls = [lambda t=t: order.append(t) for t in "abc"]
    times, _ = time_calls(calls, rounds=5, number=1, min_calls=1)
    assert [len(t) for t in times] == [6, 6, 6]  # 5 rounds rounded up to a multiple of 3
    blocks = [tag for tag, _ in itertools.groupby(order)]  # each block: the timer's warm-up calls, then the timed call
    assert blocks == list("abc" "bca" "cab" "abc" "bca" "cab")
    order.clear()
    times, _ = time_calls(calls, rounds=5, number=1, rotate=False)
    assert [len(t) for t in times] == [5, 5, 5] and [tag for tag, _ in itertools.groupby(order)] == list("abc" * 5)


def test_a_block_holds_at_least_min_calls_however_slow_the_call():
    def slow():
        time.sleep(0.005)

    _, number = time_calls([slow], rounds=1, block_ms=1.0, min_calls=4)
    assert number == 4  # 1 ms of blocks would be one call: a single slow spell would then move the whole block
    _, number = time_calls([lambda: None], rounds=1, block_ms=1.0, min_calls=4)
    assert number >= 4
    assert MIN_CALLS >= 10
    with pytest.raises(ValueError, match="min_calls"):
        time_calls([slow], rounds=1, min_calls=0)


def test_spread_is_the_interquartile_range_over_the_median():
    assert spread([10.0, 10.0, 10.0]) == 0.0
    assert spread([4.0]) == 0.0
    # quartiles (inclusive) of 1..9 are 3 and 7, the median 5
    assert spread([float(v) for v in range(9, 0, -1)]) == pytest.approx(4 / 5)
    assert spread([10.0, 10.0, 10.0, 10.0, 40.0]) == 0.0  # one slow block does not widen it


def _timing(rounds: dict[int, list[float]]) -> dict:
    """A time_models result made from given rounds (injected timings, no clock)."""
    return {"latency_ms": {b: statistics.median(r) for b, r in rounds.items()}, "rounds_ms": rounds,
            "spread": {b: spread(r) for b, r in rounds.items()}}


def test_identical_compute_within_the_noise_shows_one_latency_and_no_flag():
    a = _timing({1: [1.00, 1.02, 0.98, 1.01], 64: [5.0, 5.1, 4.9, 5.05]})
    b = _timing({1: [1.01, 0.99, 1.00, 1.03], 64: [5.08, 4.95, 5.0, 5.02]})
    verdicts = equal_compute_groups([a, b], ["dense", "dense"])
    assert verdicts[0] is verdicts[1] and verdicts[0]["members"] == [0, 1]
    assert verdicts[0]["flagged"] == []
    for batch in (1, 64):
        assert verdicts[0]["apart"][batch] <= verdicts[0]["noise"][batch]
        pooled = statistics.median(a["rounds_ms"][batch] + b["rounds_ms"][batch])
        assert verdicts[0]["latency_ms"][batch] == pytest.approx(pooled)


def test_identical_compute_timed_apart_beyond_the_noise_is_flagged_and_channel_pruned_models_stay_apart():
    """The demo's numbers: 6.25 / 4.75 / 4.71 ms at batch 64 for three copies of one dense BasicCNN, steady rounds."""
    base = _timing({1: [0.30, 0.31, 0.30, 0.30], 64: [6.20, 6.25, 6.30, 6.25]})
    pruned = _timing({1: [0.30, 0.30, 0.31, 0.30], 64: [4.70, 4.75, 4.80, 4.75]})
    tuned = _timing({1: [0.31, 0.30, 0.30, 0.30], 64: [4.69, 4.71, 4.73, 4.71]})
    small = _timing({1: [0.15, 0.15, 0.16, 0.15], 64: [2.40, 2.50, 2.45, 2.50]})
    verdicts = equal_compute_groups([base, small, pruned, tuned], ["dense", "half", "dense", "dense"])
    assert verdicts[1] is None  # a channel-pruned model has no twin: its own latency, its real speedup
    group = verdicts[0]
    assert verdicts[2] is group and verdicts[3] is group and group["members"] == [0, 2, 3]
    assert group["flagged"] == [64]  # batch 1 agrees within the noise
    assert group["apart"][64] == pytest.approx(6.25 / 4.71 - 1) and group["noise"][64] < 0.02
    assert min(4.71, 4.75) <= group["latency_ms"][64] <= 6.25  # one value for all three
    with pytest.raises(ValueError, match="2 timings but 1 keys"):
        equal_compute_groups([base, pruned], ["dense"])


def test_compute_key_sees_shapes_settings_and_macs_not_zeros_masks_or_training_state():
    from edgeprune.models import BasicCNN
    from edgeprune.prune.channels import prune_channels

    torch.manual_seed(0)
    dense = BasicCNN(1, 10, 28)
    masked = BasicCNN(1, 10, 28)
    FineGrainedPruner(masked, {"_default": 0.8})  # zeros and masks attached
    masked.train()
    masked.conv1.weight.grad = torch.ones_like(masked.conv1.weight)
    assert compute_key(masked, 100) == compute_key(dense, 100)
    assert compute_key(masked, 100) != compute_key(dense, 99)
    strided = BasicCNN(1, 10, 28)
    strided.conv1.stride = (2, 2)  # the same weights' shapes, other work
    assert compute_key(strided) != compute_key(dense)
    small = prune_channels(dense, {"_default": 0.5}, torch.zeros(1, 1, 28, 28))
    assert compute_key(small) != compute_key(dense)


def test_timing_copy_gets_fresh_contiguous_tensors_keeps_ties_and_leaves_the_model():
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 6))
    with torch.no_grad():
        model[0].weight = nn.Parameter(model[0].weight.detach().t().contiguous().t())  # the values, in other strides
    model[2].weight = nn.Parameter(model[0].weight.detach().t().clone())
    model.tied = model[0]  # the same module under a second name
    model.train()
    model(torch.randn(2, 6)).sum().backward()
    assert not model[0].weight.is_contiguous()
    copied = timing_copy(model, torch.device("cpu"))
    assert not copied.training and all(p.is_contiguous() and p.grad is None for p in copied.parameters())
    assert copied.tied.weight is copied[0].weight  # still one tensor
    assert torch.equal(copied[0].weight, model[0].weight) and copied[0].weight.data_ptr() != model[0].weight.data_ptr()
    assert model.training and not model[0].weight.is_contiguous() and model[0].weight.grad is not None


def _report_rows(group_64: tuple[float, float], flagged: list[int], as_json: bool = False) -> list[dict]:
    """Comparison rows as compare_models writes them: three copies of one dense network and a channel-pruned one."""
    def row(name, own, spread_64):
        return {"model": name, "theoretical_mib": 1.0, "sparsity": 0.0, "file_bytes": 10, "accuracy": 90.0, "macs": 1000,
                "latency_ms": {1: own[0], 64: own[1]}, "latency_spread": {1: 0.01, 64: spread_64}, "latency_threads": 2}

    members = ["Baseline", "Pruned", "Fine-tuned + pruned"]
    group = {"members": members, "latency_ms": {1: 0.3, 64: 4.75}, "apart": {1: 0.005, 64: group_64[0]},
             "noise": {1: 0.01, 64: group_64[1]}, "flagged": flagged}
    rows = [row("Baseline", (0.30, 6.25), 0.01), row("Channel-pruned", (0.15, 2.45), 0.02),
            row("Pruned", (0.30, 4.75), 0.012), row("Fine-tuned + pruned", (0.30, 4.71), group_64[1])]
    for r in rows:
        r["latency_equal_compute"] = group if r["model"] in members else None
    if as_json:  # results.json has string keys for batch sizes
        import json
        rows = json.loads(json.dumps(rows))
    return rows


def _latency_cells(markdown: str) -> dict[str, str]:
    lines = [line.split(" | ") for line in markdown.splitlines() if line.startswith("| ") and "---" not in line]
    column = lines[0].index("Latency b1 / b64 (ms)")
    return {cells[0].lstrip("| "): cells[column] for cells in lines[1:]}


@pytest.mark.parametrize("as_json", [False, True])
def test_the_report_never_shows_a_speedup_between_identical_networks(as_json):
    from edgeprune.report import comparison_markdown

    table = comparison_markdown(_report_rows((0.327, 0.012), [64], as_json))  # the demo: 1.33x at batch 64
    cells = _latency_cells(table)
    assert cells["Baseline"] == cells["Pruned"] == cells["Fine-tuned + pruned"] == "0.30 / 4.75†"
    assert cells["Channel-pruned"] == "0.15 / 2.45"  # a real speedup, shown
    assert "At batch 64 they were timed apart by 32.7 %, above the noise of 1.2 %: treat as equal" in table
    assert "*Baseline*, *Pruned* and *Fine-tuned + pruned* run the same dense network" in table
    assert "Baseline 1.0 % / 1.0 %; Channel-pruned 1.0 % / 2.0 %" in table  # each model's spread in the note

    rows = _report_rows((0.327, 0.012), [1, 64], as_json)
    rows[0]["latency_equal_compute"]["apart"][1 if not as_json else "1"] = 0.5
    both = comparison_markdown(rows)
    assert "At batch 1 and 64 they were timed apart by 50.0 % and 32.7 %, above the noise of 1.0 % and 1.2 %" in both
    assert _latency_cells(both)["Pruned"] == "0.30† / 4.75†"

    quiet = comparison_markdown(_report_rows((0.008, 0.012), [], as_json))  # within the noise: equal, no flag
    cells = _latency_cells(quiet)
    assert cells["Baseline"] == cells["Pruned"] == cells["Fine-tuned + pruned"] == "0.30 / 4.75"
    assert "†" not in quiet and "treat as equal" not in quiet and "0.5 % / 0.8 % apart (b1 / b64)" in quiet


def _trained_and_fresh(tmp_path):
    """Two BasicCNNs with one state_dict: one trained a step with Adam (left in train mode, grads, a forward hook),
    one loaded fresh from the file the first was saved to."""
    from edgeprune.checkpoint import load_checkpoint, save_checkpoint
    from edgeprune.models import BasicCNN, ModelSpec

    torch.manual_seed(0)
    spec = ModelSpec("basiccnn", 1, 10, 8)  # the seed's CNN on 8x8 images: a fast test on a loaded machine
    trained = BasicCNN(1, 10, 8).train()
    optimizer = torch.optim.Adam(trained.parameters(), lr=1e-3)
    images, labels = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    nn.functional.cross_entropy(trained(images), labels).backward()
    optimizer.step()
    save_checkpoint(tmp_path / "trained.safetensors", trained, spec)
    nn.functional.cross_entropy(trained(images), labels).backward()  # grads held, as after the last training step
    seen: list[int] = []
    trained.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[0]))
    fresh = load_checkpoint(tmp_path / "trained.safetensors")[0]
    return spec, trained, fresh, seen, (images, labels)


def test_a_model_fresh_from_training_and_its_file_loaded_back_show_one_latency(tmp_path, monkeypatch):
    """The real timing path (compare_models and the report) on a model fresh from an Adam step and the same file
    loaded back: no speedup may be claimed between them, and the trained model's own state is not timed."""
    from edgeprune.report import comparison_markdown

    monkeypatch.setattr(latency, "BLOCK_MS", 5.0)  # short blocks (still MIN_CALLS calls): a short test on a loaded machine
    spec, trained, fresh, seen, (images, labels) = _trained_and_fresh(tmp_path)
    assert trained.training and trained.conv1.weight.grad is not None and fresh.conv1.weight.grad is None
    models = [("Trained in memory", trained, tmp_path / "trained.safetensors"), ("Loaded", fresh, tmp_path / "trained.safetensors")]
    rows = compare_models(models, [(images[:5], labels[:5])], device="cpu", input_shape=(1, 8, 8), specs=[spec, spec])
    group = rows[0]["latency_equal_compute"]
    assert group == rows[1]["latency_equal_compute"] and group["members"] == ["Trained in memory", "Loaded"]
    assert set(group["flagged"]) <= {1, 64} and set(group["apart"]) == {1, 64}
    cells = _latency_cells(comparison_markdown(rows))
    assert cells["Trained in memory"] == cells["Loaded"]  # one latency: no speedup between them
    assert 64 not in seen and 5 in seen  # only evaluation (and counting MACs) ran the trained module itself: the timing ran a copy as its file loads
    assert trained.training and trained.conv1.weight.grad is not None  # the caller's model is left as it was
