"""The one config loader of every non-Hydra tool: YAML, includes, ``--set`` overrides, and typed
sections that refuse unknown keys by name.

- ``include: other.yaml`` (or a list) in any mapping reads those files as that mapping's base; keys
  given beside it win, section by section. Paths are relative to the working directory, like every path in a config.
- ``--set a.b=value`` sets a nested key; the value is YAML, so numbers, lists and null work.
- ``build(Dataclass, values)`` makes the typed config, section by section (nested dataclasses,
  lists of them, optional ones). A key that no field has (``chekpoint.dir``) is an error naming the
  key and the keys that section knows, before anything runs.

The NeMo recipes (speech tokenizer) keep Hydra, as NeMo's own recipes do; that is the one exception.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
INCLUDE = "include"


class ConfigError(ValueError):
    """A config that cannot be used: names the file or key and says why."""


# ---- YAML and overrides ------------------------------------------------------------------------


def add_overrides_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. schedule.steps=10 (value parsed as YAML)")


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", ...]`` → ``{"a.b": 1}``."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set needs KEY=VALUE, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    return overrides


def apply_overrides(values: dict, overrides: dict[str, Any]) -> dict:
    """Set each dotted key in the nested ``values`` (in place; returned for convenience)."""
    for dotted, value in overrides.items():
        node = values
        *parents, leaf = dotted.split(".")
        for key in parents:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {dotted}: {key!r} is a {type(child).__name__}, not a section")
            node = child
        node[leaf] = value
    return values


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A YAML mapping with its includes resolved."""
    path = Path(path)
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: included from itself ({' -> '.join(map(str, _seen))})")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping at the top, found {type(values).__name__}")
    return _resolve_includes(values, path, _seen + (path.resolve(),))


def _resolve_includes(values: dict, where: Path, seen: tuple[Path, ...]) -> dict:
    out: dict = {}
    includes = values.get(INCLUDE) or []
    for name in [includes] if isinstance(includes, str) else includes:
        out = _merge(out, read_yaml(name, seen))
    own = {k: _resolve_includes(v, where, seen) if isinstance(v, dict) else v for k, v in values.items() if k != INCLUDE}
    return _merge(out, own)


def _merge(base: dict, top: dict) -> dict:
    """``top`` over ``base``, section by section: an included section keeps the keys not given."""
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load(cls: type[T], path: str | Path, overrides: dict[str, Any] | list[str] | None = None) -> T:
    """``cls`` from a YAML file, its includes, and ``--set`` overrides (a dict or the raw list)."""
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    values = apply_overrides(read_yaml(path), overrides or {})
    try:
        return build(cls, values)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


# ---- typed sections ----------------------------------------------------------------------------


def build(cls: type[T], values: Any, section: str = "") -> T:
    """A ``cls`` dataclass from a mapping, refusing keys it has no field for."""
    name = section or "the config"
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{name}: expected a mapping, found {type(values).__name__} {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(_dotted(section, k) for k in unknown)} (keys of {name}: {sorted(fields)})")
    hints = typing.get_type_hints(cls)
    kwargs = {key: _convert(hints[key], value, _dotted(section, key)) for key, value in values.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required key missing
        raise ConfigError(f"{name}: {exc}") from None
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{name}: {exc}") from None


def _dotted(section: str, key: str) -> str:
    return f"{section}.{key}" if section else key


def _convert(hint: Any, value: Any, section: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else build(hint, value, section)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and value is not None:
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(inner[0], value, section)
    if origin is list and args and dataclasses.is_dataclass(args[0]) and isinstance(value, list):
        return [_convert(args[0], item, f"{section}[{i}]") for i, item in enumerate(value)]
    return value


def differing_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two nested settings differ (compared as JSON would store them): what a
    refusal names, and what a test of one config built on another checks."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in differing_keys(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if json.loads(json.dumps(a)) == json.loads(json.dumps(b)) else [prefix.rstrip(".")]
