"""Latency of identical models: the interleaved timer against timing each model on its own, one after the other.

Three copies of one BasicCNN at Fashion-MNIST geometry (1x28x28, 10 classes) have the same latency
by construction, so any spread between their timings is the timer's error. The copies are either
deep copies in memory (``--source memory``) or the same weights saved to three safetensors
checkpoints with ``save_checkpoint`` and loaded fresh with ``load_checkpoint`` (``--source files``,
the default: what ``make demo``'s report compared). A fourth model, the same weights with
``FineGrainedPruner`` masks attached at 50 %, checks that masks are detached for timing (dense
kernels skip no zeros, so it should time like the copies; it is left out of the copies' spread).

Each set is timed twice: interleaved by ``time_models`` (each round every model once in turn; the
median over rounds), and "sequential", each model by its own ``time_models`` call, one after the
other, as ``compare_models`` did before. Printed and written as JSON (``--json``): per model and batch
size the median ms, its fastest round, its ratio to the first copy (of medians, and the median of
the per-round ratios) and its times per round; per batch size the spread of the three copies (slowest
over fastest, minus 1) of their medians, of their fastest rounds and of their per-round ratios. Run:

    python benchmarks/bench_latency.py --json benchmarks/results/bench_latency.json
    python benchmarks/bench_latency.py --threads 1 --rounds 21
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
from pathlib import Path

import torch
from torch import nn

from edgeprune.analyze.latency import time_models
from edgeprune.checkpoint import load_checkpoint, save_checkpoint
from edgeprune.files import write_json_atomic
from edgeprune.models import ModelSpec
from edgeprune.prune.pruner import FineGrainedPruner

SPEC = ModelSpec("basiccnn", 1, 10, 28)
COPIES = ("copy 1", "copy 2", "copy 3")


def three_copies(source: str, folder: Path) -> list[nn.Module]:
    """Three models with the weights of one seeded BasicCNN: deep copies, or loaded from three checkpoints."""
    model = SPEC.build(seed=0)
    if source == "memory":
        return [copy.deepcopy(model) for _ in COPIES]
    paths = [save_checkpoint(folder / f"copy{i}.safetensors", model, SPEC) for i in range(len(COPIES))]
    return [load_checkpoint(path)[0] for path in paths]


def with_masks(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with FineGrainedPruner masks attached (50 % of every prunable weight)."""
    masked = copy.deepcopy(model)
    FineGrainedPruner(masked, {"_default": 0.5})
    return masked


def spread(values: list[float]) -> float:
    """Slowest over fastest, minus 1: 0.05 is a 5 % spread."""
    return max(values) / min(values) - 1.0


def summary(timings: list[dict], names: list[str], batch_sizes: list[int]) -> dict:
    """Per model its median ms, fastest round, ratio to the first copy (of medians, and the median of per-round
    ratios: each round's time over the first copy's in that round) and times per round; per batch the copies' spreads."""
    first = timings[0]["rounds_ms"]
    rows = {name: {"latency_ms": t["latency_ms"],
                   "fastest_round_ms": {b: min(t["rounds_ms"][b]) for b in batch_sizes},
                   "ratio_to_copy_1": {b: t["latency_ms"][b] / timings[0]["latency_ms"][b] for b in batch_sizes},
                   "paired_ratio_to_copy_1": {b: statistics.median(x / y for x, y in zip(t["rounds_ms"][b], first[b]))
                                              for b in batch_sizes},
                   "rounds_ms": t["rounds_ms"]}
            for name, t in zip(names, timings)}
    return {"models": rows,
            "copies_spread": {b: spread([rows[n]["latency_ms"][b] for n in COPIES]) for b in batch_sizes},
            "copies_spread_fastest": {b: spread([rows[n]["fastest_round_ms"][b] for n in COPIES]) for b in batch_sizes},
            "copies_spread_paired": {b: spread([rows[n]["paired_ratio_to_copy_1"][b] for n in COPIES]) for b in batch_sizes}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=["files", "memory"], default="files", help="where the three copies come from")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (and rounds of each sequential timing)")
    parser.add_argument("--batch-sizes", default="1,64", help="comma-separated")
    parser.add_argument("--threads", type=int, default=None, help="PyTorch intra-op threads (default: torch's setting)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    example = torch.zeros(1, SPEC.in_channels, SPEC.image_size, SPEC.image_size)
    with tempfile.TemporaryDirectory() as folder:
        models = three_copies(args.source, Path(folder))
    models.append(with_masks(models[0]))
    names = [*COPIES, "masked copy"]

    interleaved = time_models(models, example, batch_sizes, "cpu", rounds=args.rounds)
    sequential = [time_models([model], example, batch_sizes, "cpu", rounds=args.rounds)[0] for model in models]
    result = {"source": args.source, "rounds": args.rounds, "threads": torch.get_num_threads(),
              "calls_per_block": interleaved[0]["number"],
              "interleaved": summary(interleaved, names, batch_sizes),
              "sequential": summary(sequential, names, batch_sizes)}

    print(f"BasicCNN 1x28x28, copies from {args.source}, {result['threads']} threads, {args.rounds} rounds\n")
    print("| timing | model | " + " | ".join(f"batch {b} ms (ratio)" for b in batch_sizes) + " |")
    print("|---|---|" + "---:|" * len(batch_sizes))
    for how in ("interleaved", "sequential"):
        for name, row in result[how]["models"].items():
            cells = [f"{row['latency_ms'][b]:.3f} ({row['ratio_to_copy_1'][b]:.3f})" for b in batch_sizes]
            print(f"| {how} | {name} | " + " | ".join(cells) + " |")
        for key, what in (("copies_spread", "medians"), ("copies_spread_fastest", "fastest rounds"),
                          ("copies_spread_paired", "per-round ratios (median)")):
            cells = [f"{100 * result[how][key][b]:.1f} %" for b in batch_sizes]
            print(f"| {how} | spread of the 3 copies' {what} | " + " | ".join(cells) + " |")
    if args.json is not None:
        write_json_atomic(args.json, result)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
