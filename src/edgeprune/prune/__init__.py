"""Pruning: pure mask arithmetic (masks), per-layer settings by name (settings), the pruner that holds masks (pruner)."""

from .masks import fine_grained_mask, fine_grained_prune, sparsity_of
from .pruner import FineGrainedPruner
from .settings import load_layer_settings

__all__ = ["FineGrainedPruner", "fine_grained_mask", "fine_grained_prune", "load_layer_settings", "sparsity_of"]
