"""Reconciliation of one department over a time window: classify, repair, record.

Classes (``Kind``), and what a run does about each::

    matched                   nothing
    department_ahead          apply the department's status (source ``reconcile``)
    department_behind         flag (the gateway is further along, e.g. a withdrawal it was not told)
    status_conflict           flag (the two states cannot follow each other)
    unknown_status            flag (the department's code is not in the status map)
    missing_at_department     re-send with the same idempotency key, or flag (``reconcile_missing``)
    unknown_at_gateway        flag
    duplicated_at_department  flag (two department cases for one key)
    case_id_mismatch          flag (the department holds our key under another case id)
    never_acknowledged        adopt the department's case id, move the case to delivered/its status

The gateway's side is every case of the department created before ``until`` that changed since
``since`` or is still open; the department's side is its ``list_cases(since, until)``. A gateway
case the list does not mention is looked up with ``poll`` before it is called missing (it may
simply not have changed at the department); a department case whose application is outside the
gateway's window is looked up by id before it is called unknown.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import Boolean, and_, bindparam, insert, or_, select, type_coerce, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.clock import new_id, now
from gateway.config.models import DepartmentConfig
from gateway.connector import CaseUpdate, Connector, Receipt
from gateway.departments import DepartmentLink
from gateway.envelopes import envelope_for, idempotency_key
from gateway.errors import PermanentError
from gateway.events import Source
from gateway.metrics import RECONCILE_DISCREPANCIES, RECONCILE_RUNS
from gateway.reconcile.merge import DeptCase, GatewayCase, Matches, Merger, sorted_department
from gateway.runtime import Runtime
from gateway.states import AT_DEPARTMENT, DECIDED, State, Verdict, judge
from gateway.store import cases, jobs
from gateway.store.tables import (
    applications,
    dispatch_jobs,
    reconcile_discrepancies,
    reconcile_runs,
)
from gateway.updates import announce, apply_case_update, move

#: counts of a run that are totals, not classes of case
_TOTALS = frozenset({"gateway_cases", "department_cases", "department_pages"})

log = structlog.get_logger("gateway.reconcile")

PAGE = 10_000
FLUSH = 500
#: gateway-only states after a decision: the department is not expected to know them
_HANDED_OUT = frozenset({State.READY_FOR_PICKUP, State.COLLECTED, State.MAILED})
_OPEN = frozenset({State.RECEIVED, State.DISPATCHING, *AT_DEPARTMENT})


class Kind(enum.StrEnum):
    MATCHED = "matched"
    DEPARTMENT_AHEAD = "department_ahead"
    DEPARTMENT_BEHIND = "department_behind"
    STATUS_CONFLICT = "status_conflict"
    UNKNOWN_STATUS = "unknown_status"
    MISSING_AT_DEPARTMENT = "missing_at_department"
    UNKNOWN_AT_GATEWAY = "unknown_at_gateway"
    DUPLICATED_AT_DEPARTMENT = "duplicated_at_department"
    CASE_ID_MISMATCH = "case_id_mismatch"
    NEVER_ACKNOWLEDGED = "never_acknowledged"


@dataclass
class RunResult:
    id: str
    department: str
    since: dt.datetime
    until: dt.datetime
    state: str
    counts: dict[str, int]
    error: str | None = None


Progress = Callable[[int, int], None]


def compare(dept: DepartmentConfig, gateway_status: str, raw: str) -> Kind:
    """How the department's status code ``raw`` relates to the gateway's state."""
    theirs = dept.map_status(raw)
    if theirs is None:
        return Kind.UNKNOWN_STATUS
    ours = State(gateway_status)
    if ours == theirs or (ours in _HANDED_OUT and theirs in DECIDED):
        return Kind.MATCHED
    verdict = judge(ours, theirs)
    if verdict is Verdict.APPLY:
        return Kind.DEPARTMENT_AHEAD
    if verdict is Verdict.STALE:
        return Kind.DEPARTMENT_BEHIND
    return Kind.STATUS_CONFLICT


@dataclass
class _Run:
    runtime: Runtime
    dept: DepartmentConfig
    link: DepartmentLink
    run_id: str
    since: dt.datetime
    until: dt.datetime
    counts: dict[str, int] = field(default_factory=dict)
    pending: list[dict[str, Any]] = field(default_factory=list)

    @property
    def actor(self) -> str:
        return f"reconcile/{self.dept.code}"

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    async def flag(
        self,
        kind: Kind,
        action: str,
        *,
        g: GatewayCase | None = None,
        d: DeptCase | None = None,
        **detail: Any,
    ) -> None:
        self.count(kind.value)
        self.count(action)
        self.pending.append(
            {
                "run_id": self.run_id,
                "kind": kind.value,
                "action": action,
                "application_id": g.app_id if g else (d.app_id or None if d else None),
                "department_case_id": d.case_id if d else (g.case_id if g else None),
                "idempotency_key": d.key if d else None,
                "gateway_status": g.status if g else None,
                "department_status": d.status if d else None,
                "detail": detail,
                "at": now(),
            }
        )
        if len(self.pending) >= FLUSH:
            await self.flush()

    async def flush(self) -> None:
        if not self.pending:
            return
        async with self.runtime.engine.begin() as conn:
            await conn.execute(insert(reconcile_discrepancies), self.pending)
            await conn.execute(
                update(reconcile_runs)
                .where(reconcile_runs.c.id == self.run_id)
                .values(counts=dict(self.counts))
            )
        self.pending = []

    # -- one application -------------------------------------------------------------------------

    async def settle(self, g: GatewayCase | None, ds: list[DeptCase]) -> None:
        if g is None:
            g = await self._lookup(ds[0])
            if g is None:
                if len(ds) > 1:
                    await self.flag(Kind.DUPLICATED_AT_DEPARTMENT, "flagged", d=ds[1])
                for d in ds:
                    await self.flag(Kind.UNKNOWN_AT_GATEWAY, "flagged", d=d)
                return
        if not ds:
            await self._gateway_only(g)
            return
        current = [d for d in ds if d.version == g.version]
        self.count("superseded", sum(d.version < g.version for d in ds))
        for d in ds:
            if d.version > g.version:
                await self.flag(Kind.UNKNOWN_AT_GATEWAY, "flagged", g=g, d=d, why="newer version")
        if not current:
            await self._gateway_only(g)
            return
        if len(current) > 1:
            for d in current[1:]:
                await self.flag(Kind.DUPLICATED_AT_DEPARTMENT, "flagged", g=g, d=d)
            ours = [d for d in current if d.case_id == g.case_id]
            current = ours or current
        d = current[0]
        if g.case_id is None:
            await self._adopt(g, d)
            return
        if d.case_id != g.case_id:
            if len(ds) == 1:
                await self.flag(Kind.CASE_ID_MISMATCH, "flagged", g=g, d=d, ours=g.case_id)
            return
        await self._status(g, d)

    async def _status(self, g: GatewayCase, d: DeptCase) -> None:
        kind = compare(self.dept, g.status, d.status)
        if kind is Kind.MATCHED:
            self.count("matched")
            return
        if kind is not Kind.DEPARTMENT_AHEAD:
            await self.flag(kind, "flagged", g=g, d=d)
            return
        # the full case (documents, opinion) when the department can be asked; else the list line
        upd: CaseUpdate | None = None
        try:
            upd = await self.link.poll(Receipt(case_id=d.case_id))
        except Exception as exc:
            log.info("reconcile: poll for details failed", case=d.case_id, error=str(exc))
        if upd is None or compare(self.dept, g.status, upd.status) is not Kind.DEPARTMENT_AHEAD:
            upd = CaseUpdate(case_id=d.case_id, status=d.status, idempotency_key=d.key)
        changes = await apply_case_update(
            self.runtime,
            g.app_id,
            upd,
            source=Source.RECONCILE,
            actor=self.actor,
            version=g.version,
        )
        await self.flag(
            Kind.DEPARTMENT_AHEAD,
            "applied" if changes else "flagged",
            g=g,
            d=d,
            to=[c.to_status.value for c in changes],
        )

    async def _gateway_only(self, g: GatewayCase) -> None:
        status = State(g.status)
        if g.case_id is None:
            self.count("in_flight")  # not yet acknowledged and the department has nothing
            return
        try:
            upd = await self.link.poll(Receipt(case_id=g.case_id))
        except PermanentError as exc:
            await self._missing(g, status, f"{exc}")
            return
        except Exception as exc:
            self.count("unverified")
            log.info("reconcile: could not verify", application=g.app_id, error=str(exc))
            return
        if upd is None:  # the department cannot be asked: its list is all we know
            if g.fresh and status in AT_DEPARTMENT:
                await self._missing(g, status, "not in the department's list")
            else:
                self.count("unverified")
            return
        d = DeptCase(g.app_id, g.version, upd.case_id, upd.status, upd.idempotency_key)
        await self._status(g, d)

    async def _missing(self, g: GatewayCase, status: State, why: str) -> None:
        if self.dept.reconcile_missing != "resend" or status not in AT_DEPARTMENT:
            await self.flag(Kind.MISSING_AT_DEPARTMENT, "flagged", g=g, why=why)
            return
        async with self.runtime.engine.connect() as conn:
            app = await cases.get_application(conn, g.app_id)
        if app is None or app.version != g.version:
            return
        try:
            receipt = await self.link.submit(envelope_for(app))
        except Exception as exc:
            await self.flag(
                Kind.MISSING_AT_DEPARTMENT, "flagged", g=g, why=why, resend_error=str(exc)[:300]
            )
            return
        async with self.runtime.engine.begin() as conn:
            locked = await cases.lock_application(conn, g.app_id)
            if locked is None or locked.version != g.version:
                return
            await conn.execute(
                update(applications)
                .where(applications.c.id == g.app_id)
                .values(department_case_id=receipt.case_id, updated_at=now())
            )
            # a repair without a status change is still an event in the case's history
            await cases.note(
                conn,
                locked,
                source=Source.RECONCILE,
                actor=self.actor,
                detail={
                    "action": "resend",
                    "idempotency_key": idempotency_key(g.app_id, g.version),
                    "old_case_id": g.case_id,
                    "case_id": receipt.case_id,
                },
            )  # note() queues it for webhook subscribers like every event
        await self.flag(
            Kind.MISSING_AT_DEPARTMENT, "resent", g=g, why=why, new_case_id=receipt.case_id
        )

    async def _adopt(self, g: GatewayCase, d: DeptCase) -> None:
        """The department has our case but we never recorded its answer: take its case id."""
        targets = [State.DELIVERED]
        mapped = self.dept.map_status(d.status)
        if mapped is not None and mapped is not State.DELIVERED:
            targets.append(mapped)
        next_poll = (
            now() + dt.timedelta(seconds=self.dept.poll_interval_seconds)
            if self.dept.poll_interval_seconds
            else None
        )
        async with self.runtime.engine.begin() as conn:
            app = await cases.lock_application(conn, g.app_id)
            if app is None or app.department_case_id is not None:
                return  # the dispatcher recorded it meanwhile
            await conn.execute(
                update(applications)
                .where(applications.c.id == g.app_id)
                .values(department_case_id=d.case_id, next_poll_at=next_poll)
            )
            await _settle_job(conn, g.app_id, g.version)
            changes = await move(
                conn,
                g.app_id,
                targets,
                source=Source.RECONCILE,
                actor=self.actor,
                version=g.version,
                detail={"case_id": d.case_id, "action": "adopt"},
            )
        announce(self.runtime, changes)
        await self.flag(
            Kind.NEVER_ACKNOWLEDGED, "adopted", g=g, d=d, to=[c.to_status.value for c in changes]
        )

    async def _lookup(self, d: DeptCase) -> GatewayCase | None:
        """The gateway's case for a department case outside the gateway's window, if any."""
        async with self.runtime.engine.connect() as conn:
            if d.app_id:
                cond = applications.c.id == d.app_id
            else:
                cond = applications.c.department_case_id == d.case_id
            q = select(*_columns(self.since)).where(
                and_(cond, applications.c.department == self.dept.code)
            )
            row = (await conn.execute(q)).first()
        return _gateway_case(row) if row is not None else None


async def _settle_job(conn: AsyncConnection, app_id: str, version: int) -> None:
    """The adopted delivery needs no (further) attempt; a dispatcher holding the lease loses it."""
    await conn.execute(
        update(dispatch_jobs)
        .where(
            and_(
                dispatch_jobs.c.application_id == app_id,
                dispatch_jobs.c.version == version,
                dispatch_jobs.c.state.in_((jobs.PENDING, jobs.LEASED)),
            )
        )
        .values(
            state=jobs.DONE, lease_owner=None, last_error="adopted by reconcile", updated_at=now()
        )
    )


def _columns(since: dt.datetime) -> tuple[Any, ...]:
    """:class:`GatewayCase`'s columns; whether the case changed in the window is asked of the
    database (a timestamp per row costs more to read than the comparison)."""
    return (
        applications.c.id,
        applications.c.version,
        applications.c.status,
        applications.c.department_case_id,
        type_coerce(applications.c.updated_at >= since, Boolean).label("fresh"),
    )


def _gateway_case(row: Any) -> GatewayCase:
    return GatewayCase(*row)


async def gateway_pages(
    runtime: Runtime, department: str, since: dt.datetime, until: dt.datetime, page: int = PAGE
) -> AsyncIterator[list[Any]]:
    """The gateway's side in application-id order, a page (one short query: no transaction
    held across the run) at a time; rows in :class:`GatewayCase`'s column order."""
    q = (
        select(*_columns(since))
        .where(
            and_(
                applications.c.department == department,
                applications.c.id > bindparam("after"),
                applications.c.created_at < until,
                or_(
                    applications.c.updated_at >= since,
                    applications.c.status.in_([s.value for s in _OPEN]),
                ),
            )
        )
        .order_by(applications.c.id)
        .limit(page)
    )
    after = ""
    while True:
        async with runtime.engine.connect() as conn:
            rows = list((await conn.execute(q, {"after": after})).all())
        if rows:
            yield rows
        if len(rows) < page:
            return
        after = rows[-1][0]


async def last_window_end(runtime: Runtime, department: str) -> dt.datetime | None:
    q = (
        select(reconcile_runs.c.until)
        .where(and_(reconcile_runs.c.department == department, reconcile_runs.c.state == "done"))
        .order_by(reconcile_runs.c.until.desc())
        .limit(1)
    )
    async with runtime.engine.connect() as conn:
        return (await conn.execute(q)).scalar_one_or_none()


async def reconcile_department(
    runtime: Runtime,
    department: str,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    trigger: str = "cli",
    owner: str = "cli",
    connector: Connector | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Reconcile one department over ``[since, until)`` (default: since the last run, less the
    overlap, or the last day). The run and its discrepancies are stored; returns the run."""
    dept = runtime.config.departments[department]
    link = DepartmentLink(dept, connector) if connector else runtime.link(department)
    if link is None:
        raise KeyError(f"department {department} has no active connector")
    until = until or now()
    if since is None:
        last = await last_window_end(runtime, department)
        overlap = dt.timedelta(seconds=runtime.config.gateway.schedule.reconcile_overlap_seconds)
        since = last - overlap if last else until - dt.timedelta(days=1)
    run = _Run(runtime, dept, link, new_id(), since, until)
    async with runtime.engine.begin() as conn:
        await conn.execute(
            insert(reconcile_runs).values(
                id=run.run_id,
                department=department,
                since=since,
                until=until,
                trigger=trigger,
                owner=owner[:64],
                state="running",
                counts={},
                started_at=now(),
            )
        )
    gw_seen, dept_seen = [0], [0]
    state, error = "done", None
    link.connector.last_listing_pages = None  # the connector counts this listing's pages, if it can
    matches = Matches(lambda ours, theirs: compare(dept, ours, theirs) is Kind.MATCHED)
    try:
        async with sorted_department(link.list_cases(since, until), counter=dept_seen) as dside:
            if progress:
                progress(gw_seen[0], dept_seen[0])
            merger = Merger(dside, matches)
            plain = 0
            async for rows in gateway_pages(runtime, department, since, until):
                gw_seen[0] += len(rows)
                for g, lines in merger.page(rows):
                    await run.settle(g, [DeptCase.of_line(line) for line in lines])
                if merger.plain > plain:  # matched without a closer look: counted, no object
                    run.count(Kind.MATCHED.value, merger.plain - plain)
                    run.count("superseded", 0)
                    plain = merger.plain
                if progress:
                    progress(gw_seen[0], dept_seen[0])
            for g, lines in merger.rest():
                await run.settle(g, [DeptCase.of_line(line) for line in lines])
    except Exception as exc:
        state, error = "failed", f"{type(exc).__name__}: {exc}"[:1000]
        log.error("reconciliation failed", department=department, error=error)
    run.counts["gateway_cases"] = gw_seen[0]
    run.counts["department_cases"] = dept_seen[0]
    if link.connector.last_listing_pages is not None:
        run.counts["department_pages"] = link.connector.last_listing_pages
    if progress:
        progress(gw_seen[0], dept_seen[0])
    await run.flush()
    async with runtime.engine.begin() as conn:
        await conn.execute(
            update(reconcile_runs)
            .where(reconcile_runs.c.id == run.run_id)
            .values(state=state, counts=run.counts, error=error, finished_at=now())
        )
    log.info("reconciliation finished", department=department, state=state, **run.counts)
    RECONCILE_RUNS.labels(department, state).inc()
    for kind, count in run.counts.items():
        if kind not in _TOTALS and count:
            RECONCILE_DISCREPANCIES.labels(department, kind).inc(count)
    return RunResult(run.run_id, department, since, until, state, dict(run.counts), error)
