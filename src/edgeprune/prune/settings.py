"""Per-layer settings keyed by parameter name: exact name, then ``re:`` regex, then ``_default``.

The sparsity dictionary of the seed (``{'conv1.weight': 0.4, ...}``) is one such
setting; it is read from inline JSON or a JSON / TOML / YAML file.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
import warnings
from pathlib import Path
from typing import Callable, Iterable, Mapping, TypeVar

import yaml

from .masks import check_sparsity

__all__ = ["load_layer_settings", "read_document", "resolve_layer_settings", "resolve_sparsity_dict", "setting_for"]

T = TypeVar("T")
DEFAULT_KEY = "_default"
REGEX_PREFIX = "re:"


def read_document(path: Path) -> object:
    """The data of a .json, .toml or .yaml/.yml file (parsed safely: no code runs); a bad file is one line naming it."""
    raw = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            return json.loads(raw)
        if suffix == ".toml":
            return tomllib.loads(raw)
        if suffix in (".yaml", ".yml"):
            return yaml.safe_load(raw)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot be parsed as {suffix[1:].upper()} ({exc}); fix the syntax") from exc
    raise ValueError(f"{path}: unknown file type {suffix!r}; use .json, .toml, .yaml or .yml")


def load_layer_settings(source: str | Path | Mapping) -> dict:
    """A settings dict from a mapping, inline JSON (``'{"fc1.weight": 0.8}'``), a .json/.toml/.yaml file, or one
    number for every layer (``'0.9'`` is ``{"_default": 0.9}``)."""
    if isinstance(source, Mapping):
        return dict(source)
    text = str(source).strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"inline sparsity dict is not valid JSON ({exc}); write e.g. '{{\"fc1.weight\": 0.8}}'") from exc
    elif not Path(text).is_file() and _is_number(text):
        data = {DEFAULT_KEY: float(text)}
    else:
        path = Path(text)
        if not path.is_file():
            raise ValueError(f"{path}: no such file; give a .json, .toml or .yaml file, inline JSON such as "
                             f"'{{\"_default\": 0.5}}', or one number for every layer such as 0.5")
        data = read_document(path)
    if not isinstance(data, dict):
        raise ValueError(f"a per-layer dict must map parameter names to values, got {type(data).__name__}")
    return _flatten(data)


def _is_number(text: str) -> bool:
    """Whether ``text`` is one finite number, such as ``0.9``."""
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _flatten(data: Mapping, prefix: str = "") -> dict:
    """Join nested tables into dotted names: TOML's unquoted ``conv1.weight = 0.5`` reads as ``{conv1: {weight: 0.5}}``."""
    flat = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise ValueError(f"per-layer keys must be parameter names (strings), got {key!r}; quote it")
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and not name.startswith(REGEX_PREFIX):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def setting_for(spec: Mapping[str, T], name: str) -> T | None:
    """The setting of parameter ``name``: exact key, else the first ``re:`` key that fully matches, else ``_default``."""
    if name in spec:
        return spec[name]
    for key, value in spec.items():
        if key.startswith(REGEX_PREFIX) and re.fullmatch(key[len(REGEX_PREFIX):], name):
            return value
    return spec.get(DEFAULT_KEY)


def resolve_layer_settings(
    spec: Mapping[str, object],
    targets: Iterable[str],
    valid_names: Iterable[str],
    check: Callable[[object, str], T],
    what: str = "parameter",
) -> dict[str, T]:
    """Give each target name its setting: exact key, else the first matching ``re:`` key, else ``_default``.

    Every key must name a ``what`` (parameter, module) of ``valid_names`` (or match one, for ``re:``);
    a wrong name raises ``ValueError`` listing the valid ones. Each value passes ``check(value, key)``.
    Explicit names outside ``targets`` (a bias, say) are included too: the user asked for them.
    """
    valid = list(valid_names)
    valid_set = set(valid)
    checked = {key: check(value, key) for key, value in spec.items()}
    for key in checked:
        if key.startswith(REGEX_PREFIX):
            try:
                pattern = re.compile(key[len(REGEX_PREFIX):])
            except re.error as exc:
                raise ValueError(f"{key!r}: not a valid regular expression ({exc})") from exc
            if not any(pattern.fullmatch(name) for name in valid):
                raise ValueError(f"{key!r} matches no {what}; valid names: {', '.join(valid)}")
        elif key != DEFAULT_KEY and key not in valid_set:
            raise ValueError(f"unknown {what} name {key!r}; valid names: {', '.join(valid)}")
    resolved: dict[str, T] = {}
    for name in list(targets) + [k for k in checked if k in valid_set]:
        value = setting_for(checked, name)
        if value is not None:
            resolved[name] = value
    return resolved


def resolve_sparsity_dict(
    spec: Mapping[str, object], prunable: Iterable[str], valid_names: Iterable[str]
) -> dict[str, float]:
    """Resolve a sparsity dict to ``{parameter name: sparsity}``; warn about prunable layers it leaves dense."""
    prunable = list(prunable)
    resolved = resolve_layer_settings(spec, prunable, valid_names, check_sparsity)
    dense = [name for name in prunable if name not in resolved]
    if dense:
        warnings.warn(f"the sparsity dict does not name {', '.join(dense)}; left dense", stacklevel=2)
    return resolved
