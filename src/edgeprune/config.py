"""The configuration of a run: :class:`RunConfig`, checked as a whole when it is built, and what its flags are.

Each field of :class:`RunConfig` (and of :class:`~edgeprune.data.DataConfig`, in :data:`DATA_FLAGS`) carries a
:class:`Flag`: the help, the kind of value and its bounds. The CLI builds the ``edgeprune run`` flags from them,
so the defaults live in one place, the dataclasses. A run can also be described by a file
(:func:`read_config_file`: JSON, TOML or YAML with the same keys as the saved ``config.json``), which
:func:`run_config` merges with the flags given.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Mapping

from .analyze.plan import BUDGETS
from .analyze.scan import METHODS, scan_sparsities
from .data import DATASETS, DataConfig, native_geometry, tensors_labeled
from .device import pick_device
from .export.bit_choice import AUTO
from .export.quantize import MODES, QuantConfig
from .mcu.lowering import SPARSE_MODES
from .mcu.cycles import cycles_note, no_timing_reason
from .mcu.units import check_device_targets
from .mcu.toolchain import TARGETS, check_tools, get_target
from .prune.importance import CRITERIA
from .prune.masks import check_sparsity
from .prune.schedule import SCHEDULES
from .prune.settings import load_layer_settings, read_document
from .task import TASK_CHOICES, TASKS, Task, resolve_task
from .training import LR_SCHEDULES

__all__ = [
    "CRITERIA", "DATASETS", "DATA_FLAGS", "DEVICE_EXPORTS", "EXPORT_VALUES", "LR_SCHEDULES", "MAX_SEED", "MCU_TARGETS", "METHODS",
    "PLANS", "SPARSE_MODES", "TASK_CHOICES", "TASKS",
    "RENAMED_KEYS", "SCAN_SPLITS", "Flag", "RunConfig", "check_export_bits", "data_config", "default_bits", "fit_data_to_model", "flags",
    "is_torchvision", "parse_bits",
    "read_config_file", "run_config", "upgrade_saved",
]

PLANS = ("scan", "global")
DEVICE_EXPORTS = ("final", "all", "none")
SCAN_SPLITS = ("val", "test")
EXPORT_VALUES = MODES
MCU_TARGETS = tuple(name for name, target in TARGETS.items() if target.machine)
"""The Cortex-M cores whose QEMU board runs the C engine (cortex-m4, cortex-m7, cortex-m55)."""
MAX_SEED = 2**63 - 1
RENAMED_KEYS = {"channels": "channel_ratios"}
"""Keys of a saved ``config.json`` that have a new name: an old run still resumes, an old config still loads."""


@dataclass(frozen=True)
class Flag:
    """How a config field reads from the command line: ``kind`` is int, float, str or bool; bounds are inclusive."""

    help: str
    kind: str = "str"
    low: float | None = None
    high: float | None = None
    positive: bool = False
    choices: tuple | None = None
    option: str | None = None  # the flag, when it is not --field-name

    def name(self, field_name: str) -> str:
        """The command-line option of ``field_name``."""
        return self.option or "--" + field_name.replace("_", "-")


def _option(default, help: str, **flag) -> object:
    return field(default=default, metadata={"flag": Flag(help, **flag)})


DATA_FLAGS = {
    "name": Flag("data set; tensors: arrays in a .npz file (--data-dir FILE.npz with x_train, x_test and, for labels, "
                 "y_train, y_test; optional x_val, y_val), any sample shape, used as they are (no --mean/--std)",
                 choices=DATASETS, option="--dataset"),
    "data_dir": Flag("where the data set is (default: Debian's /usr/share/datasets/fashion-mnist for fashion-mnist; "
                     "the .npz file for tensors)"),
    "download": Flag("allow torchvision to download the data set (needs the network)", kind="bool"),
    "channels": Flag("convert images to this many channels (3 is automatic for torchvision models)", kind="int", low=1, high=3,
                     choices=(1, 3)),
    "image_size": Flag("resize images to this side length", kind="int", low=4, high=4096),
    "mean": Flag("Normalize mean per channel (the seed's 0.5; images only)", kind="float", low=-1e6, high=1e6),
    "std": Flag("Normalize std per channel (the seed's 0.5; images only)", kind="float", positive=True),
    "batch_size": Flag("images per batch", kind="int", low=1, high=1_000_000),
    "val_size": Flag("images held out of the training set for scans and model selection", kind="int", low=0),
    "limit": Flag("use at most this many images of each split (quick trials)", kind="int", low=1),
}
"""The flags of :class:`~edgeprune.data.DataConfig`'s fields (its ``seed`` is the run's ``--seed``)."""


def flags() -> list[tuple[str, Flag, object]]:
    """(destination, flag, default) of every ``edgeprune run`` flag, in field order: ``data.<field>`` for the data."""
    found = []
    for f in fields(RunConfig):
        if f.name == "data":
            found += [(f"data.{d.name}", DATA_FLAGS[d.name], d.default) for d in fields(DataConfig) if d.name in DATA_FLAGS]
        else:
            found.append((f.name, f.metadata["flag"], f.default))
    return found


def data_config(model: str, given: Mapping) -> DataConfig:
    """The data config of the flags ``given`` (DataConfig's field names), fitted to ``model`` (:func:`fit_data_to_model`)."""
    return fit_data_to_model(model, DataConfig(**given))


def is_torchvision(model: str) -> bool:
    """Whether ``model`` names a torchvision classifier (not the built-in CNN, not a user's ``module:factory``)."""
    return model.lower() != "basiccnn" and ":" not in model


def fit_data_to_model(model: str, data: DataConfig) -> DataConfig:
    """The data config a model needs: torchvision classifiers get 3 channels and at least 32 pixels.

    Grey images are repeated to 3 channels and images smaller than 32 pixels are resized to 32
    (VGG's five poolings need it), unless ``channels`` or ``image_size`` were given.
    """
    native = native_geometry(data.name)
    if not is_torchvision(model) or native is None:
        return data
    channels = data.channels if data.channels is not None else (3 if native[0] == 1 else None)
    size = data.image_size if data.image_size is not None else (32 if native[1] < 32 else None)
    return replace(data, channels=channels, image_size=size)


def default_bits(values: str) -> int | str | None:
    """The bits a value mode gets when none are given: ``"auto"`` for k-means (the fewest per layer within the export
    tolerance on the validation split), 8 for int8, none for floats."""
    return {"kmeans": AUTO, "int8": 8}.get(values)


def parse_bits(text: str | int | Mapping | None, values: str) -> int | str | dict | None:
    """k-means bits as given (a number, ``auto``, or per layer as inline JSON / a file or a dict), else
    :func:`default_bits` of ``values``."""
    if text is None:
        return default_bits(values)
    if isinstance(text, bool):
        return text  # refused by the bits check, naming the fix
    if isinstance(text, int) or text == AUTO:
        return text
    if isinstance(text, str) and text.strip().isdigit():
        return int(text)
    return load_layer_settings(text)


def check_export_bits(values: str, bits: object) -> None:
    """Refuse bits that ``values`` cannot use, or ``auto`` with a mode other than k-means, as one line."""
    if bits == AUTO:
        if values != "kmeans":
            raise ValueError(f"export bits 'auto' choose k-means codebooks per layer: use them with --export-values kmeans, "
                             f"not {values!r}")
        return
    QuantConfig(values, bits)


def _check_int(value: object, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{name} must be a whole number {bound}, got {value!r}")
    return int(value)


def _check_positive(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


@dataclass
class RunConfig:
    """Everything ``edgeprune run`` needs, checked as a whole on construction; saved beside the report as ``config.json``.

    ``epochs=None`` means 5, or 0 when ``weights`` gives a trained baseline. ``export_bits=None``
    means what ``export_values`` needs (:func:`default_bits`: ``"auto"`` for k-means, chosen per layer within
    ``export_tolerance``, whose None means :func:`~edgeprune.steps.exports.default_export_tolerance`). ``sparsity`` (inline JSON, a file or a
    dict) is read and its values checked here; its names are checked against the model before training.
    """

    model: str = _option("basiccnn", "basiccnn; MLPerf Tiny's resnet8, mobilenet_v1, dscnn, fc_autoencoder; a torchvision "
                         "classifier (resnet18, vgg11_bn, mobilenet_v2, ...) or module.path:factory")
    width: float | None = _option(None, "width multiplier of a built-in model that has one (resnet8, dscnn: 1 by default; "
                                  "mobilenet_v1: 0.25), e.g. 2 for a ResNet-8 of 32, 64 and 128 filters",
                                  kind="float", positive=True)
    data: DataConfig = field(default_factory=DataConfig)
    task: str = _option("auto", "what the model does and is scored by: classification (accuracy), reconstruction (MSE "
                        "against the input), or auto: reconstruction for data without labels or an autoencoder model "
                        "(fc_autoencoder), else classification", choices=TASK_CHOICES)
    weights: str | None = _option(None, "start from this baseline checkpoint instead of training (.safetensors or a .pth state_dict)")
    epochs: int | None = _option(None, "baseline training epochs (default 5; 0 with --weights)", kind="int", low=0, high=10_000)
    finetune_epochs: int = _option(3, "fine-tuning epochs", kind="int", low=0, high=10_000)
    lr: float = _option(1e-3, "learning rate (Adam)", kind="float", positive=True)
    lr_schedule: str = _option("constant", "learning rate over the fine-tuning epochs: constant, cosine (annealed to 0) or "
                               "step (x0.1 every third)", choices=LR_SCHEDULES)
    distill: float = _option(0.0, "every fine-tuning also learns the dense baseline's outputs (knowledge distillation, "
                             "temperature 4) with this weight against the labels' (e.g. 0.5; 0: off); k-means centroid "
                             "fine-tuning does not", kind="float", low=0.0, high=1.0)
    channel_ratios: str | dict | None = _option(None, "channel pruning first: fraction of output channels removed per "
                                                "Conv2d/Linear module name, as inline JSON or a file (e.g. '{\"_default\": 0.5}'); "
                                                "a smaller dense model, fine-tuned, then pruned fine-grained")
    target_macs: float | None = _option(None, "channel pruning first: remove the channels that the channel scan says cost "
                                        "least, until MACs are at most this fraction of the dense model's (e.g. 0.5)",
                                        kind="float", low=0.0, high=1.0)
    target_latency: float | None = _option(None, "channel pruning first, as --target-macs, until the batch-64 latency "
                                           "measured here on --device is at most this fraction of the dense model's (e.g. 0.5)",
                                           kind="float", low=0.0, high=1.0)
    channel_importance: str = _option("l2", "how channels are ranked: l1/l2 magnitude, bn_scale, or taylor (first order, "
                                      "from 4 training batches)", choices=CRITERIA)
    sparsity: str | dict | None = _option(None, "sparsity dict: inline JSON or a .json/.toml/.yaml file (default: planned "
                                          "from the scan)")
    plan: str = _option("scan", "how the planner reaches --target-sparsity: from the sensitivity scan, or one global "
                        "magnitude ranking", choices=PLANS)
    target_sparsity: float = _option(0.8, "planner budget: fraction of prunable weights removed", kind="float", low=0.0, high=1.0)
    budget: str = _option("params", "what --target-sparsity removes a fraction of: params (weights), macs (each weight "
                          "weighted by its MACs) or flash (the sparse engine's value + index bytes)", choices=tuple(BUDGETS))
    target_instructions: float | None = _option(None, "plan until the C engine runs at most this fraction of the dense "
                                                "engine's instructions (e.g. 0.3), checked in QEMU (to within 5 percent under it)",
                                                kind="float", low=0.0, high=1.0)
    target_flash: str | None = _option(None, "plan until the C engine's flash (code + weights + indices) is at most this "
                                       "size (e.g. 32KiB, 32kB = 32000 B, 32768), checked in QEMU (to within 5 percent under it)")
    target_cycles: float | None = _option(None, "plan until the C engine runs at most this fraction of the dense "
                                          "engine's estimated cycles (Cortex-M4/M7 timings, zero wait states; e.g. 0.3), "
                                          "checked in QEMU (to within 5 percent under it)", kind="float", low=0.0, high=1.0)
    schedule: str = _option("oneshot", "oneshot: prune, then fine-tune; agp: cubic ramp to the targets while training; "
                            "iterative: rounds of prune + fine-tune", choices=("oneshot", *SCHEDULES))
    max_loss: float | None = _option(None, "no silent collapse: stop before pruning when the scan predicts that one layer "
                                     "alone, at its planned sparsity, loses more than this, and fail the run when the "
                                     "final model does (default: 5 accuracy points; for a reconstruction 50, the MSE's "
                                     "increase in percent, the seed's 1.5x bound); --force goes ahead",
                                     kind="float", low=0.0)
    force: bool = _option(False, "prune and finish even beyond --max-loss (the report still marks it)", kind="bool")
    max_drop: float | None = _option(None, "plan by tolerance instead: largest sparsity per layer within this drop: accuracy points, or for "
                                     "reconstruction the MSE's increase in percent of the dense model's",
                                     kind="float", low=0.0, high=100.0)
    scan_split: str = _option("val", "scan on the validation split (default) or the test set", choices=SCAN_SPLITS)
    scan_start: float = _option(0.0, "first sparsity of the scan", kind="float", low=0.0, high=1.0)
    scan_step: float = _option(0.05, "step between the scan's sparsities", kind="float", positive=True)
    scan_end: float = _option(1.0, "end of the scan's sparsities (exclusive, as in np.arange)", kind="float", low=0.0, high=2.0)
    scan_method: str = _option("auto", "how the scan evaluates a layer: auto, fast (the layers after it from cached "
                               "activations) or naive", choices=METHODS)
    export_values: str = _option("kmeans", "how the compressed .epz stores the weights", choices=EXPORT_VALUES)
    export_bits: int | str | dict | None = _option(
        None, "bits of the k-means codebooks: auto (the default for kmeans: per layer, the fewest from 2 to 8 whose "
        "decoded file loses at most --export-tolerance on the validation split), a number from 2 to 8 for every layer, "
        "or per layer as inline JSON / a file like --sparsity; 8 for int8")
    export_tolerance: float | None = _option(
        None, "how much each compressed .epz may lose against its own model on the validation split: what --export-bits "
        "auto chooses by, and beyond which the run flags a file (default: 1 accuracy point; for a reconstruction 5, the "
        "MSE's increase in percent)", kind="float", low=0.0)
    centroid_epochs: int = _option(0, "with kmeans: fine-tune the shared centroids this many epochs", kind="int",
                                   low=0, high=10_000)
    device_exports: str = _option("final", "ONNX and int8 TFLite files (+ model_data.cc/.h) scored in onnxruntime and "
                                  "TFLite Micro: for the final model, every model, or none", choices=DEVICE_EXPORTS)
    mcu: str = _option("cortex-m4", "run the baseline and the final model as the sparse C engine on this emulated "
                       "Cortex-M (QEMU; outputs checked against TFLite Micro, flash, RAM, instructions), or none",
                       choices=(*MCU_TARGETS, "none"))
    mcu_images: int = _option(100, "test images run on the emulated microcontroller", kind="int", low=1, high=100_000)
    out: str = _option("runs/latest", "report folder")
    device: str | None = _option(None, "cpu, cuda, cuda:N or mps (default: cuda when present)")
    seed: int = _option(0, "seeds the model, the shuffling and the validation split", kind="int", low=0, high=MAX_SEED)

    def __post_init__(self) -> None:
        if isinstance(self.data, Mapping):
            self.data = DataConfig(**self.data)
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be a name such as 'basiccnn' or 'resnet18', got {self.model!r}")
        self.data = fit_data_to_model(self.model, self.data)
        if self.epochs is None:
            self.epochs = 0 if self.weights else 5
        self.epochs = _check_int(self.epochs, "epochs", 0, 10_000)
        self.finetune_epochs = _check_int(self.finetune_epochs, "finetune_epochs", 0, 10_000)
        self.centroid_epochs = _check_int(self.centroid_epochs, "centroid_epochs", 0, 10_000)
        self.seed = _check_int(self.seed, "seed", 0, MAX_SEED)
        self.lr = _check_positive(self.lr, "lr")
        if self.width is not None:
            self.width = _check_positive(self.width, "width")
        if self.max_loss is not None and (isinstance(self.max_loss, bool) or not isinstance(self.max_loss, numbers.Real)
                                          or not math.isfinite(self.max_loss) or self.max_loss < 0):
            raise ValueError(f"max_loss must be a non-negative number (accuracy points, or percent of the dense MSE), "
                             f"got {self.max_loss!r}; e.g. 5")
        if not isinstance(self.force, bool):
            raise ValueError(f"force must be true or false, got {self.force!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; use one of {', '.join(LR_SCHEDULES)}")
        if isinstance(self.distill, bool) or not isinstance(self.distill, numbers.Real) or not 0.0 <= self.distill <= 1.0:
            raise ValueError(f"distill must be a weight from 0 (off) to 1, got {self.distill!r}; e.g. 0.5")
        if self.epochs == 0 and not self.weights:
            raise ValueError("epochs=0 needs weights: a trained baseline to start from (--weights FILE)")
        if self.weights is not None and not Path(self.weights).is_file():
            raise ValueError(f"weights {self.weights!r}: no such file; give a checkpoint written by 'edgeprune train' or a .pth state_dict")
        if self.sparsity is not None:
            self.sparsity = load_layer_settings(self.sparsity)
            for key, value in self.sparsity.items():
                check_sparsity(value, key)
            if not self.sparsity:
                raise ValueError("the sparsity dict is empty: name layers (e.g. {\"_default\": 0.5}) or leave it out to plan one")
        check_sparsity(self.target_sparsity, "target_sparsity")
        if sum(x is not None for x in (self.channel_ratios, self.target_macs, self.target_latency)) > 1:
            raise ValueError("give one of channel ratios (--channel-ratios), a MACs target (--target-macs) "
                             "or a latency target (--target-latency), not several")
        if self.channel_ratios is not None:
            self.channel_ratios = load_layer_settings(self.channel_ratios)
            for key, value in self.channel_ratios.items():
                check_sparsity(value, f"channel ratio {key}")
        for name, what in (("target_macs", "MACs"), ("target_latency", "latency")):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < value <= 1.0):
                raise ValueError(f"{name} must be a fraction of the dense {what} in (0, 1], got {value!r}; e.g. 0.5")
        if self.channel_importance not in CRITERIA:
            raise ValueError(f"unknown channel importance {self.channel_importance!r}; use one of {', '.join(CRITERIA)}")
        if self.plan not in PLANS:
            raise ValueError(f"unknown plan {self.plan!r}; use one of {', '.join(PLANS)}")
        if self.plan == "global" and self.max_drop is not None:
            raise ValueError("max_drop plans from the scan: use it with plan='scan', or give target_sparsity with plan='global'")
        if self.budget not in BUDGETS:
            raise ValueError(f"unknown budget {self.budget!r}; use one of {', '.join(BUDGETS)}")
        if self.budget != "params" and (self.plan != "scan" or self.max_drop is not None or self.sparsity is not None):
            raise ValueError(f"--budget {self.budget} sets what the scan planner's target counts: use it with --plan scan "
                             "and --target-sparsity, without --max-drop or --sparsity")
        check_device_targets(self.target_instructions, self.target_flash, self.target_cycles)
        if self.device_target is not None and (self.sparsity is not None or self.plan != "scan" or self.max_drop is not None):
            raise ValueError("--target-instructions, --target-cycles and --target-flash plan from the scan: drop "
                             "--sparsity, --max-drop and --plan global")
        if self.schedule not in ("oneshot", *SCHEDULES):
            raise ValueError(f"unknown schedule {self.schedule!r}; use one of oneshot, {', '.join(SCHEDULES)}")
        if self.schedule != "oneshot" and self.finetune_epochs < 1:
            raise ValueError(f"schedule {self.schedule!r} prunes while it trains: give finetune_epochs of at least 1")
        if self.max_drop is not None and (isinstance(self.max_drop, bool) or not isinstance(self.max_drop, numbers.Real)
                                          or not math.isfinite(self.max_drop) or self.max_drop < 0):
            raise ValueError(f"max_drop must be a non-negative number of accuracy points, got {self.max_drop!r}")
        if self.scan_split not in SCAN_SPLITS:
            raise ValueError(f"scan_split must be 'val' or 'test', got {self.scan_split!r}")
        if self.scan_split == "val" and self.data.val_size == 0:
            raise ValueError("scanning on the validation split needs --val-size > 0 (or --scan-split test)")
        if self.scan_method not in METHODS:
            raise ValueError(f"unknown scan method {self.scan_method!r}; use one of {', '.join(METHODS)}")
        if self.sparsity is None and self.plan == "scan":
            scan_sparsities(self.scan_start, self.scan_end, self.scan_step)
        if self.export_values not in EXPORT_VALUES:
            raise ValueError(f"unknown export values {self.export_values!r}; use one of {', '.join(EXPORT_VALUES)}")
        self.export_bits = parse_bits(self.export_bits, self.export_values)
        check_export_bits(self.export_values, self.export_bits)  # bits a mode cannot use are an error now, not after training
        if self.export_tolerance is not None and (isinstance(self.export_tolerance, bool) or not isinstance(
                self.export_tolerance, numbers.Real) or not math.isfinite(self.export_tolerance) or self.export_tolerance < 0):
            raise ValueError(f"export_tolerance must be a non-negative number (accuracy points, or percent of the MSE), "
                             f"got {self.export_tolerance!r}; e.g. 1")
        if self.export_bits == AUTO and self.data.val_size == 0 and self.data.name != "tensors":
            raise ValueError("--export-bits auto chooses the bits on the validation split: give --val-size > 0, or a bit "
                             "width (e.g. --export-bits 4)")
        if self.device_exports not in DEVICE_EXPORTS:
            raise ValueError(f"unknown device_exports {self.device_exports!r}; use one of {', '.join(DEVICE_EXPORTS)}")
        if self.mcu not in (*MCU_TARGETS, "none"):
            raise ValueError(f"unknown mcu {self.mcu!r}; use one of {', '.join(MCU_TARGETS)} or none")
        self.mcu_images = _check_int(self.mcu_images, "mcu_images", 1, 100_000)
        if self.mcu != "none":  # the toolchain is checked now, not after training
            try:
                check_tools()
            except ValueError as exc:
                raise ValueError(f"{exc}; or pass --mcu none to skip the microcontroller") from None
        if self.device_target is not None and self.mcu == "none":
            raise ValueError("--target-instructions, --target-cycles and --target-flash are checked in QEMU on --mcu's "
                             "board: give one (e.g. --mcu cortex-m4), not none")
        board = None if self.mcu == "none" else get_target(self.mcu)
        if self.target_cycles is not None and board is not None and cycles_note(board) is None:
            raise ValueError(f"--target-cycles needs a cycle estimate, but --mcu {self.mcu} has "
                             f"{no_timing_reason(board)}; use --target-instructions, or --mcu cortex-m4")
        if self.centroid_epochs and self.export_values != "kmeans":
            raise ValueError("centroid_epochs fine-tunes k-means centroids: use it with export_values='kmeans'")
        self._task = resolve_task(self.task, self.model, self.data.name != "tensors" or tensors_labeled(self.data.data_dir))
        if self._task.name != "classification":
            _check_reconstruction(self)
        pick_device(self.device)

    @property
    def device_target(self) -> str | None:
        """The device target's flag (``--target-instructions``, ``--target-cycles``, ``--target-flash``), None without."""
        return next((flag for flag, value in (("--target-instructions", self.target_instructions),
                                              ("--target-cycles", self.target_cycles),
                                              ("--target-flash", self.target_flash)) if value is not None), None)

    @property
    def resolved_task(self) -> Task:
        """The run's task: ``task``, with ``auto`` resolved from the data and the model (:func:`~edgeprune.task.resolve_task`)."""
        return self._task

    def to_dict(self) -> dict:
        """The resolved config as plain JSON data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> "RunConfig":
        """A config from :meth:`to_dict` output (such as a saved ``config.json``, old key names included)."""
        data = upgrade_saved(data)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown run config keys {unknown}; valid keys: {', '.join(sorted(known))}")
        return cls(**data)


def _check_reconstruction(cfg: RunConfig) -> None:
    """Refuse, as one line, the steps a reconstruction run cannot take: each scores or trains by class labels."""
    given = [flag for flag, on in (
        ("--distill", cfg.distill), ("--channel-ratios", cfg.channel_ratios is not None),
        ("--target-macs", cfg.target_macs is not None), ("--target-latency", cfg.target_latency is not None),
        ("--centroid-epochs", cfg.centroid_epochs), ("--target-instructions", cfg.target_instructions is not None),
        ("--target-flash", cfg.target_flash is not None), ("--target-cycles", cfg.target_cycles is not None)) if on]
    if given:
        raise ValueError(f"task 'reconstruction' is scored by MSE, but {', '.join(given)} train or score by class labels; "
                         "leave them out")


def upgrade_saved(data: Mapping) -> dict:
    """A saved config as this version reads it: old key names (:data:`RENAMED_KEYS`) renamed, both names at once
    refused, and a key it lacks (written before that field existed) at its default."""
    data = dict(data)
    for old, new in RENAMED_KEYS.items():
        if old in data:
            if new in data:
                raise ValueError(f"the run config gives both {old!r} and its new name {new!r}; keep only {new!r}")
            data[new] = data.pop(old)
    return {**{f.name: f.default for f in fields(RunConfig) if f.default is not MISSING}, **data}


def read_config_file(path: str | Path) -> dict:
    """The run config a ``.json``, ``.toml`` or ``.yaml`` file describes, as a dict (checked by :func:`run_config`)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--config {path}: no such file; give a .json, .toml or .yaml run config (such as a run's config.json)")
    data = read_document(path)
    if not isinstance(data, dict) or not isinstance(data.get("data", {}), dict):
        raise ValueError(f"--config {path}: must map run config keys to values (with 'data' as a table), such as a run's config.json")
    return data


def run_config(base: Mapping, given: Mapping) -> RunConfig:
    """The run config of file contents ``base`` (may be empty) with the flags ``given`` on top.

    ``given`` maps field names to values, ``data.<field>`` for the data config. ``seed`` seeds the data split
    too, unless the file names ``data.seed`` itself and no ``--seed`` flag was given.
    """
    merged = upgrade_saved(base)
    data = dict(merged.get("data") or {})
    if "seed" in merged:
        data.setdefault("seed", merged["seed"])
    for key, value in given.items():
        if key.startswith("data."):
            data[key.removeprefix("data.")] = value
        else:
            merged[key] = value
    if "seed" in given:
        data["seed"] = given["seed"]
    merged["data"] = data
    return RunConfig.from_dict(merged)

