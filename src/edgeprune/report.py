"""The comparison table (Markdown and JSON) and the run's human-readable report."""

from __future__ import annotations

from typing import Iterable, Mapping

__all__ = ["comparison_markdown", "sparsity_markdown", "layers_markdown"]


def _fmt_bytes(n: int | float | None) -> str:
    if n is None:
        return "–"
    return f"{int(n):,} ({n / 2**20:.3f} MiB)"


def comparison_markdown(rows: Iterable[Mapping]) -> str:
    """The seed's comparison table, plus real file sizes: one row per model."""
    rows = list(rows)
    has_compressed = any(r.get("compressed_bytes") is not None for r in rows)
    head = ["Model", "Memory usage (MiB)", "Sparsity (%)", "File on disk (bytes)"]
    if has_compressed:
        head += ["Compressed file (bytes)", "Accuracy decoded (%)"]
    head.append("Accuracy (%)")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = [str(r["model"]), f"{r['theoretical_mib']:.2f}", f"{100 * r['sparsity']:.1f}", _fmt_bytes(r.get("file_bytes"))]
        if has_compressed:
            dec = r.get("decoded_accuracy")
            cells += [_fmt_bytes(r.get("compressed_bytes")), "–" if dec is None else f"{dec:.2f}"]
        cells.append(f"{r['accuracy']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "*Memory usage* is the seed's theoretical size: non-zero parameters × 32 bits. "
        "*File on disk* is the dense safetensors checkpoint, which does not shrink when weights are zero."
    )
    if has_compressed:
        r = next(r for r in rows if r.get("compressed_bytes") is not None)
        bits = f", {r['compressed_bits']} bits" if r.get("compressed_bits") else ""
        lines.append(
            f"*Compressed file* is the sparse, entropy-coded export (values: {r['compressed_values']}{bits}; "
            "edgeprune export), the bytes a device would store; *accuracy decoded* is measured on the weights read back from it."
        )
    return "\n".join(lines) + "\n"


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
