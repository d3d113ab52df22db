"""Pruning: pure mask arithmetic (masks, global_magnitude, importance), per-layer settings by name (settings),
the pruner that holds masks in the model (pruner), gradual schedules (schedule), whole channels (channels)."""

from .masks import fine_grained_mask, fine_grained_prune, sparsity_of
from .channels import prune_channels
from .global_magnitude import global_magnitude_sparsity
from .pruner import FineGrainedPruner, is_pruned, remove
from .settings import load_layer_settings

__all__ = [
    "FineGrainedPruner", "fine_grained_mask", "fine_grained_prune", "global_magnitude_sparsity", "is_pruned",
    "load_layer_settings", "prune_channels", "remove", "sparsity_of",
]
