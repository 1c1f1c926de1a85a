"""Status polling: for departments with a poll interval, ask about cases they hold.

A department with a change feed (:mod:`gateway.changes`) is polled per case only every
``[sync] poll_ceiling_seconds``, as a safety net.

Claim -> ask the link -> record. Due cases are leased work (:mod:`gateway.store.leases`): the
claim moves their ``next_poll_at`` to the lease's end, so several daemons never poll the same
case at once and a case whose poll died is due again when its lease runs out. After the round,
the cases still holding this round's lease are due again one poll interval after the claim.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Sequence
from typing import Any

import structlog
from sqlalchemy import Row, and_, update

from gateway import tracing
from gateway.clock import now
from gateway.connector import Receipt
from gateway.departments import DepartmentLink
from gateway.errors import ConnectorError
from gateway.events import Source
from gateway.runtime import Runtime
from gateway.states import AT_DEPARTMENT
from gateway.store import leases
from gateway.store.tables import applications
from gateway.updates import apply_case_update

log = structlog.get_logger("gateway.poller")

#: cases as leased work: due at ``next_poll_at``; the lease end written at claim fences them
POLLS = leases.Leased(applications, applications.c.id, applications.c.next_poll_at)


async def _claim(runtime: Runtime, link: DepartmentLink, limit: int) -> Sequence[Row[Any]]:
    async with runtime.engine.begin() as conn:
        return await leases.claim(
            conn,
            POLLS,
            and_(
                applications.c.department == link.code,
                applications.c.status.in_([s.value for s in AT_DEPARTMENT]),
                applications.c.department_case_id.is_not(None),
            ),
            owner=None,
            limit=limit,
            lease_seconds=link.lease_seconds(link.dept.poll_interval_seconds or 0.0),
            returning=[
                applications.c.id,
                applications.c.department_case_id,
                applications.c.version,
                applications.c.next_poll_at,
            ],
        )


def poll_every(link: DepartmentLink) -> float | None:
    """Seconds between two polls of one case, or None if the department is not polled. With a
    change feed, per-case polls are a safety net at ``[sync] poll_ceiling_seconds``."""
    dept = link.dept
    if not dept.poll_interval_seconds:
        return None
    if link.offers_changes():
        return max(dept.poll_interval_seconds, dept.sync.poll_ceiling_seconds)
    return dept.poll_interval_seconds


async def poll_department(runtime: Runtime, code: str, limit: int = 200) -> int:
    """One polling round for one department; returns how many status changes it applied."""
    link = runtime.link(code)
    interval = poll_every(link) if link is not None else None
    if link is None or not interval or link.breaker_open():
        return 0  # while the breaker is open the cases stay due: the next round asks
    claimed_at = now()
    rows = await _claim(runtime, link, limit)
    applied = 0

    async def one(row: Row[Any]) -> None:
        nonlocal applied
        try:
            with tracing.case(row.id):
                upd = await link.poll(Receipt(case_id=row.department_case_id))
        except ConnectorError as exc:
            # DEBUG: the link warns once when the department goes down, not per case
            log.debug("poll failed", department=code, application=row.id, error=str(exc))
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

    try:
        await asyncio.gather(*(one(r) for r in rows))
    finally:
        if rows:
            await _due_again(runtime, rows, claimed_at + dt.timedelta(seconds=interval))
    return applied


async def _due_again(runtime: Runtime, rows: Sequence[Row[Any]], at: dt.datetime) -> None:
    """The round's cases are due at ``at``, unless something else moved their poll time since
    the claim (a new version's receipt, another daemon after the lease ran out)."""
    lease_end = rows[0].next_poll_at
    async with runtime.engine.begin() as conn:
        await conn.execute(
            update(applications)
            .where(
                and_(
                    applications.c.id.in_([r.id for r in rows]),
                    applications.c.next_poll_at == lease_end,
                )
            )
            .values(next_poll_at=at)
        )


async def poll_sweep(runtime: Runtime) -> int:
    total = 0
    for code in sorted(runtime.connectors):
        if runtime.config.departments[code].poll_interval_seconds:
            try:
                total += await poll_department(runtime, code)
            except Exception:
                log.exception("poll round failed", department=code)
    return total
