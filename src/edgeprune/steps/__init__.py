"""The steps of the experiment, each once, as a function: the CLI, :func:`~edgeprune.run.run_experiment` and the
benchmarks all call these, so a step gives the same result wherever it is called from.

In the order of a run: the model and data (:func:`model_spec_from_flags`, :func:`load_model`, :func:`load_splits`,
:func:`build_baseline`), training (:func:`train_baseline`, :func:`accuracy_on_test`), :func:`inspect_model`,
the sensitivity scan (:func:`scan_model`) and the plan (:func:`choose_sparsity`), pruning (:func:`prune_copy`,
:func:`prune_channels_step`), fine-tuning (:func:`finetune_pruned`, :func:`prune_while_training`), the seeded
centroid step (:func:`share_centroids`), the exports (:func:`export_compressed`, :func:`export_for_devices`) and
:func:`compare_models`. The ``*_checkpoint`` steps are the CLI's subcommands: they read a checkpoint, run the step,
write its files, and return what the CLI prints.

One module a concern: :mod:`.common` (the run's constants; model, data and file helpers), :mod:`.pruning` (train,
scan, plan, prune, fine-tune, whole channels), :mod:`.device_target` (sparsity planned to the C engine's instructions
or flash), :mod:`.exports` (.epz, ONNX, int8 TFLite, the comparison), :mod:`.checkpoints` (the CLI's subcommands) and
:mod:`.mcu` (the C engine in QEMU). Every public name is here, as before the split.
"""

from __future__ import annotations

from .common import (
    BATCHNORM_BATCHES, CALIBRATION_IMAGES, CENTROID_LR, DEVICE_CHECK_IMAGES, MCU_IMAGES, TAYLOR_BATCHES,
    accuracy_on_test, check_fits, load_model, load_splits, model_for_data, model_spec_from_flags, writable_file,
)
from .pruning import (
    BelowLimit, build_baseline, channels_summary, check_collapse, choose_sparsity, default_max_loss,
    final_quality, finetune_pruned, prune_channels_step, prune_copy, prune_while_training,
    recalibration_batches, scan_model, taylor_batches, train_baseline, worst_layer_loss,
)
from .device_target import check_device_target, engine_unit_bytes, plan_for_device_target
from .exports import (
    check_device_export, compare_models, default_export_tolerance, export_bits_for, export_compressed, export_for_devices,
    share_centroids, state_scorer,
)
from .checkpoints import (
    compare_checkpoints, export_checkpoint, finetune_checkpoint, inspect_model, plan_from_scan,
    prune_checkpoint, scan_checkpoint, train_checkpoint,
)
from .mcu import EngineMismatch, c_engine_checkpoint, check_weight_budget, mcu_checkpoint, mcu_model, sample_indices

__all__ = [
    "BelowLimit", "EngineMismatch", "BATCHNORM_BATCHES", "CALIBRATION_IMAGES", "CENTROID_LR",
    "DEVICE_CHECK_IMAGES", "MCU_IMAGES", "TAYLOR_BATCHES", "accuracy_on_test", "build_baseline",
    "c_engine_checkpoint", "channels_summary", "check_collapse", "check_device_export", "check_device_target",
    "check_fits", "check_weight_budget", "choose_sparsity", "compare_checkpoints", "compare_models",
    "default_export_tolerance", "default_max_loss", "engine_unit_bytes", "export_bits_for", "export_checkpoint", "export_compressed", "export_for_devices",
    "final_quality", "finetune_checkpoint", "finetune_pruned", "inspect_model", "load_model", "load_splits",
    "mcu_checkpoint", "mcu_model", "model_for_data", "model_spec_from_flags", "plan_for_device_target",
    "plan_from_scan", "prune_channels_step", "prune_checkpoint", "prune_copy", "prune_while_training",
    "recalibration_batches", "sample_indices", "scan_checkpoint", "scan_model", "share_centroids",
    "state_scorer", "taylor_batches", "train_baseline", "train_checkpoint", "worst_layer_loss", "writable_file",
]
