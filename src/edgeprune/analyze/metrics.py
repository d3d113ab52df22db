"""Model numbers: parameters, non-zeros, sparsity, theoretical size and MACs, per layer and in total."""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..prune.masks import size_in_bits

__all__ = ["LayerStats", "layer_stats", "model_stats", "count_macs", "module_macs", "file_size", "MIB"]

MIB = 2**20


@dataclass
class LayerStats:
    """One parameter tensor: its size, how much of it is zero, and its theoretical storage."""

    name: str
    shape: list[int]
    params: int
    nonzeros: int
    sparsity: float
    theoretical_bytes: float  # non-zeros x bit width / 8, the seed's memory usage

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return asdict(self)


def layer_stats(model: nn.Module, bit_width: int = 32) -> list[LayerStats]:
    """Statistics of every parameter of ``model``, in ``named_parameters`` order."""
    stats = []
    for name, p in model.named_parameters():
        nonzeros = int(torch.count_nonzero(p.detach()))
        stats.append(
            LayerStats(
                name=name,
                shape=list(p.shape),
                params=p.numel(),
                nonzeros=nonzeros,
                sparsity=1.0 - nonzeros / p.numel() if p.numel() else 0.0,
                theoretical_bytes=size_in_bits(p.detach(), bit_width) / 8,
            )
        )
    return stats


def model_stats(model: nn.Module, bit_width: int = 32) -> dict:
    """Whole-model totals: parameters, non-zeros, sparsity, theoretical bytes and MiB (the seed's MB)."""
    stats = layer_stats(model, bit_width)
    params = sum(s.params for s in stats)
    nonzeros = sum(s.nonzeros for s in stats)
    theoretical = sum(s.theoretical_bytes for s in stats)
    return {
        "params": params,
        "nonzeros": nonzeros,
        "sparsity": 1.0 - nonzeros / params if params else 0.0,
        "bit_width": bit_width,
        "theoretical_bytes": theoretical,
        "theoretical_mib": theoretical / MIB,
    }


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Dense multiply-accumulates of one forward pass on a batch of one, by module and in total.

    Counted with ``torch.utils.flop_counter`` (FLOPs / 2); pruned weights are still counted,
    as a dense kernel would compute them. The forward pass runs on a ``meta`` copy of the model:
    no memory and no time, whatever ``input_shape`` claims.
    """
    counter = _count_flops(model, input_shape)
    per_module = {
        name: int(sum(counts.values())) // 2
        for name, counts in counter.get_flop_counts().items()
        if name != "Global" and name.count(".") == 1  # top-level entries look like "BasicCNN.conv1"
    }
    return {"total": int(counter.get_total_flops()) // 2, "by_module": per_module}


def module_macs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Dense multiply-accumulates of one forward pass on a batch of one, by module path at any depth.

    Keys are the names of ``model.named_modules()`` (``"stage1.conv1"``, ``""`` for the model
    itself); a module's count includes its children's, and a module called twice counts both
    calls. Modules that do no counted work (activations, pooling, batch norm) are absent.
    Counted on a ``meta`` copy, as :func:`count_macs`.
    """
    counts = _count_flops(model, input_shape).get_flop_counts()
    # keys look like "BasicCNN.conv1": the root's class name, then the module path; "Global" is the total
    return {name.partition(".")[2]: int(sum(c.values())) // 2 for name, c in counts.items() if name != "Global"}


def _count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> FlopCounterMode:
    """A flop counter that has seen one forward pass of a ``meta`` copy of ``model`` on a batch of one."""
    counter = FlopCounterMode(display=False)
    shadow = copy.deepcopy(model).to("meta").eval()
    with torch.no_grad(), counter:
        shadow(torch.zeros(1, *input_shape, device="meta"))
    return counter


def file_size(path: str | os.PathLike) -> int:
    """Size of a file on disk in bytes."""
    return os.path.getsize(path)
