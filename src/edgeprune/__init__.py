"""edgeprune: take a trained PyTorch network to an edge device, and prove every step.

Inspect a model, scan each layer's sensitivity, plan a sparsity dict, prune (fine-grained,
global or gradual; or whole channels into a smaller dense model), fine-tune with the masks
held in the model, export a compressed file, ONNX and int8 TFLite for microcontrollers, and
compare, from Python or the CLI. Each step is one function of :mod:`edgeprune.steps`; :mod:`edgeprune.config` holds
the run's configuration and :mod:`edgeprune.run` the one-command run over the steps.
"""

__version__ = "0.1.0"

from .analyze.channel_scan import ChannelScanResult, channel_sensitivity_scan, prune_for_macs
from .analyze.latency import latency_ratio, measure_latency, time_models
from .analyze.metrics import count_macs, layer_stats, model_stats
from .analyze.plan import plan_by_budget, plan_by_tolerance
from .analyze.plots import plot_num_parameters_distribution, plot_weight_distribution
from .analyze.scan import ScanResult, sensitivity_scan
from .checkpoint import load_checkpoint, save_checkpoint
from .data import DataConfig, load_data, make_loader
from .export.c_source import fits_on, write_c_source
from .export.epz import load_compressed, save_compressed
from .export.onnx import evaluate_onnx, export_onnx
from .export.tflite import export_tflite
from .export.tflm import evaluate_tflite
from .models import BasicCNN, ModelSpec, build_model, prunable_parameters
from .config import RunConfig
from .run import run_experiment
from .steps import (
    build_baseline,
    choose_sparsity,
    compare_models,
    export_compressed,
    export_for_devices,
    finetune_pruned,
    prune_channels_step,
    prune_copy,
    prune_while_training,
    scan_model,
    train_baseline,
)
from .prune.channels import prune_channels
from .prune.global_magnitude import global_magnitude_sparsity
from .prune.masks import fine_grained_mask, fine_grained_prune, sparsity_of
from .prune.pruner import FineGrainedPruner, is_pruned
from .prune.schedule import GradualPruner, agp_sparsity
from .prune.settings import load_layer_settings
from .task import CLASSIFICATION, RECONSTRUCTION, Task
from .training import Teacher, evaluate, finetune, prune_gradually, prune_iteratively, recalibrate_batchnorm, train

__all__ = [
    "BasicCNN",
    "CLASSIFICATION",
    "ChannelScanResult",
    "DataConfig",
    "FineGrainedPruner",
    "GradualPruner",
    "ModelSpec",
    "RECONSTRUCTION",
    "RunConfig",
    "ScanResult",
    "Task",
    "Teacher",
    "agp_sparsity",
    "build_baseline",
    "build_model",
    "channel_sensitivity_scan",
    "choose_sparsity",
    "compare_models",
    "count_macs",
    "evaluate",
    "evaluate_onnx",
    "evaluate_tflite",
    "export_compressed",
    "export_for_devices",
    "export_onnx",
    "export_tflite",
    "fine_grained_mask",
    "fine_grained_prune",
    "finetune",
    "finetune_pruned",
    "fits_on",
    "global_magnitude_sparsity",
    "is_pruned",
    "latency_ratio",
    "layer_stats",
    "load_checkpoint",
    "load_compressed",
    "load_data",
    "load_layer_settings",
    "make_loader",
    "measure_latency",
    "model_stats",
    "plan_by_budget",
    "plan_by_tolerance",
    "plot_num_parameters_distribution",
    "plot_weight_distribution",
    "prunable_parameters",
    "prune_channels",
    "prune_channels_step",
    "prune_copy",
    "prune_for_macs",
    "prune_gradually",
    "prune_iteratively",
    "prune_while_training",
    "recalibrate_batchnorm",
    "run_experiment",
    "save_checkpoint",
    "save_compressed",
    "scan_model",
    "sensitivity_scan",
    "sparsity_of",
    "time_models",
    "train",
    "train_baseline",
    "write_c_source",
]
