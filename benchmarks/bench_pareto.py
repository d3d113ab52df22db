"""Compressed-file size against accuracy: the Pareto front of the ``.epz`` export (issue 10).

BasicCNN on real Fashion-MNIST (``edgeprune.data.load_data``: 55 000 training images, 5 000 held
out for validation, the 10 000 test images for every accuracy below). The dense baseline is
``benchmarks/bench_sparsity.py``'s (``baseline()``, same cache tag: ``--epochs`` epochs, best
validation epoch kept). Then:

* at each of ``--sparsities``, a copy of it pruned by ``prune_gradually(schedule="agp")`` to that
  global magnitude target in ``--budget`` epochs (``--lr-schedule``); each pruned model is cached
  under ``cache_dir()/bench`` so a rerun with other export settings trains nothing;
* the dense model trained ``--budget`` more epochs (same schedule): the stricter accuracy reference;
* every model (dense included) exported with ``save_compressed`` as fp32, fp16, int8 and k-means at
  each of ``--bits``; for k-means, as ``edgeprune run`` does, its ``share_centroids`` step first (k-means
  codebooks, ``--centroid-epochs`` epochs of centroid fine-tuning, lr 1e-4; also cached). Each file
  is read back with ``load_compressed`` and the decoded model's test accuracy is measured.

The size reference is the dense model's checkpoint exactly as ``edgeprune run`` writes it
(``save_checkpoint`` to ``.safetensors``, the "File on disk" column of the run's comparison);
ratio = that file's bytes / the compressed file's bytes. The target: a file at least 50x smaller
within 0.5 points of the dense accuracy, checked against both references.

Writes ``benchmarks/results/bench_pareto.json`` (every row, the references, args, data info) and
``bench_pareto.png`` (bytes on a log axis against test accuracy, the Pareto front as a step line),
and prints Markdown tables of the front and of the smallest file meeting the target.

Run (about 15 minutes on one CPU thread, once the bench_sparsity baseline is cached):

    python benchmarks/bench_pareto.py --epochs 10 --budget 10 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sparsity import baseline, zero_fraction  # noqa: E402  (the shared, cached dense baseline)

from edgeprune.analyze.plots import pyplot, save_figure  # noqa: E402
from edgeprune.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from edgeprune.data import DataConfig, cache_dir, load_data, make_loaders  # noqa: E402
from edgeprune.device import pick_device  # noqa: E402
from edgeprune.export.epz import load_compressed, save_compressed  # noqa: E402
from edgeprune.files import write_json_atomic  # noqa: E402
from edgeprune.models import ModelSpec  # noqa: E402
from edgeprune.config import fit_data_to_model  # noqa: E402
from edgeprune import steps  # noqa: E402
from edgeprune.training import LR_SCHEDULES, evaluate, prune_gradually, train  # noqa: E402

__all__: list[str] = []

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_RATIO = 50.0
TARGET_POINTS = 0.5
MARKERS = "osD^vPX*hp<>"


def pareto_front(points: list[tuple[int, float]]) -> list[int]:
    """Indices of the (bytes, accuracy) points that no other point beats: none smaller and at least as accurate.

    Of points with equal bytes and accuracy only the first is kept. Returned in order of size.
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1], i))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def smallest_meeting(rows: list[dict], reference: float, dense_bytes: int) -> dict | None:
    """The smallest row at least ``TARGET_RATIO`` times smaller than ``dense_bytes`` within ``TARGET_POINTS`` of ``reference``."""
    ok = [r for r in rows if dense_bytes / r["bytes"] >= TARGET_RATIO and r["accuracy"] >= reference - TARGET_POINTS]
    return min(ok, key=lambda r: (r["bytes"], -r["accuracy"]), default=None)


def cached(path: Path, spec: ModelSpec, make) -> nn.Module:
    """The model stored at ``path``, else ``make()`` saved there first; always loaded back from the file."""
    if not path.exists():
        save_checkpoint(path, make(), spec)
    return load_checkpoint(path)[0].to(pick_device())


def settings(bits: list[int]) -> list[tuple[str, int | None]]:
    """The export settings: fp32, fp16, int8 (8 bits), then k-means at each width."""
    return [("fp32", None), ("fp16", None), ("int8", 8)] + [("kmeans", b) for b in bits]


def label(values: str, bits: int | None) -> str:
    """``fp16``, ``int8``, ``kmeans 4-bit``, ..."""
    return f"kmeans {bits}-bit" if values == "kmeans" else values


def plot(rows: list[dict], references: dict[str, float], dense_bytes: int, path: Path, title: str) -> None:
    """Test accuracy against file bytes (log x): marker by value mode, colour by sparsity, the front as a step line.

    Two panels: every point, and the same zoomed to the references' neighbourhood.
    """
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    modes = list(dict.fromkeys(label(r["values"], r["bits"]) for r in rows))
    sparsities = sorted({r["target"] for r in rows})
    cmap = plt.get_cmap("viridis")
    colour = {s: cmap(i / max(1, len(sparsities) - 1)) for i, s in enumerate(sparsities)}
    front = [rows[i] for i in pareto_front([(r["bytes"], r["accuracy"]) for r in rows])]
    best = max(references.values())
    for ax, zoomed in zip(axes, (False, True)):
        for mode, marker in zip(modes, MARKERS):
            for s in sparsities:
                pts = [r for r in rows if label(r["values"], r["bits"]) == mode and r["target"] == s]
                ax.scatter([r["bytes"] for r in pts], [r["accuracy"] for r in pts], marker=marker, color=colour[s],
                           s=36, edgecolors="black", linewidths=0.4, zorder=3)
            ax.scatter([], [], marker=marker, color="lightgrey", edgecolors="black", linewidths=0.4, label=mode)
        ax.step([r["bytes"] for r in front], [r["accuracy"] for r in front], where="post", color="red",
                linewidth=1.2, label="Pareto front", zorder=2)
        ax.axvline(dense_bytes / TARGET_RATIO, color="black", linestyle="-.", linewidth=1,
                   label=f"{TARGET_RATIO:g}x smaller than the dense file")
        for (name, acc), style in zip(references.items(), (":", "--")):
            ax.axhline(acc, color="grey", linestyle=style, label=name)
            ax.axhline(acc - TARGET_POINTS, color="tab:orange", linestyle=style, linewidth=0.9,
                       label=f"{name} - {TARGET_POINTS:g}")
        ax.set_xscale("log")
        ax.set_xlabel("compressed file (bytes, log scale)")
        ax.set_ylabel("test accuracy of the decoded model (%)")
        ax.grid(True, which="both", alpha=0.3)
        if zoomed:
            ax.set_ylim(min(references.values()) - 3, best + 0.6)
            ax.set_title("zoomed near the dense accuracy")
        else:
            ax.set_ylim(top=max(best, max(r["accuracy"] for r in rows)) + 0.3)
            ax.set_title(title)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=6, fontsize=8, bbox_to_anchor=(0.45, -0.1))
    colourbar = fig.colorbar(plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, max(1, len(sparsities) - 1))),
                             ax=axes, ticks=range(len(sparsities)), pad=0.01)
    colourbar.ax.set_yticklabels([f"{100 * s:g} %" for s in sparsities])
    colourbar.set_label("sparsity target")
    save_figure(fig, path)


def markdown(rows: list[dict], references: dict[str, float], dense_bytes: int) -> str:
    """The Pareto front and, per reference, the smallest file meeting the target, as Markdown tables."""
    head = "| sparsity | values | bytes | x smaller | test accuracy |\n|---|---|---|---|---|"

    def line(r: dict) -> str:
        return (f"| {100 * r['target']:g} % | {label(r['values'], r['bits'])} | {r['bytes']:,} | "
                f"{r['ratio']:.1f}x | {r['accuracy']:.2f} % |")

    front = [rows[i] for i in pareto_front([(r["bytes"], r["accuracy"]) for r in rows])]
    out = ["Pareto front (no other file both smaller and at least as accurate):", "", head, *map(line, front), "",
           f"Smallest file at least {TARGET_RATIO:g}x smaller than the dense file ({dense_bytes:,} bytes) "
           f"within {TARGET_POINTS:g} points of each reference:", "",
           "| reference | accuracy | needed " + head.replace("|\n|", "|\n|---|---|---|", 1)]
    for name, acc in references.items():
        best = smallest_meeting(rows, acc, dense_bytes)
        cells = line(best) if best else "| none | | | | |"
        out.append(f"| {name} | {acc:.2f} % | >= {acc - TARGET_POINTS:.2f} % " + cells)
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10, help="dense baseline training epochs (bench_sparsity's cache)")
    parser.add_argument("--budget", type=int, default=10, help="epochs of gradual pruning, and of the longer dense model")
    parser.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="cosine")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.8, 0.9, 0.95, 0.97, 0.98])
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 5, 6], help="k-means bit widths")
    parser.add_argument("--centroid-epochs", type=int, default=1, help="k-means centroid fine-tuning epochs (lr 1e-4)")
    parser.add_argument("--limit", type=int, help="use at most this many images of each split (quick trials)")
    parser.add_argument("--val-size", type=int, default=5000, help="images held out of the training set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_pareto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()

    data = load_data(fit_data_to_model("basiccnn", DataConfig(name="fashion-mnist", val_size=args.val_size,
                                                              seed=args.seed, limit=args.limit)))
    spec = steps.model_for_data("basiccnn", data)
    # Fresh loaders for every training, as bench_sparsity: the shuffling never depends on what ran before.
    _, val_loader, test_loader = make_loaders(data, 64, args.seed)
    tag = f"seed{args.seed}-val{args.val_size}" + (f"-limit{args.limit}" if args.limit else "")
    dense = baseline(spec, data, args.epochs, args.seed, tag).to(pick_device())
    stem = cache_dir() / "bench" / f"pareto-{spec.name}-{tag}-e{args.epochs}-b{args.budget}-{args.lr_schedule}"

    def longer() -> nn.Module:
        model = copy.deepcopy(dense)
        train(model, make_loaders(data, 64, args.seed)[0], args.budget, val_loader, seed=args.seed + 1,
              keep_best=True, lr_schedule=args.lr_schedule)
        return model

    def pruned(target: float):
        def make() -> nn.Module:
            model = copy.deepcopy(dense)
            prune_gradually(model, make_loaders(data, 64, args.seed)[0], target, args.budget, schedule="agp",
                            eval_loader=val_loader, seed=args.seed, lr_schedule=args.lr_schedule)
            return model
        return make

    references = {
        f"dense, {args.epochs} epochs": evaluate(dense, test_loader),
        f"dense, {args.epochs}+{args.budget} epochs": evaluate(cached(Path(f"{stem}-dense.safetensors"), spec, longer), test_loader),
    }
    with tempfile.TemporaryDirectory() as tmp:
        dense_file = save_checkpoint(Path(tmp) / "baseline.safetensors", dense, spec)  # as edgeprune run writes it
        dense_bytes = dense_file.stat().st_size
    print(f"{data.info['train_images']} training, {data.info['val_images']} validation, {data.info['test_images']} test "
          f"images; dense file {dense_bytes:,} bytes; {references} ({time.time() - start:.0f} s)", flush=True)

    rows: list[dict] = []
    for target in [0.0, *args.sparsities]:
        began = time.time()
        model = dense if target == 0 else cached(Path(f"{stem}-s{target:g}.safetensors"), spec, pruned(target))
        sparsity, plain = zero_fraction(model), evaluate(model, test_loader)
        for values, bits in settings(args.bits):
            exported = model
            if values == "kmeans":  # as edgeprune run: shared weights, centroids fine-tuned, then the export
                def share(model=model, bits=bits) -> nn.Module:
                    return steps.share_centroids(copy.deepcopy(model), bits, data, args.centroid_epochs, args.seed)
                exported = cached(Path(f"{stem}-s{target:g}-k{bits}-c{args.centroid_epochs}.safetensors"), spec, share)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.epz"
                size = save_compressed(exported.state_dict(), path, values=values, bits=bits)
                decoded = copy.deepcopy(model)
                decoded.load_state_dict(load_compressed(path))
            row = {"target": target, "sparsity": sparsity, "values": values, "bits": bits, "bytes": size,
                   "ratio": dense_bytes / size, "accuracy": evaluate(decoded, test_loader), "model_accuracy": plain}
            rows.append(row)
            print(f"sparsity {target:.2f} ({sparsity:.4f}) {label(values, bits):13s} {size:>9,} bytes "
                  f"{row['ratio']:7.1f}x  test {row['accuracy']:.2f} % (model {plain:.2f} %)", flush=True)
        print(f"  {time.time() - began:.0f} s", flush=True)
        write_json_atomic(args.out.with_suffix(".json"), {
            "args": {**vars(args), "out": str(args.out)}, "data": data.info, "dense_file_bytes": dense_bytes,
            "references": references, "target": {"ratio": TARGET_RATIO, "points": TARGET_POINTS}, "rows": rows,
            "pareto_front": pareto_front([(r["bytes"], r["accuracy"]) for r in rows]),
            "smallest_meeting_target": {name: smallest_meeting(rows, acc, dense_bytes) for name, acc in references.items()},
        })
    plot(rows, references, dense_bytes, args.out.with_suffix(".png"),
         "BasicCNN on Fashion-MNIST: compressed file against test accuracy")
    print("\n" + markdown(rows, references, dense_bytes))
    print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
