"""Breakers as other processes see them: each process records its breaker of a department when
it opens or closes; the ops API and ``gateway status`` read the open ones."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.clock import now
from gateway.store.tables import department_breakers


@dataclass(frozen=True)
class OpenBreaker:
    department: str
    owner: str
    failures: int
    open_until: dt.datetime | None


async def record(
    conn: AsyncConnection,
    department: str,
    owner: str,
    *,
    is_open: bool,
    failures: int,
    open_until: dt.datetime | None,
) -> None:
    """This owner's breaker of ``department`` as it is now (replacing what it said before).

    One upsert: a delete-then-insert let two changes of the same breaker at once (opened, and
    reopened by a call still in flight) both insert, and one failed on the primary key."""
    from sqlalchemy.dialects import postgresql, sqlite

    table = department_breakers
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    state = {"open": is_open, "failures": failures, "open_until": open_until, "changed_at": now()}
    upsert = dialect.insert(table).values(department=department, owner=owner[:64], **state)
    await conn.execute(
        upsert.on_conflict_do_update(index_elements=[table.c.department, table.c.owner], set_=state)
    )


async def open_ones(conn: AsyncConnection, department: str | None = None) -> list[OpenBreaker]:
    """Breakers some process holds open now (in their cool-down), by department."""
    table = department_breakers
    q = select(table).where(and_(table.c.open.is_(True), table.c.open_until > now()))
    if department is not None:
        q = q.where(table.c.department == department)
    rows = (await conn.execute(q.order_by(table.c.department, table.c.owner))).all()
    return [OpenBreaker(r.department, r.owner, r.failures, r.open_until) for r in rows]


__all__ = ["OpenBreaker", "open_ones", "record"]
