"""Built-in filedrop connector, registered through the ``gateway`` entry point like any plugin."""

from __future__ import annotations

from collections.abc import Callable

import typer

from gateway.connector import Connector
from gateway.hookspecs import hookimpl


@hookimpl(trylast=True)
def register_connectors(register: Callable[[type[Connector]], None]) -> None:
    from gateway_filedrop.connector import FiledropConnector

    register(FiledropConnector)


@hookimpl
def register_commands(cli: typer.Typer) -> None:
    from gateway_filedrop.cli import commands

    cli.add_typer(commands, name="filedrop")
