"""Pure tensor functions: pruning masks, sparsity and sizes. No state, no I/O."""

from __future__ import annotations

import math
import numbers

import torch

__all__ = [
    "check_sparsity",
    "fine_grained_mask",
    "fine_grained_prune",
    "num_pruned",
    "sparsity_of",
    "size_in_bits",
]


def check_sparsity(value: object, name: str = "sparsity") -> float:
    """Return ``value`` as a float in [0, 1], or raise ``ValueError`` saying what is wrong."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"{name}: sparsity must be a number between 0 and 1, got {value!r} "
            f"({type(value).__name__}); write e.g. 0.5 for 50 % of the weights removed"
        )
    value = float(value)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(
            f"{name}: sparsity must be between 0 and 1, got {value!r}; "
            "write e.g. 0.5 for 50 % of the weights removed"
        )
    return value


def num_pruned(numel: int, sparsity: float) -> int:
    """How many of ``numel`` weights a sparsity removes: ``round(sparsity * numel)`` (Python's round)."""
    return round(check_sparsity(sparsity) * numel)


def fine_grained_mask(tensor: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Boolean mask (True = keep) that removes exactly ``round(sparsity * n)`` smallest-magnitude weights.

    Where no two magnitudes tie this is the seed's rule: a weight survives iff
    ``|w| > k-th smallest |w|``. Ties (quantized or already-pruned weights) are
    broken by position, lower flat index pruned first, so the count stays exactly k.
    """
    n = tensor.numel()
    k = num_pruned(n, sparsity)
    mask = torch.ones(n, dtype=torch.bool, device=tensor.device)
    if k > 0:
        order = torch.sort(tensor.detach().abs().flatten(), stable=True).indices
        mask[order[:k]] = False
    return mask.view_as(tensor)


@torch.no_grad()
def fine_grained_prune(tensor: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Zero the ``round(sparsity * n)`` smallest-magnitude weights of ``tensor`` in place; return the mask.

    Pruned weights become +0.0 (never -0.0), so a pruned tensor is bit-identical however it was reached.
    """
    mask = fine_grained_mask(tensor, sparsity)
    tensor.masked_fill_(~mask, 0.0)
    return mask


def sparsity_of(tensor: torch.Tensor) -> float:
    """Fraction of elements of ``tensor`` that are exactly zero (0.0 for an empty tensor)."""
    n = tensor.numel()
    return 0.0 if n == 0 else 1.0 - int(torch.count_nonzero(tensor)) / n


def size_in_bits(tensor: torch.Tensor, bit_width: int = 32, count_nonzero_only: bool = True) -> int:
    """Theoretical storage of ``tensor`` in bits: (non-zero) elements times ``bit_width``, the seed's memory usage."""
    count = int(torch.count_nonzero(tensor)) if count_nonzero_only else tensor.numel()
    return count * bit_width
