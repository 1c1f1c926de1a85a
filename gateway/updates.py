"""Applying what a department says about a case (receipt, poll, callback, reconcile) through the
state machine, in one transaction, and telling the status_changed hook after commit."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import Row, bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import documents, handover
from gateway.clock import id_time, now
from gateway.connector import CaseUpdate
from gateway.events import Source, StatusChange
from gateway.metrics import (
    DECISION_LATENCY,
    DELIVERY_LATENCY,
    DOCUMENTS_MISSING,
    STATUS_CHANGES,
    child,
)
from gateway.notifications import split, with_contact, with_contacts
from gateway.runtime import Runtime
from gateway.states import DECIDED, State, Verdict, judge
from gateway.store import cases, driver
from gateway.store.tables import applications, callback_events

log = structlog.get_logger("gateway.updates")


@dataclass(frozen=True)
class Move:
    """One case's part in :func:`move_many`: go through ``targets`` in order (each step judged
    by the state machine) with ``detail`` on its events and ``extra`` columns set with them."""

    app_id: str
    targets: list[State]
    detail: dict[str, Any] | None = None
    version: int | None = None
    extra: dict[str, Any] | None = None
    #: set ``extra`` even when no step applies (a receipt's case id is worth keeping)
    keep_extra: bool = False


async def move(
    conn: AsyncConnection,
    app_id: str,
    targets: list[State],
    *,
    source: Source,
    actor: str,
    detail: dict[str, Any] | None = None,
    version: int | None = None,
    extra: dict[str, Any] | None = None,
) -> list[StatusChange]:
    """Move a case through ``targets`` in order; each step is judged by the state machine, so
    duplicate and stale steps store nothing. ``extra`` columns go with the applied steps.

    A case that ends decided with its documents in goes on to ``ready_for_pickup`` in the same
    transaction, whichever path decided it (dispatch, poll, callback, result file)."""
    [changes] = await move_many(
        conn,
        [Move(app_id, targets, detail, version, extra)],
        source=source,
        actor=actor,
    )
    return changes


async def move_many(
    conn: AsyncConnection,
    moves: list[Move],
    *,
    source: Source,
    actor: str,
    locked: dict[str, Row[Any]] | None = None,
) -> list[list[StatusChange]]:
    """:func:`move` for several cases in the caller's transaction, with one statement per table
    for the batch (lock, status UPDATE per column set, events, outbox, handovers) instead of
    several per case. A case named twice is moved again after its first move is written.
    ``locked``: the cases' rows as this transaction locked them and has not moved them since
    (they are not read again)."""
    results: list[list[StatusChange]] = [[] for _ in moves]
    for n, round_ in enumerate(_rounds([m.app_id for m in moves])):
        done = await _move_once(
            conn,
            [moves[i] for i in round_],
            source=source,
            actor=actor,
            locked=locked if n == 0 else None,
        )
        for i, changes in zip(round_, done, strict=True):
            results[i] = changes
    return results


def _rounds(keys: list[str]) -> list[list[int]]:
    """The positions of ``keys`` in rounds in which each key appears at most once, in order (a
    key's n-th position is in round n): a case named twice in a batch is written in one round
    and judged again, from what that wrote, in the next."""
    seen: dict[str, int] = {}
    rounds: list[list[int]] = []
    for i, key in enumerate(keys):
        n = seen[key] = seen.get(key, -1) + 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append(i)
    return rounds


async def _locked(conn: AsyncConnection, app_ids: list[str]) -> dict[str, Row[Any]]:
    """These cases read for update, by id (one statement; prebuilt for one case)."""
    if len(app_ids) == 1:
        one = await cases.lock_application(conn, app_ids[0])
        return {one.id: one} if one is not None else {}
    return {a.id: a for a in await cases.lock_applications(conn, sorted(set(app_ids)))}


async def _move_once(
    conn: AsyncConnection,
    moves: list[Move],
    *,
    source: Source,
    actor: str,
    locked: dict[str, Row[Any]] | None = None,
) -> list[list[StatusChange]]:
    """Each case at most once: lock (unless ``locked``), plan, write."""
    apps = locked if locked is not None else await _locked(conn, [m.app_id for m in moves])
    planned = [
        (m, app, cases.plan(app, m.targets, m.version, source) if app is not None else [])
        for m in moves
        for app in [apps.get(m.app_id)]
    ]
    # a case that ends decided with its documents in goes on to ready_for_pickup in this write
    ready = await handover.readiness(
        conn,
        [
            (app, steps[-1][1])
            for _m, app, steps in planned
            if app is not None and steps and steps[-1][1] in DECIDED
        ],
    )
    writes: list[cases.Write] = []
    kept: dict[frozenset[str], list[dict[str, Any]]] = {}
    for m, app, steps in planned:
        if app is None:
            continue
        if not steps:
            if m.keep_extra and m.extra:
                keep = dict(m.extra)
                if app.status == State.FAILED.value:
                    # a failed case keeps why: a receipt recorded after the department's
                    # refusal was read (file drop) must not clear the reason
                    keep.pop("last_error", None)
                if keep:
                    kept.setdefault(frozenset(keep), []).append({"_id": app.id, **keep})
            continue
        detail = m.detail or {}
        full: list[cases.Step] = [(src, dst, detail) for src, dst in steps]
        if app.id in ready:
            full.append((steps[-1][1], State.READY_FOR_PICKUP, ready[app.id]))
        writes.append(cases.Write(app, full, m.extra))
    written = iter(await cases.write_many(conn, writes, source=source, actor=actor))
    for columns, params in kept.items():  # nothing moved, but the columns are still worth keeping
        await driver.execute_many(conn, cases.update_statement(columns), params)
    out: list[list[StatusChange]] = []
    became_ready: list[str] = []
    at = None
    for _m, app, steps in planned:
        if app is None or not steps:
            out.append([])
            continue
        changes = next(written)
        if changes[-1].to_status is State.READY_FOR_PICKUP:
            became_ready.append(app.id)
            at = changes[-1].at
        out.append(with_contacts(changes, app.applicant))
    if at is not None:
        await handover.mark_ready(conn, became_ready, at)
    return out


def announce(runtime: Runtime, changes: list[StatusChange]) -> None:
    """After commit: metrics, the WARNING for a failed case, and the status_changed hook (with
    the applicant's contact where the change carries it)."""
    for change in changes:
        child(STATUS_CHANGES, change.department, change.source, change.to_status).inc()
        _observe(change)
        plain, contact = split(change)
        runtime.plugins.status_changed(plain, contact)


def _observe(change: StatusChange) -> None:
    if change.to_status is State.FAILED:
        log.warning(
            "case failed",
            application=change.application_id,
            receipt=change.receipt_number,
            department=change.department,
            reason=str(change.detail.get("reason", "(no reason recorded)")),
        )
        return
    if change.to_status is State.DELIVERED or change.to_status in DECIDED:
        submitted = id_time(change.application_id)
        if submitted is None or change.version != 1:
            return  # a re-sent version's clock started at the supplement, not at intake
        seconds = max((change.at - submitted).total_seconds(), 0.0)
        histogram = DELIVERY_LATENCY if change.to_status is State.DELIVERED else DECISION_LATENCY
        child(histogram, change.department).observe(seconds)


async def apply_case_update(
    runtime: Runtime,
    app_id: str,
    upd: CaseUpdate,
    *,
    source: Source,
    actor: str,
    version: int | None = None,
) -> list[StatusChange]:
    """Apply a department's report about one case; unknown status codes change nothing and are
    logged for ops (the department's status map needs the code)."""
    [shas] = await documents.put(runtime.blobs, [upd.documents])
    async with runtime.engine.begin() as conn:
        [done] = await apply_reports(
            conn, runtime, [Report(app_id, upd, version, shas)], source=source, actor=actor
        )
    settle(runtime, [done])
    return done.changes


async def apply_case_updates(
    runtime: Runtime,
    batch: list[tuple[str, CaseUpdate, int | None]],
    *,
    source: Source,
    actor: str,
    then: Callable[[AsyncConnection, int], Awaitable[None]] | None = None,
    ended: list[Ended | None] | None = None,
) -> list[list[StatusChange]]:
    """Apply several reports, each ``(application id, update, version)``, in ONE transaction
    (a page of a change feed), then ``then(conn, n)`` in the same transaction, ``n`` the status
    changes applied (moving a feed's watermark: it commits with the changes it covers, or
    neither does). Returns each report's changes, in order; the status_changed hook is told
    after commit.

    ``ended``, if given, gets for each report (in order) the status and version its case had
    once the report was judged, under the case's lock (:class:`Ended`; None where the report
    was not judged: no such case, or a status code the department's map does not know). It is
    filled as the reports are applied: it holds only once this call has returned (committed)."""
    stored = await documents.put(runtime.blobs, [upd.documents for _a, upd, _v in batch])
    reports = [
        Report(app_id, upd, version, shas)
        for (app_id, upd, version), shas in zip(batch, stored, strict=True)
    ]
    async with runtime.engine.begin() as conn:
        done = await apply_reports(conn, runtime, reports, source=source, actor=actor)
        if then is not None:
            await then(conn, sum(len(one.changes) for one in done))
    if ended is not None:
        ended.extend(one.end for one in done)
    settle(runtime, done)
    return [one.changes for one in done]


def _may_change_nothing(
    status: str, version: int, state: State | None, reported: int | None, upd: CaseUpdate
) -> bool:
    """Whether :func:`_apply_round` could do nothing with ``upd`` (mapped to ``state``, about
    version ``reported``) for a case at ``status`` and ``version``, but list its documents
    or keep its case number: no step the state machine applies or logs as illegal, no
    documents completing a decided case, no approval warned about as undocumented."""
    if state is None:
        return False  # an unknown status code is logged where it is applied
    current = State(status)
    stale = reported is not None and reported < version  # the plan's stale check
    if not stale and judge(current, state) not in (Verdict.DUPLICATE, Verdict.STALE):
        return False
    if upd.documents and state in DECIDED and current in DECIDED:
        return False  # documents after the decision may hand the case out (the "late" path)
    return not (state is State.APPROVED and current is State.APPROVED)  # the missing warning


async def changing_nothing(
    runtime: Runtime, department: str, reports: list[tuple[str, CaseUpdate, int | None, Ended]]
) -> list[Ended | None]:
    """For each ``(application id, update, version, the case as last read)``: where its case
    stands if applying it now would change nothing at all (:func:`apply_reports`: no status
    step, no document listed, no case number kept, nothing logged or told), else None. A
    change feed's re-read of what another process applied (amr's callbacks land in the API
    process) is judged so without a write transaction. From one statement (one snapshot,
    on PostgreSQL as on SQLite's reader): the case's status, version and case number, and
    the documents listed for it, which are only ever added to; so the verdict held at that
    snapshot, as the same report judged in a transaction then would have found."""
    dept = runtime.config.departments[department]
    out: list[Ended | None] = [None] * len(reports)
    todo = [
        i
        for i, (_a, upd, version, read) in enumerate(reports)
        if _may_change_nothing(read.status, read.version, dept.map_status(upd.status), version, upd)
    ]
    if not todo:
        return out
    async with runtime.reader.connect() as conn:
        rows = await cases.with_documents(conn, sorted({reports[i][0] for i in todo}))
    for i in todo:
        app_id, upd, version, _read = reports[i]
        found = rows.get(app_id)
        if found is None:
            continue
        state = dept.map_status(upd.status)
        if not _may_change_nothing(found.status, found.version, state, version, upd):
            continue
        if (
            found.department_case_id in (None, upd.idempotency_key)
            and upd.case_id
            and upd.case_id != found.department_case_id
        ):
            continue  # the department's own case number would be kept
        if any(
            (None, d.url) not in found.listed
            if d.content is None
            else (hashlib.sha256(d.content).hexdigest(), None) not in found.listed
            for d in upd.documents
        ):
            continue  # a document to list
        out[i] = Ended(found.status, found.version)
    return out


@dataclass(frozen=True)
class Report:
    """A department's report about one case: the update, the case version it is about, its
    documents' sha256s from :func:`gateway.documents.put` (their files are put before the
    transaction), and for a pushed event its (department, event id): applied at most once."""

    app_id: str
    update: CaseUpdate
    version: int | None
    shas: list[str | None]
    event_key: tuple[str, str] | None = None


async def apply_reports(
    conn: AsyncConnection,
    runtime: Runtime,
    reports: list[Report],
    *,
    source: Source,
    actor: str,
) -> list[Applied]:
    """Judge and write ``reports`` in the caller's transaction, in order, with a statement per
    table for them all, not per report (a case reported twice is judged again, from what its
    first report wrote, in a next round). Tell :func:`settle` once committed."""
    out: list[Applied] = [_DUPLICATE] * len(reports)
    todo = await _first_seen(conn, reports)
    # each round's cases locked in id order, as every multi-case write does
    # (cases.lock_applications): locked one by one in the feed's order, a page
    # deadlocked on PostgreSQL with a poll round's id-ordered lock (fault suite, CI)
    for round_ in _rounds([reports[i].app_id for i in todo]):
        at = [todo[j] for j in round_]
        judged = await _apply_round(
            conn, runtime, [reports[i] for i in at], source=source, actor=actor
        )
        for i, one in zip(at, judged, strict=True):
            out[i] = one
    return out


def settle(runtime: Runtime, applied: list[Applied]) -> None:
    """After commit: the status changes told (metrics, WARNING, status_changed hook), then the
    approvals with nothing to hand out."""
    for one in applied:
        announce(runtime, one.changes)
    for one in applied:
        if one.missing is not None:
            _missing(one.missing)


async def _first_seen(conn: AsyncConnection, reports: list[Report]) -> list[int]:
    """The positions of reports to judge: all but pushed events applied before (or earlier in
    this batch), whose keys are recorded here (one SELECT, one INSERT)."""
    keyed = sorted({r.event_key for r in reports if r.event_key is not None})
    if not keyed:
        return list(range(len(reports)))
    q = select(callback_events.c.department, callback_events.c.event_id).where(
        callback_events.c.event_id.in_(sorted({event for _d, event in keyed}))
    )
    seen = {(d, e) for d, e in (await conn.execute(q)).all()}
    todo: list[int] = []
    new: list[dict[str, Any]] = []
    at = now()
    for i, r in enumerate(reports):
        if r.event_key is not None:
            if r.event_key in seen:
                continue
            seen.add(r.event_key)
            department, event_id = r.event_key
            new.append(
                {
                    "department": department,
                    "event_id": event_id,
                    "application_id": r.app_id,
                    "received_at": at,
                }
            )
        todo.append(i)
    if new:
        await conn.execute(insert(callback_events), new)
    return todo


@dataclass(frozen=True)
class Ended:
    """Where a case stood once a report about it was judged (applied, or found a duplicate,
    stale or illegal): judging the same report again from this status and version changes
    nothing (see gateway/changes.py, which skips a feed's re-read changes by it)."""

    status: str
    version: int


@dataclass(frozen=True)
class _Missing:
    """An approval with nothing to hand out (told after commit)."""

    department: str
    application: str
    case: str
    source: Source


@dataclass(frozen=True)
class Applied:
    """What became of one :class:`Report`: its status changes (none: a duplicate, stale or
    illegal step, an unknown case or status code), an approval with nothing to hand out
    (``missing``), where the case stood once judged (``end``), a pushed event seen before
    (``duplicate``)."""

    changes: list[StatusChange]
    missing: _Missing | None = None
    end: Ended | None = None
    duplicate: bool = False


_NOT_JUDGED = Applied([])
_DUPLICATE = Applied([], duplicate=True)


def _missing(missing: _Missing) -> None:
    # approved, nothing to hand out: never silent (the refetch task asks again)
    DOCUMENTS_MISSING.labels(missing.department, missing.source.value).inc()
    log.warning(
        "decided without documents",
        department=missing.department,
        application=missing.application,
        case=missing.case,
        source=missing.source.value,
        hint="check the department's documents mapping; gateway refetch fetches again",
    )


_KEEP_CASE_ID = (
    update(applications)
    .where(applications.c.id == bindparam("_id"))
    .values(department_case_id=bindparam("_case"))
)


async def _apply_round(
    conn: AsyncConnection,
    runtime: Runtime,
    reports: list[Report],
    *,
    source: Source,
    actor: str,
) -> list[Applied]:
    """Reports about different cases, judged under their cases' locks (PostgreSQL; SQLite's
    transaction is exclusive), so that the status each is judged from is the one reported as
    where it ended (``Ended``) when nothing applies."""
    apps = await _locked(conn, [r.app_id for r in reports])
    known: list[tuple[Report, Row[Any], State]] = []
    for r in reports:
        app = apps.get(r.app_id)
        if app is None:
            continue
        state = runtime.config.departments[app.department].map_status(r.update.status)
        if state is None:
            log.warning(
                "unknown department status code",
                department=app.department,
                code=r.update.status,
                application=r.app_id,
            )
            continue
        known.append((r, app, state))
    listed = iter(
        await documents.store_many(
            conn,
            [
                (r.app_id, r.version or app.version, r.update.documents, r.shas)
                for r, app, _s in known
                if r.update.documents
            ],
        )
    )
    moves: list[Move] = []
    new_case_ids: list[dict[str, Any]] = []
    for r, app, state in known:
        upd = r.update
        detail: dict[str, Any] = {}
        if upd.detail:
            detail["opinion"] = upd.detail
        if upd.supplement_items:
            detail["supplement_items"] = upd.supplement_items
        if upd.event_id:
            detail["event_id"] = upd.event_id
        if upd.documents:
            detail["documents"] = next(listed)
        placeholder = app.department_case_id in (None, upd.idempotency_key)
        if placeholder and upd.case_id and upd.case_id != app.department_case_id:
            # a department that answers only later with its own case number (file drop: the
            # receipt is our key) gets that number kept
            new_case_ids.append({"_id": app.id, "_case": upd.case_id})
        # a case the department handed back as unprocessable: ops see why in the failures list
        extra = None
        if state is State.FAILED and upd.detail:
            extra = {"last_error": upd.detail}
            detail["reason"] = upd.detail
        moves.append(Move(app.id, [state], detail, r.version, extra))
    if new_case_ids:
        await conn.execute(_KEEP_CASE_ID, new_case_ids)
    # the rows as locked above: the documents and case numbers written since are not in them
    moved = await move_many(conn, moves, source=source, actor=actor, locked=apps)
    # documents that come after the decision (a second message) complete the case
    late = [
        (app, State(app.status))
        for (r, app, state), changes in zip(known, moved, strict=True)
        if not changes and r.update.documents and state in DECIDED and app.status in DECIDED
    ]
    ready = await handover.readiness(conn, late) if late else {}
    if ready:
        moves = [Move(app_id, [State.READY_FOR_PICKUP], detail) for app_id, detail in ready.items()]
        readied = await move_many(conn, moves, source=source, actor=actor, locked=apps)
        made = {m.app_id: changes for m, changes in zip(moves, readied, strict=True)}
        moved = [
            changes or made.get(app.id, [])
            for (_r, app, _s), changes in zip(known, moved, strict=True)
        ]
    judged: dict[str, Applied] = {}
    for (r, app, state), changes in zip(known, moved, strict=True):
        now_at = changes[-1].to_status if changes else State(app.status)
        end = Ended(now_at.value, changes[-1].version if changes else app.version)
        missing = None
        if state is State.APPROVED and now_at is State.APPROVED:
            missing = _Missing(app.department, app.id, r.update.case_id, source)
        judged[app.id] = Applied(changes, missing, end)
    return [judged.get(r.app_id, _NOT_JUDGED) for r in reports]


__all__ = [
    "Applied",
    "Ended",
    "Move",
    "Report",
    "announce",
    "apply_case_update",
    "apply_case_updates",
    "apply_reports",
    "changing_nothing",
    "move",
    "move_many",
    "settle",
    "with_contact",
]
