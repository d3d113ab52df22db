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


def test_no_module_imports_in_a_cycle_even_lazily():
    """Lower layers never import higher ones, not even inside a function: the import graph has no cycle."""
    root = Path(edgeprune.__file__).parent
    files = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        files[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    known = set(files)
    graph = {name: _imports(path, name, is_package, known) for name, (path, is_package) in files.items()}
    assert graph["edgeprune.analyze.scan"] >= {"edgeprune.analyze.fx_scan", "edgeprune.training"}  # the parser sees imports

    def cycle_from(start: str, path: list[str]) -> list[str] | None:
        for nxt in sorted(graph[path[-1]]):
            if nxt == start:
                return path + [start]
            if nxt not in path and nxt.startswith(start.rsplit(".", 1)[0]) is not None and len(path) < len(graph):
                found = cycle_from(start, path + [nxt])
                if found:
                    return found
        return None

    packages = {name for name, (_, is_package) in files.items() if is_package}
    for name in sorted(graph):
        if name in packages:
            continue  # a package's __init__ re-exports its modules: importing it is how its modules are reached
        cycle = cycle_from(name, [name])
        assert cycle is None or any(step in packages for step in cycle[1:-1]), " -> ".join(cycle)


CLI_MAY_IMPORT = {"edgeprune", "edgeprune.config", "edgeprune.steps", "edgeprune.run", "edgeprune.report", "edgeprune.distributed"}
"""The CLI parses, calls a step and prints: it reaches the package only through the pipeline (and the version)."""


def test_the_cli_imports_only_the_pipeline():
    root = Path(edgeprune.__file__).parent
    known = {".".join(p.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__") for p in root.rglob("*.py")}
    imported = _imports(root / "cli.py", "edgeprune.cli", False, known)
    assert imported >= {"edgeprune.steps", "edgeprune.config"}  # the parser sees its imports
    assert imported <= CLI_MAY_IMPORT, sorted(imported - CLI_MAY_IMPORT)
