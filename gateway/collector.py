"""Scrape-time backlog gauges: a few grouped counts on indexed columns, at most once per
:data:`MIN_INTERVAL` seconds per process however many scrapers ask.

* ``gateway_backlog_cases{department,state}``: cases not yet handed out, failed or withdrawn
  (index ``ix_applications_department_status``);
* ``gateway_failed_cases{department}``: the dead letters waiting for an operator;
* ``gateway_retrying_jobs{department}``: dispatch jobs waiting after a failed attempt;
* ``gateway_overdue_cases`` / ``gateway_due_soon_cases``: read from the newest finished
  ``deadlines`` tick (the daemon's deadline watch stores its per-department counts on its
  ``task_leases`` row), so every instance reports what the last watch found, wherever it ran;
* ``gateway_sync_watermark_lag_seconds{department}``: now less the change feed's watermark;
* ``gateway_poll_lag_seconds{department}``: how long the case whose poll is most overdue has
  waited for it (index ``ix_applications_poll``): the oldest un-synced case.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from sqlalchemy import and_, func, select

from gateway import metrics
from gateway.clock import now
from gateway.runtime import Runtime
from gateway.states import AT_DEPARTMENT, State
from gateway.store import watermarks
from gateway.store.tables import applications, dispatch_jobs, task_leases

__all__ = ["BACKLOG_STATES", "MIN_INTERVAL", "collect", "collect_or_log"]

log = structlog.get_logger("gateway.metrics")

MIN_INTERVAL = 5.0
_DONE = {State.COLLECTED, State.MAILED, State.WITHDRAWN, State.FAILED}
BACKLOG_STATES: tuple[str, ...] = tuple(s.value for s in State if s not in _DONE)

_last: dict[int, float] = {}
_seen: set[tuple[str, str]] = set()


async def collect(runtime: Runtime, *, force: bool = False) -> bool:
    """Refresh the backlog gauges from the database; False when skipped (asked too soon)."""
    key = id(runtime)
    t = time.monotonic()
    if not force and t - _last.get(key, -MIN_INTERVAL) < MIN_INTERVAL:
        return False
    _last[key] = t
    async with runtime.engine.connect() as conn:
        backlog = (
            await conn.execute(
                select(applications.c.department, applications.c.status, func.count())
                .where(applications.c.status.in_((*BACKLOG_STATES, State.FAILED.value)))
                .group_by(applications.c.department, applications.c.status)
            )
        ).all()
        retrying = (
            await conn.execute(
                select(dispatch_jobs.c.department, func.count())
                .where(and_(dispatch_jobs.c.state == "pending", dispatch_jobs.c.attempts > 0))
                .group_by(dispatch_jobs.c.department)
            )
        ).all()
        watch = (
            await conn.execute(
                select(task_leases.c.detail)
                .where(and_(task_leases.c.task == "deadlines", task_leases.c.outcome == "done"))
                .order_by(task_leases.c.tick.desc())
                .limit(1)
            )
        ).scalar_one_or_none()
        marks = await watermarks.every(conn)
        oldest = (
            await conn.execute(
                select(applications.c.department, func.min(applications.c.next_poll_at))
                .where(
                    and_(
                        applications.c.status.in_([s.value for s in AT_DEPARTMENT]),
                        applications.c.next_poll_at.is_not(None),
                    )
                )
                .group_by(applications.c.department)
            )
        ).all()
    at = now()
    for mark in marks:
        metrics.SYNC_WATERMARK_LAG.labels(mark.department).set(
            (at - mark.watermark).total_seconds()
        )
    late: dict[str, Any] = {d: v for d, v in oldest}
    for code in runtime.config.departments:
        due = late.get(code)
        metrics.POLL_LAG.labels(code).set(max(0.0, (at - due).total_seconds()) if due else 0.0)
    departments = set(runtime.config.departments)
    counts: dict[tuple[str, str], int] = {(d, s): int(n) for d, s, n in backlog}
    failed = {d: n for (d, s), n in counts.items() if s == State.FAILED.value}
    for code in departments | set(failed):
        metrics.FAILED.labels(code).set(failed.get(code, 0))
    current = {k: n for k, n in counts.items() if k[1] != State.FAILED.value}
    for labels in _seen - set(current):
        metrics.BACKLOG.labels(*labels).set(0)  # drained since the last scrape
    for labels, n in current.items():
        metrics.BACKLOG.labels(*labels).set(n)
    _seen.update(current)
    waiting = {d: int(n) for d, n in retrying}
    for code in departments | set(waiting):
        metrics.RETRYING.labels(code).set(waiting.get(code, 0))
    per: dict[str, Any] = watch if isinstance(watch, dict) else {}
    for code in departments | set(per):
        found = per.get(code) or {}
        metrics.OVERDUE.labels(code).set(int(found.get("overdue", 0)))
        metrics.DUE_SOON.labels(code).set(int(found.get("due_soon", 0)))
    metrics.COLLECT_SECONDS.set(time.monotonic() - t)
    return True


async def collect_or_log(runtime: Runtime) -> None:
    """:func:`collect` for a scrape: with the database down the process's own metrics are
    still served (the backlog gauges keep their last values) and the reason is logged."""
    try:
        await collect(runtime)
    except Exception as exc:
        log.warning("backlog metrics not refreshed", reason=f"{type(exc).__name__}: {exc}"[:300])
