"""The figures the console shows, read from the store and from the department links.

Deadlines come from :mod:`gateway.deadlines` (the same functions and summary tables as
``gateway deadlines``), so the console and the CLI cannot disagree. A case is *on time* when it
was decided on or before its due date: the promised date plus the working days its clock was
paused, as :func:`gateway.deadlines.deadline_of` computes it for the day of the decision
(:func:`gateway.clocks.on_time`, kept per case and summed per day).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import Field
from sqlalchemy import Row, func, select

from gateway import clocks, deadlines, operations, reachability
from gateway.clock import now
from gateway.runtime import Runtime
from gateway.states import State
from gateway.store import jobs
from gateway.store.tables import applications

CHINA = deadlines.CHINA
#: the overview's due-soon window (working days), as the issue asks
DUE_SOON_DAYS = 2
#: cases decided before this many weeks are not charted on a department page
WEEKS = 12
#: a page reads at most this many changed cases into the summary tables before it answers (the
#: daemon's figures task keeps them current; a page after a long outage shows "as of")
CATCH_UP = 20_000


class DepartmentRow(operations.DepartmentHealth):
    """A row of the city overview: the department's health (as ``GET /v1/ops/departments``
    gives it) and what waits, is late and was delivered."""

    last_contact: dt.datetime | None = None
    queued: int = 0
    in_flight: int = 0
    retrying: int = 0
    failed: int = 0
    overdue: int = 0
    due_soon: int = 0
    delivered_today: int = 0
    hourly: list[int] = Field(default_factory=lambda: [0] * 24)


async def _queues(runtime: Runtime) -> dict[str, dict[str, int]]:
    failed = (
        select(applications.c.department, func.count())
        .where(applications.c.status == State.FAILED.value)
        .group_by(applications.c.department)
    )
    async with runtime.engine.connect() as conn:
        out = await jobs.queues(conn)
        for dept, n in (await conn.execute(failed)).all():
            out.setdefault(dept, {})["failed"] = n
    return out


async def overview(runtime: Runtime) -> list[DepartmentRow]:
    """One row per configured department, in code order."""
    codes = sorted(runtime.config.departments)
    queues = await _queues(runtime)
    due = await deadlines.counts(runtime, within_days=DUE_SOON_DAYS, budget=CATCH_UP)
    at = now()
    midnight = dt.datetime.combine(at.astimezone(CHINA).date(), dt.time(), CHINA)
    # the last 24 clock hours, the current one last
    window = at.replace(minute=0, second=0, microsecond=0) - dt.timedelta(hours=23)
    async with runtime.engine.connect() as conn:
        hourly = await clocks.deliveries_since(conn, min(window, midnight))
    rows: dict[str, DepartmentRow] = {}
    for h in await operations.department_health(runtime, codes):
        answered = reachability.last_answer(h.code)
        rows[h.code] = DepartmentRow(
            **h.model_dump(),
            last_contact=dt.datetime.fromtimestamp(answered, dt.UTC) if answered else None,
            **queues.get(h.code, {}),
        )
    for dept_code, c in due.items():
        if dept_code in rows:
            rows[dept_code].overdue, rows[dept_code].due_soon = c.overdue, c.due_soon
    for dept_code, hour, n in hourly:
        found = rows.get(dept_code)
        if found is None:
            continue
        if hour >= midnight:
            found.delivered_today += n
        if hour >= window:
            found.hourly[min(int((hour - window).total_seconds() // 3600), 23)] += n
    return list(rows.values())


# -- decisions and the on-time rate ------------------------------------------------------------


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


#: (department, monday, decided, on time, seconds summed) -> (p50, p95) of a week
_RANKED: dict[tuple[str, dt.date, int, int, float], tuple[float | None, float | None]] = {}


async def weekly(
    runtime: Runtime,
    department: str,
    weeks: int = WEEKS,
    today: dt.date | None = None,
    *,
    refresh: bool = True,
) -> list[Week]:
    """The department's last ``weeks`` ISO weeks, oldest first (empty weeks included): cases
    with a promised date decided in each, their decision time (p50/p95, days: nearest rank) and
    on-time rate, from the summary tables (:mod:`gateway.clocks`)."""
    await clocks.refresh(runtime, budget=CATCH_UP if refresh else 0)
    today = today or deadlines.today()
    first = today - dt.timedelta(days=today.weekday() + 7 * (weeks - 1))
    out = []
    async with runtime.engine.connect() as conn:
        days = await clocks.days_of(conn, department, first, first + dt.timedelta(weeks=weeks))
        for i in range(weeks):
            monday = first + dt.timedelta(weeks=i)
            sunday = monday + dt.timedelta(days=6)
            mine = [d for d in days if monday <= d.day <= sunday]
            decided, timely = sum(d.decided for d in mine), sum(d.on_time for d in mine)
            # a week's percentiles change only when one of its days does: cached by its sums
            key = (
                department,
                monday,
                decided,
                timely,
                round(sum(d.decision_seconds for d in mine), 3),
            )
            found = _RANKED.get(key)
            if found is None:
                ranked: list[float | None] = []
                for p in (50, 95) if decided else ():
                    nth = max(math.ceil(p / 100 * decided) - 1, 0)  # as percentile() ranks
                    seconds = await clocks.nth_decision_seconds(
                        conn, department, monday, sunday, nth
                    )
                    ranked.append(None if seconds is None else seconds / 86400)
                found = (ranked[0], ranked[1]) if ranked else (None, None)
                if len(_RANKED) >= 10_000:
                    _RANKED.clear()
                _RANKED[key] = found
            p50, p95 = found
            out.append(
                Week(
                    monday=monday,
                    decided=decided,
                    p50=p50,
                    p95=p95,
                    on_time_rate=100 * timely / decided if decided else None,
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
    due = await deadlines.counts(runtime, within_days=DUE_SOON_DAYS, budget=CATCH_UP)
    async with runtime.engine.connect() as conn:
        decided = await clocks.decided_per_department(conn, start, end)
    for code, (n, timely) in decided.items():
        row = rows.setdefault(code, BoardRow(code, code))
        row.decided, row.on_time = n, timely
    for code, c in due.items():
        row = rows.setdefault(code, BoardRow(code, code))
        row.overdue, row.due_soon = c.overdue, c.due_soon
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
