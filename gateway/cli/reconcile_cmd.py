"""``gateway reconcile`` and ``gateway deadlines``."""

from __future__ import annotations

import csv
import datetime as dt
import enum
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gateway.cli import app
from gateway.cli.common import (
    DEFAULT_CONFIG,
    ConfigOption,
    JsonOption,
    console,
    emit_json,
    err,
    load,
    run,
)
from gateway.cli.output import local_time, print_table, unknown_name
from gateway.tables import tsv

if TYPE_CHECKING:
    from gateway import deadlines

#: the city's clock, for dates given without an offset (as gateway.deadlines.CHINA)
_CHINA = dt.timezone(dt.timedelta(hours=8))


class Format(enum.StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def _when(value: str | None, name: str) -> dt.datetime | None:
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter(
            f"{value!r} is not an ISO date or datetime", param_hint=name
        ) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=_CHINA)


def _rows(runs: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    kinds = sorted({k for r in runs for k in r["counts"]})
    head = ["department", "run", "state", "since", "until", *kinds]
    rows = [
        [
            r["department"],
            r["id"],
            r["state"],
            r["since"],
            r["until"],
            *[str(r["counts"].get(k, 0)) for k in kinds],
        ]
        for r in runs
    ]
    return head, rows


@app.command("reconcile")
def reconcile_cmd(
    config: ConfigOption = DEFAULT_CONFIG,
    department: Annotated[
        list[str] | None, typer.Option("--department", "-d", help="department code (repeatable)")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="window start, ISO (default: last run less the overlap)")
    ] = None,
    until: Annotated[str | None, typer.Option(help="window end, ISO (default: now)")] = None,
    fmt: Annotated[Format, typer.Option("--format", help="output format")] = Format.table,
    output: Annotated[Path | None, typer.Option(help="write the report here")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="the same as --format json")] = False,
) -> None:
    """Compare the gateway's cases with each department's own list; repair what is safe to
    repair, flag the rest. Every run is stored (GET /v1/ops/reconciliations)."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from gateway import reconcile
    from gateway.runtime import Runtime

    if as_json:
        fmt = Format.json
    cfg = load(config)
    lower, upper = _when(since, "--since"), _when(until, "--until")

    async def go() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        runtime = Runtime(cfg)
        try:
            await runtime.prepare_database()
            codes = department or sorted(runtime.connectors)
            for code in codes:
                if code not in runtime.connectors:
                    raise unknown_name("active department", code, runtime.connectors)
            runs: list[dict[str, Any]] = []
            found: list[dict[str, Any]] = []
            with Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=err,
                transient=True,
            ) as bar:
                for code in codes:
                    task = bar.add_task(code)

                    def show(g: int, d: int, code: str = code, task: Any = task) -> None:
                        bar.update(task, description=f"{code}: gateway {g}, department {d}")

                    result = await reconcile.reconcile_department(
                        runtime, code, since=lower, until=upper, trigger="cli", progress=show
                    )
                    row = {**vars(result)}
                    row["since"] = local_time(result.since, cfg.gateway.timezone)
                    row["until"] = local_time(result.until, cfg.gateway.timezone)
                    runs.append(row)
                    _run, items = await reconcile.get_run(runtime, result.id)
                    found.extend(
                        {
                            "run": result.id,
                            "department": code,
                            "kind": d.kind,
                            "action": d.action,
                            "application_id": d.application_id,
                            "department_case_id": d.department_case_id,
                            "gateway_status": d.gateway_status,
                            "department_status": d.department_status,
                        }
                        for d in items
                    )
            return runs, found
        finally:
            await runtime.aclose()

    runs, found = run(go())
    if fmt is Format.json:
        text = json.dumps({"runs": runs, "discrepancies": found}, indent=2, default=str)
    elif fmt is Format.csv:
        buf = io.StringIO()
        if found:
            writer = csv.DictWriter(buf, fieldnames=list(found[0]))
            writer.writeheader()
            writer.writerows(found)
        else:
            head, rows = _rows(runs)
            csv.writer(buf).writerows([head, *rows])
        text = buf.getvalue()
    else:
        head, rows = _rows(runs)
        if output is None:
            print_table(head, rows, title="reconciliation")
            for r in runs:
                if r["error"]:
                    err.print(
                        f"{r['department']} failed: {r['error']}", markup=False, highlight=False
                    )
            failed = any(r["state"] != "done" for r in runs)
            raise typer.Exit(1 if failed else 0)
        text = tsv(head, rows, title="reconciliation")
    if output is not None:
        output.write_text(text, encoding="utf-8")
        console.print(f"report written to {output}")
    else:
        print(text, end="" if text.endswith("\n") else "\n")
    if any(r["state"] != "done" for r in runs):
        raise typer.Exit(1)


@app.command("deadlines")
def deadlines_cmd(
    config: ConfigOption = DEFAULT_CONFIG,
    department: Annotated[str | None, typer.Option("--department", "-d")] = None,
    within_days: Annotated[int, typer.Option(help="due-soon window, working days")] = 3,
    as_json: JsonOption = False,
) -> None:
    """Overdue and due-soon cases (the clock is paused during supplement and suspension)."""
    from gateway import deadlines
    from gateway.runtime import Runtime

    cfg = load(config)
    if department is not None and department not in cfg.departments:
        raise unknown_name("department", department, cfg.departments)

    async def go() -> tuple[list[deadlines.Deadline], list[deadlines.Deadline]]:
        runtime = Runtime(cfg)
        try:
            await runtime.prepare_database()
            return await deadlines.listing(runtime, department=department, within_days=within_days)
        finally:
            await runtime.aclose()

    overdue, soon = run(go())
    if as_json:
        emit_json(
            {"overdue": [d.as_dict() for d in overdue], "due_soon": [d.as_dict() for d in soon]}
        )
        return
    for title, items in (("overdue", overdue), (f"due within {within_days} working days", soon)):
        print_table(
            ("department", "receipt", "status", "promised", "paused", "due", "left"),
            [
                (
                    d.department,
                    d.receipt_number,
                    d.status + (" (paused)" if d.paused else ""),
                    d.promised_by.isoformat(),
                    d.paused_days,
                    d.due_by.isoformat(),
                    d.days_left,
                )
                for d in items
            ],
            title=f"{title} ({len(items)})",
        )
