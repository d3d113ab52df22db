"""Pure channel-importance arithmetic: per-channel scores from weight rows, and which channels go. No graph, no state.

A coupled channel group is described by *rows*: for every tensor of the group, the slice
of that tensor belonging to each pruned index (one row per index), together with the
channel of the group (the *root* channel) that the index belongs to. A flatten→linear
consumer gives many rows per root channel; a conv gives one.
"""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch

__all__ = ["CRITERIA", "check_ratio", "channel_scores", "num_channels_removed", "channels_to_remove"]

CRITERIA = ("l1", "l2", "bn_scale", "taylor")


def check_ratio(value: object, name: str = "ratio") -> float:
    """Return ``value`` as a float in [0, 1), or raise ``ValueError`` saying what is wrong."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(float(value)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(
            f"{name}: a channel ratio must be a number in [0, 1), got {value!r}; "
            "write e.g. 0.5 for half of the layer's output channels removed"
        )
    return float(value)


def channel_scores(
    rows: Sequence[tuple[torch.Tensor, torch.Tensor]], num_channels: int, criterion: str
) -> torch.Tensor:
    """Score every root channel of a group from ``rows``: ``[(values [k, ...], root index [k]), ...]``.

    ``l1``: sum of |v| over all of the channel's rows; ``l2``: square root of the sum of v²;
    ``bn_scale``: sum of |γ| (rows are BatchNorm scales); ``taylor``: (sum of v)², where the rows
    hold weight × gradient, the first-order Taylor estimate of the loss change (Molchanov et al., 2019).
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown channel importance {criterion!r}; choose one of {', '.join(CRITERIA)}")
    total = torch.zeros(num_channels, dtype=torch.float64)
    for values, root in rows:
        flat = values.detach().reshape(values.shape[0], -1)
        if criterion == "l2":
            per_row = torch.linalg.vector_norm(flat, 2, dim=1, dtype=torch.float64).pow(2)
        elif criterion == "taylor":
            per_row = flat.sum(dim=1, dtype=torch.float64)
        else:
            per_row = torch.linalg.vector_norm(flat, 1, dim=1, dtype=torch.float64)
        total.index_add_(0, root.to(torch.long).cpu(), per_row.cpu())
    if criterion == "l2":
        return total.sqrt()
    if criterion == "taylor":
        return total.pow(2)
    return total


def num_channels_removed(num_channels: int, ratio: float) -> int:
    """How many of ``num_channels`` a ratio removes: ``round(ratio * n)`` (Python's round), always leaving one."""
    return min(round(check_ratio(ratio) * num_channels), num_channels - 1)


def channels_to_remove(scores: torch.Tensor, ratio: float) -> list[int]:
    """Indices (ascending) of the ``num_channels_removed`` lowest-scoring channels; ties go to the lower index."""
    k = num_channels_removed(scores.numel(), ratio)
    order = torch.sort(scores, stable=True).indices
    return sorted(order[:k].tolist())
