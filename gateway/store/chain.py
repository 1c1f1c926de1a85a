"""Hash chains over the append-only records: a case's events, and the audit log.

Each row stores ``sha256(previous row's hash + canonical JSON of the row)``; the head (the
latest hash) is stored apart (``applications.events_hash`` per case, ``chain_heads`` for the
audit log). Changing a row breaks its own hash; deleting one breaks the next row's, or the head
when it was the last. :func:`verify_events` and :func:`verify_audit` (``gateway audit verify``)
find either.

A chain detects tampering with rows, not a rewrite of a whole chain by someone with write access
to the database: ops record the heads ``gateway audit verify`` prints somewhere else (a ticket,
a log shipped off the host) to anchor them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.tables import applications, audit_log, chain_heads, events

GENESIS = ""
AUDIT = "audit"
_EVENT_FIELDS = ("application_id", "version", "at", "source", "actor", "from_status", "to_status")
_AUDIT_FIELDS = ("at", "channel", "actor", "centre", "action")


def _canonical(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).isoformat(timespec="microseconds")
    return value


#: json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False), made once
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_PLAIN = (str, int, float, bool, type(None))


def _as_stored(value: Any) -> Any:
    """The JSON column as the database gives it back (keys as strings, dates as text). A flat
    object of plain values (most event details: a receipt number, a status) already is."""
    if type(value) is dict and all(type(k) is str and type(v) in _PLAIN for k, v in value.items()):
        return value
    return json.loads(json.dumps(value, default=str))


def _digest(prev: str, row: Mapping[str, Any], fields: Iterable[str], extra: str) -> str:
    body = {f: _canonical(row[f]) for f in fields}
    body[extra] = _as_stored(row[extra])
    text = _CANONICAL_JSON.encode(body)
    return hashlib.sha256(prev.encode() + b"\n" + text.encode()).hexdigest()


def event_hash(prev: str, row: Mapping[str, Any]) -> str:
    return _digest(prev, row, _EVENT_FIELDS, "detail")


def audit_hash(prev: str, row: Mapping[str, Any]) -> str:
    return _digest(prev, row, _AUDIT_FIELDS, "applications")


def seal_events(prev: str | None, rows: list[dict[str, Any]]) -> str:
    """Give each event row of ONE case its ``hash``, in order; returns the new head."""
    head = prev or GENESIS
    seen: Any = None
    at = ""
    for row in rows:
        if row["at"] is not seen:  # a batch's events share their time: converted once
            seen = row["at"]
            at = _canonical(seen)
        row["hash"] = head = _event_digest(head, row, at)
    return head


#: how _CANONICAL_JSON writes a string (ensure_ascii=False: the C encoder's own function)
_STRING = json.encoder.encode_basestring


def seal_first_event(row: dict[str, Any], at: str | None = None) -> str:
    """``seal_events(None, [row])`` for a new case's one event (intake: one per application),
    with ``at``, the row's time in its canonical form, when the caller has it (a batch shares
    one): the same text, so the same hash (tests/test_audit.py holds them equal)."""
    if at is None or type(row["at"]) is not dt.datetime:
        return seal_events(None, [row])
    row["hash"] = head = _event_digest(GENESIS, row, at)
    return head


def canonical_time(at: dt.datetime) -> str:
    """A time as the chains' canonical JSON writes it."""
    return str(_canonical(at))


_TEXT = (
    '{"actor":%s,"application_id":%s,"at":%s,"detail":%s,"from_status":%s,"source":%s,'
    '"to_status":%s,"version":%s}'
)


def _event_digest(prev: str, row: Mapping[str, Any], at: Any) -> str:
    """:func:`event_hash` with ``at`` already canonical: the canonical JSON written out in
    its sorted key order (``_TEXT``) when the fields are plain strings (``from_status`` may be
    null: a case's first event) and an int, a flat detail of strings written out too, any
    other detail through the sorting encoder (~2x faster); any other row the usual way. The
    same text either way (tests/test_store_write_path.py, tests/test_audit.py)."""
    fields = (row["actor"], row["application_id"], row["source"])
    src, to, version, detail = row["from_status"], row["to_status"], row["version"], row["detail"]
    if (
        type(at) is not str
        or type(to) is not str
        or type(version) is not int
        or any(type(f) is not str for f in fields)
        or (src is not None and type(src) is not str)
    ):
        return event_hash(prev, row)
    if type(detail) is dict and all(type(k) is str and type(v) is str for k, v in detail.items()):
        written = (
            "{" + ",".join(f"{_STRING(k)}:{_STRING(v)}" for k, v in sorted(detail.items())) + "}"
        )
    else:
        written = _CANONICAL_JSON.encode(_as_stored(detail))
    actor, app, source = fields
    text = _TEXT % (
        _STRING(actor),
        _STRING(app),
        _STRING(at),
        written,
        "null" if src is None else _STRING(src),
        _STRING(source),
        _STRING(to),
        int.__repr__(version),
    )
    return hashlib.sha256(prev.encode() + b"\n" + text.encode()).hexdigest()


async def append_audit(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Append audit rows in the caller's transaction. The head row is locked (PostgreSQL) or
    the database is (SQLite's one writer), so appends from many processes form one chain."""
    q = select(chain_heads).where(chain_heads.c.name == AUDIT)
    if conn.dialect.name == "postgresql":
        q = q.with_for_update()
    head = (await conn.execute(q)).first()
    if head is None:
        # first append anywhere: a concurrent first append fails on the primary key, retried
        await conn.execute(insert(chain_heads).values(name=AUDIT, last_id=0, hash=GENESIS))
        prev = GENESIS
    else:
        prev = head.hash
    last_id = 0
    for row in rows:
        row["hash"] = prev = audit_hash(prev, row)
        inserted = (await conn.execute(insert(audit_log).values(**row))).inserted_primary_key
        assert inserted is not None
        last_id = inserted[0]
    await conn.execute(
        update(chain_heads).where(chain_heads.c.name == AUDIT).values(last_id=last_id, hash=prev)
    )


async def audit_rows(
    conn: AsyncConnection,
    *,
    application: str | None = None,
    limit: int = 100,
    before: int | None = None,
) -> list[Any]:
    """The latest audit rows (about one case, if given: among the latest 10,000), newest
    first; ``before``: the row id a page starts below."""
    q = select(audit_log).order_by(audit_log.c.id.desc())
    if before is not None:
        q = q.where(audit_log.c.id < before)
    if application is None:
        return list((await conn.execute(q.limit(limit))).all())
    # JSON containment is spelled differently per engine: filter a bounded window here
    rows = (await conn.execute(q.limit(10_000))).all()
    return [r for r in rows if application in (r.applications or [])][:limit]


@dataclass(frozen=True)
class Break:
    """Where a chain does not hold."""

    chain: str  # "audit" or "events of <application id>"
    row_id: int | None
    problem: str

    def __str__(self) -> str:
        where = f"row {self.row_id}" if self.row_id is not None else "head"
        return f"{self.chain}: {where}: {self.problem}"


def _check(
    chain: str, rows: Iterable[Any], head: str | None, hasher: Any, *, legacy: bool
) -> list[Break]:
    """Walk one chain. ``legacy``: leading rows without a hash predate the chain."""
    prev, started, breaks = GENESIS, False, []
    for row in rows:
        mapping = row._mapping
        if mapping["hash"] is None and legacy and not started:
            continue
        started = True
        if mapping["hash"] is None:
            breaks.append(Break(chain, mapping["id"], "has no hash (altered)"))
            return breaks
        expected = hasher(prev, mapping)
        if expected != mapping["hash"]:
            breaks.append(
                Break(
                    chain,
                    mapping["id"],
                    "does not match its hash: it was altered, or a row before it was deleted",
                )
            )
            return breaks
        prev = mapping["hash"]
    if started and head is not None and head != prev:
        breaks.append(Break(chain, None, "the latest row is not the recorded head (deleted?)"))
    elif not started and head not in (None, GENESIS):
        breaks.append(Break(chain, None, "rows are missing: the head records a hash"))
    return breaks


async def verify_audit(conn: AsyncConnection) -> tuple[list[Break], int, str]:
    """Breaks in the audit chain, how many rows were checked, and the head hash."""
    head = (
        await conn.execute(select(chain_heads.c.hash).where(chain_heads.c.name == AUDIT))
    ).scalar()
    rows = (await conn.execute(select(audit_log).order_by(audit_log.c.id))).all()
    return _check(AUDIT, rows, head, audit_hash, legacy=False), len(rows), head or GENESIS


async def verify_events(conn: AsyncConnection, batch: int = 500) -> AsyncIterator[Break | int]:
    """Breaks in the cases' event chains; yields each break, then counts of checked cases."""
    after = ""
    while True:
        q = (
            select(applications.c.id, applications.c.events_hash)
            .where(applications.c.id > after)
            .order_by(applications.c.id)
            .limit(batch)
        )
        page = (await conn.execute(q)).all()
        if not page:
            return
        ids = [a.id for a in page]
        rows = (
            await conn.execute(
                select(events).where(events.c.application_id.in_(ids)).order_by(events.c.id)
            )
        ).all()
        by_app: dict[str, list[Any]] = {i: [] for i in ids}
        for row in rows:
            by_app[row.application_id].append(row)
        for app in page:
            for found in _check(
                f"events of {app.id}", by_app[app.id], app.events_hash, event_hash, legacy=True
            ):
                yield found
        yield len(page)
        after = ids[-1]
