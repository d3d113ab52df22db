"""MobileNetV1 0.25 (96x96x3, 2 classes) trained 60 steps on bench_mlperf_tiny.py's synthetic data, 80 % of its
pointwise (1x1) weights pruned by magnitude (the other layers dense), exported int8: issue 22's MobileNetV1 row.
:func:`build` is shared with mk_resnet8_90.py.

    PYTHONPATH=src .venv/bin/python benchmarks/mk_mobilenet_v1_pointwise.py /tmp/k3/mbv1_80
    PYTHONPATH=src .venv/bin/python -m edgeprune mcu /tmp/k3/mbv1_80/model.tflite --images 2 --out /tmp/k3/fin_mbv1
"""
import sys
from pathlib import Path

import torch
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_mlperf_tiny import synthetic, train_briefly
from edgeprune.export.tflite import export_tflite
from edgeprune.models import build_model
from edgeprune.steps import prune_copy


def build(name: str, shape: tuple[int, int, int], classes: int, sparsity: dict, out: Path) -> None:
    """Built-in model ``name`` trained 60 seeded steps on synthetic data, pruned to ``sparsity`` (BatchNorm
    re-estimated), written to ``out/model.tflite``."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(name, 3, classes, shape[1], input_shape=shape)
    x, y = synthetic(shape, classes, 2000, seed=0)
    train_briefly(model, x, y, 60, seed=0)
    pruned = prune_copy(model, sparsity, [(x[i:i + 32], y[i:i + 32]) for i in range(0, 320, 32)])[0]
    for n, p in pruned.named_parameters():
        if p.dim() == 4:
            print(n, f"{(p == 0).float().mean().item():.3f}")
    out.mkdir(parents=True, exist_ok=True)
    export_tflite(pruned, out / "model.tflite", x[:500])
    print("wrote", out / "model.tflite")


if __name__ == "__main__":
    build("mobilenet_v1", (3, 96, 96), 2, {r"re:.*pointwise\.weight": 0.8, "_default": 0.0},
          Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/k3/mbv1_80"))
