"""Write the C engine for an int8 .tflite: ``edgeprune_model.h/.c``, the kernels, and ``layers.json``.

The generated model file holds the weights as const arrays, one static arena (offsets planned at
export time by :func:`edgeprune.mcu.arena.plan_arena`) and one kernel call per step of
:func:`edgeprune.mcu.lowering.lower`. After step ``i`` it runs ``EDGEPRUNE_LAYER_DONE(i);``, a macro that
is ``((void)0)`` unless the compiler is given ``-DEDGEPRUNE_LAYER_DONE=name`` (then ``void name(int)``
is declared and called: a board harness counts instructions per layer with it).

No text from the .tflite reaches the C files: arrays and structs are named by step number, and
comments hold only op names of the schema.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import numpy as np

from ..export.int8_graph import Int8Graph
from ..export.tflite_read import load_tflite, read_tflite
from ..files import write_text_atomic
from .arena import plan_arena
from .lowering import Arg, Plan, check_sparse_mode, lower

__all__ = ["KERNEL_FILES", "export_c", "render"]

#: The kernels' files, as CMSIS-NN lays them out: the public header, private helper headers, one op per source file.
KERNEL_FILES = ("ep_kernels.h", "ep_requant.h", "ep_conv_group.h", "ep_sparse_runs.h", "ep_conv_dense.c",
                "ep_conv_sparse.c", "ep_depthwise.c", "ep_fc.c", "ep_add.c", "ep_pool.c", "ep_pad.c", "ep_softmax.c",
                "ep_misc.c", "ep_quantize.c")
_CTYPE = {np.dtype(np.int8): "int8_t", np.dtype(np.uint8): "uint8_t", np.dtype(np.uint16): "uint16_t",
          np.dtype(np.int32): "int32_t"}


def _c_array(name: str, values: np.ndarray) -> str:
    """``static const T name[] = {...};`` wrapped at 24 values a line."""
    flat = values.reshape(-1).tolist() or [0]
    lines = [", ".join(str(v) for v in flat[i:i + 24]) for i in range(0, len(flat), 24)]
    body = ",\n    ".join(lines)
    return f"static const {_CTYPE[values.dtype]} {name}[{len(flat)}] = {{\n    {body}\n}};\n"


def _c_float(value: float) -> str:
    """A float32 number as a C float literal that parses back to the same float32."""
    return f"{float(np.float32(value))!r}f"


_C_TYPES = {"int8": "int8_t", "float32": "float"}


class _Writer:
    def __init__(self, plan: Plan, offsets: dict[int, int]) -> None:
        self.plan, self.offsets = plan, offsets
        self.consts: list[str] = []

    def pointer(self, t: int) -> str:
        root = self.plan.root(t)
        if root == self.plan.root(self.plan.input):
            return "input"
        if root == self.plan.root(self.plan.output):
            return "output"
        return f"(ep_arena + {self.offsets[root]})"

    def array(self, name: str, values: np.ndarray) -> str:
        if values.dtype not in _CTYPE:
            values = values.astype(np.int32)
        self.consts.append(_c_array(name, values))
        return name

    def struct(self, name: str, ctype: str, fields: dict) -> str:
        inits = []
        for key, value in fields.items():
            if isinstance(value, np.ndarray):
                value = self.array(f"{name}_{key}", value)
            inits.append(f".{key} = {value}")
        self.consts.append(f"static const {ctype} {name} = {{{', '.join(inits)}}};\n")
        return f"&{name}"

    def argument(self, step: int, k: int, arg: Arg) -> str:
        if arg.kind == "int":
            return str(int(arg.value))
        if arg.kind == "float":
            return _c_float(arg.value)
        if arg.kind == "tensor":
            return self.pointer(arg.value)
        if arg.kind == "words":
            return f"(uint32_t *)(void *){self.pointer(arg.value)}"
        if arg.kind == "array":
            return self.array(f"s{step}_a{k}", np.asarray(arg.value))
        ctype, fields = arg.value
        return self.struct(f"s{step}_a{k}", ctype, fields)

    def calls(self) -> list[str]:
        lines = []
        for i, step in enumerate(self.plan.steps):
            args = ", ".join(self.argument(i, k, a) for k, a in enumerate(step.args))
            origin = f"op {step.source}" if step.source >= 0 else "inserted by the engine"
            lines.append(f"    /* step {i}: {step.op} ({origin}), {step.engine} */\n"
                         f"    status = {step.kernel}({args});\n"
                         f"    if (status != EP_OK) {{\n        return status;\n    }}\n"
                         f"    EDGEPRUNE_LAYER_DONE({i});\n")
        return lines


def _lives(plan: Plan) -> dict[int, tuple[int, int]]:
    """(step writing, last step reading) of each tensor's bytes."""
    lives: dict[int, tuple[int, int]] = {}
    for i, step in enumerate(plan.steps):
        for t in (*step.inputs, step.output):
            root = plan.root(t)
            first, last = lives.get(root, (i, i))
            lives[root] = (min(first, i), max(last, i))
    return lives


def render(plan: Plan) -> dict[str, str]:
    """The generated files' text (``edgeprune_model.h``, ``edgeprune_model.c``, ``layers.json``) for ``plan``."""
    lives = _lives(plan)
    ends = {plan.root(plan.input), plan.root(plan.output)}
    sizes: dict[int, int] = {}
    for t, size in plan.sizes.items():
        root = plan.root(t)
        if root not in ends:
            sizes[root] = max(sizes.get(root, 0), size)
    offsets, arena = plan_arena(sizes, {t: lives.get(t, (0, 0)) for t in sizes})
    writer = _Writer(plan, offsets)
    calls = writer.calls()
    in_scale, in_zp = plan.input_qparams
    out_scale, out_zp = plan.output_qparams
    header = (
        "/* Generated by edgeprune from an int8 .tflite: the model's C engine. Do not edit. */\n"
        "#ifndef EDGEPRUNE_MODEL_H\n#define EDGEPRUNE_MODEL_H\n\n#include <stdint.h>\n\n"
        "#ifdef __cplusplus\nextern \"C\" {\n#endif\n\n"
        f"/* input: {plan.input_dtype} {list(plan.input_shape)}; output: {plan.output_dtype} {list(plan.output_shape)} "
        "(sizes count elements) */\n"
        f"#define EDGEPRUNE_INPUT_TYPE {_C_TYPES[plan.input_dtype]}\n"
        f"#define EDGEPRUNE_OUTPUT_TYPE {_C_TYPES[plan.output_dtype]}\n"
        f"#define EDGEPRUNE_INPUT_SIZE {int(np.prod(plan.input_shape))}\n"
        f"#define EDGEPRUNE_OUTPUT_SIZE {int(np.prod(plan.output_shape))}\n"
        f"#define EDGEPRUNE_ARENA_SIZE {arena}\n"
        f"#define EDGEPRUNE_NUM_LAYERS {len(plan.steps)}\n"
        + ("/* the int8 quantization next to the float ends (the engine quantizes and dequantizes with them) */\n"
           if "float32" in (plan.input_dtype, plan.output_dtype) else "")
        + f"#define EDGEPRUNE_INPUT_SCALE {_c_float(in_scale)}\n"
        f"#define EDGEPRUNE_INPUT_ZERO_POINT ({in_zp})\n"
        f"#define EDGEPRUNE_OUTPUT_SCALE {_c_float(out_scale)}\n"
        f"#define EDGEPRUNE_OUTPUT_ZERO_POINT ({out_zp})\n\n"
        "/* Run the model on `input` (EDGEPRUNE_INPUT_SIZE values) into `output` (EDGEPRUNE_OUTPUT_SIZE); 0 on success. */\n"
        "int edgeprune_invoke(const EDGEPRUNE_INPUT_TYPE *input, EDGEPRUNE_OUTPUT_TYPE *output);\n\n"
        "#ifdef __cplusplus\n}\n#endif\n\n#endif\n")
    source = (
        "/* Generated by edgeprune from an int8 .tflite: weights, arena plan and kernel calls. Do not edit. */\n"
        '#include "edgeprune_model.h"\n#include "ep_kernels.h"\n\n'
        "#ifdef EDGEPRUNE_LAYER_DONE\nvoid EDGEPRUNE_LAYER_DONE(int layer);\n#else\n"
        "#define EDGEPRUNE_LAYER_DONE(layer) ((void)0)\n#endif\n\n"
        + (f"static int32_t ep_arena_words[{-(-arena // 4)}];\n#define ep_arena ((int8_t *)ep_arena_words)\n\n"
           if arena else "/* no arena: every step reads the input and writes the output */\n\n")
        + "".join(writer.consts)
        + "\nint edgeprune_invoke(const EDGEPRUNE_INPUT_TYPE *input, EDGEPRUNE_OUTPUT_TYPE *output) {\n    int status;\n"
        + "".join(calls) + "    return EP_OK;\n}\n")
    layers = [{"layer": i, "op": s.op, "tflite_op": s.source, "kernel": s.kernel, "engine": s.engine, "format": s.format,
               "why": s.why,
               "macs": s.macs, "nonzero_macs": s.nonzero_macs, "weight_bytes": s.weight_bytes,
               "index_bytes": s.index_bytes, "predicted_instructions": round(s.predicted_instructions)}
              for i, s in enumerate(plan.steps)]
    totals = {key: sum(layer[key] for layer in layers)
              for key in ("macs", "nonzero_macs", "weight_bytes", "index_bytes", "predicted_instructions")}
    report = {"layers": layers, "totals": totals, "arena_bytes": arena}
    return {"edgeprune_model.h": header, "edgeprune_model.c": source, "layers.json": json.dumps(report, indent=2) + "\n"}


def export_c(tflite: str | os.PathLike | bytes | Int8Graph, out_dir: str | os.PathLike, sparse: str = "auto",
             weight_budget: int | None = None) -> dict:
    """Write the C engine of an int8 .tflite (a path, its bytes, or its read graph) into ``out_dir``.

    The folder gets ``edgeprune_model.h`` (``edgeprune_invoke``, sizes, quantization), ``edgeprune_model.c``,
    the kernel sources and ``layers.json``; each file is written atomically after all of them are made.
    ``sparse`` is ``"auto"``, ``"always"`` or ``"never"``; ``weight_budget`` (bytes of weights and index, with
    ``auto``) makes the layers trade instructions for bytes until they fit (see :func:`edgeprune.mcu.lowering.lower`).
    Weights the .tflite stores as TFLM look-up tables (``export_tflite(..., lut_bits=4)``) stay 4-bit codes
    inside the sparse kernels, with no option to give. Returns the ``layers.json`` report.
    """
    check_sparse_mode(sparse)
    if isinstance(tflite, Int8Graph):
        graph = tflite
    elif isinstance(tflite, (bytes, bytearray)):
        graph = read_tflite(bytes(tflite))
    else:
        graph = load_tflite(tflite)
    files = render(lower(graph, sparse, weight_budget))
    kernels = resources.files("edgeprune.mcu") / "c"
    files.update({name: (kernels / name).read_text(encoding="utf-8") for name in KERNEL_FILES})
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder; give a folder for the C files")
    for name, text in files.items():
        write_text_atomic(out / name, text)
    return json.loads(files["layers.json"])
