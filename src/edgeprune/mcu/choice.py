"""Which engine runs each weighted layer, and the weight budget's one exchange rate (pure).

A weighted layer has *variants*: dense int8, and sparse with 4- or 8-bit gap entries (each also with look-up-table
values when the .tflite stores the weights as TFLM tables). Each variant has a predicted instruction count
(:mod:`edgeprune.mcu.cost`) and a byte count (weights and index). :func:`choose` picks one per layer by the
lowest ``instructions + flash_weight * bytes``; :func:`weight_for_budget` finds the smallest ``flash_weight`` at
which the layers' choices fit a byte budget. Both rank variants by :func:`variant_key`, so they break ties alike
(the fewer bytes, then the earlier variant), and the bytes the solver counts are the bytes the lowering takes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .cost import FLASH_WEIGHT
from .sparse import CODE_BITS, ENTRY_BITS, SparseWeights

__all__ = ["SPARSE_MODES", "Choice", "chosen_bytes", "choose", "sparse_variants", "variant_key", "weight_for_budget"]

SPARSE_MODES = ("auto", "always", "never")

#: A layer's variants as the budget solver sees them: per variant (predicted instructions, bytes).
Options = list[tuple[float, int]]


@dataclass(frozen=True)
class Choice:
    """A layer's engine: ``engine`` ``"dense"`` or ``"sparse"``, its sparse ``weights`` (None for dense), ``why`` (for
    layers.json), its predicted ``instructions``, and ``options``: the (instructions, bytes) it chose among."""

    engine: str
    weights: SparseWeights | None
    why: str
    instructions: float
    options: Options


def variant_key(flash_weight: float) -> Callable[[tuple[float, int]], tuple[float, int]]:
    """The rank of an (instructions, bytes) variant at ``flash_weight`` instructions a byte: its cost, then its bytes
    (``min`` keeps the earlier of equal keys)."""
    return lambda variant: (variant[0] + flash_weight * variant[1], variant[1])


def sparse_variants(weight: np.ndarray, encode: Callable[..., SparseWeights],
                    lut: bool) -> list[tuple[str, Callable[[], SparseWeights]]]:
    """The sparse encodings of a layer's ``weight`` (``encode(weight, bits, lut)``): 4- and 8-bit entries, and with
    ``lut`` (the .tflite stores the weights as look-up tables) and every channel holding at most 16 distinct
    non-zeros, each also with look-up-table values (which take more bytes than int8 values in short runs: a run's
    table row is as long as its most distinct values)."""
    rows = weight.reshape(len(weight), -1)
    lut = lut and max((len(np.unique(row[row != 0])) for row in rows), default=0) <= 1 << CODE_BITS
    variants = [(f"sparse {b}-bit", lambda b=b: encode(weight, b, False)) for b in ENTRY_BITS]
    return variants + [(f"sparse {b}-bit + lut", lambda b=b: encode(weight, b, True)) for b in ENTRY_BITS if lut]


def choose(sparse: str, flash_weight: float, dense_instructions: float, dense_bytes: int,
           encodings: list[tuple[str, Callable[[], SparseWeights]]],
           sparse_instructions: Callable[[SparseWeights], float]) -> Choice:
    """The engine of a weighted layer among "dense" and the sparse ``encodings`` ((name, function making the
    weights); a ValueError from one leaves it out, with its reason in ``why``); ``sparse_instructions`` predicts a
    sparse variant's instructions.

    ``sparse`` ``"auto"`` takes the variant of lowest :func:`variant_key` at ``flash_weight``, ``"always"`` the
    lowest sparse one, ``"never"`` dense. A layer the .tflite stores as look-up tables (it has ``+ lut`` variants)
    takes the variant of fewest bytes instead (sparse with ``always``): the file asks for flash.
    """
    options = [("dense", None, dense_instructions, dense_bytes)]
    refused = []
    for name, encode in encodings if sparse != "never" else []:
        try:
            weights = encode()
        except ValueError as exc:
            refused.append(f"{name}: {exc}")
            continue
        options.append((name, weights, sparse_instructions(weights), weights.value_bytes + weights.index_bytes))
    pool = options[1:] if sparse == "always" and len(options) > 1 else options
    rank = variant_key(flash_weight)
    best = min(pool, key=lambda o: rank((o[2], o[3])))
    reason = f" (sparse='{sparse}')" if sparse != "auto" else (
        " (lowest cost)" if flash_weight == FLASH_WEIGHT else
        f" (lowest cost at {flash_weight:,.0f} instructions a byte, to meet the weight budget)")
    if any(o[1] is not None and o[1].table is not None for o in options):
        best = min(pool, key=lambda o: (o[3], o[2]))
        reason = " (fewest bytes: the .tflite stores these weights as look-up tables)"
        pool = [best]
    others = "; ".join(f"{n} {i:,.0f} + {b:,} B" for n, _, i, b in options if n != best[0])
    why = (f"{best[0]}: {best[2]:,.0f} instructions + {best[3]:,} B of weights and index" + reason
           + (f"; {others}" if others else "") + (f"; {', '.join(refused)}" if refused else ""))
    return Choice(best[0].split()[0], best[1], why, best[2], [(o[2], o[3]) for o in pool])


def chosen_bytes(options: list[Options], flash_weight: float) -> int:
    """Weight and index bytes of the layers' variants that :func:`choose` takes at ``flash_weight``."""
    return sum(min(layer, key=variant_key(flash_weight))[1] for layer in options)


def weight_for_budget(options: list[Options], budget: int) -> float:
    """The smallest instructions-per-byte weight (at least :data:`~edgeprune.mcu.cost.FLASH_WEIGHT`) at which the
    layers' variants (per layer its (instructions, bytes) options) hold at most ``budget`` bytes of weights
    and index: each layer then trades instructions for bytes at the same rate, the fastest such choice on the
    lower hull of instructions against bytes. One-line ValueError when even the fewest bytes exceed ``budget``."""
    fewest = sum(min(b for _, b in layer) for layer in options)
    if fewest > budget:
        raise ValueError(f"a weight budget of {budget:,} B is below the {fewest:,} B of weights and index that the "
                         "most compact formats take; give at least that, or prune more")
    low, high = FLASH_WEIGHT, FLASH_WEIGHT
    while chosen_bytes(options, high) > budget:
        low, high = high, high * 2
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (low, middle) if chosen_bytes(options, middle) <= budget else (middle, high)
    return high
