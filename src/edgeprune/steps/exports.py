"""The exports (the compressed .epz, ONNX and int8 TFLite scored in their runtimes) and the comparison of models."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from ..analyze.latency import compute_key, equal_compute_groups, time_models
from ..analyze.metrics import count_macs, file_size, model_stats
from ..checkpoint import save_compressed_model
from ..data import DataSplits, make_loaders
from ..device import pick_device
from ..export.bit_choice import AUTO, BitChoice, Score, check_bits_choice, choose_bits
from ..export.c_source import write_c_source
from ..export.centroids import share_weights
from ..export.epz import load_compressed
from ..export.onnx import compare_onnx, evaluate_onnx, export_onnx, onnx_latency
from ..export.tflite import calibration_images, export_tflite
from ..export.tflm import evaluate_tflite
from ..mcu import export_c
from ..mcu.toolchain import board_memory, get_target
from ..models import ModelSpec, prunable_parameters, resize_to_state_dict
from ..report import export_check_line, test_loss_line
from ..task import CLASSIFICATION, Task
from ..training import evaluate
from .common import CALIBRATION_IMAGES, CENTROID_LR

__all__ = ["check_device_export", "compare_models", "default_export_tolerance", "export_bits_for", "export_compressed",
           "export_for_devices", "share_centroids", "state_scorer"]

COMPARE_ROUNDS = 12
"""Rounds of the comparison's latency timing (a multiple of 3 and 4, the models of a run's table: each first as often)."""


def default_export_tolerance(task: Task) -> float:
    """How much a compressed file may lose against its model on the validation split, by default: 1 accuracy point
    (what a user reading a table of accuracies sees as "the same"), or for a reconstruction an MSE 5 % above the
    model's own (the MSE's scale is the data's, so the tolerance is relative, as every reconstruction drop is)."""
    return 1.0 if task.higher_is_better else 5.0


def state_scorer(model: nn.Module, loader: Iterable, device: torch.device | str | None = None,
                 task: Task = CLASSIFICATION) -> Score:
    """A function scoring a state dict by ``task`` on ``loader``: loaded into one copy of ``model`` (``model`` itself
    is left as it is), then evaluated."""
    probe = copy.deepcopy(model)

    def score(state: Mapping[str, torch.Tensor]) -> float:
        probe.load_state_dict(state)
        return evaluate(probe, loader, device, task)

    return score


def export_bits_for(
    model: nn.Module, values: str, bits: int | str | Mapping | None, val_loader: Iterable | None,
    device: torch.device | str | None = None, task: Task = CLASSIFICATION, tolerance: float | None = None,
    reference: float | None = None,
) -> tuple[int | dict | None, BitChoice | None]:
    """The k-means bits of ``model``'s ``.epz`` and what they were measured to lose on the validation split
    (``val_loader``) against ``reference`` (default: the model's own metric there), within ``tolerance`` (default
    :func:`default_export_tolerance`).

    ``bits="auto"`` chooses the fewest bits per weight tensor within the tolerance
    (:func:`~edgeprune.export.bit_choice.choose_bits`; it needs the validation split, never the test split). Any other
    ``bits`` is kept as given and checked on the validation split when there is one (not for lossless fp32), so a file
    that loses more than the tolerance is flagged either way; without one the check is None.
    """
    tolerance = default_export_tolerance(task) if tolerance is None else tolerance
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    if bits == AUTO:
        if values != "kmeans":
            raise ValueError(f"bits 'auto' choose k-means codebooks: use them with values 'kmeans', not {values!r}")
        if val_loader is None:
            raise ValueError("bits 'auto' are chosen on the validation split, but the data has none; give --val-size > 0, "
                             "or a bit width (e.g. 4)")
        choice = choose_bits(state, state_scorer(model, val_loader, device, task), task.drop, tolerance)
        return choice.bits, choice
    if val_loader is None or values == "fp32":
        return bits, None
    return bits, check_bits_choice(state, values, bits, state_scorer(model, val_loader, device, task), task.drop,
                                   tolerance, reference)


def share_centroids(
    model: nn.Module, bits: int | Mapping[str, int], splits: DataSplits, epochs: int, seed: int = 0, lr: float = CENTROID_LR
) -> nn.Module:
    """Share ``model``'s weights by k-means (``bits`` per codebook) in place and fine-tune the centroids ``epochs`` epochs
    on the shuffled training split, seeded: the same weights from the run and from ``edgeprune export``. Returns it."""
    train_loader = make_loaders(splits, splits.info.get("batch_size", 64), seed)[0]
    torch.manual_seed(seed)
    share_weights(model, bits, train_loader, epochs, lr=lr)
    return model


def export_compressed(
    model: nn.Module, path: str | Path, values: str = "kmeans", bits: int | Mapping | None = None, spec: ModelSpec | None = None
) -> Path:
    """Write ``model`` as a compressed ``.epz`` file with ``spec`` in its header; see :func:`edgeprune.checkpoint.save_compressed_model`."""
    return save_compressed_model(path, model, spec, values, bits)


def export_for_devices(
    model: nn.Module, splits: DataSplits, onnx_path: str | Path | None = None, tflite_path: str | Path | None = None,
    calibration: int = CALIBRATION_IMAGES, softmax: bool = False, lut_bits: int | Mapping | None = None,
    c_source: str | Path | None = None, latency_batches: Iterable[int] = (),
) -> dict:
    """Export ``model`` as ONNX (to ``onnx_path``) and/or fully int8 TFLite (to ``tflite_path``, calibrated on the first
    ``calibration`` training images), and score each file in its own runtime (onnxruntime, TensorFlow Lite Micro) on
    the test split by the splits' task (``onnx_accuracy`` / ``tflite_accuracy``, or ``onnx_mse`` / ``tflite_mse``);
    returns the row fields.

    The ONNX logits are also checked against PyTorch's (``onnx_equal``, ``onnx_max_abs_diff``, first 3 test batches),
    and timed against PyTorch at each of ``latency_batches`` (``onnx_latency``: batch size -> ms). ``softmax`` ends
    the int8 graph with a softmax, ``lut_bits`` stores k-means shared weights as TFLM look-up tables, and
    ``c_source`` (a folder) receives the .tflite as ``model_data.cc`` / ``model_data.h``.
    """
    if onnx_path is None and tflite_path is None:
        raise ValueError("give onnx_path, tflite_path or both: the files to export")
    cpu = copy.deepcopy(model).cpu().eval()
    loader = make_loaders(splits, splits.info.get("batch_size", 64))[2]
    metric = splits.task.metric
    images = calibration_images(splits.train, calibration)
    row: dict = {}
    if onnx_path is not None:
        onnx_path = export_onnx(cpu, onnx_path, images[:1])
        check = compare_onnx(cpu, onnx_path, loader)
        scored = evaluate_onnx(onnx_path, loader, splits.task)
        row.update(onnx_file=str(onnx_path), test_images=scored["count"], onnx_equal=check["equal"],
                   onnx_max_abs_diff=check["max_abs_diff"], **{f"onnx_{metric}": scored[metric]})
        if latency_batches:
            row["onnx_latency"] = {b: onnx_latency(cpu, onnx_path, images[:b])
                                   for b in latency_batches}
    if tflite_path is not None:
        tflite_path = export_tflite(cpu, tflite_path, images, softmax=softmax, lut_bits=lut_bits)
        tflm = evaluate_tflite(tflite_path, loader, task=splits.task)
        row.update(tflite_file=str(tflite_path), tflite_arena_bytes=tflm["arena_bytes"], tflite_bytes=tflm["model_bytes"],
                   test_images=tflm["count"], **{f"tflite_{metric}": tflm[metric]})
        if c_source is not None:
            row["c_source"] = [str(p) for p in write_c_source(tflite_path, c_source)]
    return row


def _refuse_unfit(name: str, target: str, flash: int, ram: int | None = None) -> None:
    """One line when a dense engine of ``flash`` bytes (weights and code; ``ram``: arena) cannot fit ``target``'s board."""
    board = board_memory(get_target(target))
    free_ram = board["ram"] - board["stack"]
    if flash > board["flash"] or (ram is not None and ram > free_ram):
        need = f"{flash:,} B of flash" if flash > board["flash"] else f"an arena of {ram:,} B"
        have = f"{board['flash']:,} B of flash" if flash > board["flash"] else f"{free_ram:,} B of RAM beside its stack"
        raise ValueError(f"model {name!r} needs {need} on the microcontroller (its dense int8 engine, as the run measures "
                         f"the baseline there), but the {target} board has {have}; pass --mcu none to skip the "
                         "microcontroller, or choose a smaller model")


def check_device_export(model: nn.Module, spec: ModelSpec, engine: bool = False, target: str | None = None) -> None:
    """Refuse, before any training, a model that the int8 TFLite export cannot convert (names the op and layer),
    and with ``engine`` one whose ``.tflite`` the C engine cannot run, or (with ``target``) whose dense engine cannot
    fit that board's flash and RAM: at once from the weights' count, then from the engine's own sizes."""
    if engine and target is not None:  # a lower bound first, before an export of millions of weights
        _refuse_unfit(spec.name, target, sum(p.numel() for p in prunable_parameters(model).values()))
    example = torch.randn(4, *spec.sample_shape)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            probe = export_tflite(copy.deepcopy(model).cpu().eval(), Path(tmp) / "probe.tflite", example)
        except ValueError as exc:
            raise ValueError(f"{str(exc).splitlines()[0]}; or pass --device-exports none and --mcu none to skip the ONNX, "
                             "TFLite and microcontroller steps") from None
        if engine:
            try:
                report = export_c(probe, Path(tmp) / "engine", sparse="never")
            except ValueError as exc:
                raise ValueError(f"{str(exc).splitlines()[0]}; or pass --mcu none to skip the microcontroller") from None
            if target is not None:
                totals = report["totals"]
                _refuse_unfit(spec.name, target, totals["weight_bytes"] + totals["index_bytes"], report["arena_bytes"])


def compare_models(
    models: list[tuple[str, nn.Module, Path]],
    loader: Iterable,
    device: torch.device | str | None = None,
    export_dir: Path | None = None,
    export_values: str = "fp32",
    export_bits: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    specs: list[ModelSpec] | None = None,
    task: Task = CLASSIFICATION,
    val_loader: Iterable | None = None,
    tolerance: float | None = None,
) -> list[dict]:
    """One row per (label, model, checkpoint path): sizes, sparsity and the ``task``'s metric on the test set, under the
    metric's name (``accuracy``, ``decoded_accuracy``; ``mse``, ``decoded_mse``).

    With ``export_dir`` each model is also written as a compressed file there, read
    back, and evaluated as decoded: the accuracy a device running that file would see (with ``specs[i]``, one per
    model, in its header, so that the file loads without model flags).
    With ``input_shape`` (one image, e.g. ``(1, 28, 28)``) each row also gets its dense ``macs`` and measured
    ``latency_ms`` ({batch size: median ms} at batch 1 and 64, on ``device``), timed by :func:`_time_table`: what the
    saved files hold, interleaved, and with one latency for models of identical dense compute.
    """
    rows = []
    stems = [Path(path).stem for _, _, path in models]
    unique = len(set(stems)) == len(stems)
    if input_shape is not None:
        macs = [count_macs(model, input_shape)["total"] for _, model, _ in models]
        timed = _time_table(models, loader, input_shape, pick_device(device), specs, macs)
    for index, (label, model, path) in enumerate(tqdm(models, desc="compare", leave=False)):
        row = {"model": label, "checkpoint": str(path), **model_stats(model), "file_bytes": file_size(path)}
        row[task.metric] = evaluate(model, loader, device, task)
        if input_shape is not None:
            row["macs"] = macs[index]
            row.update(timed[index])
        if export_dir is not None:
            name = stems[index] if unique else f"{index}-{stems[index]}"  # two runs' finetuned.* must not collide
            bits, check = export_bits_for(model, export_values, export_bits, val_loader, device, task, tolerance)
            if check is not None and not check.within:
                tqdm.write(export_check_line(label, check.to_dict(), task))
            target = export_compressed(model, Path(export_dir) / f"{name}.epz", export_values, bits,
                                       specs[index] if specs else None)
            decoded = copy.deepcopy(model)
            decoded.load_state_dict(load_compressed(target))
            row.update(
                compressed_file=str(target),
                compressed_bytes=file_size(target),
                compressed_values=export_values,
                compressed_bits=bits,
                export_check=None if check is None else check.to_dict(),
                **{f"decoded_{task.metric}": evaluate(decoded, loader, device, task)},
            )
            line = test_loss_line(row, task)
            if line:  # held on validation, not on the test set: said, never silent
                tqdm.write(line)
        rows.append(row)
    return rows


def _as_saved(model: nn.Module, spec: ModelSpec | None) -> nn.Module:
    """``model`` as its saved checkpoint loads: a new model of ``spec`` (resized to a channel-pruned model's shapes)
    holding ``model``'s state_dict, so that nothing the training left on the module (hooks, optimizer-touched
    tensors, attributes) is timed; without ``spec``, or when the spec does not build it, ``model`` itself (the
    timer's copy then renews its tensors). The global random state is left as it was."""
    if spec is None:
        return model
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    try:
        with torch.random.fork_rng(devices=[]):
            fresh = spec.build()
        resize_to_state_dict(fresh, state)
        fresh.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError):
        return model
    return fresh


def _example_batch(loader: Iterable, input_shape: tuple[int, ...]) -> torch.Tensor:
    """Up to 64 of the loader's first inputs (what a user would run), or one zero input when it has none of that shape."""
    try:
        batch = next(iter(loader))
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
    except (StopIteration, TypeError, IndexError):
        images = None
    if isinstance(images, torch.Tensor) and tuple(images.shape[1:]) == tuple(input_shape) and len(images):
        return images[:64].float()
    return torch.zeros(1, *input_shape)


def _time_table(
    models: list[tuple[str, nn.Module, Path]], loader: Iterable, input_shape: tuple[int, ...], device: torch.device,
    specs: list[ModelSpec] | None, macs: list[int],
) -> list[dict]:
    """The latency fields of each row of the comparison: the models as their files load (:func:`_as_saved`), timed
    interleaved on the first test inputs at batch 1 and 64 (``time_models``: the order rotating round by round),
    with the spread of each model's rounds (relative IQR) and, for models of identical dense compute (same modules,
    shapes and MACs: fine-grained zeros change no dense kernel), one latency and a flag where they were timed apart
    by more than that spread (``equal_compute_groups``)."""
    saved = [_as_saved(model, specs[i] if specs else None) for i, (_, model, _) in enumerate(models)]
    timings = time_models(saved, _example_batch(loader, input_shape), (1, 64), device, rounds=COMPARE_ROUNDS)
    verdicts = equal_compute_groups(timings, [compute_key(model, m) for model, m in zip(saved, macs)])
    labels = [label for label, _, _ in models]
    fields = []
    for timing, verdict in zip(timings, verdicts):
        group = None if verdict is None else {**verdict, "members": [labels[i] for i in verdict["members"]]}
        fields.append({"latency_ms": timing["latency_ms"], "latency_spread": timing["spread"],
                       "latency_rounds": timing["rounds"], "latency_calls": timing["number"],
                       "latency_threads": timing["threads"], "latency_equal_compute": group})
    return fields
