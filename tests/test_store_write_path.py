"""The dispatch path's store writes (``cases.write_many``: status UPDATEs, events, the outbox
fan-out) store through the driver (SQLite: gateway.store.driver; PostgreSQL:
gateway.store.driver_pg) exactly what SQLAlchemy's ``conn.execute`` stores, and its reads read
what it reads; the hash chain's fast path hashes what ``event_hash`` hashes; changes made without
``model_construct`` are the models ``model_construct`` makes."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from sqlalchemy import Executable, Table, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.events import Source, StatusChange, trusted
from gateway.notifications import Contact, NotifiedChange, split, with_contact, with_contacts
from gateway.states import State
from gateway.store import cases, chain, driver, driver_pg, jobs
from gateway.store.db import create_engine
from gateway.store.tables import applications, dispatch_jobs, webhook_subscriptions
from tests.test_store_driver import _application

AT = dt.datetime(2026, 12, 2, 1, 30, 15, 654321, tzinfo=dt.UTC)


@pytest.fixture
async def engine(db_url: str) -> Any:
    eng = create_engine(db_url)
    yield eng
    await eng.dispose()


async def _through_sqlalchemy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The driver's statements sent through ``conn.execute`` instead (what was stored before)."""

    async def execute_many(
        conn: AsyncConnection, stmt: Executable, rows: Sequence[Mapping[str, Any]]
    ) -> None:
        await conn.execute(stmt, [dict(r) for r in rows])

    async def insert_many(
        conn: AsyncConnection, table: Table, rows: Sequence[dict[str, Any]]
    ) -> None:
        await conn.execute(insert(table), list(rows))

    async def run(self: driver.Query, conn: AsyncConnection, params: Mapping[str, Any]) -> None:
        await conn.execute(self._engines.for_(conn), dict(params))

    monkeypatch.setattr(driver, "execute_many", execute_many)
    monkeypatch.setattr(driver, "insert_many", insert_many)

    async def rows(self: driver.Query, conn: AsyncConnection, params: Mapping[str, Any]) -> Any:
        return (await conn.execute(self._engines.for_(conn), dict(params))).all()

    monkeypatch.setattr(driver.Query, "run", run)
    monkeypatch.setattr(driver.Query, "rows", rows)

    # PostgreSQL's (gateway.store.driver_pg)
    async def pg_run(
        self: driver_pg.Statement, conn: AsyncConnection, params: Mapping[str, Any]
    ) -> None:
        await conn.execute(self.stmt, dict(params))

    async def pg_rows(
        self: driver_pg.Statement, conn: AsyncConnection, params: Mapping[str, Any]
    ) -> Any:
        return (await conn.execute(self.stmt, dict(params))).all()

    monkeypatch.setattr(driver_pg.Statement, "run", pg_run)
    monkeypatch.setattr(driver_pg.Statement, "rows", pg_rows)


async def _write(engine: AsyncEngine, ids: list[str]) -> list[list[StatusChange]]:
    """Two cases with different column sets (two UPDATEs), three events, a JSON detail with
    nested and non-ASCII values, a datetime column and a NULL."""
    async with engine.begin() as conn:
        locked = await cases.lock_applications(conn, ids)
        detail = {"case_id": "X-1", "nested": {"b": [1, 2.5, None], "a": "文"}, "quote": 'a"b'}
        writes = [
            cases.Write(
                locked[0],
                [
                    (State.DISPATCHING, State.DELIVERED, detail),
                    (State.DELIVERED, State.APPROVED, detail),
                ],
                {
                    "department_case_id": "X-1",
                    "last_error": None,
                    "next_poll_at": AT + dt.timedelta(hours=1),
                },
            ),
            cases.Write(locked[1], [(State.DISPATCHING, State.DELIVERED, {"attempt": 1})]),
        ]
        return await cases.write_many(conn, writes, source=Source.DISPATCH, actor="host:1:ab")


async def _raw(engine: AsyncEngine, sql: str, ids: list[str]) -> list[tuple[Any, ...]]:
    """Rows as the database holds them (strings, numbers), not as SQLAlchemy reads them."""
    async with engine.connect() as conn:
        found = await conn.execute(text(sql), {"a": ids[0], "b": ids[1]})
        return [tuple(r) for r in found.all()]


async def test_write_many_stores_what_sqlalchemy_stores(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with engine.begin() as conn:
        rows = [_application(i) for i in ("a1", "a2", "b1", "b2")]
        for row in rows:
            row["status"] = "dispatching"
            row["events_hash"] = None  # no events yet: the chain starts here
        await conn.execute(insert(applications), rows)
        await conn.execute(
            insert(webhook_subscriptions),
            [
                {
                    "id": "s1",
                    "centre": "C01",
                    "client_id": None,
                    "url": "https://example.org/hook",
                    "secret": "x" * 64,
                    "created_by": "test",
                    "created_at": AT,
                }
            ],
        )
    monkeypatch.setattr(cases, "now", lambda: AT)
    monkeypatch.setattr("gateway.store.outbox.now", lambda: AT)
    fast = await _write(engine, ["a1", "a2"])
    await _through_sqlalchemy(monkeypatch)
    core = await _write(engine, ["b1", "b2"])

    def same(changes: list[list[StatusChange]]) -> list[list[dict[str, Any]]]:
        return [
            [c.model_dump(exclude={"application_id", "receipt_number"}) for c in cs]
            for cs in changes
        ]

    assert same(fast) == same(core)
    apps = "SELECT * FROM applications WHERE id IN (:a, :b) ORDER BY id"
    skip = {"id", "receipt_number", "idempotency_key", "events_hash"}
    names = [c.name for c in applications.c]
    stored_fast = await _raw(engine, apps, ["a1", "a2"])
    stored_core = await _raw(engine, apps, ["b1", "b2"])
    for f, c in zip(stored_fast, stored_core, strict=True):
        assert {n: v for n, v in zip(names, f, strict=True) if n not in skip} == {
            n: v for n, v in zip(names, c, strict=True) if n not in skip
        }
        assert dict(zip(names, f, strict=True))["status"] in ("approved", "delivered")
    # the events, but for their ids, case and hash (which covers the case id)
    evts = (
        "SELECT version, at, source, actor, from_status, to_status, detail FROM events"
        " WHERE application_id IN (:a, :b) ORDER BY id"
    )
    events_fast = await _raw(engine, evts, ["a1", "a2"])
    assert len(events_fast) == 3
    assert events_fast == await _raw(engine, evts, ["b1", "b2"])
    outbox = (
        "SELECT subscription_id, state, attempts, next_attempt_at, created_at"
        " FROM webhook_deliveries WHERE application_id IN (:a, :b) ORDER BY id"
    )
    out_fast = await _raw(engine, outbox, ["a1", "a2"])
    assert len(out_fast) == 3
    assert out_fast == await _raw(engine, outbox, ["b1", "b2"])
    # the outbox points at the events just written, and every chain holds
    pairs = (
        "SELECT d.application_id, e.to_status FROM webhook_deliveries d JOIN events e"
        " ON e.id = d.event_id AND e.application_id = d.application_id"
        " WHERE d.application_id IN (:a, :b) ORDER BY d.id"
    )
    assert await _raw(engine, pairs, ["a1", "a2"]) == [
        ("a1", "delivered"),
        ("a1", "approved"),
        ("a2", "delivered"),
    ]
    async with engine.connect() as conn:
        found = [b async for b in chain.verify_events(conn) if not isinstance(b, int)]
    assert found == []


def _event(**changes: Any) -> dict[str, Any]:
    row = {
        "application_id": "01JABCDEFGHJKMNPQRSTVWXYZ0",
        "version": 2,
        "at": AT,
        "source": "dispatch",
        "actor": "host:1:ab",
        "from_status": "delivered",
        "to_status": "approved",
        "detail": {"case_id": "X-1"},
    }
    row.update(changes)
    return row


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"actor": '张三 "quoted" \\ back\nslash\t\x01', "detail": {"z": 1, "a": {"y": [1, "文"]}}},
        {"from_status": None},  # a first event has no from
        {"version": True},  # not an int: the usual path
        {"detail": {"when": AT, "n": 1.5, "k": {2: "int key"}}},
        {"at": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=8)))},
        {"source": Source.CALLBACK, "to_status": State.ACCEPTED},  # enums: the usual path
        {"detail": {}},
    ],
)
def test_the_chain_fast_path_hashes_as_event_hash(changes: dict[str, Any]) -> None:
    rows = [_event(**changes), _event(**{**changes, "detail": {"second": True}})]
    expected, prev = [], "f" * 64
    for row in rows:
        prev = chain.event_hash(prev, row)
        expected.append(prev)
    assert chain.seal_events("f" * 64, rows) == expected[-1]
    assert [r["hash"] for r in rows] == expected
    assert chain.seal_events(None, [_event(**changes)]) == chain.event_hash("", _event(**changes))


def _change() -> StatusChange:
    return StatusChange.model_validate(
        {
            "application_id": "a1",
            "receipt_number": "C01-1",
            "department": "amr",
            "matter_code": "XK00123000",
            "centre": "C01",
            "version": 1,
            "from_status": "delivered",
            "to_status": "approved",
            "source": "dispatch",
            "actor": "host",
            "at": AT,
            "detail": {"case_id": "X"},
        }
    )


def _alike(made: Any, reference: Any) -> None:
    assert type(made) is type(reference)
    assert list(made.__dict__.items()) == list(reference.__dict__.items())
    assert made.model_fields_set == reference.model_fields_set
    assert made.__pydantic_extra__ == reference.__pydantic_extra__
    assert made.__pydantic_private__ == reference.__pydantic_private__
    assert made == reference and repr(made) == repr(reference)
    assert made.model_dump_json() == reference.model_dump_json()


def test_trusted_makes_what_model_construct_makes() -> None:
    values = dict(_change().__dict__)
    _alike(trusted(StatusChange, dict(values)), StatusChange.model_construct(**values))
    contact = Contact.from_applicant({"name": "张三", "phone": "13800138000"})
    noted = {**values, "contact": contact}
    _alike(trusted(NotifiedChange, dict(noted)), NotifiedChange.model_construct(**noted))
    # other orders and missing fields (defaults) go through model_construct
    shuffled = dict(reversed(list(values.items())))
    _alike(trusted(StatusChange, dict(shuffled)), StatusChange.model_construct(**shuffled))
    del values["detail"]
    _alike(trusted(StatusChange, dict(values)), StatusChange.model_construct(**values))


def test_changes_with_their_contact_and_split_again() -> None:
    change = _change()
    applicant = {"name": "张三", "id_number": "110101199003074514", "phone": "13800138000"}
    [one] = with_contacts([change], applicant)
    _alike(one, with_contact(change, applicant))
    two = with_contacts([change, change], applicant)
    assert two[0].contact is two[1].contact  # type: ignore[attr-defined]
    plain, contact = split(two[1])
    _alike(plain, change)
    assert contact == Contact.from_applicant(applicant)
    assert with_contacts([change], None) == [change]
    assert json.loads(one.model_dump_json()) == json.loads(change.model_dump_json())


async def test_rows_read_through_the_driver_are_what_sqlalchemy_reads(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(applications), [_application(i) for i in ("a1", "a2", "a3")])
        for app_id in ("a1", "a2", "a3"):
            await jobs.enqueue(conn, app_id, 1, "amr", at=AT)
    async with engine.begin() as conn:
        core = (
            await conn.execute(
                select(applications).where(applications.c.id.in_(["a3", "a1"])).order_by("id")
            )
        ).all()
        fast = await cases.lock_applications(conn, ["a3", "a1"])
        assert await cases.lock_applications(conn, []) == []
        one = await cases.lock_application(conn, "a2")
        assert await cases.lock_application(conn, "nope") is None
    assert [tuple(r) for r in fast] == [tuple(r) for r in core]
    assert [r._mapping for r in fast] == [r._mapping for r in core]
    assert [type(v) for v in fast[0]] == [type(v) for v in core[0]]
    assert fast[0].created_at.tzinfo is not None and fast[0].applicant == core[0].applicant
    assert one is not None and one.id == "a2"
    # the claim: the jobs as the table then holds them, oldest first, their cases locked
    async with engine.begin() as conn:
        claimed, apps = await jobs.claim_cases(conn, "amr", "me", 2, 60)
        held = (
            await conn.execute(select(dispatch_jobs).where(dispatch_jobs.c.lease_owner == "me"))
        ).all()
        fenced, _locked = await jobs.finish_delivered_locked(conn, [claimed[0].id, 999], "me")
        assert fenced == {claimed[0].id}
    assert sorted(dataclasses.astuple(j) for j in claimed) == sorted(tuple(r) for r in held)
    assert [j.application_id for j in claimed] == ["a1", "a2"]
    assert [a.id for a in apps] == ["a1", "a2"] and all(j.state == "leased" for j in claimed)


async def test_the_recorders_fence_locks_the_cases_of_the_jobs_still_held_only(
    engine: AsyncEngine, db_url: str
) -> None:
    """``jobs.finish_delivered_locked`` (on PostgreSQL one statement): a job whose lease was
    lost to another owner is neither finished nor its case locked; the held ones' cases come
    back as ``conn.execute`` reads them, and stay locked until the transaction ends."""
    from sqlalchemy import update
    from sqlalchemy.exc import DBAPIError

    async with engine.begin() as conn:
        await conn.execute(insert(applications), [_application(i) for i in ("a1", "a2", "a3")])
        for app_id in ("a1", "a2", "a3"):
            await jobs.enqueue(conn, app_id, 1, "amr", at=AT)
    async with engine.begin() as conn:
        claimed, _apps = await jobs.claim_cases(conn, "amr", "me", 3, 60)
    by_case = {j.application_id: j.id for j in claimed}
    async with engine.begin() as conn:  # a2's lease ran out and another daemon took it
        await conn.execute(
            update(dispatch_jobs)
            .where(dispatch_jobs.c.id == by_case["a2"])
            .values(lease_owner="other")
        )
    ids = [by_case["a3"], by_case["a2"], by_case["a1"], 999]
    probe = create_engine(db_url, watch=False)
    try:
        async with engine.begin() as conn:
            held, locked = await jobs.finish_delivered_locked(conn, ids, "me")
            core = (
                await conn.execute(
                    select(applications).where(applications.c.id.in_(["a1", "a3"])).order_by("id")
                )
            ).all()
            assert held == {by_case["a1"], by_case["a3"]}
            assert list(locked) == ["a1", "a3"]  # in id order
            width = len(applications.c)
            assert [tuple(r)[:width] for r in locked.values()] == [tuple(r) for r in core]
            assert [type(v) for v in tuple(locked["a1"])[:width]] == [type(v) for v in core[0]]
            assert locked["a1"].applicant == core[0].applicant
            if engine.dialect.name == "postgresql":
                nowait = text("SELECT id FROM applications WHERE id = :id FOR UPDATE NOWAIT")
                async with probe.connect() as other:
                    for app_id in ("a1", "a3"):
                        with pytest.raises(DBAPIError, match="lock"):
                            async with other.begin():
                                await other.execute(nowait, {"id": app_id})
                    async with other.begin():  # the lost job's case is not locked
                        assert (await other.execute(nowait, {"id": "a2"})).scalar() == "a2"
        async with engine.connect() as conn:
            states = {
                r.application_id: (r.state, r.lease_owner, r.attempts)
                for r in (await conn.execute(select(dispatch_jobs))).all()
            }
        assert states == {
            "a1": ("done", None, 1),
            "a2": ("leased", "other", 0),
            "a3": ("done", None, 1),
        }
        async with engine.begin() as conn:  # nothing held any more: nothing locked
            assert await jobs.finish_delivered_locked(conn, ids, "me") == (set(), {})
    finally:
        await probe.dispose()


async def test_a_statement_whose_connection_broke_under_it_lost_its_connection(
    engine: AsyncEngine,
) -> None:
    """PostgreSQL's path (gateway.store.driver_pg): a backend terminated mid-statement can
    leave asyncpg's protocol broken ("another operation is in progress") before the socket's
    end is read: that is a lost connection (retried), and the connection is closed so that
    the pool drops it; an error of the statement itself stays what it is."""
    if engine.dialect.name != "postgresql":
        pytest.skip("asyncpg's path")
    from asyncpg.exceptions import InternalClientError, UndefinedTableError

    from gateway.errors import DatabaseUnavailable

    async def broken(_driver: Any) -> None:
        raise InternalClientError("cannot switch to state 12; another operation (2) is in progress")

    async with engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        with pytest.raises(UndefinedTableError):
            await driver_pg._send(conn, lambda d: d.fetch("SELECT * FROM no_such_table"))
        assert not raw.is_closed()
        await conn.rollback()
        with pytest.raises(DatabaseUnavailable) as caught:
            await driver_pg._send(conn, broken)
        assert caught.value.connection_lost and raw.is_closed()
        await conn.invalidate()
    async with engine.connect() as conn:  # the pool gives a working one
        assert (await conn.execute(text("SELECT 1"))).scalar() == 1
