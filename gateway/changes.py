"""Change-feed sync: one paged question per interval, "what changed since the watermark".

Ask the link -> apply each change -> then move the watermark. The watermark (in
``sync_watermarks``) moves only after every change it covers is committed, so a daemon killed
between the fetch and that commit asks the same question again on its next tick and the state
machine turns what it applied before into no-ops. Each question reaches back
``[sync] changes_overlap_seconds`` before the watermark: a department clock behind ours, or a
change the department committed after stamping it, still falls inside the next window.

A department without a watermark yet is asked from ``poll_ceiling_seconds`` ago: older changes
of cases it holds were due a poll anyway (their first poll runs on the poll schedule).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import structlog

from gateway import metrics, tracing
from gateway.clock import now
from gateway.events import Source
from gateway.results import match
from gateway.runtime import Runtime
from gateway.store import watermarks
from gateway.updates import apply_case_update

log = structlog.get_logger("gateway.changes")


def window(
    mark: watermarks.Watermark | None, at: dt.datetime, overlap: float, first_lookback: float
) -> tuple[dt.datetime, dt.datetime]:
    """The ``[since, until)`` to ask for at ``at``."""
    if mark is None:
        return at - dt.timedelta(seconds=first_lookback + overlap), at
    return mark.watermark - dt.timedelta(seconds=overlap), at


async def sync_department(runtime: Runtime, code: str) -> dict[str, Any]:
    """One change-feed round for one department: what it saw, applied and skipped."""
    link = runtime.link(code)
    if link is None or not link.offers_changes() or link.breaker_open():
        return {"skipped": True}  # the watermark stays: the next round asks from it
    settings = runtime.config.departments[code].sync
    async with runtime.engine.connect() as conn:
        mark = await watermarks.get(conn, code)
    since, until = window(
        mark, now(), settings.changes_overlap_seconds, settings.poll_ceiling_seconds
    )
    seen = applied = unmatched = 0
    async for upd in link.changes(since, until):
        seen += 1
        found = await match(runtime, code, upd)
        if found is None:
            unmatched += 1  # a case some other channel brought in, or one never ours
            continue
        app_id, version = found
        with tracing.case(app_id):
            changes = await apply_case_update(
                runtime, app_id, upd, source=Source.POLL, actor=f"changes/{code}", version=version
            )
        applied += len(changes)
        metrics.SYNC_CHANGES.labels(code, "applied" if changes else "unchanged").inc()
    async with runtime.engine.begin() as conn:
        await watermarks.advance(conn, code, until, applied)
    metrics.SYNC_CHANGES.labels(code, "unmatched").inc(unmatched)
    metrics.SYNC_WATERMARK_LAG.labels(code).set(0.0)  # scrapes say how it grows (collector)
    if applied:
        log.info("change feed applied", department=code, seen=seen, applied=applied)
    return {
        "since": since.isoformat(),
        "until": until.isoformat(),
        "seen": seen,
        "applied": applied,
        "unmatched": unmatched,
    }


__all__ = ["sync_department", "window"]
