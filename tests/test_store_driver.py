"""gateway/store/driver.py: statements the intake group commit sends straight through the
driver on SQLite store and read exactly what SQLAlchemy would, and fail the same way."""

from __future__ import annotations

import datetime as dt
import sqlite3
from typing import Any

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.errors import DatabaseUnavailable
from gateway.store import driver
from gateway.store.clients import create_client, find_many, hash_key, revoke
from gateway.store.db import create_engine, outage_of
from gateway.store.tables import applications, idempotency_records

AT = dt.datetime(2026, 12, 1, 10, 30, 15, 123456, tzinfo=dt.UTC)


def _application(app_id: str) -> dict[str, Any]:
    return {
        "id": app_id,
        "receipt_number": f"C01-20261201-{app_id}",
        "client_id": "c1",
        "centre": "C01",
        "window": None,
        "clerk": "王",
        "matter_code": "GG00301000",
        "matter_name": "名称",
        "region": "339900",
        "department": "amr",
        "status": "received",
        "version": 1,
        "applicant": {"name": "张三", "id_number": "110101199003074514", "phone": "138"},
        "form": {"b": [1, 2.5, None], "a": "文"},
        "materials": [],
        "delivery": {"method": "pickup", "centre": "C01"},
        "idempotency_key": f"k-{app_id}",
        "promised_by": dt.date(2026, 12, 29),
        "promised_final": False,
        "created_at": AT,
        "updated_at": AT + dt.timedelta(seconds=1),
        "events_hash": "0" * 64,
    }


def _record(key: str) -> dict[str, Any]:
    return {
        "client_id": "c1",
        "key": key,
        "request_hash": "f" * 64,
        "status_code": 201,
        "response": {"id": "a1", "promised_by": "2026-12-29", "nested": {"ok": True}},
        "created_at": AT,
    }


@pytest.fixture
async def engine(db_url: str) -> Any:
    eng = create_engine(db_url)
    yield eng
    await eng.dispose()


async def _stored(engine: AsyncEngine, table: str, column: str, key: str) -> tuple[Any, ...]:
    # the columns as the database holds them (strings, numbers), not as SQLAlchemy reads them
    async with engine.connect() as conn:
        rows = (
            await conn.execute(text(f'SELECT * FROM {table} WHERE "{column}" = :k'), {"k": key})
        ).all()
    [row] = rows
    return tuple(row)


async def test_rows_are_stored_as_sqlalchemy_stores_them(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await driver.insert_many(conn, applications, [_application("a1"), _application("a2")])
        await conn.execute(insert(applications), [_application("b1")])
        await driver.insert_many(conn, idempotency_records, [_record("k1")])
        await conn.execute(insert(idempotency_records), [_record("k2")])
    fast = await _stored(engine, "applications", "id", "a2")
    core = await _stored(engine, "applications", "id", "b1")
    differs = {c.name for c, f, s in zip(applications.c, fast, core, strict=True) if f != s}
    assert differs == {"id", "receipt_number", "idempotency_key"}
    fast = await _stored(engine, "idempotency_records", "key", "k1")
    core = await _stored(engine, "idempotency_records", "key", "k2")
    assert fast[:1] + fast[2:] == core[:1] + core[2:]
    async with engine.connect() as conn:
        read = (await conn.execute(select(applications).where(applications.c.id == "a1"))).one()
    expected = _application("a1")
    assert {k: read._mapping[k] for k in expected} == expected


async def test_a_list_is_one_parameter_and_revoked_keys_are_left_out(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        made = [await create_client(conn, name=f"k{i}", centre="C01", ops=False) for i in range(4)]
        await revoke(conn, made[1][0].id)
    hashes = [hash_key(key) for _client, key in made]
    async with engine.begin() as conn:
        found = await find_many(conn, [*hashes, "0" * 64])
        assert await find_many(conn, []) == {}
    assert found == {hashes[i]: made[i][0] for i in (0, 2, 3)}
    assert found[hashes[0]].ops is False  # a boolean, not SQLite's 0


async def test_a_busy_database_is_an_infrastructure_error_and_an_outage(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.databases import migrated_sqlite

    migrated_sqlite(tmp_path / "gateway.db")
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}")
    import aiosqlite

    async def locked(*_args: Any, **_kw: Any) -> None:
        raise sqlite3.OperationalError("database is locked")

    try:
        monkeypatch.setattr(aiosqlite.Connection, "executemany", locked)
        with pytest.raises(DatabaseUnavailable):
            async with engine.begin() as conn:
                await driver.insert_many(conn, idempotency_records, [_record("k1")])
        assert outage_of(engine).down
        monkeypatch.undo()
        async with engine.begin() as conn:  # nothing was stored
            assert (await conn.execute(select(idempotency_records))).all() == []
    finally:
        await engine.dispose()


async def test_a_statement_sent_straight_to_asyncpg_is_inside_the_transaction(
    db_url: str,
) -> None:
    """On a new pooled connection (which the pool does not ping, so nothing has begun its
    transaction yet) a statement sent straight through the driver as the first of
    ``engine.begin()`` is still part of that transaction: rolled back with it."""
    from gateway.store import driver_pg

    store = driver_pg.Statement(insert(idempotency_records))
    engine = create_engine(db_url)
    try:
        if engine.dialect.name != "postgresql":
            pytest.skip("SQLite's transaction begins with BEGIN IMMEDIATE on the engine's begin")
        with pytest.raises(RuntimeError, match="undo"):
            async with engine.begin() as conn:
                await store.run(conn, _record("k-first"))
                raise RuntimeError("undo")
        async with engine.begin() as conn:  # the same connection again, pinged this time
            await store.run(conn, _record("k-second"))
        async with engine.connect() as conn:
            keys = (await conn.execute(select(idempotency_records.c.key))).scalars().all()
        assert keys == ["k-second"]
    finally:
        await engine.dispose()
