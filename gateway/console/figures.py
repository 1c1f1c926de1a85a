"""The figures the console shows, read from the store and from the department links.

Deadlines come from :mod:`gateway.deadlines` (the same functions as ``gateway deadlines``), so
the console and the CLI cannot disagree. A case is *on time* when it was decided on or before
its due date: the promised date plus the working days its clock was paused, as
:func:`gateway.deadlines.deadline_of` computes it for the day of the decision.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Row, and_, case, func, select

from gateway import deadlines, reachability
from gateway.clock import now
from gateway.runtime import Runtime
from gateway.states import State
from gateway.store import breakers
from gateway.store.jobs import LEASED, PENDING
from gateway.store.tables import applications, dispatch_jobs, events
from gateway.workdays import add_workdays, workdays_between

CHINA = deadlines.CHINA
#: the overview's due-soon window (working days), as the issue asks
DUE_SOON_DAYS = 2
#: cases decided before this many weeks are not charted on a department page
WEEKS = 12


@dataclass
class DepartmentRow:
    code: str
    name: str
    connector: str
    available: bool
    reason: str | None
    healthy: bool | None
    health_detail: str
    breaker_open: bool
    last_contact: dt.datetime | None
    queued: int = 0
    in_flight: int = 0
    retrying: int = 0
    failed: int = 0
    overdue: int = 0
    due_soon: int = 0
    delivered_today: int = 0
    hourly: list[int] = field(default_factory=lambda: [0] * 24)

    @property
    def up(self) -> bool:
        return self.available and bool(self.healthy) and not self.breaker_open


async def _queues(runtime: Runtime) -> dict[str, dict[str, int]]:
    retry = case((dispatch_jobs.c.attempts > 0, 1), else_=0)
    q = (
        select(dispatch_jobs.c.department, dispatch_jobs.c.state, retry, func.count())
        .where(dispatch_jobs.c.state.in_([PENDING, LEASED]))
        .group_by(dispatch_jobs.c.department, dispatch_jobs.c.state, retry)
    )
    failed = (
        select(applications.c.department, func.count())
        .where(applications.c.status == State.FAILED.value)
        .group_by(applications.c.department)
    )
    out: dict[str, dict[str, int]] = {}
    async with runtime.engine.connect() as conn:
        for dept, state, retrying, n in (await conn.execute(q)).all():
            key = "in_flight" if state == LEASED else "retrying" if retrying else "queued"
            slot = out.setdefault(dept, {})
            slot[key] = slot.get(key, 0) + n
        for dept, n in (await conn.execute(failed)).all():
            out.setdefault(dept, {})["failed"] = n
    return out


async def _deliveries(runtime: Runtime, since: dt.datetime) -> list[tuple[str, dt.datetime]]:
    """(department, at) of every delivery to a department since ``since``."""
    q = (
        select(applications.c.department, events.c.at)
        .select_from(events.join(applications, applications.c.id == events.c.application_id))
        .where(and_(events.c.to_status == State.DELIVERED.value, events.c.at >= since))
    )
    async with runtime.engine.connect() as conn:
        return [(r.department, r.at) for r in (await conn.execute(q)).all()]


async def overview(runtime: Runtime) -> list[DepartmentRow]:
    """One row per configured department, in code order."""
    codes = sorted(runtime.config.departments)
    links = {code: runtime.link(code) for code in codes}
    checks = await asyncio.gather(*(link.health() for link in links.values() if link))
    health = dict(zip([c for c, link in links.items() if link], checks, strict=True))
    queues = await _queues(runtime)
    async with runtime.engine.connect() as conn:
        # breakers other processes (daemons) hold open, besides this process's own
        held_open = {b.department for b in await breakers.open_ones(conn)}
    overdue, soon = await deadlines.listing(runtime, within_days=DUE_SOON_DAYS)
    at = now()
    midnight = dt.datetime.combine(at.astimezone(CHINA).date(), dt.time(), CHINA)
    window = at - dt.timedelta(hours=24)
    rows: dict[str, DepartmentRow] = {}
    for code in codes:
        dept, link, h = runtime.config.departments[code], links[code], health.get(code)
        answered = reachability.last_answer(code)
        rows[code] = DepartmentRow(
            code=code,
            name=dept.name,
            connector=dept.connector,
            available=link is not None,
            reason=runtime.unavailable.get(code),
            healthy=h.ok if h else None,
            health_detail=h.detail if h else "",
            breaker_open=bool(link and link.breaker_open()) or code in held_open,
            last_contact=dt.datetime.fromtimestamp(answered, dt.UTC) if answered else None,
        )
        for name, n in queues.get(code, {}).items():
            setattr(rows[code], name, n)
    for d in overdue:
        if d.department in rows:
            rows[d.department].overdue += 1
    for d in soon:
        if d.department in rows:
            rows[d.department].due_soon += 1
    for dept_code, delivered_at in await _deliveries(runtime, min(window, midnight)):
        row = rows.get(dept_code)
        if row is None:
            continue
        if delivered_at >= midnight:
            row.delivered_today += 1
        if delivered_at >= window:
            hour = int((delivered_at - window).total_seconds() // 3600)
            row.hourly[min(hour, 23)] += 1
    return list(rows.values())


# -- decisions and the on-time rate ------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    application_id: str
    department: str
    decided_on: dt.date  # China date
    days: float  # from intake to decision, calendar days
    on_time: bool


async def decisions(
    runtime: Runtime, start: dt.date, end: dt.date, *, department: str | None = None
) -> list[Decision]:
    """Cases decided between ``start`` and ``end`` (China dates, both included) that had a
    promised date, each with whether it was decided on time."""
    since = dt.datetime.combine(start, dt.time(), CHINA)
    until = dt.datetime.combine(end + dt.timedelta(days=1), dt.time(), CHINA)
    conds = [
        applications.c.decided_at >= since,
        applications.c.decided_at < until,
        applications.c.promised_by.is_not(None),
    ]
    if department:
        conds.append(applications.c.department == department)
    cols = (
        applications.c.id,
        applications.c.receipt_number,
        applications.c.department,
        applications.c.matter_code,
        applications.c.centre,
        applications.c.status,
        applications.c.promised_by,
        applications.c.created_at,
        applications.c.decided_at,
    )
    out: list[Decision] = []
    async with runtime.engine.connect() as conn:
        rows = (await conn.execute(select(*cols).where(and_(*conds)))).all()
        for i in range(0, len(rows), deadlines.PAGE):
            chunk = rows[i : i + deadlines.PAGE]
            hist = await deadlines.pause_history(conn, [r.id for r in chunk])
            for r in chunk:
                on = r.decided_at.astimezone(CHINA).date()
                out.append(
                    Decision(
                        application_id=r.id,
                        department=r.department,
                        decided_on=on,
                        days=(r.decided_at - r.created_at).total_seconds() / 86400,
                        on_time=_on_time(r.promised_by, hist.get(r.id), on),
                    )
                )
    return out


def _on_time(promised_by: dt.date, history: deadlines.History | None, on: dt.date) -> bool:
    """Whether a case decided ``on`` that day was on time, as :func:`gateway.deadlines.
    deadline_of` would say (``days_left >= 0``: no working day past the due date), without its
    calendar walks where they cannot change the answer: a case that never paused is due on its
    promised date, and one decided by its due date is on time."""
    due = promised_by
    if history:
        paused, _now = deadlines.paused_workdays(history, on)
        due = add_workdays(promised_by, paused)[0]
    return due >= on or workdays_between(due, on) == 0


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (``p`` in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(math.ceil(p / 100 * len(ordered)) - 1, 0)]


@dataclass(frozen=True)
class Week:
    monday: dt.date
    decided: int
    p50: float | None
    p95: float | None
    on_time_rate: float | None  # percent


def weekly(
    items: Sequence[Decision], weeks: int = WEEKS, today: dt.date | None = None
) -> list[Week]:
    """The last ``weeks`` ISO weeks, oldest first (empty weeks included)."""
    today = today or deadlines.today()
    first = today - dt.timedelta(days=today.weekday() + 7 * (weeks - 1))
    per: dict[dt.date, list[Decision]] = {first + dt.timedelta(weeks=i): [] for i in range(weeks)}
    for d in items:
        monday = d.decided_on - dt.timedelta(days=d.decided_on.weekday())
        if monday in per:
            per[monday].append(d)
    out = []
    for monday, ds in per.items():
        days = [d.days for d in ds]
        out.append(
            Week(
                monday=monday,
                decided=len(ds),
                p50=percentile(days, 50),
                p95=percentile(days, 95),
                on_time_rate=100 * sum(d.on_time for d in ds) / len(ds) if ds else None,
            )
        )
    return out


# -- the 效能 board ------------------------------------------------------------------------------


@dataclass
class BoardRow:
    code: str
    name: str
    decided: int = 0
    on_time: int = 0
    overdue: int = 0
    due_soon: int = 0
    rank: int = 0

    @property
    def on_time_rate(self) -> float | None:
        return round(100 * self.on_time / self.decided, 1) if self.decided else None


async def board(runtime: Runtime, start: dt.date, end: dt.date) -> list[BoardRow]:
    """Departments ranked: highest on-time rate first (none decided: last), then fewest overdue.
    Overdue and due-soon are today's open cases, exactly as ``gateway deadlines
    --within-days 2`` lists them."""
    rows = {
        code: BoardRow(code, dept.name) for code, dept in sorted(runtime.config.departments.items())
    }
    for d in await decisions(runtime, start, end):
        row = rows.setdefault(d.department, BoardRow(d.department, d.department))
        row.decided += 1
        row.on_time += d.on_time
    overdue, soon = await deadlines.listing(runtime, within_days=DUE_SOON_DAYS)
    for dl in overdue:
        rows.setdefault(dl.department, BoardRow(dl.department, dl.department)).overdue += 1
    for dl in soon:
        rows.setdefault(dl.department, BoardRow(dl.department, dl.department)).due_soon += 1
    ranked = sorted(
        rows.values(),
        key=lambda r: (r.on_time_rate is None, -(r.on_time_rate or 0), r.overdue, r.code),
    )
    for i, r in enumerate(ranked, 1):
        r.rank = i
    return ranked


async def failed_cases(
    runtime: Runtime, *, department: str | None = None, limit: int = 200
) -> Sequence[Row[Any]]:
    """Failed cases, most recently failed first (optionally of one department)."""
    q = (
        select(applications)
        .where(applications.c.status == State.FAILED.value)
        .order_by(applications.c.updated_at.desc(), applications.c.id.desc())
        .limit(limit)
    )
    if department:
        q = q.where(applications.c.department == department)
    async with runtime.engine.connect() as conn:
        return (await conn.execute(q)).all()
