"""Options and helpers shared by the command modules."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from gateway.errors import ConfigError
from gateway.logs import LEVEL_ENV, configure

if TYPE_CHECKING:
    from rich.console import Console

    from gateway.config.loader import Config

T = TypeVar("T")


class _LazyConsole:
    """A rich Console made on first use: importing rich costs ``gateway --help`` ~50 ms."""

    def __init__(self, *, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Console | None = None

    def _real(self) -> Console:
        if self._console is None:
            from rich.console import Console

            # soft_wrap: a message is one line however long (grep finds it); tables still fit
            self._console = Console(stderr=self._stderr, soft_wrap=True)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real(), name)

    # special methods are looked up on the type, not through __getattr__ (rich's Live uses these)
    def __enter__(self) -> Console:
        return self._real().__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._real().__exit__(*exc)


console: Console = _LazyConsole(stderr=False)  # type: ignore[assignment]
err: Console = _LazyConsole(stderr=True)  # type: ignore[assignment]

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
    from gateway.config.loader import load_config

    # commands other than serve/daemon are quiet unless asked (--log-level)
    configure(None if os.environ.get(LEVEL_ENV) else "WARNING")
    try:
        return load_config(path)
    except ConfigError as exc:
        err.print(f"[red]Configuration has {len(exc.problems)} problem(s):[/red]")
        for problem in exc.problems:
            err.print(f"  {problem}", markup=False, highlight=False)
        err.print("Run 'gateway check-config' after fixing them.")
        raise typer.Exit(1) from exc


#: what an operator checks when a command meets an infrastructure failure
_CHECK = {
    "database": "is the database server up and [gateway] database_url right?",
    "storage": "is [gateway] data_dir writable, with free space?",
}


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's work on the process's event loop (:mod:`gateway.eventloop`); a database
    or disk failure, or a schema this code cannot use, ends it with its cause, not a traceback
    (exit 1)."""
    from gateway.errors import InfrastructureError, SchemaOutdated
    from gateway.eventloop import run as run_on_stack
    from gateway.eventloop import stack

    try:
        stack()
    except ValueError as exc:  # a misspelt GATEWAY_SERVER_STACK
        err.print(str(exc), markup=False, highlight=False)
        raise typer.Exit(2) from exc
    try:
        return run_on_stack(coro)
    except SchemaOutdated as exc:  # says what to run
        err.print(str(exc), markup=False, highlight=False)
        raise typer.Exit(1) from exc
    except InfrastructureError as exc:
        hint = _CHECK.get(exc.component, "try again later")
        err.print(f"{exc} ({hint})", markup=False, highlight=False)
        raise typer.Exit(1) from exc


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")
