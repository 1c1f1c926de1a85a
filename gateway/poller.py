"""Status polling: for departments with a poll interval, ask about cases they hold.

How often a case is asked about adapts (:func:`next_poll_in`): ``poll_interval_seconds`` after
delivery or a change, then the time since its last change (the gap doubles) up to
``[sync] poll_ceiling_seconds``, and at most a quarter of the time left before its promised date.
A department with a change feed (:mod:`gateway.changes`) is polled per case only every
``[sync] feed_poll_seconds``, as a safety net, while its feed keeps up (:func:`feed_keeps_up`);
when the feed stops syncing, its cases are polled adaptively like any others. Ops can make a
case due at once (:func:`gateway.operations.check_now`, ``POST /v1/ops/applications/{id}/check``).

Claim -> ask the link -> record. Due cases are leased work (:mod:`gateway.store.leases`): the
claim moves their ``next_poll_at`` to the lease's end, so several daemons never poll the same
case at once and a case whose poll died is due again when its lease runs out. After the round,
the cases still holding this round's lease are due again at their own next poll time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import zoneinfo
from collections.abc import Sequence
from typing import Any

import structlog
from sqlalchemy import ColumnElement, Row, and_, case, select, update

from gateway import metrics, tracing
from gateway.clock import now
from gateway.connector import Receipt
from gateway.departments import DepartmentLink
from gateway.errors import ConnectorError
from gateway.events import Source
from gateway.runtime import Runtime
from gateway.states import AT_DEPARTMENT
from gateway.store import leases, watermarks
from gateway.store.tables import applications
from gateway.updates import apply_case_update

log = structlog.get_logger("gateway.poller")

#: cases as leased work: due at ``next_poll_at``; the lease end written at claim fences them
POLLS = leases.Leased(
    applications, applications.c.id, applications.c.next_poll_at, null_is_due=False
)
AT_DEPARTMENT_CODES = [s.value for s in AT_DEPARTMENT]


def _held(code: str) -> ColumnElement[bool]:
    """Cases the department holds: the ones a poll can ask about."""
    return and_(
        applications.c.department == code,
        applications.c.status.in_(AT_DEPARTMENT_CODES),
        applications.c.department_case_id.is_not(None),
    )


async def _schedule_unset(runtime: Runtime, link: DepartmentLink) -> None:
    """Once per link (a daemon start, a reload): cases held with no poll time (delivered while
    the department had no poll interval) are due now. The claim itself never reads NULLs, so it
    stays a range over (department, next_poll_at)."""
    if link.polls_scheduled:
        return
    async with runtime.engine.begin() as conn:
        await conn.execute(
            update(applications)
            .where(and_(_held(link.code), applications.c.next_poll_at.is_(None)))
            .values(next_poll_at=now())
        )
    link.polls_scheduled = True


async def _any_due(runtime: Runtime, link: DepartmentLink) -> bool:
    """Whether the department holds a case due for a poll: one read, no lock."""
    q = (
        select(applications.c.id)
        .where(_held(link.code), applications.c.next_poll_at <= now())
        .limit(1)
    )
    async with runtime.reader.connect() as conn:
        return (await conn.execute(q)).first() is not None


async def _claim(
    runtime: Runtime, link: DepartmentLink, limit: int, *, looked: bool = False
) -> Sequence[Row[Any]]:
    # a read first: a round runs every poll interval (2 s in the example city), nearly always
    # with nothing due, and the claim is a write transaction (on SQLite the file's write lock);
    # ``looked``: the round's first batch, whose read the round made already
    if not looked and not await _any_due(runtime, link):
        return []
    async with runtime.engine.begin() as conn:
        return await leases.claim(
            conn,
            POLLS,
            _held(link.code),
            owner=None,
            limit=limit,
            lease_seconds=link.lease_seconds(link.dept.poll_interval_seconds or 0.0),
            returning=[
                applications.c.id,
                applications.c.department_case_id,
                applications.c.version,
                applications.c.next_poll_at,
                applications.c.updated_at,
                applications.c.promised_by,
            ],
        )


def poll_every(link: DepartmentLink, *, feed_ok: bool = True) -> float | None:
    """The shortest gap between two polls of one case, or None if the department is not
    polled. With a change feed that keeps up (``feed_ok``), per-case polls are a safety net at
    ``[sync] feed_poll_seconds``."""
    dept = link.dept
    if not dept.poll_interval_seconds:
        return None
    if link.offers_changes() and feed_ok:
        return max(dept.poll_interval_seconds, dept.sync.feed_poll_seconds)
    return dept.poll_interval_seconds


def next_poll_in(
    link: DepartmentLink,
    *,
    since_change: float,
    until_due: float | None,
    changed: bool,
    feed_ok: bool = True,
) -> float:
    """Seconds until a case just polled is asked about again.

    ``since_change``: seconds since the case last changed in the gateway; ``until_due``:
    seconds until its promised date ends (None: no promise); ``changed``: this poll changed it;
    ``feed_ok``: the department's change feed keeps up (its cases wait for the safety net).
    A quiet case's gap grows with its quiet time (each poll about twice as far from the last
    change as the one before) up to the ceiling; a change starts again from the floor; the gap
    is at most a quarter of the time left before the promised date (never below the floor).
    """
    floor = poll_every(link, feed_ok=feed_ok) or 0.0
    if link.offers_changes() and feed_ok:
        return floor
    ceiling = max(floor, link.dept.sync.poll_ceiling_seconds)
    if changed:
        return floor
    gap = min(ceiling, max(floor, since_change))
    if until_due is not None and until_due > 0:
        gap = min(gap, max(floor, until_due / 4))
    return gap


async def feed_keeps_up(runtime: Runtime, link: DepartmentLink) -> bool:
    """Whether the department's change feed synced within three of its intervals (at least a
    minute): while it does not (never ran, or keeps failing), its cases are polled as a
    department without a feed polls them."""
    if not link.offers_changes():
        return False
    async with runtime.reader.connect() as conn:
        mark = await watermarks.get(conn, link.code)
    if mark is None:
        return False
    late = max(3 * link.dept.sync.changes_interval_seconds, 60.0)
    return (now() - mark.synced_at).total_seconds() <= late


def _due_in(runtime: Runtime, promised_by: dt.date | None, at: dt.datetime) -> float | None:
    if promised_by is None:
        return None
    tz = zoneinfo.ZoneInfo(runtime.config.gateway.schedule.timezone)
    # the promise holds to the end of that working day, in the city's time
    end = dt.datetime.combine(promised_by + dt.timedelta(days=1), dt.time(), tzinfo=tz)
    return (end - at).total_seconds()


async def poll_department(runtime: Runtime, code: str, limit: int = 200) -> int:
    """One polling round for one department; returns how many status changes it applied.

    It claims ``limit`` due cases at a time, and again while a whole batch was due, for at
    most the department's poll interval: a round keeps up with a backlog larger than one
    batch (100,000 open cases at an hour's ceiling are ~28 polls a second)."""
    link = runtime.link(code)
    if link is None or not link.dept.poll_interval_seconds or link.breaker_open():
        return 0  # while the breaker is open the cases stay due: the next round asks
    await _schedule_unset(runtime, link)
    if not await _any_due(runtime, link):
        return 0  # nearly every round: nothing more to read (the feed's watermark, a claim)
    feed_ok = await feed_keeps_up(runtime, link) if link.offers_changes() else False
    interval = poll_every(link, feed_ok=feed_ok) or 0.0
    started, applied, looked = time.monotonic(), 0, True
    while True:
        done, claimed = await _poll_batch(runtime, link, limit, interval, feed_ok, looked)
        applied, looked = applied + done, False
        spent = time.monotonic() - started
        if claimed < limit or link.breaker_open() or spent >= link.dept.poll_interval_seconds:
            return applied


async def _poll_batch(
    runtime: Runtime,
    link: DepartmentLink,
    limit: int,
    interval: float,
    feed_ok: bool,
    looked: bool = False,
) -> tuple[int, int]:
    """Claim up to ``limit`` due cases and poll them: (changes applied, cases claimed)."""
    code = link.code
    claimed_at = now()
    rows = await _claim(runtime, link, limit, looked=looked)
    applied = 0
    due: dict[str, dt.datetime] = {}

    def again(row: Row[Any], changed: bool) -> None:
        gap = next_poll_in(
            link,
            since_change=(claimed_at - row.updated_at).total_seconds(),
            until_due=_due_in(runtime, row.promised_by, claimed_at),
            changed=changed,
            feed_ok=feed_ok,
        )
        due[row.id] = claimed_at + dt.timedelta(seconds=gap)

    async def one(row: Row[Any]) -> None:
        nonlocal applied
        again(row, changed=False)  # a failed poll backs off like a quiet one
        try:
            with tracing.case(row.id):
                upd = await link.poll(Receipt(case_id=row.department_case_id))
        except ConnectorError as exc:
            # DEBUG: the link warns once when the department goes down, not per case
            log.debug("poll failed", department=code, application=row.id, error=str(exc))
            return
        metrics.POLLS.labels(code).inc()
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
            if changes:
                again(row, changed=True)

    try:
        await asyncio.gather(*(one(r) for r in rows))
    finally:
        if rows:
            for r in rows:
                due.setdefault(r.id, claimed_at + dt.timedelta(seconds=interval))
            await _due_again(runtime, rows, due)
    return applied, len(rows)


async def _due_again(
    runtime: Runtime, rows: Sequence[Row[Any]], due: dict[str, dt.datetime]
) -> None:
    """Each of the round's cases is due at its time in ``due``, unless something else moved
    its poll time since the claim (a new version's receipt, another daemon after the lease ran
    out, ops asking for a check)."""
    lease_end = rows[0].next_poll_at
    ids = sorted(r.id for r in rows)
    async with runtime.engine.begin() as conn:
        # rows locked in id order first, as every multi-case write does (cases.lock_applications):
        # an UPDATE ... IN (...) locks in scan order, and deadlocked (40P01) with a batch of
        # status changes on PostgreSQL under the fault suite's lock
        await conn.execute(
            select(applications.c.id)
            .where(applications.c.id.in_(ids))
            .order_by(applications.c.id)
            .with_for_update()
        )
        await conn.execute(
            update(applications)
            .where(
                and_(
                    applications.c.id.in_(ids),
                    applications.c.next_poll_at == lease_end,
                )
            )
            .values(next_poll_at=case(due, value=applications.c.id))
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
