"""The microcontroller: a model or an int8 .tflite as the C engine, built and run in QEMU, checked against TFLM."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset, Subset, TensorDataset

from ..data import DataConfig, DataSplits
from ..export.tflite import calibration_images, export_tflite
from ..files import writable_folder, write_json_atomic
from ..mcu import export_c
from ..mcu.measure import EngineMismatch, engine_outputs, load_inputs, measure_on_mcu, measure_tflite, random_inputs
from ..mcu.units import parse_bytes, parse_hz
from ..models import ModelSpec
from ..task import CLASSIFICATION
from .common import CALIBRATION_IMAGES, MCU_IMAGES, load_model, load_splits

__all__ = ["EngineMismatch", 
    "c_engine_checkpoint", "check_weight_budget", "mcu_checkpoint", "mcu_model", "sample_indices",
    "test_samples",
]


def _int8_tflite(model: nn.Module, splits: DataSplits, path: Path) -> Path:
    """``model`` as a fully int8 ``.tflite`` at ``path``, calibrated as :func:`export_for_devices` calibrates."""
    return export_tflite(copy.deepcopy(model).cpu().eval(), path, calibration_images(splits.train, CALIBRATION_IMAGES))


def _engine_source(source: str | Path, spec: ModelSpec | None, data: DataConfig, folder: Path,
                   device: str | None) -> tuple[Path, ModelSpec | None, DataSplits | None]:
    """The int8 ``.tflite`` behind ``source`` (a ``.tflite`` as it is, needing no data; or a checkpoint exported into
    ``folder``, calibrated on its data), the checkpoint's spec and data splits (both None for a ``.tflite``)."""
    source = Path(source)
    if source.suffix == ".tflite":
        if not source.is_file():
            raise ValueError(f"{source}: no such file; give a fully int8 .tflite (edgeprune export CKPT --format tflite)")
        return source, None, None
    model, spec, _, _ = load_model(source, spec, device)
    splits = load_splits(data, spec)
    return _int8_tflite(model, splits, folder / "model.tflite"), spec, splits


def check_weight_budget(weight_budget: str | int | None, sparse: str) -> int | None:
    """A weight budget (``"15KB"``, ``15000``) in bytes, checked with the kernel choice it needs; one-line ValueError otherwise."""
    if weight_budget is None:
        return None
    if sparse != "auto":
        raise ValueError(f"--weight-budget chooses each layer's kernel itself: use it with --sparse auto, not {sparse}")
    try:
        return parse_bytes(weight_budget)
    except ValueError as exc:
        raise ValueError(str(exc).replace("a flash size", "a weight budget")) from None


def c_engine_checkpoint(source: str | Path, spec: ModelSpec | None, data: DataConfig, out: str | Path,
                        sparse: str = "auto", device: str | None = None, weight_budget: str | int | None = None) -> dict:
    """Write the C engine of a checkpoint or an int8 ``.tflite`` into the folder ``out``; return ``layers.json``.

    A checkpoint is first exported to ``out/model.tflite`` (calibrated on the training images); the
    ``.tflite`` is the single source of the engine's quantization (see :func:`edgeprune.mcu.export_c`).
    ``weight_budget`` caps the bytes of weights and index (see :func:`edgeprune.mcu.lowering.lower`).
    """
    budget = check_weight_budget(weight_budget, sparse)
    folder = writable_folder(out, "--out")
    tflite, _, _ = _engine_source(source, spec, data, folder, device)
    return {**export_c(tflite, folder, sparse, budget), "tflite": str(tflite)}


def test_samples(splits: DataSplits, count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` test samples and their labels: the whole test split when it is no larger, else a seeded random subset,
    stratified by class when there are labels (each class its share, largest remainders first), in test-set order.
    A folder of images sorted by class would otherwise give the first classes only."""
    total = len(splits.test)
    if min(count, total) < 1:
        raise ValueError("no test samples to run on the microcontroller: the test split is empty")
    chosen = list(range(total)) if count >= total else sample_indices(_labels_of(splits.test), count, seed)
    images, labels = zip(*(splits.test[i] for i in chosen))
    return torch.stack(images), torch.tensor(labels)


def _labels_of(dataset: Dataset) -> list[int]:
    """Every label of ``dataset`` (-1 for unlabelled samples), read where the data sets keep them (a ``Subset``'s
    indices into its data set, a ``TensorDataset``'s label tensor, ``targets``) without decoding a sample; other data
    sets are iterated."""
    if isinstance(dataset, Subset):
        inner = _labels_of(dataset.dataset)
        return [inner[i] for i in dataset.indices]
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) > 1:
        return dataset.tensors[1].tolist()
    if getattr(dataset, "targets", None) is not None:
        return [int(label) for label in dataset.targets]
    return [int(label) for _, label in (dataset[i] for i in range(len(dataset)))]


def sample_indices(labels: list[int], count: int, seed: int = 0) -> list[int]:
    """``count`` of the indices of ``labels``, seeded, sorted: stratified by class (each class ``count * its share``,
    rounded by largest remainder), or uniformly when the samples carry no labels (all -1)."""
    generator = torch.Generator().manual_seed(seed)
    classes = sorted(set(labels))
    if classes == [-1]:
        return sorted(torch.randperm(len(labels), generator=generator)[:count].tolist())
    members = {c: [i for i, label in enumerate(labels) if label == c] for c in classes}
    exact = {c: count * len(members[c]) / len(labels) for c in classes}
    quota = {c: int(exact[c]) for c in classes}
    for c in sorted(classes, key=lambda c: (quota[c] - exact[c], c))[:count - sum(quota.values())]:
        quota[c] += 1
    chosen = []
    for c in classes:
        order = torch.randperm(len(members[c]), generator=generator)[:quota[c]].tolist()
        chosen += [members[c][i] for i in order]
    return sorted(chosen)


def mcu_model(model: nn.Module, splits: DataSplits, folder: str | Path, target: str = "cortex-m4",
              images: int = MCU_IMAGES, sparse: str = "auto", seed: int = 0) -> dict:
    """Run ``model`` on the microcontroller: int8 ``.tflite``, the C engine, built for ``target`` and run in QEMU on
    ``images`` test samples (a seeded subset stratified by class: :func:`test_samples`), every output compared with
    TFLM's; ``folder/mcu.json`` holds the results, with the splits' task's metric of the engine's outputs."""
    folder = writable_folder(folder, f"mcu folder {folder}")
    tflite = _int8_tflite(model, splits, folder / "model.tflite")
    return _measure_test_samples(tflite, splits, folder, target, images, sparse, None, seed)


def _measure_test_samples(tflite: Path, splits: DataSplits, folder: Path, target: str, images: int, sparse: str,
                          weight_budget: int | None, seed: int) -> dict:
    """:func:`measure_on_mcu` on ``images`` test samples (:func:`test_samples`), scored by the splits' task: accuracy
    for a classifier; for a reconstruction, the MSE of the engine's outputs (dequantized as TFLM's would be) against
    the inputs. ``mcu.json`` records the metric and how the samples were drawn."""
    samples, labels = test_samples(splits, images, seed)
    classifier = splits.task is CLASSIFICATION
    result = measure_on_mcu(tflite, samples, labels if classifier else None, folder, target, sparse,
                            weight_budget=weight_budget)
    if not classifier:
        outputs = torch.from_numpy(engine_outputs(folder, tflite))
        result[splits.task.metric] = splits.task.finish(*splits.task.batch_total(outputs, samples, labels))
    result["sample"] = ("all test samples" if images >= len(splits.test) else
                        f"{len(samples)} of {len(splits.test)} test samples, seeded ({seed}), "
                        + ("stratified by class" if splits.labeled else "uniformly"))
    write_json_atomic(folder / "mcu.json", result)
    return result


def mcu_checkpoint(source: str | Path, spec: ModelSpec | None, data: DataConfig, out: str | Path,
                   target: str = "cortex-m4", images: int = MCU_IMAGES, sparse: str = "auto",
                   device: str | None = None, weight_budget: str | int | None = None,
                   inputs: str | Path | None = None, labels: str | Path | None = None, seed: int = 0,
                   clock: str | int | None = None) -> dict:
    """:func:`mcu_model` for a checkpoint (``images`` test samples), or an int8 ``.tflite`` as it is: with
    ``inputs`` (a ``.npy`` in the model's input dtype and shape, ``labels`` optional) those, else ``images`` seeded
    random inputs (no accuracy; ``seed``). ``weight_budget`` caps the engine's bytes of weights and index; ``clock``
    (``"120MHz"``) adds the estimated milliseconds per inference where the target has cycle estimates."""
    budget = check_weight_budget(weight_budget, sparse)
    clock_hz = None if clock is None else parse_hz(clock)
    is_tflite = Path(source).suffix == ".tflite"
    if not is_tflite and (inputs is not None or labels is not None):
        raise ValueError("--inputs and --labels give a .tflite its inputs; a checkpoint runs its test set: drop them, "
                         "or give the .tflite")
    if labels is not None and inputs is None:
        raise ValueError("--labels needs --inputs: give the inputs they label")
    folder = writable_folder(out, "--out")
    tflite, _, splits = _engine_source(source, spec, data, folder, device)
    if splits is not None:
        result = _measure_test_samples(tflite, splits, folder, target, images, sparse, budget, seed)
    else:
        x, y = load_inputs(tflite, inputs, labels) if inputs is not None else (random_inputs(tflite, images, seed), None)
        result = measure_tflite(tflite, x, y, folder, target, sparse, weight_budget=budget)
    if clock_hz is not None and result.get("estimated_cycles") is not None:
        result.update(clock_hz=clock_hz, estimated_ms=round(result["estimated_cycles"] / clock_hz * 1e3, 6),
                      estimated_ms_note=f"estimated: {result['cycles_note']}, at {clock_hz:,} Hz")
        write_json_atomic(folder / "mcu.json", result)
    return result
