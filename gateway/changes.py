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

Not every tick reaches back the whole overlap: that re-read every change ~60 times (120 s at a
2 s interval), and a city day's hrss feed was then a seventh of the daemon's CPU. A tick reaches
back one interval before the watermark; once per ``changes_overlap_seconds`` (and on this
process's first tick) a tick reaches back the overlap before the watermark of the last such
tick, so every change stamped within the overlap of becoming visible is still read, a late one
at most one overlap later than before, and each change is read about four times. A
change costs one read per batch (:func:`~gateway.results.match_many`: its case, status and
version); one this process has already judged is skipped there, before any lock or write.
"Already judged" is exact: the same change (every field the department sent, the version it
is about and the state its code maps to) was applied or found a no-op by the state machine in
a committed transaction, and its case still has the status and version it had right after
(``Ended``). Judging it again from there would change nothing; anything that moved the case
since (a retry, a re-send, another channel) sends it through the state machine again. The
memory holds only the cases seen since the last full tick began (per daemon process; another
process, or this one after a restart, judges each change once more).

A change not judged yet whose case already stands where it would leave it (applied by another
process: amr's callbacks land in the API process) is judged from one read, without a write
transaction (:func:`~gateway.updates.changing_nothing`: one statement reads the case and its
listed documents; only a change that would move no status, list no document, keep no case
number and log nothing qualifies), counted ``unchanged`` and remembered as judged.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import metrics
from gateway.clock import now
from gateway.config.models import SyncSettings
from gateway.connector import CaseUpdate
from gateway.departments import DepartmentLink
from gateway.events import Source
from gateway.results import Hit, match_many
from gateway.runtime import Runtime
from gateway.states import State
from gateway.store import watermarks
from gateway.updates import Ended, apply_case_updates, changing_nothing

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
    skipped: int = 0
    #: judged from one read to change nothing (:func:`~gateway.updates.changing_nothing`)
    unchanged: int = 0


@dataclass
class _Judged:
    """The changes of one case this process has judged, and where they left it."""

    status: str
    version: int
    prints: set[bytes] = field(default_factory=set)


@dataclass
class _Memory:
    """One department's judged changes, case by case, for the cases seen since the last full
    tick began."""

    cases: dict[str, _Judged] = field(default_factory=dict)
    #: cases seen since the last full tick began (the others are dropped when the next completes)
    round: set[str] = field(default_factory=set)
    #: the last tick that reached back the whole overlap: its watermark and when it ran
    #: (``time.monotonic()``); None until this process's first
    full_from: dt.datetime | None = None
    full_at: float = 0.0

    def judged(self, hit: Hit, mark: bytes) -> bool:
        self.round.add(hit.app_id)
        known = self.cases.get(hit.app_id)
        return (
            known is not None
            and known.status == hit.status
            and known.version == hit.stored_version
            and mark in known.prints
        )

    def note(self, app_id: str, end: Ended, mark: bytes) -> None:
        known = self.cases.get(app_id)
        if known is None or (known.status, known.version) != (end.status, end.version):
            self.cases[app_id] = _Judged(end.status, end.version, {mark})
        else:
            known.prints.add(mark)

    def round_done(self) -> None:
        self.cases = {k: v for k, v in self.cases.items() if k in self.round}
        self.round = set()

    def reach(self, mark: watermarks.Watermark, settings: SyncSettings) -> tuple[dt.datetime, bool]:
        """Where this tick's window starts, and whether it is a full tick (see the module
        doc): the overlap before the last full tick's watermark, or one interval before this
        one's."""
        overlap = dt.timedelta(seconds=settings.changes_overlap_seconds)
        step = dt.timedelta(
            seconds=min(settings.changes_interval_seconds, settings.changes_overlap_seconds)
        )
        due = time.monotonic() - self.full_at >= settings.changes_overlap_seconds
        if self.full_from is None or due:
            start = min(self.full_from or mark.watermark, mark.watermark) - overlap
            # not further than two overlaps and intervals: with several daemons this one's
            # last full tick can be old, and the others' full ticks (one at least every
            # overlap and interval, whoever wins it) covered what lies before
            return max(start, mark.watermark - 2 * (overlap + step)), True
        return mark.watermark - step, False

    def full_done(self, watermark: dt.datetime) -> None:
        self.full_from, self.full_at = watermark, time.monotonic()
        self.round_done()


_memories: weakref.WeakKeyDictionary[Runtime, dict[str, _Memory]] = weakref.WeakKeyDictionary()


def _memory(runtime: Runtime, code: str) -> _Memory:
    return _memories.setdefault(runtime, {}).setdefault(code, _Memory())


def _mark(upd: CaseUpdate, version: int, state: State | None) -> bytes:
    """A digest of everything the department said in ``upd`` and what it is judged as."""
    h = hashlib.blake2b(digest_size=16)
    h.update(
        repr(
            (
                upd.case_id,
                upd.idempotency_key,
                upd.status,
                upd.detail,
                upd.occurred_at.isoformat() if upd.occurred_at else None,
                upd.event_id,
                upd.supplement_items,
                upd.sequence,
                version,
                state,
                [(d.name, d.content_type, d.url, len(d.content or b"")) for d in upd.documents],
            )
        ).encode()
    )
    for d in upd.documents:
        h.update(d.content or b"")
    return h.digest()


async def sync_department(runtime: Runtime, code: str) -> dict[str, Any]:
    """One change-feed round for one department: what it saw, applied and skipped."""
    link = runtime.link(code)
    if link is None or not link.offers_changes() or link.breaker_open():
        return {"skipped": True}  # the watermark stays: the next round asks from it
    settings = runtime.config.departments[code].sync
    async with runtime.reader.connect() as conn:
        mark = await watermarks.get(conn, code)
    if link.changes_by_sequence():
        return await _by_sequence(runtime, link, code, mark)
    memory = _memory(runtime, code)
    until, full = now(), True
    if mark is None:
        since, _until = window(
            None, until, settings.changes_overlap_seconds, settings.poll_ceiling_seconds
        )
    else:
        since, full = memory.reach(mark, settings)
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
    if full:
        memory.full_done(until)
    _done(code, tally)
    return {
        "since": since.isoformat(),
        "until": until.isoformat(),
        "full": full,
        "seen": tally.seen,
        "applied": tally.applied,
        "unmatched": tally.unmatched,
        "judged_before": tally.skipped,
        "unchanged": tally.unchanged,
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
    _memory(runtime, code).round_done()
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
    """Apply one batch of the feed in one transaction (and ``then`` in it); changes this
    process judged before, their case where they left it, are skipped (see the module doc)."""
    memory = _memory(runtime, code)
    dept = runtime.config.departments[code]
    new: list[tuple[str, CaseUpdate, int | None, Ended]] = []
    new_marks: list[bytes] = []
    skipped = 0
    for upd, hit in zip(batch, await match_many(runtime, code, batch), strict=True):
        tally.seen += 1
        if hit is None:
            tally.unmatched += 1  # a case some other channel brought in, or one never ours
            continue
        mark = _mark(upd, hit.version, dept.map_status(upd.status))
        if memory.judged(hit, mark):
            skipped += 1
            continue
        new.append((hit.app_id, upd, hit.version, Ended(hit.status, hit.stored_version)))
        new_marks.append(mark)
    # what would change nothing (another process applied it: amr's callbacks) is judged from
    # one read, without the write transaction
    found: list[tuple[str, CaseUpdate, int | None]] = []
    marks: list[bytes] = []
    unchanged = 0
    for (app_id, upd, version, _read), mark, end in zip(
        new, new_marks, await changing_nothing(runtime, code, new), strict=True
    ):
        if end is not None:
            memory.note(app_id, end, mark)
            unchanged += 1
            continue
        found.append((app_id, upd, version))
        marks.append(mark)
    tally.skipped += skipped
    tally.unchanged += unchanged
    if skipped + unchanged:
        metrics.SYNC_CHANGES.labels(code, "unchanged").inc(skipped + unchanged)
    if not found and then is None:
        return
    ended: list[Ended | None] = []
    done = await apply_case_updates(
        runtime, found, source=Source.POLL, actor=f"changes/{code}", then=then, ended=ended
    )
    for changes in done:
        tally.applied += len(changes)
        metrics.SYNC_CHANGES.labels(code, "applied" if changes else "unchanged").inc()
    for (app_id, _upd, _version), mark, end in zip(found, marks, ended, strict=True):
        if end is not None:  # judged and committed (not: a status code the map lacks)
            memory.note(app_id, end, mark)


def _done(code: str, tally: _Tally) -> None:
    metrics.SYNC_CHANGES.labels(code, "unmatched").inc(tally.unmatched)
    metrics.SYNC_WATERMARK_LAG.labels(code).set(0.0)  # scrapes say how it grows (collector)
    if tally.applied:
        log.info("change feed applied", department=code, seen=tally.seen, applied=tally.applied)


__all__ = ["sync_department", "window"]
