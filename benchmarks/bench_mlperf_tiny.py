"""MLPerf Tiny's four workloads on the C engine, in the emulated Cortex-M4: the reference int8 files, and the same
architectures built in PyTorch (edgeprune's built-in models), pruned to 0, 80 and 90 %.

Part 1 runs each reference ``.tflite`` of mlcommons/tiny (``benchmark/training/*/trained_models/``) as it is, the way
``edgeprune mcu X.tflite`` does: N seeded random inputs in the file's input dtype, every output compared with TFLite
Micro's. Part 2 trains each built-in model briefly on synthetic data of its input shape (class-dependent patterns
for the classifiers, low-rank signals for the autoencoder: there is no keyword or wake-word data here), prunes it
by magnitude uniformly (BatchNorm re-estimated on 10 batches, as the run does), exports it to int8 ``.tflite`` (calibrated on the same data) and runs the engine on N of its
samples. Instructions are instructions executed in emulation (QEMU ``-icount shift=0``), not cycles.

    # the reference files, from a copy of github.com/mlcommons/tiny (any folder holding them)
    python benchmarks/bench_mlperf_tiny.py --reference-dir /tmp/tiny --images 20 --json benchmarks/results/bench_mlperf_tiny.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

from edgeprune.export.tflite import export_tflite
from edgeprune.files import write_json_atomic
from edgeprune.mcu import measure_on_mcu, measure_tflite, random_inputs
from edgeprune.models import build_model
from edgeprune.steps import prune_copy

REFERENCES = {  # workload -> the reference file and the built-in model of the same architecture, with its input
    "image classification (ResNet-8)": ("pretrainedResnet_quant.tflite", "resnet8", (3, 32, 32), 10),
    "visual wake words (MobileNetV1 0.25)": ("vww_96_int8.tflite", "mobilenet_v1", (3, 96, 96), 2),
    "keyword spotting (DS-CNN)": ("kws_ref_model.tflite", "dscnn", (1, 49, 10), 12),
    "anomaly detection (FC autoencoder)": ("ad01_int8.tflite", "fc_autoencoder", (640,), 640),
    "anomaly detection, float ends (ToyCar)": ("model_ToyCar_quant_fullint_micro.tflite", None, None, None),
    "streaming wake word": ("str_ww_ref_model.tflite", None, None, None),
}
KEYS = ("images_run", "equal_to_tflm", "instructions", "flash_bytes", "weight_bytes", "index_bytes", "ram_bytes",
        "arena_bytes")


def synthetic(shape: tuple[int, ...], classes: int, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` samples of ``shape``: for a classifier, a class's fixed random pattern plus noise (labels the classes);
    for the autoencoder (``classes`` equal to the sample size), signals on 8 random directions (targets the samples)."""
    g = torch.Generator().manual_seed(seed)
    if classes == shape[0] and len(shape) == 1:
        basis = torch.randn(8, shape[0], generator=g)
        x = torch.randn(count, 8, generator=g) @ basis / 3 + 0.05 * torch.randn(count, shape[0], generator=g)
        return x, x
    patterns = torch.randn(classes, *shape, generator=g)
    labels = torch.randint(0, classes, (count,), generator=g)
    return patterns[labels] + torch.randn(count, *shape, generator=g), labels


def train_briefly(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int) -> nn.Module:
    """Adam (lr 1e-3), batch 32, ``steps`` steps: cross-entropy for labels, mean squared error for a reconstruction."""
    torch.manual_seed(seed)
    loss_fn = nn.MSELoss() if y.dtype.is_floating_point else nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(x), (32,))
        optimizer.zero_grad()
        loss_fn(model(x[idx]), y[idx]).backward()
        optimizer.step()
    return model.eval()


def row(result: dict) -> dict:
    return {key: result[key] for key in KEYS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-dir", required=True, help="a folder holding the MLPerf Tiny reference .tflite files")
    parser.add_argument("--images", type=int, default=20, help="inputs per model")
    parser.add_argument("--steps", type=int, default=300, help="training steps of each built-in model")
    parser.add_argument("--sparsities", default="0,0.8,0.9")
    parser.add_argument("--out", default="/tmp/bench_mlperf_tiny", help="folder for the engines, files and builds")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    out, rows = Path(args.out), {"reference": {}, "pytorch": {}}
    for workload, (name, _, _, _) in REFERENCES.items():
        path = Path(args.reference_dir) / name
        result = measure_tflite(path, random_inputs(path, args.images, seed=0), None, out / "reference" / path.stem)
        rows["reference"][workload] = {"file": name, **row(result)}
        print("reference", workload, json.dumps(rows["reference"][workload]), flush=True)
    for workload, (_, model_name, shape, classes) in REFERENCES.items():
        if model_name is None:
            continue
        torch.manual_seed(0)
        model = build_model(model_name, shape[0], classes, shape[-1], input_shape=shape)
        x, y = synthetic(shape, classes, 2000, seed=0)
        started = time.time()
        train_briefly(model, x, y, args.steps, seed=0)
        for sparsity in (float(s) for s in args.sparsities.split(",")):
            pruned = prune_copy(model, {"_default": sparsity}, [(x[i:i + 32], y[i:i + 32]) for i in range(0, 320, 32)])[0] \
                if sparsity else model
            folder = out / "pytorch" / f"{model_name}-{sparsity:g}"
            tflite = export_tflite(pruned, folder / "model.tflite", x[:500])
            labels = y[:args.images] if not y.dtype.is_floating_point else torch.zeros(args.images, dtype=torch.long)
            result = measure_on_mcu(tflite, x[:args.images], labels, folder)
            key = f"{model_name} {sparsity:.0%}"
            rows["pytorch"][key] = {"workload": workload, "sparsity": sparsity, **row(result),
                                    "seconds": round(time.time() - started, 1)}
            print("pytorch", key, json.dumps(rows["pytorch"][key]), flush=True)
    if args.json:
        write_json_atomic(args.json, rows)


if __name__ == "__main__":
    main()
