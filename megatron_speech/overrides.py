"""``--set key.sub=value`` overrides for YAML configs: the one way every tool takes them."""

from __future__ import annotations

import argparse
from typing import Any

import yaml


def add_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. schedule.steps=10 (value parsed as YAML)")


def parse(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", ...]`` → ``{"a.b": 1}``; values are YAML, so numbers, lists and null work."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set needs KEY=VALUE, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    return overrides


def apply(values: dict, overrides: dict[str, Any]) -> dict:
    """Set each dotted key in the nested ``values`` (in place; returned for convenience)."""
    for dotted, value in overrides.items():
        node = values
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return values
