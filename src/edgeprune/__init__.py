"""edgeprune: fine-grained pruning for edge devices.

Inspect a model, scan each layer's sensitivity, choose a sparsity dict, prune, fine-tune
with fixed masks, export a file that really shrinks, and compare, from Python or the CLI.
"""

__version__ = "0.1.0"

from .export.epz import load_compressed, save_compressed
from .data import DataConfig, load_data, make_loader
from .pipeline import RunConfig, compare_models, run_experiment
from .checkpoint import load_checkpoint, save_checkpoint
from .prune.masks import fine_grained_mask, fine_grained_prune, sparsity_of
from .analyze.metrics import count_macs, layer_stats, model_stats
from .models import BasicCNN, ModelSpec, build_model, prunable_parameters
from .analyze.plan import plan_by_budget, plan_by_tolerance
from .analyze.plots import plot_num_parameters_distribution, plot_weight_distribution
from .prune.pruner import FineGrainedPruner
from .analyze.scan import ScanResult, sensitivity_scan
from .prune.settings import load_layer_settings
from .training import evaluate, finetune, train

__all__ = [
    "BasicCNN",
    "DataConfig",
    "FineGrainedPruner",
    "ModelSpec",
    "RunConfig",
    "ScanResult",
    "build_model",
    "compare_models",
    "count_macs",
    "evaluate",
    "fine_grained_mask",
    "fine_grained_prune",
    "finetune",
    "layer_stats",
    "load_checkpoint",
    "load_compressed",
    "load_data",
    "load_layer_settings",
    "make_loader",
    "model_stats",
    "plan_by_budget",
    "plan_by_tolerance",
    "plot_num_parameters_distribution",
    "plot_weight_distribution",
    "prunable_parameters",
    "run_experiment",
    "save_checkpoint",
    "save_compressed",
    "sensitivity_scan",
    "sparsity_of",
    "train",
]
