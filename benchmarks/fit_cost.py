"""The engine's cost model against QEMU, layer by layer, and its refit (issue 22: every layer within 10 %).

Each file is exported (``sparse`` mode after a colon: auto, always or never; ``@BYTES`` adds a weight budget), built
for Cortex-M4 and run in QEMU (``mps2-an386``, ``-icount shift=0``) on seeded random inputs, every output checked
against TFLite Micro. The counted items of each weighted layer's chosen kernel (``edgeprune.mcu.cost``'s
``*_features``, the same functions the exporter prices) are recorded with QEMU's instructions for that layer.
Without ``--fit`` it reports each layer's prediction error with the constants in ``cost.COSTS``; with ``--fit`` it
solves for the constants by least squares (the columns the layers exercise; the others kept) and reports the
errors of the refit, which a person then copies into ``cost.COSTS``.

    PYTHONPATH=src .venv/bin/python benchmarks/fit_cost.py /tmp/tiny/kws_ref_model.tflite:auto \\
        /tmp/k2/r8_90/model.tflite:always --fit --json benchmarks/results/fit_cost.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from edgeprune.mcu import cost, lowering
from edgeprune.mcu.measure import measure_tflite, random_inputs

_KINDS = {"conv_cost": cost.conv_features, "fc_cost": cost.fc_features, "depthwise_cost": cost.depthwise_features}


def _recorded_layers(spec: str, work: Path, images: int) -> list[dict]:
    """Export and run one ``FILE[:sparse][@budget]``; each weighted layer's kernel, counted items and instructions."""
    path, _, mode = spec.partition(":")
    mode, _, budget = mode.partition("@")
    calls: list[tuple[str, dict, float]] = []
    steps: dict[int, tuple[str, dict]] = {}
    originals = {name: getattr(lowering, name) for name in _KINDS}
    original_add = lowering._Lowering.add

    def recorder(name):
        def priced(*args, **kwargs):
            features = _KINDS[name](*args, **kwargs)
            calls.append((name, features, cost.cost(features)))
            return cost.cost(features)
        return priced

    def add(self, op, source, kernel, args, inputs, output, **info):
        if "predicted_instructions" in info:
            match = [c for c in calls if c[2] == info["predicted_instructions"]]
            steps[len(self.plan.steps)] = (match[-1][0], match[-1][1])
            calls.clear()
        original_add(self, op, source, kernel, args, inputs, output, **info)

    try:
        for name in _KINDS:
            setattr(lowering, name, recorder(name))
        lowering._Lowering.add = add
        out = work / Path(path).stem / (mode or "auto")
        result = measure_tflite(path, random_inputs(path, images), None, out, sparse=mode or "auto",
                                weight_budget=int(budget) if budget else None)
    finally:
        for name, fn in originals.items():
            setattr(lowering, name, fn)
        lowering._Lowering.add = original_add
    if not result["equal_to_tflm"]:
        raise SystemExit(f"{spec}: the engine differs from TFLM")
    rows = []
    for index, layer in enumerate(result["layers"]):
        if index in steps:
            kind, features = steps[index]
            rows.append({"file": spec, "layer": index, "op": layer["op"], "engine": layer["engine"], "kind": kind,
                         "features": features, "instructions": layer["instructions"]})
    return rows


def fit(rows: list[dict]) -> dict[str, float]:
    """Least-squares constants for the items the rows exercise, each row weighted by 1 / its instructions (so that
    the fit minimises relative errors); the other constants as they are."""
    names = sorted({n for r in rows for n, v in r["features"].items() if v})
    a = np.array([[r["features"].get(n, 0.0) / r["instructions"] for n in names] for r in rows])
    b = np.ones(len(rows))
    solved, *_ = np.linalg.lstsq(a, b, rcond=None)
    return {**cost.COSTS, **{n: round(float(v), 2) for n, v in zip(names, solved)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="FILE.tflite[:auto|always|never][@weight budget bytes]")
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--fit", action="store_true", help="refit the constants and report with them")
    parser.add_argument("--json", help="write the rows, the constants and the errors here")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.files:
            try:
                rows += _recorded_layers(spec, Path(tmp), args.images)
            except (OSError, ValueError) as exc:
                raise SystemExit(f"fit_cost.py: {spec}: {exc}") from None
    constants = fit(rows) if args.fit else dict(cost.COSTS)
    worst = 0.0
    for r in rows:
        predicted = sum(constants[n] * v for n, v in r["features"].items())
        r["predicted"], r["error"] = predicted, predicted / r["instructions"] - 1
        worst = max(worst, abs(r["error"]))
        print(f"{Path(r['file']).name[:34]:34s} {r['layer']:3d} {r['op'][:16]:16s} {r['engine']:6s} "
              f"{r['instructions']:12,d} {predicted:14,.0f} {100 * r['error']:+7.1f} %")
    print(f"{len(rows)} layers, worst error {100 * worst:.1f} %")
    if args.fit:
        changed = {n: v for n, v in constants.items() if v != cost.COSTS[n]}
        print("fitted:", json.dumps(changed))
    if args.json:
        Path(args.json).write_text(json.dumps({"constants": constants, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
