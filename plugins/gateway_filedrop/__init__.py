"""Built-in filedrop connector, registered through the ``gateway`` entry point like any plugin."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer

from gateway.config.models import DepartmentConfig
from gateway.connector import Applicant, Connector
from gateway.hookspecs import hookimpl


@hookimpl(trylast=True)
def register_connectors(register: Callable[[type[Connector]], None]) -> None:
    from gateway_filedrop.connector import FiledropConnector

    register(FiledropConnector)


@hookimpl
def register_commands(cli: typer.Typer) -> None:
    from gateway_filedrop.cli import commands

    cli.add_typer(commands, name="filedrop")


@hookimpl
def validate_application(
    form: dict[str, Any], applicant: Applicant, department: DepartmentConfig
) -> list[str] | None:
    from gateway_filedrop.intake import encoding_problems

    return encoding_problems(form, applicant, department)
