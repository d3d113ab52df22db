"""MLPerf Tiny's ResNet-8 (built in, 3x32x32, 10 classes) trained 60 steps on bench_mlperf_tiny.py's synthetic data,
every layer pruned to 90 % by magnitude, exported int8: issue 22's "ResNet-8, 90 % uniform" row.

    PYTHONPATH=src .venv/bin/python benchmarks/mk_resnet8_90.py /tmp/k2/r8_90
    PYTHONPATH=src .venv/bin/python -m edgeprune mcu /tmp/k2/r8_90/model.tflite --images 2 --out /tmp/k2/mcu_r8_90
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mk_mobilenet_v1_pointwise import build

if __name__ == "__main__":
    build("resnet8", (3, 32, 32), 10, {"_default": 0.9}, Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/k2/r8_90"))
