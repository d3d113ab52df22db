"""The seed's plots, saved as PNG: weight histograms and parameters per layer (kept and pruned).

matplotlib is imported on the first plot, so ``import edgeprune`` stays light.
"""

from __future__ import annotations

import math
import os

import torch
from torch import nn

from ..files import atomic_path
from ..models import prunable_parameters

__all__ = [
    "plot_weight_distribution", "plot_num_parameters_distribution", "plot_tradeoff", "grid_shape", "panel_grid", "pyplot",
    "save_figure",
]


def pyplot():
    """matplotlib's pyplot, rendering to files only (Agg) when there is no display."""
    import matplotlib

    if not os.environ.get("DISPLAY"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def grid_shape(n: int) -> tuple[int, int]:
    """Rows and columns of a near-square grid holding ``n`` panels (at most 4 columns)."""
    cols = min(4, max(1, math.ceil(math.sqrt(n))))
    return max(1, math.ceil(n / cols)), cols


def panel_grid(n: int, width: float = 4.0, height: float = 3.0) -> tuple[object, list]:
    """A figure with ``n`` panels of ``width`` x ``height`` inches in a :func:`grid_shape` grid; the spare cells hidden.

    Returns the figure and the ``n`` axes, in reading order.
    """
    rows, cols = grid_shape(n)
    fig, axes = pyplot().subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)[:n]


def save_figure(fig, path: str | os.PathLike, show: bool = False) -> None:
    """Save ``fig`` as a PNG atomically; show it when asked and a display exists; close it."""
    plt = pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    if show and os.environ.get("DISPLAY"):
        plt.show()
    plt.close(fig)


def plot_weight_distribution(
    model: nn.Module,
    path: str | os.PathLike,
    bins: int = 256,
    count_nonzero_only: bool = False,
    show: bool = False,
) -> None:
    """One histogram of weight values per prunable layer (dim > 1), in a grid that fits any number of layers."""
    params = prunable_parameters(model)
    if not params:
        raise ValueError("the model has no prunable parameters (tensors with more than one dimension) to plot")
    fig, axes = panel_grid(len(params), 3.2, 2.6)
    for ax, (name, p) in zip(axes, params.items()):
        values = p.detach().flatten().float().cpu()
        if count_nonzero_only:
            values = values[values != 0]
        ax.hist(values.numpy(), bins=bins, density=True, color="tab:blue", alpha=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("weight", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle("Weight distribution" + (" (non-zeros only)" if count_nonzero_only else ""))
    fig.tight_layout()
    save_figure(fig, path, show)


def plot_num_parameters_distribution(model: nn.Module, path: str | os.PathLike, show: bool = False) -> None:
    """Bar chart of parameters per prunable layer; pruned models get stacked bars of kept and pruned weights."""
    params = prunable_parameters(model)
    if not params:
        raise ValueError("the model has no prunable parameters (tensors with more than one dimension) to plot")
    names = list(params)
    kept = [int(torch.count_nonzero(p.detach())) for p in params.values()]
    pruned = [p.numel() - k for p, k in zip(params.values(), kept)]
    fig, ax = pyplot().subplots(figsize=(max(5.0, 0.6 * len(names) + 2), 4))
    ax.bar(names, kept, color="tab:blue", label="kept (non-zero)")
    if any(pruned):
        ax.bar(names, pruned, bottom=kept, color="tab:gray", alpha=0.6, label="pruned (zero)")
        ax.legend()
    ax.set_ylabel("number of parameters")
    ax.set_title("Parameters per layer")
    ax.tick_params(axis="x", rotation=60 if len(names) > 6 else 0, labelsize=8)
    fig.tight_layout()
    save_figure(fig, path, show)


def plot_tradeoff(rows: list[dict], dense: float, limit: float, column: str, budget: str, path: str | os.PathLike) -> None:
    """The collapse guard's trade-off: per removed ``budget`` fraction, the worst layer's predicted metric (``rows`` of
    ``fraction`` and ``predicted``), with the dense model's value and the limit as lines."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["fraction"] for r in rows], [r["predicted"] for r in rows], "o-", label="worst layer alone (scan)")
    ax.axhline(dense, color="grey", linestyle="--", label="dense")
    ax.axhline(limit, color="red", linestyle=":", label="--max-loss limit")
    ax.set_xlabel(f"fraction of {budget} removed")
    ax.set_ylabel(column)
    ax.legend(fontsize=8)
    save_figure(fig, path)
