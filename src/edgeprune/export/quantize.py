"""Weight quantization arithmetic (pure): linear int8 with a scale, and k-means codebooks.

Only *weight tensors* (floating point, more than one dimension) are quantized; biases,
norms and buffers are always kept exactly. Zeros are pruned positions: they stay exactly
zero in every mode and k-means never spends a centroid on them.

The value mode of a weight tensor is one of:

- ``"fp32"``: stored as float32 (lossless for float32 weights),
- ``"fp16"``: rounded to float16,
- ``"int8"``: ``round(w / scale)`` in [-127, 127] with one float32 scale per tensor,
- ``"kmeans"``: a codebook of at most ``2**bits`` float32 centroids (``bits`` in 2..8)
  learnt on the non-zero weights, each non-zero stored as a ``bits``-bit index.

Per-tensor settings are written like a sparsity dict: a plain value for every tensor, or a
dict looked up by exact name, then by ``"re:<regex>"`` keys (full match, in order), then
``"_default"``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

import torch

from ..prune.settings import resolve_layer_settings, setting_for

__all__ = [
    "MODES",
    "KMEANS_ITERATIONS",
    "QuantConfig",
    "QuantizedValues",
    "check_bits",
    "is_weight",
    "kmeans_dequantize",
    "kmeans_quantize",
    "linear_dequantize",
    "linear_quantize",
    "lookup",
    "quantize_state_dict",
    "quantize_values",
    "dequantize_values",
]

MODES = ("fp32", "fp16", "int8", "kmeans")
KMEANS_ITERATIONS = 100
"""At most this many Lloyd iterations (assign, then move each centroid to its cluster's mean)."""

BITS_HINT = "give an int from 2 to 8, e.g. bits=4 or bits={'_default': 4, 'fc1.weight': 3}"


# --------------------------------------------------------------------------- settings


def is_weight(tensor: torch.Tensor) -> bool:
    """Whether a state-dict entry is a weight tensor that value modes apply to: floating, dim > 1."""
    return tensor.is_floating_point() and tensor.dim() > 1


def check_bits(bits: object, name: str = "bits") -> int:
    """Return ``bits`` if it is an int in 2..8, else raise ``ValueError`` naming the fix."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"{name}: bit width must be an int from 2 to 8, got {bits!r}; {BITS_HINT}")
    return bits


def _check_spec(spec: object, what: str, check_value) -> None:
    """Validate a plain value or a per-tensor dict whose values pass ``check_value``."""
    if not isinstance(spec, Mapping):
        check_value(spec, what)
        return
    for key, value in spec.items():
        if not isinstance(key, str):
            raise ValueError(f"{what}: keys must be tensor names, 're:<regex>' or '_default', got {key!r}")
        if key.startswith("re:"):
            try:
                re.compile(key[3:])
            except re.error as exc:
                raise ValueError(f"{what}: key {key!r} is not a valid regular expression: {exc}") from exc
        check_value(value, f"{what}[{key!r}]")


def lookup(spec: object, name: str) -> object:
    """The setting for tensor ``name``: ``spec`` itself, or from a dict by exact name, ``re:`` key, ``_default``.

    Returns ``None`` when a dict has no matching key and no ``_default``.
    """
    return setting_for(spec, name) if isinstance(spec, Mapping) else spec


def _check_mode(mode: object, name: str) -> None:
    if mode not in MODES:
        raise ValueError(f"{name}: value mode must be one of {', '.join(MODES)}, got {mode!r}")


@dataclass(frozen=True)
class QuantConfig:
    """How each weight tensor's values are stored: ``values`` mode and, for k-means, ``bits``.

    Both may be per-tensor dicts (exact name, ``re:`` key, ``_default``). A weight tensor with
    no matching ``values`` key is stored as fp32.
    """

    values: str | Mapping[str, str] = "fp32"
    bits: int | Mapping[str, int] | None = None

    def __post_init__(self) -> None:
        _check_spec(self.values, "values", _check_mode)
        if self.bits is not None:
            _check_spec(self.bits, "bits", check_bits)
        if self.values in ("fp32", "fp16") and self.bits is not None:
            raise ValueError(
                f"bits={self.bits!r} only applies to values='kmeans' (and 8 to 'int8'); "
                f"drop bits or use values='kmeans'"
            )
        if self.values == "int8" and self.bits not in (None, 8):
            raise ValueError(
                f"values='int8' always uses 8 bits, got bits={self.bits!r}; "
                "for fewer bits use values='kmeans' with bits from 2 to 8"
            )
        if self.values == "kmeans" and self.bits is None:
            raise ValueError(f"values='kmeans' needs a bit width; {BITS_HINT}")

    def check_names(self, names: Iterable[str]) -> None:
        """Raise ``ValueError`` listing the valid names when a per-tensor key names or matches no tensor."""
        names = list(names)
        for spec in (self.values, self.bits):
            if isinstance(spec, Mapping):
                resolve_layer_settings(spec, [], names, lambda value, key: value)

    def mode_for(self, name: str, tensor: torch.Tensor) -> tuple[str, int | None] | None:
        """``(mode, bits)`` for a weight tensor (bits only for k-means), ``None`` for tensors kept exactly."""
        if not is_weight(tensor):
            return None
        mode = lookup(self.values, name) or "fp32"
        if mode != "kmeans":
            return mode, None
        bits = lookup(self.bits, name)
        if bits is None:
            raise ValueError(f"{name}: values='kmeans' but no bit width matches this tensor; {BITS_HINT}")
        return mode, bits


# --------------------------------------------------------------------------- linear


def linear_quantize(tensor: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, float]:
    """Symmetric linear quantization: int8 codes ``round(w / scale)`` in ``[-q, q]``, ``q = 2**(bits-1) - 1``.

    ``scale = max|w| / q`` as a float32 number (1.0 for an all-zero tensor), so zero maps to code 0.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"linear_quantize: bits must be an int from 2 to 8, got {bits!r}")
    qmax = 2 ** (bits - 1) - 1
    values = tensor.detach().to(torch.float32)
    amax = values.abs().max() if values.numel() else torch.tensor(0.0)
    scale = (amax / qmax) if amax > 0 else torch.tensor(1.0)
    codes = torch.round(values / scale).clamp_(-qmax, qmax).to(torch.int8)
    return codes, float(scale)


def linear_dequantize(codes: torch.Tensor, scale: float) -> torch.Tensor:
    """float32 values ``codes * scale`` (the scale rounded to float32, as ``linear_quantize`` made it)."""
    return codes.to(torch.float32) * torch.tensor(scale, dtype=torch.float32)


# --------------------------------------------------------------------------- k-means


def _nearest(values: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid of a sorted ``codebook`` for each value (a tie goes to the lower one)."""
    midpoints = (codebook[1:] + codebook[:-1]) / 2
    return torch.searchsorted(midpoints, values)


def kmeans_quantize(
    tensor: torch.Tensor,
    bits: int,
    mask: torch.Tensor | None = None,
    iterations: int = KMEANS_ITERATIONS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster the weights ``tensor[mask]`` (default: the non-zeros) into at most ``2**bits`` centroids.

    Returns ``(codebook, codes)``: a sorted float32 codebook and, for each selected weight in
    row-major order, the int64 index of its nearest centroid. Deterministic: centroids start
    evenly spaced between the smallest and largest weight (Deep Compression's linear init)
    and move by Lloyd iterations. If the weights already take at most ``2**bits`` distinct
    values the codebook is exactly those values, so quantizing twice changes nothing.
    Both results are on the CPU, whatever the tensor's device.
    """
    check_bits(bits)
    mask = tensor != 0 if mask is None else mask.to(torch.bool)
    values = tensor.detach()[mask].to("cpu", torch.float64)  # 1-D clustering is cheap: done on the CPU
    k = 2**bits
    distinct = torch.unique(values)
    if distinct.numel() <= k:
        return distinct.to(torch.float32), torch.searchsorted(distinct, values)
    # In one dimension every cluster is a run of the sorted values, so an iteration only
    # needs the k-1 cut points and prefix sums, not a pass over every weight.
    ordered = values.sort().values
    prefix = torch.cat([torch.zeros(1, dtype=torch.float64), ordered.cumsum(0)])
    codebook = torch.linspace(float(ordered[0]), float(ordered[-1]), k, dtype=torch.float64)
    edges = None
    for _ in range(iterations):
        cuts = torch.searchsorted(ordered, (codebook[1:] + codebook[:-1]) / 2, right=True)
        new_edges = torch.cat([torch.zeros(1, dtype=torch.long), cuts, torch.tensor([ordered.numel()])])
        if edges is not None and torch.equal(new_edges, edges):
            break
        edges = new_edges
        counts = edges[1:] - edges[:-1]
        sums = prefix[edges[1:]] - prefix[edges[:-1]]
        codebook = torch.where(counts > 0, sums / counts.clamp(min=1), codebook).sort().values
    codebook = codebook.to(torch.float32)
    return codebook, _nearest(values.to(torch.float32), codebook)


def kmeans_dequantize(codebook: torch.Tensor, codes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """float32 tensor shaped like ``mask``: ``codebook[codes]`` where ``mask`` is True, zero elsewhere."""
    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    out[mask] = codebook.to(mask.device)[codes.to(mask.device)]
    return out


# --------------------------------------------------------------------------- one tensor's stored values


@dataclass(frozen=True)
class QuantizedValues:
    """The stored form of a weight tensor's non-zero values, in row-major order.

    ``data`` is float32 (fp32), float16 (fp16), int8 codes (int8) or int64 codebook indices
    (kmeans); ``scale`` is set for int8 only, ``codebook`` and ``bits`` for kmeans only.
    """

    mode: str
    data: torch.Tensor
    scale: float | None = None
    codebook: torch.Tensor | None = None
    bits: int | None = None


def quantize_values(values: torch.Tensor, mode: str, bits: int | None = None) -> QuantizedValues:
    """Quantize a 1-D tensor of non-zero weights in ``mode`` (``bits`` for kmeans)."""
    _check_mode(mode, "quantize_values")
    if mode == "fp32":
        return QuantizedValues(mode, values.to(torch.float32))
    if mode == "fp16":
        return QuantizedValues(mode, values.to(torch.float16))
    if mode == "int8":
        codes, scale = linear_quantize(values, 8)
        return QuantizedValues(mode, codes, scale=scale)
    codebook, codes = kmeans_quantize(values, bits, mask=torch.ones_like(values, dtype=torch.bool))
    return QuantizedValues(mode, codes, codebook=codebook, bits=bits)


def dequantize_values(q: QuantizedValues) -> torch.Tensor:
    """The float32 values that ``q`` stands for."""
    if q.mode == "int8":
        return linear_dequantize(q.data, q.scale)
    if q.mode == "kmeans":
        return q.codebook[q.data]
    return q.data.to(torch.float32)


def quantize_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    values: str | Mapping[str, str] = "fp32",
    bits: int | Mapping[str, int] | None = None,
) -> dict[str, torch.Tensor]:
    """The state dict exactly as ``load_compressed`` returns it after ``save_compressed`` with these settings.

    Weight tensors are quantized on their non-zeros; zeros (either sign) become +0.0 and stay
    zero; each tensor keeps its dtype and shape. Everything else is copied unchanged. The result is on the CPU.
    """
    config = QuantConfig(values, bits)
    config.check_names(state_dict)
    out = {}
    for name, tensor in state_dict.items():
        setting = config.mode_for(name, tensor)
        if setting is None:
            out[name] = tensor.detach().clone()
            continue
        tensor = tensor.detach().cpu()
        mask = tensor != 0
        q = quantize_values(tensor[mask], *setting)
        dense = torch.zeros(tensor.shape, dtype=torch.float32)
        dense[mask] = dequantize_values(q)
        out[name] = dense.to(tensor.dtype)
    return out
