"""What ops see and do, shared by the CLI, the ops API and the console: each department's
health, and replaying failed cases."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Row, and_, select, update

from gateway.clock import now
from gateway.events import Source, StatusChange
from gateway.runtime import Runtime
from gateway.states import AT_DEPARTMENT, State
from gateway.store import breakers, cases, jobs, paging, ticks
from gateway.store.tables import applications


class DepartmentHealth(BaseModel):
    """A department as ops see it now: loaded, answering its health check, breaker state."""

    code: str
    name: str
    connector: str
    available: bool
    reason: str | None
    healthy: bool | None
    health_detail: str
    breaker_open: bool
    #: result reading waits for an earlier tick that still holds its lease (a daemon busy or
    #: killed mid-tick, on any host): who holds it, since when, until when; None when not held
    results_held_by: str | None = None

    @property
    def up(self) -> bool:
        return self.available and bool(self.healthy) and not self.breaker_open


async def department_health(runtime: Runtime, codes: Sequence[str]) -> list[DepartmentHealth]:
    """Each department's health, in the order given: every health check at once, each within
    its link's deadline; breakers open in any process (daemons) count as open."""
    # a results tick that began over a tick interval ago and still holds its lease
    interval = runtime.config.gateway.schedule.results_seconds
    async with runtime.engine.connect() as conn:
        held_open = {b.department for b in await breakers.open_ones(conn)}
        held = await ticks.held_since(
            conn, [f"results:{c}" for c in codes], now() - dt.timedelta(seconds=interval)
        )
    links = {code: runtime.link(code) for code in codes}
    checks = await asyncio.gather(*(link.health() for link in links.values() if link))
    health = dict(zip([c for c, link in links.items() if link], checks, strict=True))
    out = []
    for code in codes:
        dept, link, h = runtime.config.departments[code], links[code], health.get(code)
        holder = held.get(f"results:{code}")
        detail = h.detail if h else ""
        if holder is not None:
            detail = f"{detail}; result reading {holder.describe()}".lstrip("; ")
        out.append(
            DepartmentHealth(
                code=code,
                name=dept.name,
                connector=dept.connector,
                available=link is not None,
                reason=runtime.unavailable.get(code),
                healthy=h.ok if h else None,
                health_detail=detail,
                breaker_open=bool(link and link.breaker_open()) or code in held_open,
                results_held_by=holder.describe() if holder else None,
            )
        )
    return out


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
