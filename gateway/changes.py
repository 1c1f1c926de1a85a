"""Change-feed sync: one paged question per interval, "what changed since the watermark".

Ask the link -> apply each change -> then move the watermark. The watermark (in
``sync_watermarks``) moves only after every change it covers is committed, so a daemon killed
between the fetch and that commit asks the same question again on its next tick and the state
machine turns what it applied before into no-ops. Each question reaches back
``[sync] changes_overlap_seconds`` before the watermark: a department clock behind ours, or a
change the department committed after stamping it, still falls inside the next window.

A department without a watermark yet is asked from ``poll_ceiling_seconds`` ago: older changes
of cases it holds were due a poll anyway (their first poll runs on the poll schedule).

A department that numbers its changes (a sequence feed, ``changes_by_sequence``) is asked for
the changes after the last number applied; each batch of them is applied in one transaction
that also moves the watermark to the batch's last number, so nothing is applied twice and no
overlap window is needed. Changes of a time feed are applied a batch (``BATCH``) per transaction
too; its watermark moves once the whole window is committed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import metrics
from gateway.clock import now
from gateway.connector import CaseUpdate
from gateway.departments import DepartmentLink
from gateway.events import Source
from gateway.results import match
from gateway.runtime import Runtime
from gateway.store import watermarks
from gateway.updates import apply_case_updates

log = structlog.get_logger("gateway.changes")


def window(
    mark: watermarks.Watermark | None, at: dt.datetime, overlap: float, first_lookback: float
) -> tuple[dt.datetime, dt.datetime]:
    """The ``[since, until)`` to ask for at ``at``."""
    if mark is None:
        return at - dt.timedelta(seconds=first_lookback + overlap), at
    return mark.watermark - dt.timedelta(seconds=overlap), at


#: changes applied in one transaction (about a page of a feed)
BATCH = 100


@dataclass
class _Tally:
    seen: int = 0
    applied: int = 0
    unmatched: int = 0


async def sync_department(runtime: Runtime, code: str) -> dict[str, Any]:
    """One change-feed round for one department: what it saw, applied and skipped."""
    link = runtime.link(code)
    if link is None or not link.offers_changes() or link.breaker_open():
        return {"skipped": True}  # the watermark stays: the next round asks from it
    settings = runtime.config.departments[code].sync
    async with runtime.engine.connect() as conn:
        mark = await watermarks.get(conn, code)
    if link.changes_by_sequence():
        return await _by_sequence(runtime, link, code, mark)
    since, until = window(
        mark, now(), settings.changes_overlap_seconds, settings.poll_ceiling_seconds
    )
    tally = _Tally()
    batch: list[CaseUpdate] = []
    async for upd in link.changes(since, until):
        batch.append(upd)
        if len(batch) >= BATCH:
            await _apply(runtime, code, batch, tally)
            batch = []
    await _apply(runtime, code, batch, tally)
    # only now, every change of the window committed: a crash before this asks again
    async with runtime.engine.begin() as conn:
        await watermarks.advance(conn, code, until, tally.applied)
    _done(code, tally)
    return {
        "since": since.isoformat(),
        "until": until.isoformat(),
        "seen": tally.seen,
        "applied": tally.applied,
        "unmatched": tally.unmatched,
    }


async def _by_sequence(
    runtime: Runtime, link: DepartmentLink, code: str, mark: watermarks.Watermark | None
) -> dict[str, Any]:
    """A numbered feed: the changes after the last number applied, each batch committed with
    the watermark moved to its last number (no overlap: numbers neither skew nor come late)."""
    first = mark.sequence if mark is not None and mark.sequence is not None else 0
    last, at = first, now()
    tally = _Tally()
    batch: list[CaseUpdate] = []

    async def flush() -> None:
        nonlocal batch, last
        upto = batch[-1].sequence if batch and batch[-1].sequence is not None else last

        async def advance(conn: AsyncConnection, applied: int) -> None:
            await watermarks.advance(conn, code, at, applied, sequence=upto)

        await _apply(runtime, code, batch, tally, then=advance)
        last, batch = upto, []

    async for upd in link.changes_after(first):
        batch.append(upd)
        if len(batch) >= BATCH:
            await flush()
    if batch or mark is None or mark.sequence is None:
        await flush()
    _done(code, tally)
    return {
        "after": first,
        "last": last,
        "seen": tally.seen,
        "applied": tally.applied,
        "unmatched": tally.unmatched,
    }


async def _apply(
    runtime: Runtime,
    code: str,
    batch: list[CaseUpdate],
    tally: _Tally,
    then: Callable[[AsyncConnection, int], Awaitable[None]] | None = None,
) -> None:
    """Apply one batch of the feed in one transaction (and ``then`` in it)."""
    found: list[tuple[str, CaseUpdate, int | None]] = []
    for upd in batch:
        tally.seen += 1
        hit = await match(runtime, code, upd)
        if hit is None:
            tally.unmatched += 1  # a case some other channel brought in, or one never ours
        else:
            found.append((hit[0], upd, hit[1]))
    if not found and then is None:
        return
    done = await apply_case_updates(
        runtime, found, source=Source.POLL, actor=f"changes/{code}", then=then
    )
    for changes in done:
        tally.applied += len(changes)
        metrics.SYNC_CHANGES.labels(code, "applied" if changes else "unchanged").inc()


def _done(code: str, tally: _Tally) -> None:
    metrics.SYNC_CHANGES.labels(code, "unmatched").inc(tally.unmatched)
    metrics.SYNC_WATERMARK_LAG.labels(code).set(0.0)  # scrapes say how it grows (collector)
    if tally.applied:
        log.info("change feed applied", department=code, seen=tally.seen, applied=tally.applied)


__all__ = ["sync_department", "window"]
