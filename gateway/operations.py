"""Operator actions shared by the CLI and the ops API: replaying failed cases."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, and_, select, update

from gateway.clock import now
from gateway.events import Source, StatusChange
from gateway.runtime import Runtime
from gateway.states import AT_DEPARTMENT, State
from gateway.store import cases, jobs, paging
from gateway.store.tables import applications


class NotReplayable(Exception):
    pass


async def replay(runtime: Runtime, app_id: str, actor: str) -> StatusChange:
    """Put a failed case back to dispatching with a fresh retry budget (same idempotency key, so
    the department cannot get a second case)."""
    async with runtime.engine.begin() as conn:
        app = await cases.lock_application(conn, app_id)
        if app is None:
            raise NotReplayable(f"no application '{app_id}'")
        if app.status != State.FAILED.value:
            raise NotReplayable(
                f"application {app_id} is {app.status}, only failed cases can be replayed"
            )
        result = await cases.change_status(
            conn,
            app,
            State.DISPATCHING,
            source=Source.OPERATOR,
            actor=actor,
            restart=True,
            detail={"action": "retry"},
            extra={"last_error": None},
        )
        assert result.change is not None
        await jobs.revive(conn, app_id, app.version)
    runtime.new_work()
    runtime.plugins.status_changed(result.change)
    return result.change


async def check_now(runtime: Runtime, app_id: str) -> dt.datetime | None:
    """Make a case due for a status poll now (ops asked); None if no case by that id is held
    by its department. The daemon's next poll round of the department asks about it, whatever
    its adaptive interval or a change feed would have waited for."""
    at = now()
    async with runtime.engine.begin() as conn:
        done = await conn.execute(
            update(applications)
            .where(
                and_(
                    applications.c.id == app_id,
                    applications.c.status.in_([s.value for s in AT_DEPARTMENT]),
                    applications.c.department_case_id.is_not(None),
                )
            )
            .values(next_poll_at=at)
        )
    return at if done.rowcount else None


async def failures(
    runtime: Runtime, limit: int = 500, *, after: Sequence[Any] | None = None
) -> Sequence[Row[Any]]:
    """Failed cases, most recently failed first; ``after`` is the (updated_at, id) a page
    starts after."""
    async with runtime.engine.connect() as conn:
        q = (
            select(applications)
            .where(applications.c.status == State.FAILED.value)
            .order_by(applications.c.updated_at.desc(), applications.c.id.desc())
            .limit(limit)
        )
        start = paging.after([applications.c.updated_at, applications.c.id], after, descending=True)
        if start is not None:
            q = q.where(start)
        return (await conn.execute(q)).all()
