"""The promised-time clock: deadlines with the clock paused during supplement and special
procedure.

``promised_by`` is set at intake (``promised_days`` working days on the State Council
calendar) and recomputed by the watch when a newer calendar covers what intake could only
guess. The pause is derived from the case's event history (and kept per case in
``case_clocks`` by :mod:`gateway.clocks`, so lists and counts read a few indexed rows):
every stretch the case spent in ``supplement_required`` or ``suspended`` adds the working days
it covered to the deadline. A stretch that starts on day S and ends on day E (China time)
covers the working days after S up to and including E (the day the pause starts still counts;
a pause that ends the day it began costs nothing); a pause still running counts up to today.
So::

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
from sqlalchemy import and_, bindparam, select, update

from gateway import clocks
from gateway.clock import now
from gateway.clocks import CHINA, History, pause_history, paused_workdays
from gateway.config.catalog import RouteError
from gateway.events import Source
from gateway.metrics import DUE_SOON, OVERDUE
from gateway.runtime import Runtime
from gateway.states import FINAL
from gateway.store import cases
from gateway.store.tables import applications
from gateway.workdays import add_workdays, workdays_between

log = structlog.get_logger("gateway.deadlines")

PAGE = 1000
_FINAL = [s.value for s in FINAL]

__all__ = [
    "CHINA",
    "Deadline",
    "History",
    "deadline_of",
    "listing",
    "pause_history",
    "paused_workdays",
]


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


def deadline_at(row: Any, paused_days: int, paused_since: dt.date | None, on: dt.date) -> Deadline:
    """A case's deadline on day ``on`` from its clock (:func:`gateway.clocks.clock_of`)."""
    paused = paused_since is not None
    if paused_since is not None:
        paused_days += workdays_between(paused_since, on)
    due = clocks.due_on(row.promised_by, paused_days)
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
        days_left=clocks.days_left(due, on),
    )


def deadline_of(
    row: Any, history: Sequence[tuple[dt.datetime, str | None, str]], on: dt.date
) -> Deadline:
    """A case's deadline on day ``on`` from its pause events."""
    return deadline_at(row, *clocks.clock_of(history), on)


async def listing(
    runtime: Runtime,
    *,
    department: str | None = None,
    within_days: int = 3,
    on: dt.date | None = None,
) -> tuple[list[Deadline], list[Deadline]]:
    """(overdue, due soon), each most urgent first, read from the case clocks once they are
    brought up to date (:func:`gateway.clocks.refresh`)."""
    on = on or today()
    await clocks.refresh(runtime)
    async with runtime.reader.connect() as conn:
        rows = await clocks.listed(conn, on, within_days, department=department)
    items = [deadline_at(r, r.paused_days, r.paused_since, on) for r in rows]
    overdue = sorted(
        (d for d in items if d.days_left < 0), key=lambda d: (d.due_by, d.application_id)
    )
    soon = sorted(
        (d for d in items if 0 <= d.days_left <= within_days and not d.paused),
        key=lambda d: (d.due_by, d.application_id),
    )
    return overdue, soon


async def most_overdue(
    runtime: Runtime,
    department: str,
    limit: int,
    *,
    on: dt.date | None = None,
    budget: int | None = None,
) -> list[Deadline]:
    """The ``limit`` most overdue cases of a department (what :func:`listing` lists first).
    ``budget``: see :func:`gateway.clocks.refresh`."""
    on = on or today()
    await clocks.refresh(runtime, budget=budget)
    async with runtime.reader.connect() as conn:
        rows = await clocks.listed(
            conn, on, 0, department=department, overdue_only=True, limit=limit
        )
    items = [deadline_at(r, r.paused_days, r.paused_since, on) for r in rows]
    late = sorted((d for d in items if d.days_left < 0), key=lambda d: (d.due_by, d.application_id))
    return late[:limit]


async def counts(
    runtime: Runtime,
    *,
    within_days: int,
    department: str | None = None,
    on: dt.date | None = None,
    budget: int | None = None,
) -> dict[str, clocks.Counts]:
    """Per department: how many cases :func:`listing` lists as overdue and as due soon (read
    without listing them). ``budget``: see :func:`gateway.clocks.refresh`."""
    await clocks.refresh(runtime, budget=budget)
    async with runtime.reader.connect() as conn:
        return await clocks.counts(conn, on or today(), within_days, department=department)


async def overdue_counts(runtime: Runtime) -> dict[str, int]:
    found = await counts(runtime, within_days=0)
    return {code: c.overdue for code, c in found.items() if c.overdue}


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
        async with runtime.reader.connect() as conn:
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
    found = await counts(runtime, within_days=within)
    per: dict[str, dict[str, int]] = {
        code: {"overdue": 0, "due_soon": 0} for code in runtime.config.departments
    }
    for code, n in found.items():
        per[code] = {"overdue": n.overdue, "due_soon": n.due_soon}
    for code, c in per.items():
        OVERDUE.labels(code).set(c["overdue"])
        DUE_SOON.labels(code).set(c["due_soon"])
        if c["overdue"]:
            log.warning("overdue cases", department=code, **c)
    return {code: c for code, c in per.items() if c["overdue"] or c["due_soon"]}
