"""Issue 23: why did a run's latency column show a speedup between three copies of one dense BasicCNN?

Runs ``edgeprune run`` (``run_experiment``) with ``steps.compare_models`` wrapped: just before the run's
own comparison, in the run's process (after training and fine-tuning), it records the state of each
in-memory model against the same model loaded from its saved file (values, ``requires_grad``, ``.grad``,
strides and memory format, hooks, buffers, train/eval mode, subnormal weights; the process's thread
settings and grad mode), then times at batch 64:

* ``old``: the three in-memory models as ``compare_models`` timed them before issue 23 (deep copy, masks
  detached, eval; zero input; fixed order, baseline first; blocks of 20 ms, 9 rounds), ``--repeats`` times;
* ``old_reversed``: the same with the order reversed (fine-tuned first);
* ``six_fixed`` and ``six_rotated``: the three in-memory copies and the three files loaded back, one
  table of six, ``--rounds`` rounds, the old blocks in a fixed order and the new timer (order rotating,
  blocks of at least 50 ms and 10 calls);
* ``real_batch``: the new timer on the three files with the first test images instead of zeros.

Prints a summary and writes everything as JSON (``--json``). Timings are ratios within one process.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from edgeprune import steps
from edgeprune.analyze.latency import spread, time_calls, timing_copy
from edgeprune.config import RunConfig
from edgeprune.data import DataConfig
from edgeprune.prune.pruner import is_pruned, remove
from edgeprune.run import run_experiment

TINY = torch.finfo(torch.float32).tiny


def state(model: torch.nn.Module) -> dict:
    """What a model carries besides its values."""
    params = dict(model.named_parameters())
    hooks = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) + len(m._backward_hooks) for m in model.modules())
    return {
        "training": model.training,
        "pruned_masks_attached": is_pruned(model),
        "requires_grad": sum(p.requires_grad for p in params.values()),
        "params": len(params),
        "grads_held": sum(p.grad is not None for p in params.values()),
        "non_contiguous": [n for n, p in params.items() if not p.is_contiguous()],
        "channels_last": [n for n, p in params.items() if p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last)
                          and not p.is_contiguous()],
        "strides": {n: list(p.stride()) for n, p in params.items()},
        "module_hooks": hooks,
        "buffers": [n for n, _ in model.named_buffers()],
        "subnormal_weights": int(sum(((p.abs() < TINY) & (p != 0)).sum() for p in params.values())),
        "zeros": int(sum((p == 0).sum() for p in params.values())),
        "devices": sorted({str(p.device) for p in params.values()}),
        "dtypes": sorted({str(p.dtype) for p in params.values()}),
    }


def timed(models: list, inputs: torch.Tensor, rounds: int, rotate: bool, block_ms: float, min_calls: int) -> dict:
    """Medians, spreads and ratios to the first model of ``models`` (already timing copies) at ``inputs``."""
    with torch.inference_mode():
        times, number = time_calls([lambda m=m: m(inputs) for m in models], rounds, None, None, rotate, block_ms, min_calls)
    medians = [statistics.median(t) for t in times]
    return {"number": number, "rounds": len(times[0]), "median_ms": medians, "ratio_to_first": [m / medians[0] for m in medians],
            "spread": [spread(t) for t in times], "rounds_ms": times}


def old_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The timing copy as compare_models made it before issue 23."""
    return remove(copy.deepcopy(model)).cpu().eval()


def investigate(models: list, specs: list, loader, args) -> dict:
    dense = [(label, model, Path(path)) for label, model, path in models if "Channel" not in label][:3]
    labels = [label for label, _, _ in dense]
    loaded = [steps.load_model(path, specs[0], "cpu")[0].eval() for _, _, path in dense]
    found: dict = {"labels": labels, "process": {
        "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
        "grad_enabled": torch.is_grad_enabled(), "inference_mode": torch.is_inference_mode_enabled(),
        "mkldnn_enabled": torch.backends.mkldnn.enabled}}
    found["in_memory"] = {label: state(model) for label, model, _ in dense}
    found["from_file"] = {label: state(model) for label, model in zip(labels, loaded)}
    found["values_equal_to_file"] = {
        label: all(torch.equal(t.cpu(), f[k]) for k, t in model.state_dict().items() if k in (f := m.state_dict()))
        for (label, model, _), m in zip(dense, loaded)}
    found["timing_copy_state"] = {label: state(old_copy(model)) for label, model, _ in dense}
    shape = specs[0].sample_shape
    zeros = torch.zeros(64, *shape)
    images = next(iter(loader))[0][:64]
    images = images[torch.arange(64) % len(images)].contiguous()
    mem = [old_copy(model) for _, model, _ in dense]
    files = [timing_copy(model, torch.device("cpu")) for model in loaded]
    runs: dict = {"old": [], "old_reversed": []}
    for _ in range(args.repeats):
        runs["old"].append(timed(mem, zeros, 9, False, 20.0, 1))
        runs["old_reversed"].append(timed(mem[::-1], zeros, 9, False, 20.0, 1))
    runs["six_fixed"] = timed(mem + files, zeros, args.rounds, False, 20.0, 1)
    runs["six_rotated"] = timed(mem + files, zeros, args.rounds, True, 50.0, 10)
    runs["real_batch"] = timed(files, images, args.rounds, True, 50.0, 10)
    found["timings_b64"] = runs
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/bench_run_latency")
    parser.add_argument("--limit", type=int, default=None, help="training images (default: all)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    found: dict = {}
    original = steps.compare_models

    def wrapped(models, loader, *rest, **kwargs):
        specs = rest[5] if len(rest) > 5 else kwargs.get("specs")
        found.update(investigate(models, specs, loader, args))
        return original(models, loader, *rest, **kwargs)

    steps.compare_models = wrapped
    start = time.time()
    cfg = RunConfig(out=args.out, epochs=args.epochs, finetune_epochs=args.finetune_epochs, mcu="none",
                    device_exports="none", data=DataConfig(limit=args.limit))
    results = run_experiment(cfg, overwrite=True)
    found["run_rows"] = [{k: r.get(k) for k in ("model", "latency_ms", "latency_spread", "latency_equal_compute")}
                         for r in results["comparison"]]
    found["seconds"] = round(time.time() - start, 1)
    with open("/proc/loadavg") as f:
        found["loadavg_end"] = f.read().split()[:3]
    for key in ("in_memory", "from_file"):
        for label, s in found[key].items():
            print(key, label, {k: v for k, v in s.items() if k != "strides"})
    print("values equal to the file:", found["values_equal_to_file"])
    for name, value in found["timings_b64"].items():
        for run in value if isinstance(value, list) else [value]:
            print(f"{name:13s} calls {run['number']:3d} rounds {run['rounds']:3d} ratio "
                  + " ".join(f"{r:.3f}" for r in run["ratio_to_first"]) + "  spread "
                  + " ".join(f"{100 * s:.1f}%" for s in run["spread"]))
    if args.json:
        Path(args.json).write_text(json.dumps(found, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
