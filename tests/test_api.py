"""The package's public surface: every advertised name exists, imports stay light, and no module imports in a cycle."""

import pkgutil
import subprocess
import sys

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


def test_each_module_imports_first_on_its_own():
    """Importing any module first, in a fresh interpreter, works: a hidden import cycle would fail for one of them."""
    names = [m.name for m in pkgutil.walk_packages(edgeprune.__path__, "edgeprune.") if m.name != "edgeprune.__main__"]
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    for name in names:
        subprocess.run([sys.executable, "-c", code, name], check=True)
