"""Each case's promised-time clock and the daily decision figures, kept in summary tables so
that the ops console, ``gateway deadlines`` and the deadline watch answer from a few indexed
rows instead of every case's event history.

``case_clocks`` holds one row per case with what its history says once (the working days its
clock stood still in finished pauses, the day a running pause began, its due date while the
clock runs; and for a decided case the China day of the decision, how long it took and whether
it was on time). ``daily_figures`` sums the decisions per department per China day.

Both are refreshed incrementally from the cases changed since a watermark on
``applications.updated_at`` (every status change and every note sets it), re-reading an overlap
before it (``OVERLAP``: commits that finished after a later one had been read, and clocks of
other hosts that run behind). A refresh that caught up moves the watermark to the time it
began, so an idle gateway re-reads nothing. A refresh
recomputes a changed case from its history and writes only what differs, so any number of
refreshers (the daemon's ``figures`` task, a console page, the CLI) can run at once and none
touches the dispatch path. Nothing here depends on the day it runs: the date enters only when
a clock is read (:func:`deadline_at`).
"""

from __future__ import annotations

import datetime as dt
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, and_, bindparam, case, delete, func, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.clock import now
from gateway.runtime import Runtime
from gateway.states import FINAL, PAUSED, State
from gateway.store.tables import (
    applications,
    case_clocks,
    daily_figures,
    events,
    hourly_deliveries,
)
from gateway.store.tables import rollup_watermarks as watermarks
from gateway.workdays import add_workdays, is_workday, workdays_between

CHINA = dt.timezone(dt.timedelta(hours=8))
#: cases read per refresh step (one transaction each)
PAGE = 2000
#: re-read the cases changed this long before the watermark: a transaction that stamped its
#: change earlier may have committed after a later one was read
OVERLAP = dt.timedelta(seconds=120)
NAME = "case_clocks"
#: hourly deliveries are kept this long
HOURLY_DAYS = 2
_PAUSED = frozenset(s.value for s in PAUSED)
_FINAL = frozenset(s.value for s in FINAL)

History = list[tuple[dt.datetime, str | None, str]]


def clock_of(history: Sequence[tuple[dt.datetime, str | None, str]]) -> tuple[int, dt.date | None]:
    """From (at, from_status, to_status) in order: the working days the clock stood still in
    finished pauses, and the China day the running pause began (None: the clock runs)."""
    total, started = 0, None
    for at, _from, to in history:
        if to in _PAUSED and started is None:
            started = at.astimezone(CHINA).date()
        elif to not in _PAUSED and started is not None:
            total += workdays_between(started, at.astimezone(CHINA).date())
            started = None
    return total, started


def paused_workdays(
    history: Sequence[tuple[dt.datetime, str | None, str]], on: dt.date
) -> tuple[int, bool]:
    """Working days the clock stood still up to ``on``; and whether it stands still now."""
    total, started = clock_of(history)
    if started is not None:
        total += workdays_between(started, on)
    return total, started is not None


async def pause_history(conn: AsyncConnection, app_ids: Sequence[str]) -> dict[str, History]:
    """The events that start or end a pause, per case, in order (cases that never paused are
    absent)."""
    hist: dict[str, History] = {}
    if not app_ids:
        return hist
    paused = list(_PAUSED)
    q = (
        select(events.c.application_id, events.c.at, events.c.from_status, events.c.to_status)
        .where(
            and_(
                events.c.application_id.in_(list(app_ids)),
                or_(events.c.to_status.in_(paused), events.c.from_status.in_(paused)),
            )
        )
        .order_by(events.c.application_id, events.c.id)
    )
    for app_id, at, frm, to in (await conn.execute(q)).all():
        hist.setdefault(app_id, []).append((at, frm, to))
    return hist


def due_on(promised_by: dt.date, paused_days: int) -> dt.date:
    return add_workdays(promised_by, paused_days)[0]


def days_left(due: dt.date, on: dt.date) -> int:
    """Working days from ``on`` to ``due``; negative when past it."""
    return workdays_between(on, due) if due >= on else -workdays_between(due, on)


def on_time(
    promised_by: dt.date, paused_days: int, paused_since: dt.date | None, on: dt.date
) -> bool:
    """Whether a case decided on day ``on`` was on time (``days_left >= 0`` of its due date that
    day), without the calendar walks that cannot change the answer: a case that never paused is
    due on its promised date, and one decided by its due date is on time."""
    if paused_since is not None:
        paused_days += workdays_between(paused_since, on)
    due = due_on(promised_by, paused_days) if paused_days else promised_by
    return due >= on or workdays_between(due, on) == 0


# -- reading the clocks on a day ----------------------------------------------------------------


def bounds(on: dt.date, within_days: int) -> tuple[dt.date, dt.date]:
    """(W, D) for day ``on``: a running clock is overdue when its due date is before W (the last
    working day up to ``on``: a working day has passed since it was due), and due within
    ``within_days`` working days when W <= due < D (D: the working day after those)."""
    last = on
    while not is_workday(last)[0]:
        last -= dt.timedelta(days=1)
    return last, add_workdays(on, within_days + 1)[0]


@dataclass(frozen=True)
class Counts:
    overdue: int = 0
    due_soon: int = 0


# as the partial indexes ix_case_clocks_running and _paused are written (gateway/store/tables.py)
def _running(department: str | None) -> list[Any]:
    c = case_clocks.c
    conds: list[Any] = [c.open.is_(True), c.paused_since.is_(None)]
    return conds + ([c.department == department] if department else [])


def _paused(department: str | None) -> list[Any]:
    c = case_clocks.c
    conds: list[Any] = [c.open.is_(True), c.paused_since.is_not(None), c.promised_by.is_not(None)]
    return conds + ([c.department == department] if department else [])


async def counts(
    conn: AsyncConnection, on: dt.date, within_days: int, *, department: str | None = None
) -> dict[str, Counts]:
    """Per department: open cases overdue on ``on`` and due within ``within_days`` working days
    (a paused clock is never due soon), as :func:`gateway.deadlines.listing` lists them."""
    last, horizon = bounds(on, within_days)
    c = case_clocks.c
    overdue = func.sum(case((c.due_by < last, 1), else_=0))
    soon = func.sum(case((c.due_by >= last, 1), else_=0))
    q = (  # due_by < horizon: a clock without a promised date has none
        select(c.department, overdue, soon)
        .where(*_running(department), c.due_by < horizon)
        .group_by(c.department)
    )
    out = {d: Counts(int(o or 0), int(s or 0)) for d, o, s in (await conn.execute(q)).all()}
    # a running pause moves the due date every working day: read it on the day
    q = select(c.department, c.promised_by, c.paused_days, c.paused_since).where(
        *_paused(department)
    )
    for r in (await conn.execute(q)).all():
        dept = r.department
        due = due_on(r.promised_by, r.paused_days + workdays_between(r.paused_since, on))
        if days_left(due, on) < 0:
            prev = out.get(dept, Counts())
            out[dept] = Counts(prev.overdue + 1, prev.due_soon)
    return out


async def listed(
    conn: AsyncConnection,
    on: dt.date,
    within_days: int,
    *,
    department: str | None = None,
    overdue_only: bool = False,
    limit: int | None = None,
) -> list[Any]:
    """The open cases that may be overdue or due soon on ``on`` (every paused one, and the
    running ones due before D of :func:`bounds`), most urgent first, with their clock and the
    case columns a deadline shows. ``limit`` bounds the running ones read."""
    last, horizon = bounds(on, within_days)
    c, a = case_clocks.c, applications.c
    cols = (
        a.id,
        a.receipt_number,
        a.department,
        a.matter_code,
        a.centre,
        a.status,
        c.promised_by,
        c.paused_days,
        c.paused_since,
    )
    joined = case_clocks.join(applications, a.id == c.application_id)
    running = (
        select(*cols)
        .select_from(joined)
        .where(*_running(department), c.due_by < (last if overdue_only else horizon))
        .order_by(c.due_by, c.application_id)
        .limit(limit)
    )
    paused = select(*cols).select_from(joined).where(*_paused(department))
    return [*(await conn.execute(running)).all(), *(await conn.execute(paused)).all()]


# -- keeping the tables current -----------------------------------------------------------------


def _clock_row(app: Any, history: History) -> dict[str, Any]:
    closed, since = clock_of(history)
    decided_on = seconds = timely = None
    if app.decided_at is not None and app.promised_by is not None:
        decided_on = app.decided_at.astimezone(CHINA).date()
        seconds = (app.decided_at - app.created_at).total_seconds()
        timely = on_time(app.promised_by, closed, since, decided_on)
    return {
        "application_id": app.id,
        "department": app.department,
        "open": app.status not in _FINAL,
        "promised_by": app.promised_by,
        "paused_days": closed,
        "paused_since": since,
        "due_by": None if app.promised_by is None else due_on(app.promised_by, closed),
        "decided_on": decided_on,
        "decision_seconds": seconds,
        "on_time": timely,
    }


_COMPARED = (
    "department",
    "open",
    "promised_by",
    "paused_days",
    "paused_since",
    "due_by",
    "decided_on",
    "on_time",
)


def _differs(old: Any, new: dict[str, Any]) -> bool:
    if any(getattr(old, k) != new[k] for k in _COMPARED):
        return True
    a, b = old.decision_seconds, new["decision_seconds"]
    return (a is None) != (b is None) or (a is not None and abs(a - b) > 1e-3)


async def _watermark(conn: AsyncConnection) -> dt.datetime | None:
    q = select(watermarks.c.watermark).where(watermarks.c.name == NAME)
    found: dt.datetime | None = (await conn.execute(q)).scalar()
    return found


async def _advance(conn: AsyncConnection, to: dt.datetime, read: dt.datetime | None) -> None:
    """Move the watermark forward to ``to``; not written again for less than a few seconds
    (``read``: the watermark this refresh began from), so page views do not write each time."""
    if read is not None and to - read < dt.timedelta(seconds=5):
        return
    current = await _watermark(conn)
    if current is None:  # two first refreshes at once: the first row stands
        await conn.execute(
            _upsert(conn, watermarks)
            .values(name=NAME, watermark=to, refreshed_at=now())
            .on_conflict_do_nothing(index_elements=[watermarks.c.name])
        )
    elif to > current:
        await conn.execute(
            update(watermarks)
            .where(watermarks.c.name == NAME)
            .values(watermark=to, refreshed_at=now())
        )


async def _resum(conn: AsyncConnection, keys: Iterable[tuple[str, dt.date]]) -> None:
    """Recount ``daily_figures`` for these (department, day) from the clocks."""
    c = case_clocks.c
    for dept, day in sorted(set(keys)):
        q = select(
            func.count(),
            func.sum(case((c.on_time.is_(True), 1), else_=0)),
            func.sum(c.decision_seconds),
        ).where(c.department == dept, c.decided_on == day)
        decided, timely, seconds = (await conn.execute(q)).one()
        d = daily_figures.c
        if not decided:
            await conn.execute(delete(daily_figures).where(d.department == dept, d.day == day))
            continue
        sums = {"decided": decided, "on_time": int(timely or 0), "decision_seconds": seconds}
        # an upsert, as for the hourly counts: two refreshes at once recount the same day
        await conn.execute(
            _upsert(conn, daily_figures)
            .values(department=dept, day=day, **sums)
            .on_conflict_do_update(index_elements=[d.department, d.day], set_=sums)
        )


_UPDATE_CLOCK = (
    update(case_clocks)
    .where(case_clocks.c.application_id == bindparam("_application_id"))
    .values({k: bindparam(f"_{k}") for k in (*_COMPARED, "decision_seconds")})
)


async def _step(conn: AsyncConnection, rows: Sequence[Any]) -> int:
    ids = [r.id for r in rows]
    hist = await pause_history(conn, ids)
    old = {
        r.application_id: r
        for r in (
            await conn.execute(select(case_clocks).where(case_clocks.c.application_id.in_(ids)))
        ).all()
    }
    fresh, changed, days = [], [], []
    for app in rows:
        new = _clock_row(app, hist.get(app.id, []))
        prev = old.get(app.id)
        if prev is None:
            fresh.append(new)
        elif _differs(prev, new):
            changed.append(new)
            if prev.decided_on is not None:
                days.append((prev.department, prev.decided_on))
        else:
            continue
        if new["decided_on"] is not None:
            days.append((new["department"], new["decided_on"]))
    if fresh:
        # two refreshes at once may both find a case new: the later one's row wins
        stmt = _upsert(conn, case_clocks)
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[case_clocks.c.application_id],
                set_={k: getattr(stmt.excluded, k) for k in fresh[0] if k != "application_id"},
            ),
            fresh,
        )
    if changed:  # one statement for the page (executemany), not one per case
        await conn.execute(_UPDATE_CLOCK, [{f"_{k}": v for k, v in n.items()} for n in changed])
    await _resum(conn, days)
    return len(fresh) + len(changed)


async def _hourly(runtime: Runtime, since: dt.datetime, at: dt.datetime) -> None:
    """Recount ``hourly_deliveries`` for every hour with a delivery since ``since`` and drop
    the hours older than ``HOURLY_DAYS`` (no write when there was no delivery)."""
    e, h = events.c, hourly_deliveries.c
    async with runtime.reader.connect() as conn:
        # the first and last delivery since then (not every one: a busy hour holds thousands)
        q = select(func.min(e.at), func.max(e.at)).where(
            e.to_status == State.DELIVERED.value, e.at >= since
        )
        first, last = (await conn.execute(q)).one()
    if first is None or last is None:
        return
    hours: list[dt.datetime] = []
    hour = first.replace(minute=0, second=0, microsecond=0)
    while hour <= last:  # an hour between without a delivery is recounted to nothing
        hours.append(hour)
        hour += dt.timedelta(hours=1)
    async with runtime.engine.begin() as conn:
        for hour in hours:
            await _recount(conn, hour)
        old = at - dt.timedelta(days=HOURLY_DAYS)
        await conn.execute(delete(hourly_deliveries).where(h.hour < old))


async def _recount(conn: AsyncConnection, hour: dt.datetime) -> None:
    """Deliveries per department in the clock hour from ``hour``, counted from the events."""
    e, a = events.c, applications.c
    per = (
        select(a.department, func.count())
        .select_from(events.join(applications, a.id == e.application_id))
        .where(
            e.to_status == State.DELIVERED.value,
            e.at >= hour,
            e.at < hour + dt.timedelta(hours=1),
        )
        .group_by(a.department)
    )
    counted = (await conn.execute(per)).all()
    h = hourly_deliveries.c
    await conn.execute(
        delete(hourly_deliveries).where(
            h.hour == hour, h.department.not_in([d for d, _n in counted])
        )
    )
    # an upsert: two refreshes at once (the daemon's deadlines task, a console page, the CLI)
    # recount the same hour; a delete-then-insert made the second fail on the primary key
    for department, n in counted:
        await conn.execute(
            _upsert(conn, hourly_deliveries)
            .values(department=department, hour=hour, delivered=n)
            .on_conflict_do_update(index_elements=[h.department, h.hour], set_={"delivered": n})
        )


def _upsert(conn: AsyncConnection, table: Table) -> Any:
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


async def deliveries_since(
    conn: AsyncConnection, since: dt.datetime
) -> list[tuple[str, dt.datetime, int]]:
    """(department, hour, deliveries) for the clock hours from the one holding ``since``."""
    h = hourly_deliveries.c
    start = since.replace(minute=0, second=0, microsecond=0)
    q = select(h.department, h.hour, h.delivered).where(h.hour >= start)
    return [(d, hour, n) for d, hour, n in (await conn.execute(q)).all()]


async def refresh(runtime: Runtime, *, budget: int | None = None) -> bool:
    """Bring the clocks and daily figures up to the cases changed since the watermark (less
    ``OVERLAP``), and the hourly deliveries up to the deliveries since then. Reads at most
    ``budget`` cases (None: all; 0: nothing, the caller refreshed already); returns whether it
    caught up."""
    if budget == 0:
        return False
    began = now()
    async with runtime.reader.connect() as conn:
        mark = await _watermark(conn)
    since = mark - OVERLAP if mark is not None else began - dt.timedelta(days=HOURLY_DAYS)
    await _hourly(runtime, since, began)
    a = applications.c
    cols = (a.id, a.department, a.status, a.promised_by, a.created_at, a.decided_at, a.updated_at)
    start = mark - OVERLAP if mark is not None else None
    after: tuple[dt.datetime, str] | None = None
    read = 0
    while budget is None or read < budget:
        q = select(*cols).order_by(a.updated_at, a.id).limit(PAGE)
        if after is not None:
            q = q.where(tuple_(a.updated_at, a.id) > tuple_(*after))
        elif start is not None:
            q = q.where(a.updated_at >= start)
        seen = _seen(runtime)
        async with runtime.engine.begin() as conn:
            rows = (await conn.execute(q)).all()
            # a case read again in the overlap with the same stamp did not change since
            fresh = [r for r in rows if seen.get(r.id) != r.updated_at]
            if fresh:
                await _step(conn, fresh)
            if len(rows) < PAGE:
                # caught up with every change stamped before this refresh began: the next one
                # starts an overlap before that, not before the last change (which may be old)
                await _advance(conn, max(began, rows[-1].updated_at) if rows else began, mark)
            else:
                await _advance(conn, rows[-1].updated_at, mark)
        seen.update((r.id, r.updated_at) for r in fresh)
        if len(seen) > 50_000:  # only the overlap's cases are worth remembering
            for app_id in [k for k, at in seen.items() if at < began - 2 * OVERLAP]:
                del seen[app_id]
        if len(rows) < PAGE:
            return True
        read += len(rows)
        after = (rows[-1].updated_at, rows[-1].id)
    return False


_SEEN: weakref.WeakKeyDictionary[Runtime, dict[str, dt.datetime]] = weakref.WeakKeyDictionary()


def _seen(runtime: Runtime) -> dict[str, dt.datetime]:
    """The cases this process's refreshes read lately, with the stamp they had then."""
    return _SEEN.setdefault(runtime, {})


async def as_of(runtime: Runtime) -> dt.datetime | None:
    """The watermark: every case changed before it is in the figures."""
    async with runtime.reader.connect() as conn:
        return await _watermark(conn)


# -- decisions per period -----------------------------------------------------------------------


async def decided_per_department(
    conn: AsyncConnection, start: dt.date, end: dt.date, *, department: str | None = None
) -> dict[str, tuple[int, int]]:
    """(decided, on time) per department for decisions from ``start`` to ``end`` (China days,
    both included) of cases with a promised date."""
    d = daily_figures.c
    q = (
        select(d.department, func.sum(d.decided), func.sum(d.on_time))
        .where(d.day >= start, d.day <= end)
        .group_by(d.department)
    )
    if department:
        q = q.where(d.department == department)
    return {dept: (int(n), int(t)) for dept, n, t in (await conn.execute(q)).all()}


@dataclass(frozen=True)
class Day:
    day: dt.date
    decided: int
    on_time: int
    decision_seconds: float  # summed


async def days_of(
    conn: AsyncConnection, department: str, start: dt.date, end: dt.date
) -> list[Day]:
    """The department's daily figures from ``start`` to ``end`` (days without decisions left
    out)."""
    d = daily_figures.c
    q = select(d.day, d.decided, d.on_time, d.decision_seconds).where(
        d.department == department, d.day >= start, d.day <= end
    )
    return [
        Day(r.day, r.decided, r.on_time, r.decision_seconds or 0.0) for r in await conn.execute(q)
    ]


async def nth_decision_seconds(
    conn: AsyncConnection, department: str, start: dt.date, end: dt.date, n: int
) -> float | None:
    """The ``n``-th shortest (from 0) decision time in seconds among the department's decisions
    from ``start`` to ``end``."""
    c = case_clocks.c
    q = (
        select(c.decision_seconds)
        .where(c.department == department, c.decided_on >= start, c.decided_on <= end)
        .order_by(c.decision_seconds)
        .offset(n)
        .limit(1)
    )
    found: float | None = (await conn.execute(q)).scalar()
    return found
