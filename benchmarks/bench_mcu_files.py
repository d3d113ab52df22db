"""The C engine on trained models: each given int8 ``.tflite`` run on the first N test images in the emulated Cortex-M4.

Every output is compared with TensorFlow Lite Micro's; instructions are instructions executed in
emulation (QEMU ``-icount shift=0``), not cycles. It calls the run's own step (``edgeprune.steps.mcu_checkpoint``),
so a ``.tflite`` takes its image geometry from its input tensor, as ``edgeprune mcu model.tflite`` does.

    python benchmarks/bench_mcu_files.py dense.tflite sparse90.tflite --images 1000 --json results.json
    python benchmarks/bench_mcu_files.py sparse90.tflite --weight-budget 15472   # at most 15,472 B of weights + index
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgeprune import steps
from edgeprune.data import DataConfig
from edgeprune.files import write_json_atomic

KEYS = ("images_run", "equal_to_tflm", "accuracy", "tflm_accuracy", "instructions", "flash_bytes", "weight_bytes",
        "index_bytes", "ram_bytes", "arena_bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tflite", nargs="+", help="fully int8 .tflite files")
    parser.add_argument("--images", type=int, default=1000, help="test images per model")
    parser.add_argument("--target", default="cortex-m4")
    parser.add_argument("--out", default="/tmp/bench_mcu_files", help="folder for the engines and builds")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--weight-budget", help="bytes of weights and index the engine may take (edgeprune mcu --weight-budget)")
    args = parser.parse_args()
    rows = {}
    for path in args.tflite:
        result = steps.mcu_checkpoint(path, None, DataConfig(), Path(args.out) / Path(path).stem, args.target, args.images,
                                      weight_budget=args.weight_budget)
        rows[Path(path).stem] = {key: result[key] for key in KEYS} | {"weight_budget": args.weight_budget}
        print(Path(path).stem, json.dumps(rows[Path(path).stem]), flush=True)
    if args.json:
        write_json_atomic(args.json, rows)


if __name__ == "__main__":
    main()
