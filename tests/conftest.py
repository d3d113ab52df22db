"""Shared tiny models with odd sizes, the Fashion-MNIST fixtures, and a hand-written k-means reference."""

from __future__ import annotations

import gzip
import json
import os
import struct
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from torch import nn

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Debian's full Fashion-MNIST (package dataset-fashion-mnist), for the few ``integration`` tests."""
FASHION_SLICE = Path(__file__).parent / "data" / "fashion-mnist"
"""The first 600 training and 300 test images of Fashion-MNIST, shipped with the tests (see tests/data/README.md)."""
SLICE_COUNTS = {"train": 600, "t10k": 300}
REQUIRE_DATASET = "EDGEPRUNE_REQUIRE_DATASET"


class TinyNet(nn.Module):
    """A small conv + linear net with odd sizes (3 channels in, 5x5 images, 7 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, kernel_size=3, padding=1)
        self.fc = nn.Linear(5 * 5 * 5, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.fixture
def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Prepared data sets go to a temporary cache, never the user's."""
    monkeypatch.setenv("EDGEPRUNE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _idx_records(path: Path) -> int:
    """The record count in the header of a gzipped IDX file (magic, then big-endian uint32 sizes)."""
    with gzip.open(path, "rb") as f:
        header = f.read(8)
    return struct.unpack(">I", header[4:8])[0]


@pytest.fixture
def fashion_slice() -> str:
    """The shipped Fashion-MNIST slice, as a ``--data-dir``; fails (never falls back to Debian's copy) if damaged."""
    for split, count in SLICE_COUNTS.items():
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            path = FASHION_SLICE / f"{split}-{kind}.gz"
            if not path.is_file() or _idx_records(path) != count:
                pytest.fail(f"{path}: missing or not {count} records; recreate it with tests/data/cut_fashion_mnist.py")
    return str(FASHION_SLICE)


@pytest.fixture
def fashion_full() -> str:
    """Debian's full Fashion-MNIST as a ``--data-dir``.

    Missing: the test fails when ``EDGEPRUNE_REQUIRE_DATASET=1`` (CI) and is skipped otherwise.
    """
    if not FASHION_DIR.is_dir():
        message = f"needs Debian's full Fashion-MNIST in {FASHION_DIR} (apt-get install dataset-fashion-mnist)"
        if os.environ.get(REQUIRE_DATASET) == "1":
            pytest.fail(f"{message}; {REQUIRE_DATASET}=1 forbids skipping it", pytrace=False)
        pytest.skip(message)
    return str(FASHION_DIR)


def _comparable_results(out: Path) -> dict:
    """A run's results.json without what differs between two folders: paths, timings, which steps were resumed."""
    results = json.loads((out / "results.json").read_text())
    for key in ("seconds", "resumed_steps"):
        results.pop(key)
    results["config"].pop("out")
    for row in results["comparison"]:
        for key in ("checkpoint", "compressed_file", "onnx_file", "tflite_file", "c_source", *[k for k in row if k.startswith("latency_")]):
            row.pop(key, None)
    return results


@pytest.fixture
def comparable():
    """``comparable(out)``: the results of the run in ``out`` that two runs of one config must share."""
    return _comparable_results


@pytest.fixture
def interrupt_then_resume(monkeypatch):
    """``interrupt_then_resume(argv, at, not_again)``: ``edgeprune`` with ``argv`` stopped by Ctrl-C in step ``at``
    (exit 130), then resumed with ``--resume`` while step ``not_again`` must not run; returns the resumed results."""
    import edgeprune.steps as steps
    from edgeprune.cli import main

    def run(argv: list[str], at: str, not_again: str) -> dict:
        def interrupt(*args, **kwargs):
            raise KeyboardInterrupt

        with monkeypatch.context() as patched:
            patched.setattr(steps, at, interrupt)
            assert main(argv) == 130
        with monkeypatch.context() as patched:
            patched.setattr(steps, not_again, lambda *a, **k: pytest.fail(f"{not_again} ran again after --resume"))
            assert main([*argv, "--resume"]) == 0
        out = Path(argv[argv.index("--out") + 1])
        return json.loads((out / "results.json").read_text())

    return run


def reference_lloyd(values: list[float], bits: int) -> list[float]:
    """Centroids of 1-D k-means as documented for the export, in exact rational arithmetic: a reference, not the product.

    At most ``2**bits`` centroids. If the values take at most that many distinct values, those
    are the centroids. Otherwise start evenly spaced from the smallest to the largest value,
    then repeat at most 100 times: give each value to its nearest centroid (a tie goes to the
    lower one), stop when no value changed cluster, move each centroid to its cluster's mean
    (an empty cluster keeps its centroid). Returns the sorted centroids as floats. Exact
    fractions mean the result differs from a float computation only where the data hold an
    exact tie, so tests feed it values that have none (e.g. random normal floats).
    """
    k = 2**bits
    distinct = sorted(set(values))
    if len(distinct) <= k:
        return distinct
    exact = [Fraction(v) for v in values]
    low, high = min(exact), max(exact)
    centroids = [low + (high - low) * i / (k - 1) for i in range(k)]
    clusters = None
    for _ in range(100):
        new = [min(range(k), key=lambda j: (abs(v - centroids[j]), j)) for v in exact]
        if new == clusters:
            break
        clusters = new
        for j in range(k):
            members = [v for v, c in zip(exact, clusters) if c == j]
            if members:
                centroids[j] = sum(members) / len(members)
        order = sorted(range(k), key=lambda j: centroids[j])
        centroids = [centroids[j] for j in order]
        clusters = [order.index(c) for c in clusters]
    return [float(c) for c in centroids]
