"""The C engine's int32 bounds, checked at export (pure): a model the exporter accepts runs without signed overflow.

The kernels compute in int32 (sizes and offsets, accumulators, requantization), as TFLite's reference
kernels do. Rather than test anything at run time, the exporter proves for every layer, from its constants
and shapes alone, that no int32 value the kernels form can leave the range, and refuses the model with one
line naming the layer otherwise:

* **shifts**: a requantization shift lies in TFLite's ``[-31, 30]`` (``MultiplyByQuantizedMultiplier``'s
  own bounds), so ``x << left`` never shifts by 32 or more, and a multiplier is not negative;
* **sizes**: every tensor, scratch and weight array, and every window extent such as
  ``(out_h - 1) * stride_h + (k_h - 1) * dil_h``, is below ``2**31``;
* **accumulators**: an output channel's accumulator starts at its folded bias and adds ``x * w`` with
  ``|x| <= 128``, so it stays within ``|bias| + 128 * sum|w|`` at every step, which must be below ``2**31``;
* **requantization**: that accumulator shifted left by the channel's shift still fits int32 (TFLite's
  ``x * (1 << left)`` would overflow too), and the requantized value plus the output zero point does.
"""

from __future__ import annotations

import numpy as np

__all__ = ["INT32_LIMIT", "SHIFT_MAX", "SHIFT_MIN", "check_accumulators", "check_int32", "check_requantization",
           "check_shifts", "requantized_bound", "worst_accumulators"]

INT32_LIMIT = 2**31
SHIFT_MIN, SHIFT_MAX = -31, 30  # TFLite's MultiplyByQuantizedMultiplier: shift >= -31 && shift <= 30
INT8_MAGNITUDE = 128  # the largest |x| of an int8 input


def check_shifts(label: str, what: str, multipliers: np.ndarray, shifts: np.ndarray) -> None:
    """One-line ValueError unless every multiplier is >= 0 and every shift in ``[SHIFT_MIN, SHIFT_MAX]``."""
    multipliers, shifts = np.asarray(multipliers).reshape(-1), np.asarray(shifts).reshape(-1)
    bad = np.flatnonzero((shifts < SHIFT_MIN) | (shifts > SHIFT_MAX) | (multipliers < 0))
    if len(bad):
        k = int(bad[0])
        raise ValueError(f"{label}: the {what} requantization of channel {k} has multiplier {int(multipliers[k])} and "
                         f"shift {int(shifts[k])}, outside TFLite's range [{SHIFT_MIN}, {SHIFT_MAX}] (a scale ratio "
                         "of 2**30 or more); requantize the layer with closer input, weight and output scales")


def check_int32(label: str, **values: int) -> None:
    """One-line ValueError naming the first of ``values`` (a name for each size or product the C code forms in
    int32, e.g. ``padded_input_bytes=...``) that is not below ``2**31``."""
    for name, value in values.items():
        if not -INT32_LIMIT <= int(value) < INT32_LIMIT:
            raise ValueError(f"{label}: {name.replace('_', ' ')} is {int(value):,}, beyond the int32 range the engine "
                             "computes sizes and offsets in; split the layer or use smaller tensors")


def worst_accumulators(folded_bias: np.ndarray, abs_weight_sums: np.ndarray) -> np.ndarray:
    """Per output channel the largest ``|accumulator|`` the kernels can reach at any step: ``|folded bias| + 128 *
    sum|w|`` (int64, exact)."""
    return np.abs(np.asarray(folded_bias, np.int64)) + INT8_MAGNITUDE * np.asarray(abs_weight_sums, np.int64)


def check_accumulators(label: str, worst: np.ndarray) -> None:
    """One-line ValueError when a channel's worst accumulator (:func:`worst_accumulators`) reaches ``2**31``."""
    worst = np.asarray(worst, np.int64).reshape(-1)
    if len(worst) and int(worst.max()) >= INT32_LIMIT:
        k = int(worst.argmax())
        raise ValueError(f"{label}: output channel {k} can accumulate {int(worst[k]):,} (|bias| + 128 * sum |w|), "
                         "beyond int32; requantize the layer with a larger weight or bias scale")


def requantized_bound(worst: int, multiplier: int, shift: int) -> int:
    """The largest ``|MultiplyByQuantizedMultiplier(x, multiplier, shift)|`` for ``|x| <= worst``: ``worst``
    shifted left by a positive shift, times ``multiplier / 2**31``, shifted right by a negative one, plus 1 for the
    roundings."""
    return ((int(worst) << max(int(shift), 0)) * int(multiplier) >> (31 + max(-int(shift), 0))) + 1


def check_requantization(label: str, worst: np.ndarray, multipliers: np.ndarray, shifts: np.ndarray,
                         zero_point: int) -> None:
    """One-line ValueError when a value of magnitude up to ``worst`` (per channel, or one for all) overflows int32
    on its way to int8: shifted left by a positive shift, or requantized and added to ``zero_point``."""
    multipliers = np.asarray(multipliers, np.int64).reshape(-1)
    shifts = np.asarray(shifts, np.int64).reshape(-1)
    worst = np.broadcast_to(np.asarray(worst, np.int64).reshape(-1), multipliers.shape)
    for k, (w, m, s) in enumerate(zip(worst.tolist(), multipliers.tolist(), shifts.tolist())):
        shifted = w << max(s, 0)
        if shifted >= INT32_LIMIT:
            raise ValueError(f"{label}: channel {k}'s value of up to {w:,} shifted left by {s} leaves int32 (TFLite's "
                             "arithmetic overflows too); requantize the layer with a larger output scale")
        requantized = requantized_bound(w, m, s)
        if requantized + abs(int(zero_point)) >= INT32_LIMIT:
            raise ValueError(f"{label}: channel {k} requantizes to up to {requantized:,}, which with zero point "
                             f"{zero_point} leaves int32; requantize the layer with a larger output scale")
