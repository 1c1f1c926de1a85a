"""Operator commands: ``replay``, ``status``, ``check``, ``plugins`` (keys:
:mod:`gateway.cli.keys_cmd`)."""

from __future__ import annotations

import json
from typing import Annotated, Any

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
from gateway.cli.output import local_time, print_table
from gateway.errors import ConfigError


@app.command()
def replay(
    application_id: Annotated[str | None, typer.Argument(help="application id")] = None,
    failed: Annotated[bool, typer.Option("--failed", help="replay every failed case")] = False,
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Put failed cases back to dispatching (same idempotency key: no second case)."""
    if bool(application_id) == failed:
        err.print("give an application id or --failed")
        raise typer.Exit(2)
    from gateway import operations
    from gateway.runtime import Runtime

    cfg = load(config)

    async def go() -> tuple[int, list[str]]:
        runtime = Runtime(cfg)
        try:
            await runtime.prepare_database()
            ids = (
                [application_id]
                if application_id
                else [r.id for r in await operations.failures(runtime, limit=100_000)]
            )
            done, problems = 0, []
            for app_id in ids:
                assert app_id is not None
                try:
                    await operations.replay(runtime, app_id, actor="cli")
                    done += 1
                except operations.NotReplayable as exc:
                    problems.append(str(exc))
            return done, problems
        finally:
            await runtime.aclose()

    done, problems = run(go())
    for p in problems:
        err.print(p)
    console.print(f"{done} case(s) put back to dispatching")
    if problems:
        raise typer.Exit(1)


@app.command()
def status(
    application_id: Annotated[
        str, typer.Argument(help="application id, or the receipt number printed on the receipt")
    ],
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: JsonOption = False,
) -> None:
    """Show one application and its history (by id or by receipt number); times in the
    configured time zone, --json for scripts."""
    from gateway import audit, documents
    from gateway.api.views import application_view
    from gateway.runtime import Runtime
    from gateway.store import breakers, cases

    cfg = load(config)
    held_open: list[breakers.OpenBreaker] = []

    async def go() -> Any:
        runtime = Runtime(cfg)
        try:
            # a read: an empty or older schema is not migrated here, it is named
            await runtime.prepare_database(auto_migrate=False)
            async with runtime.engine.connect() as conn:
                row = await cases.get_application(conn, application_id)
                if row is None:
                    row = await cases.by_receipt(conn, application_id)
                if row is None:
                    return None
                history = await cases.history(conn, row.id)
                docs = await documents.for_application(conn, row.id)
                held_open.extend(await breakers.open_ones(conn, row.department))
            await audit.cli_read(runtime, "gateway status", [row.id])
            return application_view(row, history, docs, ops=True)
        finally:
            await runtime.aclose()

    view = run(go())
    if view is None:
        err.print(f"no application with id or receipt number '{application_id}'")
        raise typer.Exit(1)
    if as_json:
        emit_json(view.model_dump(mode="json"))
        return
    zone = cfg.gateway.timezone
    typer.echo(
        f"{view.receipt_number} {view.matter_name} -> {view.department}"
        f" ({view.department_case_id or 'no case id yet'}): {view.status}"
    )
    for b in held_open:  # why a case waiting to be sent does not move
        until = local_time(b.open_until, zone) if b.open_until else "?"
        console.print(
            f"{view.department}: breaker open in {b.owner} until {until} after {b.failures} "
            "failed calls in a row: nothing is sent to the department until then",
            soft_wrap=True,
            markup=False,
        )
    resent = [e for e in view.history or [] if (e.detail or {}).get("resent")]
    if resent:
        typer.echo(
            f"re-sent {len(resent)} time(s): the department already held this case (an earlier "
            "delivery reached it and its answer was lost)"
        )
    if view.status == "approved" and not view.documents:
        typer.echo(
            "decided without documents: nothing to hand out yet "
            f"(gateway refetch {application_id} asks the department again)"
        )
    print_table(
        ("at", "source", "actor", "from", "to", "detail"),
        [
            (
                local_time(e.at, zone),
                e.source,
                e.actor,
                e.from_status or "",
                e.to_status,
                # JSON, not Python's dict text: what ops copy into a ticket or a query
                json.dumps(e.detail, ensure_ascii=False, sort_keys=True) if e.detail else "",
            )
            for e in view.history or []
        ],
        title=f"history (times in {zone})",
    )


@app.command()
def check(
    application_id: Annotated[
        str, typer.Argument(help="application id, or the receipt number printed on the receipt")
    ],
    config: ConfigOption = DEFAULT_CONFIG,
    as_json: JsonOption = False,
) -> None:
    """Check now: make one case due for a status poll at once (as POST
    /v1/ops/applications/{id}/check), whatever its adaptive interval or a change feed would
    have waited for; the daemon's next poll round of its department (within the department's
    poll_interval_seconds) asks the department about it."""
    from gateway import operations
    from gateway.runtime import Runtime
    from gateway.store import cases

    cfg = load(config)

    async def go() -> tuple[Any, Any]:
        runtime = Runtime(cfg)
        try:
            async with runtime.engine.connect() as conn:
                row = await cases.get_application(conn, application_id)
                if row is None:
                    row = await cases.by_receipt(conn, application_id)
            if row is None:
                return None, None
            return row, await operations.check_now(runtime, row.id)
        finally:
            await runtime.aclose()

    row, due = run(go())
    if row is None:
        err.print(f"no application with id or receipt number '{application_id}'")
        raise typer.Exit(1)
    if due is None:
        err.print(
            f"{row.receipt_number} is {row.status}, not held by its department "
            f"({row.department}): there is nothing to ask it"
        )
        raise typer.Exit(1)
    polled = cfg.departments[row.department].poll_interval_seconds
    if as_json:
        emit_json({"id": row.id, "due_at": due.isoformat(), "poll_interval_seconds": polled})
        return
    when = local_time(due, cfg.gateway.timezone)
    if polled:
        typer.echo(
            f"{row.receipt_number} ({row.id}) due for a status poll at {when}: the daemon asks "
            f"{row.department} within {polled:g} s"
        )
    else:
        typer.echo(
            f"{row.receipt_number} ({row.id}) due at {when}, but {row.department} has no "
            "poll_interval_seconds: no daemon polls it (its callbacks, results or feed tell)"
        )


@app.command()
def plugins(config: ConfigOption = DEFAULT_CONFIG, as_json: JsonOption = False) -> None:
    """List loaded plugins: name, version, hooks and where each came from."""
    from gateway.config.loader import load_config
    from gateway.plugin_manager import load_plugins

    # the listing must work even when the rest of the config does not load (it helps fix it)
    try:
        settings = load_config(config).gateway.plugins if config.exists() else None
    except ConfigError as exc:
        settings = None
        err.print(
            f"note: {config} does not load, so its [gateway.plugins] switches are ignored "
            f"({len(exc.problems)} problem(s); 'gateway check-config' lists them all):",
            markup=False,
            highlight=False,
        )
        for problem in exc.problems[:5]:
            err.print(f"  {problem}", markup=False, highlight=False)
    if not config.exists():
        err.print(
            f"note: no {config} (give --config or GATEWAY_CONFIG); listing every installed plugin",
            markup=False,
            highlight=False,
        )
    pm = load_plugins(
        load=settings.load if settings else (),
        block=settings.block if settings else (),
        enable=settings.enable if settings else (),
    )
    info = pm.info()
    kinds = {kind: cls.__module__ for kind, cls in pm.connectors().items()}
    if as_json:
        emit_json(
            {"plugins": [p.__dict__ for p in info], "failures": pm.failures, "connectors": kinds}
        )
        return
    print_table(
        ("name", "version", "hooks", "origin"),
        [(p.name, p.version or "", ", ".join(p.hooks), p.origin) for p in info],
    )
    typer.echo("connector kinds: " + (", ".join(sorted(kinds)) or "none"))
    for name, why in pm.failures.items():
        err.print(f"plugin {name} failed to load: {why}", markup=False, highlight=False)
    if pm.failures:
        raise typer.Exit(1)
