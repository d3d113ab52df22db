"""The C kernels' scratch sizes, read from their one definition in ``c/ep_kernels.h``.

A kernel's scratch need is a fact about the C code that reads it, so the header defines it, next to the
kernels' declarations, as a macro of integer arguments (``#define EP_PATCH_WORDS(k_h, k_w, in_c) (...)``).
The exporter evaluates the same macro to allocate the scratch and writes the size it allocated into the
kernel call; the kernel checks that size against the macro and returns ``EP_ERROR_DIMS`` when it is too small.
A kernel that comes to need more scratch thus changes one line, and a size that disagrees is an error code,
never an overrun.

Only what those macros use is evaluated: integer literals, the macro's arguments, other such macros, ``+``,
``-``, ``*`` and C's ``/`` (integer division toward zero), and parentheses.
"""

from __future__ import annotations

import ast
import functools
import re
from importlib import resources

__all__ = ["HEADER", "kernel_size", "macros"]

HEADER = "ep_kernels.h"
_DEFINE = re.compile(r"^#define\s+(EP_\w+_(?:WORDS|PADDED))(?:\(([^)]*)\))?\s+(.+?)\s*$", re.MULTILINE)


@functools.cache
def macros() -> dict[str, tuple[tuple[str, ...], ast.expr]]:
    """The size macros of :data:`HEADER`: name -> (argument names, parsed body)."""
    text = (resources.files("edgeprune.mcu") / "c" / HEADER).read_text(encoding="utf-8")
    found = {}
    for name, params, body in _DEFINE.findall(text):
        args = tuple(p.strip() for p in params.split(",") if p.strip())
        found[name] = (args, ast.parse(body, mode="eval").body)
    return found


def _c_divide(a: int, b: int) -> int:
    """C's integer ``/``: the quotient truncated toward zero."""
    quotient = abs(a) // abs(b)
    return quotient if (a < 0) == (b < 0) else -quotient


_OPERATORS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
              ast.Div: _c_divide}


def _evaluate(node: ast.expr, values: dict[str, int]) -> int:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.Name) and node.id in values:
        return values[node.id]
    if isinstance(node, ast.Name) and node.id in macros() and not macros()[node.id][0]:
        return kernel_size(node.id)  # a size macro without arguments
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.left, values), _evaluate(node.right, values))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        return kernel_size(node.func.id, *(_evaluate(a, values) for a in node.args))
    raise ValueError(f"{HEADER}: a size macro uses {ast.unparse(node)!r}; only integers, arguments, "
                     "+ - * / and other size macros are read")


def kernel_size(name: str, *args: int) -> int:
    """The value of size macro ``name`` of :data:`HEADER` for the integer ``args`` (e.g.
    ``kernel_size("EP_PATCH_WORDS", 3, 3, 16)`` is 144 words)."""
    table = macros()
    if name not in table:
        raise ValueError(f"{HEADER} defines no size macro {name}; it defines {', '.join(sorted(table))}")
    params, body = table[name]
    if len(args) != len(params):
        raise ValueError(f"{name} takes {len(params)} arguments ({', '.join(params)}), got {len(args)}")
    return _evaluate(body, dict(zip(params, (int(a) for a in args))))
