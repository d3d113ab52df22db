"""MobileNetV1 0.25 (96x96x3, 2 classes) trained 60 steps on bench_mlperf_tiny.py's synthetic data, 80 % of its
pointwise (1x1) weights pruned by magnitude (the other layers dense), exported int8: issue 22's MobileNetV1 row.

    PYTHONPATH=src .venv/bin/python benchmarks/mk_mobilenet_v1_pointwise.py /tmp/k3/mbv1_80
    PYTHONPATH=src .venv/bin/python -m edgeprune mcu /tmp/k3/mbv1_80/model.tflite --images 2 --out /tmp/k3/fin_mbv1
"""
import sys
from pathlib import Path

import torch
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_mlperf_tiny import synthetic, train_briefly
from edgeprune.models import build_model
from edgeprune.steps import prune_copy
from edgeprune.export.tflite import export_tflite
torch.set_num_threads(1)
torch.manual_seed(0)
shape = (3, 96, 96)
model = build_model("mobilenet_v1", 3, 2, 96, input_shape=shape)
x, y = synthetic(shape, 2, 2000, seed=0)
train_briefly(model, x, y, 60, seed=0)
pruned = prune_copy(model, {r"re:.*pointwise\.weight": 0.8, "_default": 0.0},
                    [(x[i:i + 32], y[i:i + 32]) for i in range(0, 320, 32)])[0]
for n, p in pruned.named_parameters():
    if p.dim() == 4:
        print(n, f"{(p == 0).float().mean().item():.3f}")
out = Path(sys.argv[1] if len(sys.argv) > 1 else '/tmp/k3/mbv1_80'); out.mkdir(parents=True, exist_ok=True)
export_tflite(pruned, out / "model.tflite", x[:500])
print("done")
