"""The import contracts (.importlinter, checked by ``lint-imports`` in ``make check``) cover
every top-level module of gateway/: a new module must be given its layer."""

from __future__ import annotations

import configparser
import pkgutil
from pathlib import Path

import gateway

ROOT = Path(__file__).resolve().parents[1]


def _layers() -> list[set[str]]:
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    lines = config["importlinter:contract:layers"]["layers"].strip().splitlines()
    return [{m.strip() for m in line.split("|")} for line in lines]


def test_every_gateway_module_has_a_layer() -> None:
    placed = set().union(*_layers())
    modules = {f"gateway.{m.name}" for m in pkgutil.iter_modules(gateway.__path__)}
    assert modules - placed == set(), "add these to a layer in .importlinter"
    assert placed - modules == set(), "these modules no longer exist"


def test_a_module_is_on_one_layer_only() -> None:
    layers = _layers()
    assert sum(len(layer) for layer in layers) == len(set().union(*layers))
