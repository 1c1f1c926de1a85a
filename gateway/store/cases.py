"""Applications and their append-only events; every status change goes through ``change_status``."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, and_, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.clock import now
from gateway.events import Source, StatusChange
from gateway.states import DECIDED, State, Verdict, judge
from gateway.store.tables import applications, events


@dataclass(frozen=True)
class ChangeResult:
    verdict: Verdict
    current: State
    change: StatusChange | None = None


async def lock_application(conn: AsyncConnection, app_id: str) -> Row[Any] | None:
    """Read an application for update (row lock on PostgreSQL; SQLite's transaction is
    already exclusive)."""
    q = select(applications).where(applications.c.id == app_id).with_for_update()
    return (await conn.execute(q)).first()


async def change_status(
    conn: AsyncConnection,
    app: Row[Any],
    target: State,
    *,
    source: Source,
    actor: str,
    detail: dict[str, Any] | None = None,
    version: int | None = None,
    restart: bool = False,
    extra: dict[str, Any] | None = None,
) -> ChangeResult:
    """Apply one status change to a locked application row, if the state machine allows it.

    ``version``: the case version the update is about; updates about an older version are stale.
    ``restart``: an explicit re-dispatch (supplement re-send, operator retry), allowed only from
    a restartable state. ``extra``: other columns to set with the change.
    Duplicates, stale and illegal updates store nothing.
    """
    current = State(app.status)
    if version is not None and version < app.version:
        return ChangeResult(Verdict.STALE, current)
    if restart:
        verdict = (
            Verdict.APPLY
            if target == State.DISPATCHING and current in (State.FAILED, State.SUPPLEMENT_REQUIRED)
            else Verdict.ILLEGAL
        )
    else:
        verdict = judge(current, target)
    if verdict is not Verdict.APPLY:
        return ChangeResult(verdict, current)
    at = now()
    values: dict[str, Any] = {"status": target.value, "updated_at": at, **(extra or {})}
    if target in DECIDED:
        values["decided_at"] = at
    await conn.execute(update(applications).where(applications.c.id == app.id).values(**values))
    new_version = values.get("version", app.version)
    await conn.execute(
        insert(events).values(
            application_id=app.id,
            version=new_version,
            at=at,
            source=source.value,
            actor=actor,
            from_status=current.value,
            to_status=target.value,
            detail=detail or {},
        )
    )
    change = StatusChange(
        application_id=app.id,
        receipt_number=app.receipt_number,
        department=app.department,
        matter_code=app.matter_code,
        centre=app.centre,
        version=new_version,
        from_status=current,
        to_status=target,
        source=source,
        actor=actor,
        at=at,
        detail=detail or {},
    )
    return ChangeResult(verdict, target, change)


async def get_application(conn: AsyncConnection, app_id: str) -> Row[Any] | None:
    return (await conn.execute(select(applications).where(applications.c.id == app_id))).first()


async def history(conn: AsyncConnection, app_id: str) -> Sequence[Row[Any]]:
    q = select(events).where(events.c.application_id == app_id).order_by(events.c.id)
    return (await conn.execute(q)).all()


async def list_applications(
    conn: AsyncConnection,
    *,
    status: str | None = None,
    centre: str | None = None,
    department: str | None = None,
    updated_since: dt.datetime | None = None,
    after_id: str | None = None,
    limit: int = 50,
) -> Sequence[Row[Any]]:
    """A page ordered by id (creation order); ``after_id`` is the cursor."""
    conds = []
    if status:
        conds.append(applications.c.status == status)
    if centre:
        conds.append(applications.c.centre == centre)
    if department:
        conds.append(applications.c.department == department)
    if updated_since:
        conds.append(applications.c.updated_at >= updated_since)
    if after_id:
        conds.append(applications.c.id > after_id)
    q = select(applications).order_by(applications.c.id).limit(limit)
    if conds:
        q = q.where(and_(*conds))
    return (await conn.execute(q)).all()
