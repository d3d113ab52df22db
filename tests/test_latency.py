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


def test_compare_models_times_the_table_interleaved(tmp_path):
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
    tags = [tag for tag, _ in _runs(timed)][3:]  # after the three single calls of each that choose the block size
    rounds = [tags[i:i + 3] for i in range(0, len(tags), 3)]
    assert len(tags) == 36 and all(sorted(r) == ["x", "y", "z"] for r in rounds)  # 12 rounds, each model once a round
    assert [r[0] for r in rounds] == list("xyz" * 4)  # each first equally often, in turn
    assert all(any(c["rows"]) for c in timed)  # the loader's images, not a zero input
