"""Small int8 models for fit_cost.py, covering the kernel paths MLPerf Tiny's files do not: fused 2x2 max pools
(SmallNet, BasicCNN), ReLU6 clamps that are not all of int8 and output rows that end in a short group (OddNet),
sparse and dense. Untrained (seeded) weights, magnitude-pruned per layer; the cost model counts work, not accuracy.

    PYTHONPATH=src .venv/bin/python benchmarks/mk_cost_models.py /tmp/cost_models
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from edgeprune.export.tflite import export_tflite
from edgeprune.models import build_model
from edgeprune.steps import prune_copy

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_mcu_board import SmallNet  # noqa: E402 (the tests' SmallNet: two pooled convolutions and a linear layer)


class OddNet(nn.Module):
    """ReLU6 convolutions on a 15x13 input (odd output rows: the last group of each layer is short), a 1x1 and a
    stride-2 layer among them."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.ReLU6(), nn.Conv2d(12, 20, 1), nn.ReLU6(),
                                  nn.Conv2d(20, 24, 3, stride=2, padding=1), nn.ReLU6(), nn.Conv2d(24, 16, 3))
        self.fc = nn.Linear(16 * 6 * 5, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).flatten(1))


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    models = {"smallnet": (SmallNet(), (1, 28, 28)), "basiccnn": (build_model("basiccnn", 1, 10, 28), (1, 28, 28)),
              "oddnet": (OddNet(), (3, 15, 13))}
    for name, (model, shape) in models.items():
        model.eval()
        x = torch.randn(64, *shape)
        export_tflite(model, out / f"{name}_dense.tflite", x)
        pruned = prune_copy(model, {"_default": 0.8}, None)[0] if name != "basiccnn" else \
            prune_copy(model, {"_default": 0.9}, None)[0]
        export_tflite(pruned, out / f"{name}_sparse.tflite", x)
        print(out / f"{name}_dense.tflite", out / f"{name}_sparse.tflite")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/cost_models"))
