"""Handover records: where and how a case's result leaves the gateway, and the step that makes
a decided case ``ready_for_pickup``.

Below intake, updates and the pickup desk, which all build on it (intake creates the record,
a status update makes a case ready, the desk hands it out).
"""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

from sqlalchemy import Row, bindparam, exists, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import documents
from gateway.states import State, Verdict, judge
from gateway.store import driver
from gateway.store.tables import UTCDateTime, handovers, result_documents

# No 0/O, 1/I/L: read aloud and typed at a counter. 32**8 = 2**40 codes.
_CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 8
#: Wrong pickup codes before the code stops working for the case (the ID number still does).
MAX_CODE_FAILURES = 5


def new_pickup_code() -> str:
    # one draw, written in base 31: uniform, and one call to the OS instead of eight
    n = secrets.randbelow(len(_CODE_ALPHABET) ** CODE_LENGTH)
    chars = []
    for _ in range(CODE_LENGTH):
        n, digit = divmod(n, len(_CODE_ALPHABET))
        chars.append(_CODE_ALPHABET[digit])
    return "".join(chars)


def handing_centre(delivery: dict[str, Any], receiving_centre: str) -> str:
    if delivery.get("method") == "pickup" and delivery.get("centre"):
        return str(delivery["centre"])
    return receiving_centre


def new_handover(
    app_id: str, delivery: dict[str, Any], receiving_centre: str
) -> tuple[dict[str, Any], str]:
    """The handover row a new case gets at intake, and the pickup code issued with it."""
    code = new_pickup_code()
    row = {
        "application_id": app_id,
        "centre": handing_centre(delivery, receiving_centre),
        "method": str(delivery.get("method", "pickup")),
        "pickup_code": code,
        "code_failures": 0,
    }
    return row, code


async def handover_row(conn: AsyncConnection, app: Row[Any]) -> Row[Any]:
    """The case's handover row (made on the spot for a case from before handovers existed)."""
    row = (
        await conn.execute(select(handovers).where(handovers.c.application_id == app.id))
    ).first()
    if row is not None:
        return row
    await conn.execute(
        insert(handovers).values(
            application_id=app.id,
            centre=handing_centre(app.delivery or {}, app.centre),
            method=str((app.delivery or {}).get("method", "pickup")),
            code_failures=0,
        )
    )
    row = (
        await conn.execute(select(handovers).where(handovers.c.application_id == app.id))
    ).first()
    assert row is not None
    return row


async def readiness(
    conn: AsyncConnection, decided: list[tuple[Row[Any], State]]
) -> dict[str, dict[str, Any]]:
    """For cases being decided in this transaction (each locked row and the decided state it
    moves to): those whose documents are in, each with the detail of its ``ready_for_pickup``
    step. A few statements for the whole batch, none when nothing is decided."""
    candidates = [
        (app, state)
        for app, state in decided
        if judge(state, State.READY_FOR_PICKUP) is Verdict.APPLY
    ]
    if not candidates:
        return {}
    # each case's handover row and whether it holds a document: one read
    params = {"_ids": [app.id for app, _state in candidates]}
    rows = {r.application_id: r for r in await _HANDOVERS.rows(conn, params)}
    held = {app_id for app_id, r in rows.items() if r.held}
    # a case from before handovers existed has no row: its documents are asked for alone
    orphans = [a.id for a, state in candidates if state is State.APPROVED and a.id not in rows]
    if orphans:
        held |= await documents.holding(conn, orphans)
    out: dict[str, dict[str, Any]] = {}
    for app, state in candidates:
        if state is State.APPROVED and app.id not in held:
            continue  # approved, nothing to hand out yet
        row = rows.get(app.id) or await handover_row(conn, app)
        out[app.id] = {"centre": row.centre, "method": row.method}
    return out


#: these two on SQLite through the driver (gateway.store.driver): the recorder's path
_HANDOVERS = driver.Query(
    lambda one_of: select(
        handovers,
        exists()
        .where(result_documents.c.application_id == handovers.c.application_id)
        .label("held"),
    ).where(one_of(handovers.c.application_id, "_ids"))
)

_MARK_READY = driver.Query(
    lambda one_of: (
        update(handovers)
        .where(one_of(handovers.c.application_id, "_ids"))
        .values(ready_at=bindparam("_at", type_=UTCDateTime()))
    )
)


async def mark_ready(conn: AsyncConnection, app_ids: list[str], at: dt.datetime) -> None:
    """Stamp the handovers of cases that just became ready for pickup (one statement)."""
    if app_ids:
        await _MARK_READY.run(conn, {"_ids": app_ids, "_at": at})


__all__ = [
    "CODE_LENGTH",
    "MAX_CODE_FAILURES",
    "handing_centre",
    "handover_row",
    "mark_ready",
    "new_handover",
    "new_pickup_code",
    "readiness",
]
