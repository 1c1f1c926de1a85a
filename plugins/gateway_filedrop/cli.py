"""``gateway filedrop``: the quarantine of every file-drop department, for ops.

gateway filedrop quarantine [--department CODE] [--json]   what is held, and why
gateway filedrop requeue CODE FILE                           put a file back in the outbox
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Annotated, Any

import typer
from rich.table import Table

from gateway.cli.common import DEFAULT_CONFIG, ConfigOption, JsonOption, console, emit_json, err
from gateway.cli.common import load as load_config
from gateway.config.loader import Config
from gateway.errors import ConnectorError
from gateway_filedrop import quarantine
from gateway_filedrop.options import FiledropOptions
from gateway_filedrop.share import open_storage

__all__ = ["commands"]

commands = typer.Typer(help="File-drop departments: quarantined files.", no_args_is_help=True)


def _departments(cfg: Config, only: str | None) -> dict[str, FiledropOptions]:
    found = {
        code: FiledropOptions.model_validate(dept.options)
        for code, dept in sorted(cfg.departments.items())
        if dept.connector == "filedrop" and (only is None or code == only)
    }
    if only is not None and not found:
        err.print(f"no file-drop department '{only}'")
        raise typer.Exit(2)
    return found


async def _held(code: str, options: FiledropOptions) -> list[dict[str, Any]]:
    storage = open_storage(options, code)
    try:
        files = await quarantine.held(storage, options.folders, options.result.done_suffix)
    finally:
        await storage.aclose()
    return [{"department": code, **asdict(f)} for f in files]


@commands.command("quarantine")
def list_quarantine(
    config: ConfigOption = DEFAULT_CONFIG,
    department: Annotated[str | None, typer.Option(help="one department's code")] = None,
    as_json: JsonOption = False,
) -> None:
    """List the result files each file-drop department's quarantine holds, with the reason."""
    cfg = load_config(config)

    async def go() -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for code, options in _departments(cfg, department).items():
            try:
                rows += await _held(code, options)
            except ConnectorError as exc:
                err.print(f"{code}: {exc}", markup=False, highlight=False)
        return rows

    rows = asyncio.run(go())
    if as_json:
        emit_json(rows)
        return
    table = Table("department", "file", "quarantined", "reason")
    for row in rows:
        table.add_row(row["department"], row["name"], row["noted_at"], row["reason"])
    console.print(table)
    console.print(f"{len(rows)} file(s); 'gateway filedrop requeue CODE FILE' puts one back")


@commands.command("requeue")
def requeue(
    department: Annotated[str, typer.Argument(help="the department's code")],
    file: Annotated[str, typer.Argument(help="a file name from 'gateway filedrop quarantine'")],
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Put a quarantined result file back into the outbox, to be read again (after the cause,
    e.g. a missing status code or document, was fixed)."""
    cfg = load_config(config)
    [(code, options)] = _departments(cfg, department).items()

    async def go() -> str:
        storage = open_storage(options, code)
        try:
            return await quarantine.requeue(
                storage, options.folders, file, options.result.done_suffix
            )
        finally:
            await storage.aclose()

    try:
        console.print(asyncio.run(go()), markup=False, highlight=False)
    except (ValueError, ConnectorError) as exc:
        err.print(str(exc), markup=False, highlight=False)
        raise typer.Exit(1) from exc
