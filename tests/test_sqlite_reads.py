"""Work that only reads takes no write lock on SQLite (``Runtime.reader``,
gateway.store.db.create_reader): every transaction of the runtime's engine begins IMMEDIATE,
so a daemon's tick that only looked (nothing due) held the file's write lock and the API's
intake in the other process waited for it. Another connection stands in for the other
process: SQLite's file locks are the same between connections."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text

from gateway import clocks, poller, refetch, webhooks, withdrawals
from gateway.config.loader import load_config
from gateway.connector import CaseUpdate
from gateway.results import match_many
from gateway.runtime import Runtime
from gateway.store import sqlite as store_sqlite
from gateway.store.db import create_engine, create_reader
from tests.conftest import EXAMPLE, configure_for_test
from tests.databases import SQLITE, migrated_sqlite


def _other_writer(path: Path, table: str = "t") -> sqlite3.Connection:
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    other.execute("BEGIN IMMEDIATE")
    other.execute(f"INSERT INTO {table} VALUES ('other')")
    return other


async def test_a_read_held_open_does_not_block_another_processs_write(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    reader = create_reader(engine)
    try:
        assert reader is not engine
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (v TEXT)"))
            await conn.execute(text("INSERT INTO t VALUES ('ours')"))
        async with reader.connect() as conn:
            before = (await conn.execute(text("SELECT v FROM t"))).scalars().all()
            # the read's transaction is open: the other writer (no busy wait at all) begins,
            # writes and commits; the read goes on from its snapshot
            other = _other_writer(path)
            other.execute("COMMIT")
            other.close()
            during = (await conn.execute(text("SELECT v FROM t ORDER BY v"))).scalars().all()
        async with reader.connect() as conn:
            after = (await conn.execute(text("SELECT v FROM t ORDER BY v"))).scalars().all()
        assert before == during == ["ours"]
        assert after == ["other", "ours"]
        # the engine's own transactions still take the lock at BEGIN
        async with engine.begin() as conn:
            await conn.execute(text("SELECT 1"))
            blocked = sqlite3.connect(path, isolation_level=None, timeout=0)
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                blocked.execute("BEGIN IMMEDIATE")
            blocked.close()
    finally:
        await reader.dispose()
        await engine.dispose()


async def test_the_reader_refuses_to_write(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}", watch=False)
    reader = create_reader(engine, watch=False)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (v TEXT)"))
        with pytest.raises(Exception, match="readonly"):
            async with reader.begin() as conn:
                await conn.execute(text("INSERT INTO t VALUES ('no')"))
        async with reader.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 0
    finally:
        await reader.dispose()
        await engine.dispose()


def test_memory_and_postgresql_read_through_the_engine_itself() -> None:
    memory = create_engine("sqlite+aiosqlite:///:memory:")
    assert create_reader(memory) is memory
    pg = create_engine("postgresql+asyncpg://u@127.0.0.1:1/x")
    assert create_reader(pg) is pg


@pytest.fixture
async def locked_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Runtime, sqlite3.Connection]]:
    """A runtime on a SQLite file whose write lock another connection holds; a transaction
    that wants the lock fails at once (no polling, no busy wait) instead of waiting."""
    monkeypatch.setattr(store_sqlite, "BEGIN_POLL_SECONDS", 0.0)
    monkeypatch.setattr(store_sqlite, "BUSY_TIMEOUT_MS", 0)
    migrated_sqlite(tmp_path / "gateway.db")
    config = configure_for_test(load_config(EXAMPLE), tmp_path, f"{SQLITE}{tmp_path}/gateway.db")
    config = dataclasses.replace(config)
    rt = Runtime(config)
    other = _other_writer(tmp_path / "gateway.db", "alembic_version")
    try:
        yield rt, other
    finally:
        other.execute("ROLLBACK")
        other.close()
        await rt.aclose()


async def test_ticks_that_only_look_run_while_another_process_writes(
    locked_out: tuple[Runtime, sqlite3.Connection],
) -> None:
    # each of these used to begin IMMEDIATE: with the lock held elsewhere it failed here
    # ("database busy"), and in a city day it waited for the API's intake and held it up
    rt, _other = locked_out
    assert await withdrawals.due_departments(rt) == []
    assert await webhooks.sweep(rt, "me") is None
    update = CaseUpdate(case_id="nope", status="approved")
    assert await match_many(rt, "civil", [update]) == [None]
    assert list(await refetch.waiting(rt)) == []
    assert await clocks.as_of(rt) is None
    link = rt.link("nrp")
    assert link is not None
    link.polls_scheduled = True  # the once-per-start write (cases with no poll time) is done
    assert await poller.poll_department(rt, "nrp") == 0
