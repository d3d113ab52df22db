"""The static arena plan (pure): every activation gets an offset so that tensors alive at once never overlap.

A tensor lives from the step that writes it to the last step that reads it. Tensors are placed
largest first, each at the lowest offset (aligned) where it overlaps no placed tensor whose life
overlaps its own (greedy first fit by size, as TFLM's greedy planner does).
"""

from __future__ import annotations

__all__ = ["plan_arena"]


def plan_arena(sizes: dict[int, int], lives: dict[int, tuple[int, int]], align: int = 4) -> tuple[dict[int, int], int]:
    """Offsets of the tensors ``sizes`` (bytes) alive over the closed step intervals ``lives``, and the arena size."""
    placed: list[tuple[int, int, int, int]] = []  # (offset, end, first step, last step)
    offsets: dict[int, int] = {}
    for t in sorted(sizes, key=lambda k: (-sizes[k], k)):
        first, last = lives[t]
        clashes = sorted((o, e) for o, e, f, l in placed if f <= last and first <= l)
        offset = 0
        for o, e in clashes:
            if offset + sizes[t] <= o:
                break
            offset = max(offset, -(-e // align) * align)
        offsets[t] = offset
        placed.append((offset, offset + sizes[t], first, last))
    size = max((e for _, e, _, _ in placed), default=0)
    return offsets, -(-size // align) * align
