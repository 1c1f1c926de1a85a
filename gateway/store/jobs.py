"""Dispatch jobs: claimed with leases (:mod:`gateway.store.leases`), finished with a fence on
the lease owner."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Row,
    Select,
    Update,
    and_,
    bindparam,
    case,
    func,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.dml import ReturningUpdate

from gateway.clock import now
from gateway.store import cases, driver, driver_pg, leases
from gateway.store.lists import OneOf, PerEngine, is_postgresql
from gateway.store.tables import UNFINISHED_JOB, UTCDateTime, applications, dispatch_jobs

PENDING, LEASED, DONE, DEAD = "pending", "leased", "done", "dead"


def new_job_row(
    application_id: str, version: int, department: str, at: dt.datetime
) -> dict[str, Any]:
    """A pending job, due at once (for multi-row inserts)."""
    return {
        "application_id": application_id,
        "version": version,
        "department": department,
        "state": PENDING,
        "attempts": 0,
        "next_attempt_at": at,
        "created_at": at,
        "updated_at": at,
    }


async def enqueue(
    conn: AsyncConnection,
    application_id: str,
    version: int,
    department: str,
    *,
    at: dt.datetime | None = None,
) -> None:
    await conn.execute(
        insert(dispatch_jobs), new_job_row(application_id, version, department, at or now())
    )


#: dispatch jobs as leased work: due at ``next_attempt_at``, held by ``lease_owner``
LEASED_JOBS = leases.Leased(
    dispatch_jobs, dispatch_jobs.c.id, dispatch_jobs.c.next_attempt_at, dispatch_jobs.c.lease_owner
)


async def claim(
    conn: AsyncConnection, department: str, owner: str, limit: int, lease_seconds: float
) -> Sequence[Row[Any]]:
    """Lease up to ``limit`` due jobs of one department: pending ones whose time has come and
    leased ones whose lease ran out (their worker died). See :mod:`gateway.store.leases`."""
    return await leases.claim(
        conn,
        LEASED_JOBS,
        _claimable(department),
        owner=owner,
        limit=limit,
        lease_seconds=lease_seconds,
        values={"state": LEASED, "updated_at": now()},
    )


@dataclass(frozen=True)
class ClaimedJob:
    """A claimed job as :func:`claim_cases` gives it: a ``dispatch_jobs`` row's columns."""

    id: int
    application_id: str
    version: int
    department: str
    state: str
    attempts: int
    next_attempt_at: dt.datetime
    lease_owner: str | None
    last_error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


async def claim_cases(
    conn: AsyncConnection, department: str, owner: str, limit: int, lease_seconds: float
) -> tuple[list[ClaimedJob], list[Row[Any]]]:
    """:func:`claim`, and the claimed jobs' cases locked in id order (as
    :func:`cases.lock_applications` does): (jobs, cases). On PostgreSQL one statement, the
    claim as a common table expression and the cases' ``FOR UPDATE`` in id order after it
    (the order of the two statements elsewhere); one round trip fewer per claim."""
    if limit <= 0:
        return [], []
    t = now()
    params = {
        "_department": department,
        "_limit": limit,
        "_now": t,
        "_until": t + dt.timedelta(seconds=lease_seconds),
        "_owner": owner,
    }
    if not is_postgresql(conn):
        # SQLite: the claim as one prebuilt UPDATE of the due rows (the transaction holds
        # SQLite's one write lock from its BEGIN IMMEDIATE, so nothing can take them between
        # the choice and the update), then the cases locked in id order
        # (through the driver: gateway.store.driver; the job's columns in ClaimedJob's order)
        claimed = [ClaimedJob(*r) for r in await _CLAIM_SQLITE.all(conn, params)]
        if not claimed:
            return [], []
        apps = await cases.lock_applications(conn, [j.application_id for j in claimed])
        return claimed, list(apps)
    # straight through asyncpg (gateway.store.driver_pg: the same statement, values and rows)
    rows = await _claim_cases_pg().rows(conn, params)
    first = len(applications.c)  # the job's columns follow the case's
    return [ClaimedJob(*r[first:]) for r in rows], rows


@functools.cache
def _claim_cases_pg() -> driver_pg.Statement:
    return driver_pg.Statement(_claim_cases_statement())


@functools.cache
def _claim_cases_statement() -> Select[Any]:
    """:func:`claim_cases`' PostgreSQL statement, prebuilt (built per claim, its
    construction and cache key cost more than the rest of the claim's Python)."""
    at = bindparam("_now", type_=UTCDateTime())
    due = leases.due_rows(LEASED_JOBS, _waiting(), 0, at).limit(bindparam("_limit"))
    stamp = {
        "next_attempt_at": bindparam("_until", type_=UTCDateTime()),
        "lease_owner": bindparam("_owner"),
        "state": LEASED,
        "updated_at": at,
    }
    claimed = leases.claim_statement(LEASED_JOBS, due, stamp).cte("claimed")
    # the cases' columns, then the job's (in ClaimedJob's order)
    return (
        select(applications, *[claimed.c[c.name].label(f"_job_{c.name}") for c in dispatch_jobs.c])
        .join_from(claimed, applications, applications.c.id == claimed.c.application_id)
        .order_by(applications.c.id)
        .with_for_update(of=applications)
    )


def _claim_statement_sqlite() -> ReturningUpdate[Any]:
    """:func:`claim_cases`' claim elsewhere than PostgreSQL, prebuilt (:func:`claim` builds
    the SELECT of the due rows and the UPDATE of their ids on every call): the same due rows,
    oldest first, and the same stamp, in one ``UPDATE ... WHERE id IN (SELECT ... LIMIT)``."""
    at = bindparam("_now", type_=UTCDateTime())
    due = leases.due_rows(LEASED_JOBS, _waiting(), 0, at).limit(bindparam("_limit"))
    return (
        update(dispatch_jobs)
        .where(dispatch_jobs.c.id.in_(due))
        .values(
            next_attempt_at=bindparam("_until", type_=UTCDateTime()),
            lease_owner=bindparam("_owner"),
            state=LEASED,
            updated_at=at,
        )
        .returning(dispatch_jobs)
    )


def _waiting() -> ColumnElement[bool]:
    """:func:`_claimable` for the department ``_department``, the states as bound values, not
    an expanding IN: the drivers send it as compiled once."""
    return and_(
        dispatch_jobs.c.department == bindparam("_department"),
        dispatch_jobs.c.state.in_([literal(PENDING), literal(LEASED)]),
    )


def _claimable(department: str | BindParameter[Any]) -> ColumnElement[bool]:
    return and_(
        dispatch_jobs.c.department == department,
        dispatch_jobs.c.state.in_((PENDING, LEASED)),
    )


_CLAIM_SQLITE = driver.Query(lambda _one_of: _claim_statement_sqlite())


async def finish(
    conn: AsyncConnection,
    job_id: int,
    owner: str,
    *,
    state: str,
    error: str | None = None,
    next_attempt_at: dt.datetime | None = None,
    attempts: int | None = None,
) -> bool:
    """Settle a leased job; False if the lease was lost to another worker meanwhile."""
    values: dict[str, Any] = {"state": state, "updated_at": now(), "lease_owner": None}
    if error is not None:
        values["last_error"] = error
    if next_attempt_at is not None:
        values["next_attempt_at"] = next_attempt_at
    if attempts is not None:
        values["attempts"] = attempts
    # a prebuilt statement: on the delivery path, building one per call costs more than SQLite
    params = {"_id": job_id, "_owner": owner, "_leased": LEASED, **values}
    return bool((await conn.execute(_finish_statement(frozenset(values)), params)).rowcount)


def _fence(one_of: OneOf) -> ReturningUpdate[Any]:
    """The recorder's fence: the listed jobs this owner still leases, done (one attempt
    more), their ids and cases returned."""
    return (
        update(dispatch_jobs)
        .where(
            and_(
                one_of(dispatch_jobs.c.id, "_ids"),
                dispatch_jobs.c.lease_owner == bindparam("_owner"),
                dispatch_jobs.c.state == LEASED,
            )
        )
        .values(
            state=DONE,
            updated_at=bindparam("_at", type_=UTCDateTime()),
            lease_owner=None,
            attempts=dispatch_jobs.c.attempts + 1,
        )
        .returning(dispatch_jobs.c.id, dispatch_jobs.c.application_id)
    )


#: through the driver on SQLite (gateway.store.driver): the recorder's fence
_FINISH_DELIVERED = driver.Query(_fence)


_DUE_DEPARTMENTS = PerEngine(
    lambda one_of: (
        select(dispatch_jobs.c.department)
        .where(
            one_of(dispatch_jobs.c.department, "_departments"),
            dispatch_jobs.c.state.in_((PENDING, LEASED)),
            dispatch_jobs.c.next_attempt_at <= bindparam("_now", type_=UTCDateTime()),
        )
        .distinct()
    )
)


async def due_departments(conn: AsyncConnection, departments: list[str]) -> set[str]:
    """Which of these departments have a job due now (one read, no locks): a dispatcher asks
    this of departments it found empty before, instead of a claim transaction for each."""
    params = {"_departments": departments, "_now": now()}
    return {r[0] for r in (await conn.execute(_DUE_DEPARTMENTS.for_(conn), params)).all()}


async def finish_delivered_locked(
    conn: AsyncConnection, job_ids: list[int], owner: str
) -> tuple[set[int], dict[str, Row[Any]]]:
    """Settle leased jobs whose delivery was answered (done, one attempt more), and lock the
    cases of those this owner still held (the others' leases were lost), in id order (as
    :func:`cases.lock_applications` does): (held job ids, {case id: locked row}).
    On PostgreSQL one statement (the fence as a common table expression, the cases' ``FOR
    UPDATE`` in id order after it: the order of the two statements elsewhere), one round trip
    fewer per recorded batch; a job whose lease was lost locks nothing."""
    params = {"_ids": job_ids, "_owner": owner, "_at": now()}
    if not is_postgresql(conn):
        fenced = await _FINISH_DELIVERED.all(conn, params)
        if not fenced:
            return set(), {}
        apps = await cases.lock_applications(conn, sorted({app_id for _j, app_id in fenced}))
        return {job for job, _a in fenced}, {a.id: a for a in apps}
    rows = await _finish_locked_pg().rows(conn, params)
    first = len(applications.c)  # the job's id follows the case's columns
    return {r[first] for r in rows}, {r.id: r for r in rows}


@functools.cache
def _finish_locked_pg() -> driver_pg.Statement:
    """:func:`finish_delivered_locked`'s PostgreSQL statement: the fence, then the fenced
    jobs' cases (their columns, then the job's id) locked in id order."""
    fenced = PerEngine(_fence).postgresql.cte("fenced")
    return driver_pg.Statement(
        select(applications, fenced.c.id.label("_job_id"))
        .join_from(fenced, applications, applications.c.id == fenced.c.application_id)
        .order_by(applications.c.id)
        .with_for_update(of=applications)
    )


@functools.cache
def _finish_statement(columns: frozenset[str]) -> Update:
    return (
        update(dispatch_jobs)
        .where(
            and_(
                dispatch_jobs.c.id == bindparam("_id"),
                dispatch_jobs.c.lease_owner == bindparam("_owner"),
                dispatch_jobs.c.state == bindparam("_leased"),
            )
        )
        .values({c: bindparam(c) for c in sorted(columns)})
    )


async def release(conn: AsyncConnection, owner: str, *, ids: Sequence[int] | None = None) -> int:
    """Hand back every job this owner holds (graceful shutdown), or only those of ``ids``
    (claimed and never called): due again at once."""
    held = and_(dispatch_jobs.c.lease_owner == owner, dispatch_jobs.c.state == LEASED)
    if ids is not None:
        held = and_(held, dispatch_jobs.c.id.in_(list(ids)))
    q = (
        update(dispatch_jobs)
        .where(held)
        .values(state=PENDING, lease_owner=None, next_attempt_at=now(), updated_at=now())
    )
    return int((await conn.execute(q)).rowcount)


async def depth(conn: AsyncConnection) -> dict[str, dict[str, int]]:
    """Job counts per department and state."""
    q = select(dispatch_jobs.c.department, dispatch_jobs.c.state, func.count()).group_by(
        dispatch_jobs.c.department, dispatch_jobs.c.state
    )
    out: dict[str, dict[str, int]] = {}
    for dept, state, n in (await conn.execute(q)).all():
        out.setdefault(dept, {})[state] = n
    return out


async def queues(conn: AsyncConnection, department: str | None = None) -> dict[str, dict[str, int]]:
    """Unfinished jobs per department: ``queued`` (never tried), ``retrying`` (waiting after a
    failed try) and ``in_flight`` (leased); absent keys are 0."""
    retry = case((dispatch_jobs.c.attempts > 0, 1), else_=0)
    q = (
        select(dispatch_jobs.c.department, dispatch_jobs.c.state, retry, func.count())
        .where(text(UNFINISHED_JOB))
        .group_by(dispatch_jobs.c.department, dispatch_jobs.c.state, retry)
    )
    if department is not None:
        q = q.where(dispatch_jobs.c.department == department)
    out: dict[str, dict[str, int]] = {}
    for dept, state, retrying, n in (await conn.execute(q)).all():
        key = "in_flight" if state == LEASED else "retrying" if retrying else "queued"
        slot = out.setdefault(dept, {})
        slot[key] = slot.get(key, 0) + n
    return out


async def job_for(conn: AsyncConnection, application_id: str, version: int) -> Row[Any] | None:
    q = select(dispatch_jobs).where(
        and_(dispatch_jobs.c.application_id == application_id, dispatch_jobs.c.version == version)
    )
    return (await conn.execute(q)).first()


async def revive(conn: AsyncConnection, application_id: str, version: int) -> None:
    """Make a dead (or finished) job of this version due again with a fresh retry budget."""
    t = now()
    q = (
        update(dispatch_jobs)
        .where(
            and_(
                dispatch_jobs.c.application_id == application_id, dispatch_jobs.c.version == version
            )
        )
        .values(state=PENDING, attempts=0, next_attempt_at=t, lease_owner=None, updated_at=t)
    )
    await conn.execute(q)
