"""The promised-time clock: deadlines with the clock paused during supplement and special
procedure.

``promised_by`` is set at intake (``promised_days`` working days on the State Council
calendar) and recomputed by the watch when a newer calendar covers what intake could only
guess. The pause is derived from the case's event history, not stored: every stretch the
case spent in ``supplement_required`` or ``suspended`` adds the working days it covered to the
deadline. A stretch that starts on day S and ends on day E (China time) covers the working days
after S up to and including E (the day the pause starts still counts; a pause that ends the day
it began costs nothing); a pause still running counts up to today. So::

    due_by = promised_by + paused working days      (working days, the same calendar)

Open cases (any state not in ``FINAL``) past ``due_by`` are overdue; those with at most
``within_days`` working days left are due soon.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import and_, bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.clock import now
from gateway.config.catalog import RouteError
from gateway.events import Source
from gateway.metrics import DUE_SOON, OVERDUE
from gateway.runtime import Runtime
from gateway.states import FINAL, PAUSED
from gateway.store import cases
from gateway.store.tables import applications, events
from gateway.workdays import add_workdays, workdays_between

log = structlog.get_logger("gateway.deadlines")

CHINA = dt.timezone(dt.timedelta(hours=8))
PAGE = 1000
_PAUSED = [s.value for s in PAUSED]
_FINAL = [s.value for s in FINAL]


@dataclass(frozen=True)
class Deadline:
    application_id: str
    receipt_number: str
    department: str
    matter_code: str
    centre: str
    status: str
    promised_by: dt.date
    paused_days: int
    paused: bool
    due_by: dt.date
    days_left: int  # working days; negative when overdue

    def as_dict(self) -> dict[str, Any]:
        return {k: (v.isoformat() if isinstance(v, dt.date) else v) for k, v in vars(self).items()}


def today() -> dt.date:
    return now().astimezone(CHINA).date()


def paused_workdays(
    history: Sequence[tuple[dt.datetime, str | None, str]], on: dt.date
) -> tuple[int, bool]:
    """Working days the clock stood still, from (at, from_status, to_status) in order; and
    whether it stands still now."""
    total, started = 0, None
    for at, _from, to in history:
        if to in _PAUSED and started is None:
            started = at.astimezone(CHINA).date()
        elif to not in _PAUSED and started is not None:
            total += workdays_between(started, at.astimezone(CHINA).date())
            started = None
    if started is not None:
        total += workdays_between(started, on)
    return total, started is not None


def deadline_of(
    row: Any, history: Sequence[tuple[dt.datetime, str | None, str]], on: dt.date
) -> Deadline:
    paused_days, paused = paused_workdays(history, on)
    due, _covered = add_workdays(row.promised_by, paused_days)
    left = workdays_between(on, due) if due >= on else -workdays_between(due, on)
    return Deadline(
        application_id=row.id,
        receipt_number=row.receipt_number,
        department=row.department,
        matter_code=row.matter_code,
        centre=row.centre,
        status=row.status,
        promised_by=row.promised_by,
        paused_days=paused_days,
        paused=paused,
        due_by=due,
        days_left=left,
    )


History = list[tuple[dt.datetime, str | None, str]]


async def pause_history(conn: AsyncConnection, app_ids: Sequence[str]) -> dict[str, History]:
    """The events that start or end a pause, per case, in order: what :func:`deadline_of` needs
    (cases that never paused are absent)."""
    hist: dict[str, History] = {}
    q = (
        select(events.c.application_id, events.c.at, events.c.from_status, events.c.to_status)
        .where(
            and_(
                events.c.application_id.in_(list(app_ids)),
                or_(events.c.to_status.in_(_PAUSED), events.c.from_status.in_(_PAUSED)),
            )
        )
        .order_by(events.c.application_id, events.c.id)
    )
    for app_id, at, frm, to in (await conn.execute(q)).all():
        hist.setdefault(app_id, []).append((at, frm, to))
    return hist


async def open_deadlines(
    runtime: Runtime, *, department: str | None = None, on: dt.date | None = None
) -> list[Deadline]:
    """Every open case with a promised date (optionally of one department)."""
    on = on or today()
    out: list[Deadline] = []
    after = ""
    cols = (
        applications.c.id,
        applications.c.receipt_number,
        applications.c.department,
        applications.c.matter_code,
        applications.c.centre,
        applications.c.status,
        applications.c.promised_by,
    )
    while True:
        conds = [
            applications.c.id > after,
            applications.c.status.not_in(_FINAL),
            applications.c.promised_by.is_not(None),
        ]
        if department:
            conds.append(applications.c.department == department)
        async with runtime.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(*cols).where(and_(*conds)).order_by(applications.c.id).limit(PAGE)
                )
            ).all()
            if not rows:
                break
            hist = await pause_history(conn, [r.id for r in rows])
        out.extend(deadline_of(r, hist.get(r.id, []), on) for r in rows)
        if len(rows) < PAGE:
            break
        after = rows[-1].id
    return out


async def listing(
    runtime: Runtime,
    *,
    department: str | None = None,
    within_days: int = 3,
    on: dt.date | None = None,
) -> tuple[list[Deadline], list[Deadline]]:
    """(overdue, due soon), each most urgent first."""
    items = await open_deadlines(runtime, department=department, on=on)
    overdue = sorted(
        (d for d in items if d.days_left < 0), key=lambda d: (d.due_by, d.application_id)
    )
    soon = sorted(
        (d for d in items if 0 <= d.days_left <= within_days and not d.paused),
        key=lambda d: (d.due_by, d.application_id),
    )
    return overdue, soon


async def overdue_counts(runtime: Runtime) -> dict[str, int]:
    counts: dict[str, int] = {}
    for d in await open_deadlines(runtime):
        if d.days_left < 0:
            counts[d.department] = counts.get(d.department, 0) + 1
    return counts


async def refresh_promised_dates(runtime: Runtime) -> int:
    """Settle the promised dates intake could only estimate: once the installed holiday
    calendar covers the whole span, ``promised_by`` is recomputed on it and becomes final, with
    an event on the case (``source`` deadlines, from and to its current status, detail
    ``{"promised_by", "estimated", "promised_by_final": true}``) so the front desk hears of it.
    Returns how many cases were settled."""
    settled = 0
    after = ""
    catalog = runtime.config.catalog
    cols = (
        applications.c.id,
        applications.c.matter_code,
        applications.c.region,
        applications.c.created_at,
        applications.c.promised_by,
    )
    while True:
        async with runtime.engine.connect() as conn:
            q = (
                select(*cols)
                .where(
                    and_(
                        applications.c.id > after,
                        applications.c.status.not_in(_FINAL),
                        applications.c.promised_by.is_not(None),
                        applications.c.promised_final.is_not(True),
                    )
                )
                .order_by(applications.c.id)
                .limit(PAGE)
            )
            rows = (await conn.execute(q)).all()
        fixes = []
        for row in rows:
            try:
                matter = catalog.route(row.matter_code, row.region)
            except RouteError:
                continue  # the catalog no longer offers it: leave the promise as made
            due, covered = add_workdays(
                row.created_at.astimezone(CHINA).date(), matter.promised_days
            )
            if covered:
                fixes.append((row.id, due, row.promised_by))
        for app_id, due, estimated in fixes:
            settled += await _settle(runtime, app_id, due, estimated)
        if len(rows) < PAGE:
            return settled
        after = rows[-1].id


async def _settle(runtime: Runtime, app_id: str, due: dt.date, estimated: dt.date) -> int:
    # no status_changed hook: the case did not move (a notifier would text the same news
    # twice); the front desk's status subscriptions carry the event like any other
    async with runtime.engine.begin() as conn:
        app = await cases.lock_application(conn, app_id)
        if app is None or app.promised_final:
            return 0  # another daemon settled it meanwhile
        await conn.execute(_SET_PROMISED, {"_id": app_id, "_due": due})
        await cases.note(
            conn,
            app,
            source=Source.DEADLINES,
            actor="deadlines",
            detail={
                "promised_by": due.isoformat(),
                "estimated": estimated.isoformat(),
                "promised_by_final": True,
            },
        )
    return 1


_SET_PROMISED = (
    update(applications)
    .where(applications.c.id == bindparam("_id"))
    .values(promised_by=bindparam("_due"), promised_final=True)
)


async def watch(runtime: Runtime) -> dict[str, Any]:
    """The daemon's deadline watch: promised dates brought up to the installed calendar, then
    per-department overdue and due-soon gauges and a log line."""
    refreshed = await refresh_promised_dates(runtime)
    if refreshed:
        log.info("promised dates made final on the installed holiday calendar", cases=refreshed)
    within = runtime.config.gateway.schedule.due_soon_days
    overdue, soon = await listing(runtime, within_days=within)
    per: dict[str, dict[str, int]] = {
        code: {"overdue": 0, "due_soon": 0} for code in runtime.config.departments
    }
    for d in overdue:
        per.setdefault(d.department, {"overdue": 0, "due_soon": 0})["overdue"] += 1
    for d in soon:
        per.setdefault(d.department, {"overdue": 0, "due_soon": 0})["due_soon"] += 1
    for code, c in per.items():
        OVERDUE.labels(code).set(c["overdue"])
        DUE_SOON.labels(code).set(c["due_soon"])
        if c["overdue"]:
            log.warning("overdue cases", department=code, **c)
    return {code: c for code, c in per.items() if c["overdue"] or c["due_soon"]}
