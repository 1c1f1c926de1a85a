"""Applications and their append-only events; every status change goes through ``change_status``."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import (
    Row,
    Table,
    Update,
    and_,
    bindparam,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.selectable import TableValuedAlias

from gateway.clock import now
from gateway.events import Source, StatusChange, trusted
from gateway.states import DECIDED, State, Verdict, judge
from gateway.store import driver, driver_pg, outbox
from gateway.store.chain import seal_events
from gateway.store.lists import PerEngine, is_postgresql
from gateway.store.tables import (
    UTCDateTime,
    applications,
    events,
    result_documents,
    webhook_deliveries,
)

log = structlog.get_logger("gateway.store")


@dataclass(frozen=True)
class ChangeResult:
    verdict: Verdict
    current: State
    change: StatusChange | None = None


_LOCK_ONE = select(applications).where(applications.c.id == bindparam("_id")).with_for_update()


async def lock_application(conn: AsyncConnection, app_id: str) -> Row[Any] | None:
    """Read an application for update (row lock on PostgreSQL; SQLite's transaction is
    already exclusive)."""
    if not is_postgresql(conn):
        found = await _LOCK_MANY.rows(conn, {"_ids": [app_id]})
        return found[0] if found else None
    return (await conn.execute(_LOCK_ONE, {"_id": app_id})).first()


#: on SQLite through the driver (gateway.store.driver): the claim and the recorder read
#: their batch's cases with it
_LOCK_MANY = driver.Query(
    lambda one_of: (
        select(applications)
        .where(one_of(applications.c.id, "_ids"))
        .order_by(applications.c.id)
        .with_for_update()
    )
)


async def lock_applications(conn: AsyncConnection, app_ids: list[str]) -> Sequence[Row[Any]]:
    """Several applications for update, in id order (a fixed order cannot deadlock)."""
    return await _LOCK_MANY.rows(conn, {"_ids": list(app_ids)})


async def change_status(
    conn: AsyncConnection,
    app: Row[Any],
    target: State,
    *,
    source: Source,
    actor: str,
    detail: dict[str, Any] | None = None,
    version: int | None = None,
    restart: bool = False,
    extra: dict[str, Any] | None = None,
) -> ChangeResult:
    """Apply one status change to a locked application row, if the state machine allows it.

    ``version``: the case version the update is about; updates about an older version are stale.
    ``restart``: an explicit re-dispatch (supplement re-send, operator retry), allowed only from
    a restartable state. ``extra``: other columns to set with the change.
    Duplicates, stale and illegal updates store nothing.
    """
    current = State(app.status)
    if restart:
        ok = target == State.DISPATCHING and current in (State.FAILED, State.SUPPLEMENT_REQUIRED)
        if not ok:
            return ChangeResult(Verdict.ILLEGAL, current)
        steps = [(current, target)]
    else:
        verdicts = _plan(app, [target], version)
        if not verdicts.steps:
            return ChangeResult(verdicts.first, current)
        steps = verdicts.steps
    [change] = await _write(
        conn, app, steps, source=source, actor=actor, detail=detail, extra=extra
    )
    return ChangeResult(Verdict.APPLY, target, change)


async def advance(
    conn: AsyncConnection,
    app: Row[Any],
    targets: list[State],
    *,
    source: Source,
    actor: str,
    detail: dict[str, Any] | None = None,
    version: int | None = None,
    extra: dict[str, Any] | None = None,
    fresh: bool = False,
) -> list[StatusChange]:
    """Move a locked case through ``targets`` in order, each step judged by the state machine
    (duplicate, stale and illegal steps are skipped; illegal ones are logged). All applied steps
    are written at once: one UPDATE, one multi-row INSERT of events.

    ``fresh``: ``app`` was locked in this transaction and nothing has written the case since,
    so its ``events_hash`` is the chain head (saves re-reading it on the delivery path)."""
    steps = plan(app, targets, version, source)
    if not steps:
        return []
    return await _write(
        conn, app, steps, source=source, actor=actor, detail=detail, extra=extra, fresh=fresh
    )


@dataclass(frozen=True)
class _Plan:
    steps: list[tuple[State, State]]
    first: Verdict  # verdict of the first target (for single-step callers)
    illegal: list[State]


def _plan(app: Row[Any], targets: list[State], version: int | None) -> _Plan:
    current = State(app.status)
    if version is not None and version < app.version:
        return _Plan([], Verdict.STALE, [])
    steps: list[tuple[State, State]] = []
    illegal: list[State] = []
    first: Verdict | None = None
    for target in targets:
        verdict = judge(current, target)
        first = first or verdict
        if verdict is Verdict.APPLY:
            steps.append((current, target))
            current = target
        elif verdict is Verdict.ILLEGAL:
            illegal.append(target)
    return _Plan(steps, first or Verdict.DUPLICATE, illegal)


#: one step of a case: from, to, and the event's detail
Step = tuple[State, State, dict[str, Any]]


@dataclass(frozen=True)
class Write:
    """The steps to write for one locked case in a batch (see :func:`write_many`)."""

    app: Row[Any]
    steps: list[Step]
    extra: dict[str, Any] | None = None
    #: the case's chain head, when not the locked row's own (``events_hash``)
    head: str | None = None
    head_known: bool = False


def plan(
    app: Row[Any], targets: list[State], version: int | None, source: Source
) -> list[tuple[State, State]]:
    """The steps the state machine allows from ``app``'s status through ``targets`` in order
    (duplicate and stale steps are skipped; illegal ones are logged and skipped)."""
    planned = _plan(app, targets, version)
    for target in planned.illegal:
        log.warning(
            "illegal status update ignored",
            application=app.id,
            current=app.status,
            target=target,
            source=source,
        )
    return planned.steps


async def _write(
    conn: AsyncConnection,
    app: Row[Any],
    steps: list[tuple[State, State]],
    *,
    source: Source,
    actor: str,
    detail: dict[str, Any] | None,
    extra: dict[str, Any] | None,
    fresh: bool = False,
) -> list[StatusChange]:
    d = detail or {}
    write = Write(app, [(src, dst, d) for src, dst in steps], extra)
    if not fresh:
        # read here, not from the caller's row: another event may have been added since
        write = Write(write.app, write.steps, extra, await _chain_head(conn, app.id), True)
    [changes] = await write_many(conn, [write], source=source, actor=actor)
    return changes


async def write_many(
    conn: AsyncConnection, writes: list[Write], *, source: Source, actor: str
) -> list[list[StatusChange]]:
    """Write the planned steps of several cases, each locked in this transaction with nothing
    written to it since (its ``events_hash`` is its chain head; one write per case): one UPDATE
    per column set (executemany), one multi-row INSERT of events, one outbox fan-out. Every
    event of the batch carries the same ``at``."""
    at = now()
    event_rows: list[dict[str, Any]] = []
    by_columns: dict[frozenset[str], list[dict[str, Any]]] = {}
    out: list[list[StatusChange]] = []
    for w in writes:
        app, steps = w.app, w.steps
        if not steps:
            out.append([])
            continue
        values: dict[str, Any] = {"status": steps[-1][1].value, "updated_at": at, **(w.extra or {})}
        if any(to in DECIDED for _f, to, _d in steps):
            values["decided_at"] = at
        new_version = values.get("version", app.version)
        rows = [
            {
                "application_id": app.id,
                "version": new_version,
                "at": at,
                "source": source.value,
                "actor": actor,
                "from_status": src.value,
                "to_status": dst.value,
                "detail": detail,
            }
            for src, dst, detail in steps
        ]
        values["events_hash"] = seal_events(w.head if w.head_known else app.events_hash, rows)
        event_rows += rows
        values["_id"] = app.id
        by_columns.setdefault(frozenset(values), []).append(values)
        out.append(
            [
                trusted(
                    StatusChange,
                    {
                        "application_id": app.id,
                        "receipt_number": app.receipt_number,
                        "department": app.department,
                        "matter_code": app.matter_code,
                        "centre": app.centre,
                        "version": new_version,
                        "from_status": src,
                        "to_status": dst,
                        "source": source,
                        "actor": actor,
                        "at": at,
                        "detail": detail,
                    },
                )
                for src, dst, detail in steps
            ]
        )
    if not event_rows:
        return out
    if is_postgresql(conn):
        await _write_at_once(conn, by_columns, event_rows)
        return out
    # SQLite: through the driver (gateway.store.driver: the same bytes stored, without
    # SQLAlchemy's execution context and per-row parameter handling); a prebuilt statement
    # per column set
    for columns, params in by_columns.items():
        await driver.execute_many(conn, update_statement(columns - {"_id"}), params)
    await driver.insert_many(conn, events, event_rows)
    await outbox.fan_out(conn, [w.app.id for w in writes if w.steps], at)
    return out


async def _write_at_once(
    conn: AsyncConnection,
    by_columns: dict[frozenset[str], list[dict[str, Any]]],
    event_rows: list[dict[str, Any]],
) -> None:
    """PostgreSQL: :func:`write_many`'s status UPDATEs, events INSERT and outbox fan-out as
    ONE statement (one round trip instead of three or more): each list of values is one
    array parameter, ``unnest`` makes rows of them, and the fan-out reads the events the
    INSERT returns (exactly the rows just written)."""
    updates = sorted(tuple(sorted(columns - {"_id"})) for columns in by_columns)
    event_columns = tuple(event_rows[0])
    params: dict[str, Any] = {"_stamp": now()}
    for i, columns in enumerate(updates):
        rows = by_columns[frozenset((*columns, "_id"))]
        params[f"u{i}__id"] = [r["_id"] for r in rows]
        for c in columns:
            params[f"u{i}_{c}"] = [r[c] for r in rows]
    for c in event_columns:
        params[f"e_{c}"] = [r[c] for r in event_rows]
    # straight through asyncpg (gateway.store.driver_pg: the same statement and values)
    await _write_statement(tuple(updates), event_columns).run(conn, params)


@functools.cache
def _write_statement(
    updates: tuple[tuple[str, ...], ...], event_columns: tuple[str, ...]
) -> driver_pg.Statement:
    """The statement of :func:`_write_at_once` for these column sets (prebuilt, cached): the
    UPDATEs and the events INSERT are CTEs of the outbox's INSERT, which selects the
    followers (:func:`outbox.followers`) of the events the INSERT returns."""
    ctes = []
    for i, columns in enumerate(updates):
        v = _rows(f"u{i}", applications, ("_id", *columns), "v")
        change = (
            update(applications)
            .values({c: v.c[c] for c in columns})
            .where(applications.c.id == v.c["_id"])
        )
        ctes.append(change.cte(f"u{i}"))
    written = (
        insert(events)
        .from_select(event_columns, select(_rows("e", events, event_columns, "r")))
        .returning(events.c.id, events.c.application_id)
        .cte("e")
    )
    fan_out = outbox.followers(stamp=bindparam("_stamp", type_=UTCDateTime()), written=written)
    # the UPDATEs are not read by the rest: add_cte keeps them at the top of the statement
    return driver_pg.Statement(
        insert(webhook_deliveries).from_select(outbox.COLUMNS, fan_out).add_cte(*ctes)
    )


def _rows(prefix: str, table: Table, names: tuple[str, ...], alias: str) -> TableValuedAlias:
    """``unnest`` of one array parameter ``{prefix}_{name}`` per name, as rows ``alias(names)``;
    ``_id`` is the table's ``id``."""
    # typed: the dialect casts each ($1::VARCHAR(32)[]) and each item is bound as the
    # column's own type binds it (UTC datetimes, JSON); one dimension, so a JSON value
    # that is a list stays one item
    arrays = [
        bindparam(
            f"{prefix}_{name}",
            type_=ARRAY(table.c["id" if name == "_id" else name].type, dimensions=1),
        )
        for name in names
    ]
    return func.unnest(*arrays).table_valued(*names).render_derived(name=alias)


@functools.cache
def update_statement(columns: frozenset[str]) -> Update:
    """UPDATE of these ``applications`` columns of the case ``_id`` (prebuilt, cached)."""
    return (
        update(applications)
        .where(applications.c.id == bindparam("_id"))
        .values({c: bindparam(c, type_=applications.c[c].type) for c in sorted(columns)})
    )


async def note(
    conn: AsyncConnection,
    app: Row[Any],
    *,
    source: Source,
    actor: str,
    detail: dict[str, Any],
) -> list[StatusChange]:
    """Record something that happened to a locked case without moving it (its promise became
    final): an event from and to its current status, told like any change."""
    current = State(app.status)
    return await _write(
        conn, app, [(current, current)], source=source, actor=actor, detail=detail, extra=None
    )


async def _chain_head(conn: AsyncConnection, app_id: str) -> str | None:
    q = select(applications.c.events_hash).where(applications.c.id == app_id)
    head: str | None = (await conn.execute(q)).scalar()
    return head


@dataclass(frozen=True)
class Listed:
    """A case's status, version and department case number, and its listed result documents
    as ``(sha256, None)`` for content or ``(None, url)`` for a link (see :func:`with_documents`)."""

    status: str
    version: int
    department_case_id: str | None
    listed: frozenset[tuple[str | None, str | None]]


_WITH_DOCUMENTS = PerEngine(
    lambda one_of: (
        select(
            applications.c.id,
            applications.c.status,
            applications.c.version,
            applications.c.department_case_id,
            result_documents.c.sha256,
            result_documents.c.url,
        )
        .select_from(
            applications.outerjoin(
                result_documents, result_documents.c.application_id == applications.c.id
            )
        )
        .where(one_of(applications.c.id, "_ids"))
    )
)


async def with_documents(conn: AsyncConnection, app_ids: Sequence[str]) -> dict[str, Listed]:
    """These cases with the documents listed for them, in one statement (one snapshot)."""
    if not app_ids:
        return {}
    found: dict[str, tuple[str, int, str | None, set[tuple[str | None, str | None]]]] = {}
    params = {"_ids": list(app_ids)}
    for app_id, status, version, case_id, sha, url in (
        await conn.execute(_WITH_DOCUMENTS.for_(conn), params)
    ).all():
        held = found.setdefault(app_id, (status, version, case_id, set()))[3]
        if sha is not None or url is not None:
            held.add((sha, None if sha is not None else url))
    return {
        app_id: Listed(status, version, case_id, frozenset(held))
        for app_id, (status, version, case_id, held) in found.items()
    }


async def get_application(conn: AsyncConnection, app_id: str) -> Row[Any] | None:
    return (await conn.execute(select(applications).where(applications.c.id == app_id))).first()


async def decisions(conn: AsyncConnection, app_ids: Sequence[str]) -> dict[str, Row[Any]]:
    """Each case's latest decision event (to approved, rejected or not_accepted)."""
    if not app_ids:
        return {}
    q = (
        select(events)
        .where(
            events.c.application_id.in_(list(app_ids)),
            events.c.to_status.in_([s.value for s in DECIDED]),
        )
        .order_by(events.c.id)
    )
    return {row.application_id: row for row in (await conn.execute(q)).all()}


async def by_receipt(conn: AsyncConnection, receipt_number: str) -> Row[Any] | None:
    """The case with this receipt number (unique across the city)."""
    q = select(applications).where(applications.c.receipt_number == receipt_number)
    return (await conn.execute(q)).first()


async def history(conn: AsyncConnection, app_id: str) -> Sequence[Row[Any]]:
    q = select(events).where(events.c.application_id == app_id).order_by(events.c.id)
    return (await conn.execute(q)).all()


async def version_at(conn: AsyncConnection, app_id: str, unix_seconds: int) -> int:
    """The case's version current at ``unix_seconds`` (whole seconds: a version that started
    within that second counts as current). Versions start with their first event."""
    at = dt.datetime.fromtimestamp(unix_seconds + 1, dt.UTC)
    q = select(func.max(events.c.version)).where(
        events.c.application_id == app_id, events.c.at < at
    )
    found = (await conn.execute(q)).scalar()
    return int(found) if found is not None else 1


async def list_applications(
    conn: AsyncConnection,
    *,
    status: str | None = None,
    centre: str | None = None,
    department: str | None = None,
    updated_since: dt.datetime | None = None,
    receipt_number: str | None = None,
    after_id: str | None = None,
    limit: int = 50,
) -> Sequence[Row[Any]]:
    """A page ordered by id (creation order); ``after_id`` is the cursor."""
    conds = []
    if receipt_number is not None:
        conds.append(applications.c.receipt_number == receipt_number)
    if status:
        conds.append(applications.c.status == status)
    if centre:
        conds.append(applications.c.centre == centre)
    if department:
        conds.append(applications.c.department == department)
    if updated_since:
        conds.append(applications.c.updated_at >= updated_since)
    if after_id:
        conds.append(applications.c.id > after_id)
    q = select(applications).order_by(applications.c.id).limit(limit)
    if conds:
        q = q.where(and_(*conds))
    return (await conn.execute(q)).all()
