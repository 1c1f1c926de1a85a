"""``gateway refetch``: approved cases without documents, listed or fetched again."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from gateway.cli import app
from gateway.cli.common import (
    DEFAULT_CONFIG,
    ConfigOption,
    JsonOption,
    emit_json,
    err,
    load,
    run,
)
from gateway.cli.output import local_time, print_note, print_table, unknown_name


@app.command()
def refetch(
    application_ids: Annotated[
        list[str] | None, typer.Argument(help="cases to fetch again (ids)", show_default=False)
    ] = None,
    all_cases: Annotated[
        bool, typer.Option("--all", help="every approved case without documents")
    ] = False,
    list_only: Annotated[
        bool, typer.Option("--list", help="only list approved cases without documents")
    ] = False,
    department: Annotated[str | None, typer.Option(help="with --list: one department")] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: JsonOption = False,
) -> None:
    """Fetch the results of approved cases that came without documents again (named cases or
    --all), or --list them. Exit 1 when a named case still has no document."""
    from gateway import refetch as refetching
    from gateway.runtime import Runtime

    if list_only == bool(application_ids or all_cases) or (application_ids and all_cases):
        err.print("give case ids, --all, or --list")
        raise typer.Exit(2)
    cfg = load(config)
    if department is not None and department not in cfg.departments:
        raise unknown_name("department", department, cfg.departments)

    async def go() -> Any:
        runtime = Runtime(cfg)
        try:
            await runtime.prepare_database()
            if list_only:
                return await refetching.waiting(runtime, department=department)
            ids = None if all_cases else list(application_ids or [])
            return await refetching.refetch(runtime, ids, actor="cli/refetch")
        finally:
            await runtime.aclose()

    found = run(go())
    if list_only:
        rows = [
            {
                "id": r.id,
                "receipt_number": r.receipt_number,
                "department": r.department,
                "department_case_id": r.department_case_id,
                "decided_at": local_time(r.updated_at, cfg.gateway.timezone),
            }
            for r in found
        ]
        if as_json:
            emit_json(rows)
            return
        print_table(
            ("id", "receipt", "department", "case", "decided at"),
            [list(row.values()) for row in rows],
        )
        print_note(f"{len(rows)} approved case(s) without documents")
        return
    if as_json:
        emit_json([r.__dict__ for r in found])
    else:
        print_table(
            ("id", "department", "outcome", "status", "detail"),
            [(r.application_id, r.department, r.outcome, r.status, r.detail) for r in found],
        )
    if application_ids and any(r.outcome != "collected" for r in found):
        raise typer.Exit(1)
