"""The package's public surface: every advertised name exists, imports stay light, and no module imports in a cycle."""

import ast
import subprocess
import sys
from pathlib import Path

import edgeprune


def test_every_public_name_exists():
    assert sorted(edgeprune.__all__) == sorted(set(edgeprune.__all__))
    missing = [name for name in edgeprune.__all__ if not hasattr(edgeprune, name)]
    assert missing == []


def test_import_is_light_and_modules_are_modules():
    code = ("import sys, types, edgeprune, edgeprune.training; "
            "assert isinstance(edgeprune.training, types.ModuleType) and callable(edgeprune.train); "
            "heavy = [m for m in ('matplotlib', 'torch_pruning', 'onnxruntime', 'tflite_micro') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def _imports(path: Path, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The edgeprune modules that ``module`` imports anywhere in its file (at the top or inside a function)."""
    found = set()
    base = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            names = [f"{target}.{alias.name}" for alias in node.names]
            found |= {name for name in names if name in known} or {target}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("edgeprune"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("edgeprune")}
    return {name for name in found if name in known and name != module}


def import_graph() -> tuple[dict[str, set[str]], set[str]]:
    """Every edgeprune module -> the edgeprune modules it imports (lazily too); and the names that are packages."""
    root = Path(edgeprune.__file__).parent
    files = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        files[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    known = set(files)
    graph = {name: _imports(path, name, is_package, known) for name, (path, is_package) in files.items()}
    return graph, {name for name, (_, is_package) in files.items() if is_package}


# --------------------------------------------------------------------------- layers

LAYER_NAMES = ("pure", "state", "loops", "I/O", "pipeline", "CLI")
PURE, STATE, LOOPS, IO, PIPELINE, CLI = range(len(LAYER_NAMES))
LAYERS = {
    # pure functions: numbers and tensors in, numbers and tensors out (settings parses a dict or a settings file)
    "prune.masks": PURE, "prune.global_magnitude": PURE, "prune.importance": PURE, "prune.settings": PURE,
    "export.quantize": PURE, "export.bit_choice": PURE, "export.int8_graph": PURE, "analyze.metrics": PURE, "device": PURE, "task": PURE,
    # objects that hold state: models and their specs, the pruner and its masks, the process group
    "models": STATE, "prune.pruner": STATE, "prune.schedule": STATE, "distributed": STATE,
    # loops over data: training, evaluation, the forward/backward passes that rank or time
    "training": LOOPS, "prune.channels": LOOPS, "analyze.fx_scan": LOOPS, "analyze.latency": LOOPS,
    "export.centroids": LOOPS,
    # I/O: files, data sets, exports, reports, plots; the scans and the plan write their own result files
    "files": IO, "checkpoint": IO, "data": IO, "runfolder": IO, "report": IO, "analyze.plots": IO,
    "analyze.scan": IO, "analyze.channel_scan": IO, "analyze.plan": IO, "export.epz": IO, "export.onnx": IO,
    "export.tflite": IO, "export.tflm": IO, "export.c_source": IO, "mcu": IO,
    # the C engine's arithmetic (the rest of mcu/ builds, runs and measures it)
    "mcu.lowering": PURE, "mcu.sparse": PURE, "mcu.cost": PURE, "mcu.arena": PURE, "mcu.units": PURE,
    "mcu.choice": PURE, "mcu.bounds": PURE, "export.bitpack": PURE,
    "mcu.kernel_sizes": PURE,  # parses the size macros of ep_kernels.h, a file of the package itself
    # the pipeline: its config, its steps, the run
    "pipeline": PIPELINE, "config": PIPELINE, "steps": PIPELINE, "run": PIPELINE,
    # the command line
    "cli": CLI, "__main__": CLI,
}
"""Each module's layer, by module name under ``edgeprune`` or a prefix of it: ``export.tflite`` covers
``export.tflite_writer`` and ``mcu`` every module of ``mcu/``; the longest key that fits wins. A package's
``__init__`` stands for what it re-exports: its layer is the highest of the modules it imports."""


def module_layer(module: str) -> int | None:
    """The layer ``LAYERS`` gives ``edgeprune.<module>`` (the longest fitting prefix), None when none fits."""
    name = module.removeprefix("edgeprune.")
    fitting = [key for key in LAYERS if name == key or (name.startswith(key) and name[len(key)] in "._")]
    return LAYERS[max(fitting, key=len)] if fitting else None


def layers_of(graph: dict[str, set[str]], packages: set[str]) -> dict[str, int | None]:
    """Every module's layer; a package's is the highest of what its ``__init__`` imports."""
    layers = {name: module_layer(name) for name in graph if name not in packages}

    def package_layer(package: str) -> int:
        inner = [package_layer(m) if m in packages else layers[m] for m in graph[package]]
        return max((layer for layer in inner if layer is not None), default=PURE)

    return {**layers, **{package: package_layer(package) for package in packages}}


def upward_imports(graph: dict[str, set[str]], packages: set[str]) -> list[str]:
    """``importer (layer) -> imported (higher layer)`` for every import that reaches up; packages' own imports are re-exports."""
    layers = layers_of(graph, packages)
    found = []
    for importer in sorted(set(graph) - packages):
        for imported in sorted(graph[importer]):
            if layers[importer] is not None and layers[imported] is not None and layers[imported] > layers[importer]:
                found.append(f"{importer} ({LAYER_NAMES[layers[importer]]}) imports {imported} "
                             f"({LAYER_NAMES[layers[imported]]})")
    return found


def test_every_module_has_a_layer():
    graph, packages = import_graph()
    unknown = sorted(name for name in graph if name not in packages and module_layer(name) is None)
    assert not unknown, (
        f"{', '.join(unknown)}: no layer; add each to LAYERS in tests/test_api.py "
        f"({' < '.join(LAYER_NAMES)}: the lowest layer whose modules it needs, and that no lower module imports)"
    )


def test_lower_layers_never_import_higher_ones_even_lazily():
    """The README's claim: pure functions < objects with state < loops < I/O < pipeline < CLI, imports inside functions included."""
    graph, packages = import_graph()
    assert "edgeprune.files" in graph["edgeprune.checkpoint"]  # the parser sees imports
    upward = upward_imports(graph, packages)
    assert not upward, "a lower layer imports a higher one; move the code that needs it up, or the code it needs down: " + "; ".join(upward)


def test_the_layer_check_sees_an_upward_import_inside_a_function(tmp_path):
    module = tmp_path / "edgeprune" / "prune" / "masks.py"
    module.parent.mkdir(parents=True)
    module.write_text("def save(mask, path):\n    from ..files import save_tensors\n    save_tensors(path, {'m': mask})\n")
    known = {"edgeprune.prune.masks", "edgeprune.files"}
    lazy = _imports(module, "edgeprune.prune.masks", False, known)
    assert lazy == {"edgeprune.files"}
    graph, packages = import_graph()
    graph["edgeprune.prune.masks"] = graph["edgeprune.prune.masks"] | lazy
    assert upward_imports(graph, packages) == ["edgeprune.prune.masks (pure) imports edgeprune.files (I/O)"]
    graph["edgeprune.training"] = graph["edgeprune.training"] | {"edgeprune.prune"}  # a package stands for what it re-exports
    assert "edgeprune.training (loops) imports edgeprune.prune (loops)" not in upward_imports(graph, packages)
    graph["edgeprune.models"] = graph["edgeprune.models"] | {"edgeprune.prune"}
    assert "edgeprune.models (state) imports edgeprune.prune (loops)" in upward_imports(graph, packages)


def test_no_module_imports_in_a_cycle_even_lazily():
    """The import graph has no cycle, imports inside functions included (packages' re-exports aside)."""
    graph, packages = import_graph()
    assert graph["edgeprune.analyze.scan"] >= {"edgeprune.analyze.fx_scan", "edgeprune.training"}  # the parser sees imports

    def cycle_from(start: str, path: list[str]) -> list[str] | None:
        for nxt in sorted(graph[path[-1]]):
            if nxt == start:
                return path + [start]
            if nxt not in path:
                found = cycle_from(start, path + [nxt])
                if found:
                    return found
        return None

    for name in sorted(graph):
        if name in packages:
            continue  # a package's __init__ re-exports its modules: importing it is how its modules are reached
        cycle = cycle_from(name, [name])
        assert cycle is None or any(step in packages for step in cycle[1:-1]), " -> ".join(cycle)


CLI_MAY_IMPORT = {"edgeprune", "edgeprune.config", "edgeprune.steps", "edgeprune.run", "edgeprune.report", "edgeprune.distributed",
                  "edgeprune.task"}
"""The CLI parses, calls a step and prints: it reaches the package only through the pipeline (and the version)."""


def test_the_cli_imports_only_the_pipeline():
    root = Path(edgeprune.__file__).parent
    known = {".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__") for p in root.rglob("*.py")}
    imported = _imports(root / "cli.py", "edgeprune.cli", False, known)
    assert imported >= {"edgeprune.steps", "edgeprune.config"}  # the parser sees its imports
    assert imported <= CLI_MAY_IMPORT, sorted(imported - CLI_MAY_IMPORT)
