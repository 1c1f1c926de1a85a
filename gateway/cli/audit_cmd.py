"""``gateway audit verify``: check the hash chains of the audit log and of every case's events.

Exit 0 when every chain holds (the audit head is printed: record it elsewhere to anchor it),
1 naming each row that was altered or deleted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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

if TYPE_CHECKING:  # imported by the command: `gateway --help` must stay quick
    from gateway.store.chain import Break

audit = typer.Typer(help="The audit trail: who read personal data, and whether records hold.")
app.add_typer(audit, name="audit")


@audit.command("verify")
def verify(config: ConfigOption = DEFAULT_CONFIG, as_json: JsonOption = False) -> None:
    """Find any altered or deleted audit row or case event (hash chains)."""
    from gateway.runtime import Runtime
    from gateway.store.chain import Break, verify_audit, verify_events

    cfg = load(config)

    async def go() -> tuple[list[Break], int, int, str]:
        runtime = Runtime(cfg)
        try:
            await runtime.prepare_database()
            async with runtime.engine.connect() as conn:
                breaks, audit_rows, head = await verify_audit(conn)
                cases = 0
                async for found in verify_events(conn):
                    if isinstance(found, Break):
                        breaks.append(found)
                    else:
                        cases += found
            return breaks, audit_rows, cases, head
        finally:
            await runtime.aclose()

    breaks, audit_rows, cases, head = run(go())
    if as_json:
        emit_json(
            {
                "ok": not breaks,
                "audit_rows": audit_rows,
                "cases": cases,
                "audit_head": head,
                "breaks": [
                    {"chain": b.chain, "row": b.row_id, "problem": b.problem} for b in breaks
                ],
            }
        )
    else:
        for b in breaks:
            err.print(str(b), markup=False, highlight=False)
        console.print(
            f"checked {audit_rows} audit row(s) and the events of {cases} case(s): "
            + (f"{len(breaks)} break(s)" if breaks else "every chain holds"),
            highlight=False,
        )
        console.print(f"audit head: {head or '(empty)'}", highlight=False)
    if breaks:
        raise typer.Exit(1)
