"""The comparison table (Markdown and JSON) and the run's human-readable report."""

from __future__ import annotations

from typing import Iterable, Mapping

from .export.bit_choice import bits_label
from .mcu.measure import mcu_table
from .task import CLASSIFICATION, Task, task_named

__all__ = ["bits_markdown", "comparison_markdown", "device_markdown", "device_target_line", "engine_markdown",
           "export_check_line", "layers_markdown", "mcu_markdown", "mcu_table", "run_report", "sparsity_markdown",
           "test_loss_line"]


def _fmt_bytes(n: int | float | None) -> str:
    if n is None:
        return "–"
    return f"{int(n):,} ({n / 2**20:.3f} MiB)"


def _bits_text(bits: int | Mapping | None) -> str:
    """Bits as a short text: ``4``, or the range of per-layer widths ``2-6 per layer``."""
    return bits_label(bits) + (" per layer" if isinstance(bits, Mapping) else "")


def export_check_line(model: str, check: Mapping, task: Task = CLASSIFICATION) -> str:
    """One line saying that a row's compressed file loses more than the tolerance on the validation split."""
    values = check["values"] + (f", {_bits_text(check['bits'])} bits" if check.get("bits") is not None else "")
    top = check["searched"] and isinstance(check["bits"], Mapping) and all(b == 8 for b in check["bits"].values())
    return (f"{model}: its compressed .epz ({values}{', even 8 bits everywhere' if top else ''}) loses "
            f"{check['loss']:.2f} ({task.drop_unit}) on the validation split ({task.format(check['decoded'])} decoded against "
            f"{task.format(check['reference'])}), more than the tolerance {check['tolerance']:g}")


def test_loss_line(row: Mapping, task: Task = CLASSIFICATION) -> str:
    """One line when a row's compressed file, within the tolerance on the validation split, loses more than it on the
    test set ('' otherwise): the bits were chosen on validation, whose images cannot promise the test set."""
    check, decoded = row.get("export_check"), row.get(f"decoded_{task.metric}")
    if not check or not check["within"] or decoded is None:
        return ""
    loss = float(task.drop(row[task.metric], decoded))
    if loss <= check["tolerance"]:
        return ""
    return (f"{row['model']}: its compressed .epz loses {loss:.2f} ({task.drop_unit}) on the test set "
            f"({task.format(decoded)} decoded against {task.format(row[task.metric])}), more than the tolerance "
            f"{check['tolerance']:g} it held on the validation split; give a larger validation split (--val-size) "
            "or more bits (--export-bits 8, or a smaller --export-tolerance)")


def bits_markdown(rows: Iterable[Mapping], task: Task = CLASSIFICATION) -> str:
    """The k-means bits each row's compressed file chose per weight tensor, and its decoded score on the validation
    split with what it lost there ('' when no row chose per layer)."""
    rows = [r for r in rows if isinstance(r.get("compressed_bits"), Mapping)]
    if not rows:
        return ""
    names = list(dict.fromkeys(name for r in rows for name in r["compressed_bits"]))
    lines = ["| Weight tensor | " + " | ".join(str(r["model"]) for r in rows) + " |", "|---" * (len(rows) + 1) + "|"]
    for name in names:
        lines.append(f"| {name} | " + " | ".join(str(r["compressed_bits"].get(name, "–")) for r in rows) + " |")
    checks = [r.get("export_check") or {} for r in rows]
    lines.append("| *decoded on validation (lost)* | " + " | ".join(
        f"{_fmt_metric(c['decoded'], task)} ({c['loss']:.2f})" if c else "–" for c in checks) + " |")
    return "\n".join(lines) + "\n"


def comparison_markdown(rows: Iterable[Mapping], task: Task = CLASSIFICATION) -> str:
    """The seed's comparison table, plus real file sizes: one row per model, scored by the ``task``'s metric (its
    column headed by the metric: "Accuracy (%)", "MSE")."""
    rows = list(rows)
    has_compressed = any(r.get("compressed_bytes") is not None for r in rows)
    has_speed = any(r.get("latency_ms") for r in rows)
    head = ["Model", "Memory usage (MiB)", "Sparsity (%)", "File on disk (bytes)"]
    if has_compressed:
        head += ["Compressed file (bytes)", "Accuracy decoded (%)" if task.unit == "%" else f"{task.column} decoded"]
    if has_speed:
        head += ["MACs", "Latency b1 / b64 (ms)"]
    head.append(task.column)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = [str(r["model"]), f"{r['theoretical_mib']:.2f}", f"{100 * r['sparsity']:.1f}", _fmt_bytes(r.get("file_bytes"))]
        if has_compressed:
            dec = r.get(f"decoded_{task.metric}")
            cell = "–" if dec is None else _fmt_metric(dec, task)
            if dec is not None and r.get("export_check") and (not r["export_check"]["within"] or test_loss_line(r, task)):
                cell = f"**<span style=\"color:red\">{cell} (loses more than {r['export_check']['tolerance']:g})</span>**"
            cells += [_fmt_bytes(r.get("compressed_bytes")), cell]
        if has_speed:
            cells += [f"{r['macs']:,}" if r.get("macs") is not None else "–", _latency_cell(r)]
        cells.append(_fmt_metric(r[task.metric], task))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "*Memory usage* is the seed's theoretical size: non-zero parameters × 32 bits. "
        "*File on disk* is the dense safetensors checkpoint, which does not shrink when weights are zero."
    )
    if has_speed:
        threads = next(r.get("latency_threads") for r in rows if r.get("latency_ms"))
        lines.append(
            "*MACs* are dense multiply-accumulates per image (zeros still count: only channel pruning lowers them); "
            f"*latency* is the median forward time at batch 1 and 64, measured in this run ({threads} threads), "
            "the models timed as their saved files load (masks detached), in turn round by round, each first "
            "equally often, so that their ratios compare like with like."
        )
        lines += _latency_notes(rows)
    if has_compressed:
        r = next(r for r in rows if r.get("compressed_bytes") is not None)
        chosen = [x for x in rows if isinstance(x.get("compressed_bits"), Mapping)]
        checked = next((x["export_check"] for x in rows if x.get("export_check")), None)
        if chosen:
            bits = (f", k-means bits chosen per layer for each row: the fewest whose file loses at most "
                    f"{chosen[0]['export_check']['tolerance']:g} ({task.drop_unit}) against the row's own model on the "
                    "validation split, listed below")
        else:
            bits = f", {r['compressed_bits']} bits" if r.get("compressed_bits") else ""
        lines.append(
            f"*Compressed file* is the sparse, entropy-coded export (values: {r['compressed_values']}{bits}; "
            f"edgeprune export), the bytes a device would store; *{task.metric} decoded* is measured on the weights read back from it."
        )
        if checked and not chosen:
            lines.append(f"Each file was also scored on the validation split against its own model, with a tolerance of "
                         f"{checked['tolerance']:g} ({task.drop_unit}).")
        for x in rows:
            if x.get("export_check") and not x["export_check"]["within"]:
                lines += ["", f"**<span style=\"color:red\">{export_check_line(x['model'], x['export_check'], task)}.</span>**"]
            elif line := test_loss_line(x, task):
                lines += ["", f"**<span style=\"color:red\">{line}.</span>**"]
        if chosen:
            lines += ["", bits_markdown(rows, task).rstrip("\n")]
    return "\n".join(lines) + "\n"


def _by_batch(values: Mapping | None) -> dict[int, float]:
    """A {batch size: value} mapping with int keys (results.json stores them as strings)."""
    return {int(k): v for k, v in (values or {}).items()}


def _latency_cell(row: Mapping) -> str:
    """The "b1 / b64" latency cell: the row's own medians, or for a model of identical dense compute to others, the
    one latency of them all; † marks a batch size where those identical models were timed apart beyond the noise."""
    group = row.get("latency_equal_compute")
    ms = _by_batch(group["latency_ms"] if group else row.get("latency_ms"))
    flagged = {int(b) for b in group["flagged"]} if group else set()
    return " / ".join(f"{ms[b]:.2f}" + ("†" if b in flagged else "") if b in ms else "–" for b in (1, 64))


def _percent(values: Mapping, batches: Iterable[int] = (1, 64)) -> str:
    """Fractions per batch size as "1.2 % / 0.8 %"."""
    values = _by_batch(values)
    return " / ".join(f"{100 * values[b]:.1f} %" if b in values else "–" for b in batches)


def _latency_notes(rows: list[Mapping]) -> list[str]:
    """The notes under the latency column: one per group of identical dense compute (one latency shown; flagged when
    its members were timed apart beyond the noise, never a speedup), and each model's spread over its rounds."""
    notes, seen = [], set()
    for r in rows:
        group = r.get("latency_equal_compute")
        if not group or tuple(group["members"]) in seen:
            continue
        seen.add(tuple(group["members"]))
        names = [f"*{m}*" for m in group["members"]]
        names = ", ".join(names[:-1]) + " and " + names[-1]
        note = (f"{names} run the same dense network (the same layers, shapes and MACs: fine-grained zeros do not "
                "change PyTorch's dense kernels), so they show one latency, the median of all their rounds; their own "
                f"medians were {_percent(group['apart'])} apart (b1 / b64) against the timer's noise of "
                f"{_percent(group['noise'])} (the largest spread of their rounds).")
        apart, noise = _by_batch(group["apart"]), _by_batch(group["noise"])
        flagged = sorted(int(b) for b in group["flagged"])
        if flagged:
            both = " and ".join
            note += (f" **† At batch {both(map(str, flagged))} they were timed apart by "
                     f"{both(f'{100 * apart[b]:.1f} %' for b in flagged)}, above the noise of "
                     f"{both(f'{100 * noise[b]:.1f} %' for b in flagged)}: treat as equal** (the machine or the process "
                     "made the difference, not the models; each model's own median is in results.json).")
        notes.append(note)
    spreads = [f"{r['model']} {_percent(r['latency_spread'])}" for r in rows if r.get("latency_spread")]
    if spreads:
        notes.append("Spread of each model's rounds (interquartile range over the median), b1 / b64: "
                     + "; ".join(spreads) + ".")
    return notes


def _fmt_metric(value: float, task: Task) -> str:
    """A metric value in a table cell: accuracy with 2 decimals, an MSE with 5 significant digits."""
    return f"{value:.2f}" if task.unit == "%" else f"{value:.5g}"


def sparsity_markdown(sparsity: Mapping[str, float]) -> str:
    """The sparsity dict as a fenced JSON-like block, one layer a line."""
    body = "\n".join(f"    {name!r}: {value:.4g}," for name, value in sparsity.items())
    return "```python\nsparsity_dict = {\n" + body + "\n}\n```\n"


def layers_markdown(layers: Iterable[Mapping]) -> str:
    """Per-layer table: shape, parameters, non-zeros, sparsity."""
    lines = ["| Parameter | Shape | Parameters | Non-zeros | Sparsity (%) |", "|---|---|---|---|---|"]
    for s in layers:
        shape = "×".join(str(d) for d in s["shape"])
        lines.append(f"| {s['name']} | {shape} | {s['params']:,} | {s['nonzeros']:,} | {100 * s['sparsity']:.1f} |")
    return "\n".join(lines) + "\n"


def device_markdown(results: Mapping, task: Task = CLASSIFICATION) -> str:
    """The "on the device" section: ONNX and int8 TFLite scores (the ``task``'s metric), flash and arena, and which
    boards it fits."""
    rows = [r for r in results["comparison"] if r.get("tflite_file")]
    if not rows:
        return ""
    m, unit = task.metric, " (%)" if task.unit == "%" else ""
    lines = ["## On the device", "",
             "Each file was scored on the test set in the runtime that will run it: onnxruntime for ONNX, "
             "TensorFlow Lite Micro's own interpreter for the fully int8 `.tflite` (flash = file bytes, RAM = the arena "
             "TFLM allocated).", "",
             f"| Model | {task.column.removesuffix(' (%)')} PyTorch{unit} | ONNX{unit} | TFLite int8{unit} | Flash (bytes) | "
             "Arena (bytes) |", "|---|---|---|---|---|---|"]
    for r in rows:
        onnx = "–" if r.get(f"onnx_{m}") is None else _fmt_metric(r[f"onnx_{m}"], task)
        lines.append(f"| {r['model']} | {_fmt_metric(r[m], task)} | {onnx} | {_fmt_metric(r[f'tflite_{m}'], task)} | "
                     f"{r['tflite_bytes']:,} | {r['tflite_arena_bytes']:,} |")
    fits = results.get("fits_on")
    if fits:
        lines += ["", f"Fits on ({fits['model']}; model and arena only: the firmware and the TFLM runtime come on top):", "",
                  "| Board | Flash | RAM | Fits |", "|---|---|---|---|"]
        for b in fits["boards"]:
            lines.append(f"| {b['board']} | {100 * b['flash_used']:.1f} % of {b['flash_bytes'] // 1024:,} KB | "
                         f"{100 * b['ram_used']:.1f} % of {b['ram_bytes'] // 1024:,} KB | {'yes' if b['fits'] else '**no**'} |")
        lines += ["", "`model_data.cc` / `model_data.h` hold the `.tflite` as a C array for a TFLM firmware (docs/firmware.md)."]
    return "\n".join(lines) + "\n\n"


def engine_markdown(report: Mapping) -> str:
    """The C engine's layers (``layers.json``): the kernel chosen for each and why, its MACs and bytes, and the totals."""
    lines = ["| Layer | Op | Engine | MACs | Non-zero MACs | Weight + index bytes | Predicted instructions | Why |",
             "|---|---|---|---|---|---|---|---|"]
    for layer in report["layers"]:
        lines.append(f"| {layer['layer']} | {layer['op']} | {layer['engine']} | {layer['macs']:,} | {layer['nonzero_macs']:,} | "
                     f"{layer['weight_bytes'] + layer['index_bytes']:,} | {layer['predicted_instructions']:,} | {layer['why']} |")
    totals = report["totals"]
    lines += ["", f"In all: {totals['macs']:,} MACs, {totals['nonzero_macs']:,} of them with a non-zero weight; weights "
              f"{totals['weight_bytes']:,} B and indices {totals['index_bytes']:,} B; arena {report['arena_bytes']:,} B; "
              f"about {totals['predicted_instructions']:,} instructions per inference (predicted by the cost model)."]
    return "\n".join(lines)


def mcu_markdown(results: Mapping, task: Task = CLASSIFICATION) -> str:
    """The "on the microcontroller" section: each model as the C engine in QEMU, against TFLM, with flash, RAM, instructions."""
    rows = results.get("mcu")
    if not rows:
        return ""
    first = rows[0]
    core = first["target"].replace("cortex-m", "Cortex-M")
    lines = [f"## On the microcontroller (emulated {core})", "",
             f"Each model ran as edgeprune's C engine (sparse kernels where they cost less) built for {first['target']} and "
             f"run in {first['board']} on {first.get('sample') or str(first['images']) + ' test samples'}; "
             "every output was compared with TensorFlow Lite Micro's on the same inputs (a difference stops the run). "
             "Instructions are instructions executed in emulation "
             f"(`-icount shift=0`, resolution {first['instructions_resolution']:g}), not cycles. "
             f"Cycles are an estimate: {first.get('cycles_note') or 'no estimate'}.", "",
             f"| Model | Equal to TFLM | {task.column} | Instructions per inference | vs first row | Estimated cycles | "
             "vs first row | Flash (bytes) | Weights + indices (bytes) | RAM (bytes) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['instructions'] / first['instructions']:.2f}x" if r["instructions"] and first["instructions"] else "–"
        cycles, first_cycles = r.get("estimated_cycles"), first.get("estimated_cycles")
        cycle_ratio = f"{cycles / first_cycles:.2f}x" if cycles and first_cycles else "–"
        accuracy = "–" if r.get(task.metric) is None else _fmt_metric(r[task.metric], task)
        lines.append(f"| {r['model']} | {r['equal_to_tflm']} / {r['images_run']} | {accuracy} | {r['instructions'] or 0:,} | "
                     f"{ratio} | {'-' if cycles is None else format(cycles, ',')} | {cycle_ratio} | {r['flash_bytes']:,} | "
                     f"{r['weight_bytes'] + r['index_bytes']:,} | {r['ram_bytes'] or 0:,} |")
    last = rows[-1]
    engines = ", ".join(f"{layer['op']} {layer['engine']}" for layer in last["layers"] if layer["engine"] != "-")
    lines += ["", f"Kernels of the last row: {engines}. Per-layer instructions and the boards each fits are in "
              "`mcu/*/mcu.json`; the generated C library is in `mcu/*/engine/` (docs/firmware.md shows how to build it in)."]
    return "\n".join(lines) + "\n\n"


def channels_markdown(channels: Mapping | None) -> str:
    """The "whole channels" section: the ratios removed, MACs (and measured latency) left, channels per layer."""
    if not channels:
        return ""
    lines = ["## Whole channels removed first", "",
             f"MACs per image: {channels['macs_dense']:,} dense, {channels['macs']:,} after ({100 * channels['macs_fraction']:.1f} %)"
             + (f"; measured batch-64 latency {100 * channels['latency_fraction_b64']:.1f} % of the dense model's"
                if "latency_fraction_b64" in channels else "") + f". Importance: {channels['channel_importance']}.", "",
             "Ratios removed: " + ", ".join(f"`{name}` {ratio:g}" for name, ratio in channels["channel_ratios"].items() if ratio)
             + ".", "", "| Module | Input channels | Output channels |", "|---|---|---|"]
    for name, count in channels.get("channels", {}).items():
        lines.append(f"| {name} | {count['in']} | {count['out']} |")
    if channels.get("scanned"):
        lines += ["", "Channel sensitivity scan on the validation split (chosen ratios marked):", "", "![channel scan](channel_scan.png)"]
    return "\n".join(lines) + "\n\n"


def device_target_line(device: Mapping | None) -> str:
    """What a device target asked, what the cost model predicted and what QEMU measured for the plan and for the final
    model ('' without one)."""
    if not device:
        return ""
    unit = {"instructions": "instructions", "estimated_cycles": "estimated cycles"}.get(device["quantity"], "B of flash")
    asked = (f"{device['target_fraction']:g} of the dense engine's {device['dense'][device['quantity']]:,} {unit}"
             if device["target_fraction"] is not None else f"{device['target']:,.0f} B of flash")
    error = "" if device["prediction_error"] is None else f", prediction {device['prediction_error']:+.1%}"
    return (f"; device target {asked}: QEMU measured {device['measured']:,.0f} {unit} (predicted {device['predicted']:,.0f}"
            f"{error}), {'met' if device['met'] else 'NOT met'} within 5 % after {len(device['checks'])} QEMU check(s); "
            f"the final model measures {device['final'][device['quantity']]:,} {unit}, "
            f"{'still met' if device['final']['met'] else 'NOT met'}")


def _task_line(task: Task, data: Mapping) -> str:
    """The line naming the task and its metric (and the sample shape of a tensors data set); '' for image
    classification, whose report is as it always was."""
    shape = data.get("input_shape")
    if task is CLASSIFICATION and not shape:
        return ""
    what = ("classification, scored by top-1 accuracy; a drop is accuracy points lost" if task is CLASSIFICATION else
            "reconstruction of the input, scored by its mean squared error (MSE, lower is better); a drop (--max-drop) is "
            "the MSE's increase in percent of the dense model's")
    return f"Task: {what}." + (f" Samples of shape {' x '.join(map(str, shape))}." if shape else "") + "\n"


def run_report(results: Mapping, model: str, scan_split: str, scanned: bool = True) -> str:
    """The report a person reads: the table, the dict, the per-layer sparsity and the plots."""
    data = results["data"]
    task = task_named(results.get("task", {}).get("name", "classification"))
    shown = [s for s in results["layers"] if len(s["shape"]) > 1 or s["name"] in results["sparsity_dict"]]
    plan = results["plan"]
    how = (
        "given by the user"
        if plan.get("method") == "given"
        else f"chosen by the planner ({plan.get('method')}, target {plan.get('target')}"
        + (f", budget {plan['budget']}" if plan.get("budget") else "") + ") from the sensitivity scan"
    ) + device_target_line(results.get("device_target"))
    scan_plot = (
        f"Sensitivity scan on the {scan_split} split (chosen sparsity marked):\n\n![sensitivity](sensitivity.png)\n\n"
        if scanned else ""
    )
    quality = results.get("quality")
    quality_line = "" if not quality else (
        f"Final model within `--max-loss {quality['max_loss']:g}`: it loses {quality['loss']:.2f} ({task.drop_unit}) "
        "against the dense model on the test set.\n" if quality["within"] else
        f"**<span style=\"color:red\">Below the limit: the final model loses {quality['loss']:.2f} ({task.drop_unit}) "
        f"against the dense model on the test set, more than `--max-loss {quality['max_loss']:g}`.</span>**\n")
    resumed = results.get("resumed_steps")
    resumed_line = f"Resumed: the steps {', '.join(resumed)} were loaded from an interrupted run of the same config.\n" if resumed else ""
    return f"""# edgeprune report: {model} on {data['name']}

Data: {data['train_images']:,} training images, {data['val_images']:,} held out for validation
(scan and choice of the fine-tuning epoch), {data['test_images']:,} test images (the table below).
Dense MACs per image: {results['macs_dense']['total']:,}. Run time: {results['seconds']} s.
{_task_line(task, data)}{quality_line}{resumed_line}
## Comparison (test set)

{comparison_markdown(results['comparison'], task)}
{channels_markdown(results.get("channels"))}## Sparsity dict

Sparsity dict {how}:

{sparsity_markdown(results['sparsity_dict'])}
## Per-layer sparsity of the fine-tuned model

{layers_markdown(shown)}
## Plots

{scan_plot}Weight distribution of the baseline:

![weights](weight_distribution.png)

Non-zero weights of the fine-tuned model:

![weights fine-tuned](weight_distribution_finetuned.png)

{device_markdown(results, task)}{mcu_markdown(results, task)}Parameters per layer, kept and pruned:

![parameters](num_parameters.png)

Files: `baseline.safetensors`, `pruned.safetensors`, `finetuned.safetensors` (with `*.masks.safetensors`),
the compressed `*.epz` files, `scan.json`, `plan.json`, `sparsity.json`, `results.json`, `config.json`.
"""
