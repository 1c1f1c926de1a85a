"""Options and helpers shared by the command modules."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from gateway.config.loader import Config, load_config
from gateway.errors import ConfigError
from gateway.logs import configure

T = TypeVar("T")

console = Console()
err = Console(stderr=True)

ConfigOption = Annotated[
    Path,
    typer.Option(
        "--config", "-c", envvar="GATEWAY_CONFIG", help="path of gateway.toml", show_default=True
    ),
]
DEFAULT_CONFIG = Path("config/gateway.toml")
JsonOption = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def load(path: Path) -> Config:
    """Load config or exit 1 listing every problem."""
    configure("WARNING")
    try:
        return load_config(path)
    except ConfigError as exc:
        err.print(f"[red]Configuration has {len(exc.problems)} problem(s):[/red]")
        for problem in exc.problems:
            err.print(f"  {problem}", markup=False, highlight=False)
        err.print("Run 'gateway check-config' after fixing them.")
        raise typer.Exit(1) from exc


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")
