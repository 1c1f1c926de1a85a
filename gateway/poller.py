"""Status polling: for departments with a poll interval, ask about cases they hold.

Due cases are claimed by pushing their ``next_poll_at`` forward in one statement (SKIP LOCKED on
PostgreSQL), so several daemons never poll the same case in the same round.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from typing import Any

import structlog
from sqlalchemy import Row, and_, or_, select, update

from gateway.clock import now
from gateway.config.models import DepartmentConfig
from gateway.connector import Connector, Receipt
from gateway.events import Source
from gateway.runtime import Runtime
from gateway.states import AT_DEPARTMENT
from gateway.store.tables import applications
from gateway.updates import apply_case_update

log = structlog.get_logger("gateway.poller")


async def _claim(runtime: Runtime, dept: DepartmentConfig, limit: int) -> Sequence[Row[Any]]:
    assert dept.poll_interval_seconds
    t = now()
    due = (
        select(applications.c.id)
        .where(
            and_(
                applications.c.department == dept.code,
                applications.c.status.in_([s.value for s in AT_DEPARTMENT]),
                applications.c.department_case_id.is_not(None),
                or_(applications.c.next_poll_at.is_(None), applications.c.next_poll_at <= t),
            )
        )
        .order_by(applications.c.next_poll_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    # Two statements: lock (skipping rows others hold), then update only the rows this
    # transaction locked. One UPDATE ... WHERE id IN (locking subquery) can be planned so that
    # it waits on rows another daemon holds, and two daemons polling at once then deadlock.
    async with runtime.engine.begin() as conn:
        ids = [r[0] for r in (await conn.execute(due)).all()]
        if not ids:
            return []
        q = (
            update(applications)
            .where(applications.c.id.in_(ids))
            .values(next_poll_at=t + dt.timedelta(seconds=dept.poll_interval_seconds))
            .returning(applications.c.id, applications.c.department_case_id, applications.c.version)
        )
        return (await conn.execute(q)).all()


async def poll_department(
    runtime: Runtime, code: str, connector: Connector, limit: int = 200
) -> int:
    """One polling round for one department; returns how many status changes it applied."""
    dept = runtime.config.departments[code]
    rows = await _claim(runtime, dept, limit)
    sem = asyncio.Semaphore(dept.concurrency)
    applied = 0

    async def one(row: Row[Any]) -> None:
        nonlocal applied
        async with sem:
            try:
                async with asyncio.timeout(dept.timeout_seconds):
                    upd = await connector.poll(Receipt(case_id=row.department_case_id))
            except Exception as exc:
                log.warning(
                    "poll failed",
                    department=code,
                    application=row.id,
                    error=f"{type(exc).__name__}: {exc}",
                )
                return
            if upd is not None:
                changes = await apply_case_update(
                    runtime,
                    row.id,
                    upd,
                    source=Source.POLL,
                    actor=f"poll/{code}",
                    version=row.version,
                )
                applied += len(changes)

    await asyncio.gather(*(one(r) for r in rows))
    return applied


async def poll_sweep(runtime: Runtime) -> int:
    total = 0
    for code, connector in runtime.connectors.items():
        if runtime.config.departments[code].poll_interval_seconds:
            try:
                total += await poll_department(runtime, code, connector)
            except Exception:
                log.exception("poll round failed", department=code)
    return total
