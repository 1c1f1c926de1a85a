"""Waiting for another process's SQLite write lock: BEGIN IMMEDIATE polls every 0.1-1 ms for a
while (SQLite's own busy handler sleeps up to 100 ms between tries, so the API beside a busy
daemon woke too late for the gaps between its transactions), then falls back to the busy
handler and its usual errors. Another connection in this process stands in for the other
process: SQLite's file locks are the same between connections."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from gateway.store import sqlite as sqlite_store
from gateway.store.db import create_engine
from gateway.store.sqlite import BUSY_TIMEOUT_MS, LOCK_SUFFIX, WriteLock, poll_begin
from tests.conftest import wait_for


def _other_writer(path: Path) -> sqlite3.Connection:
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO t VALUES ('other')")
    return other


def _count_trips(driver: Any) -> list[str]:
    """The names of the calls sent to the driver's thread from now on (until
    ``del driver._execute``)."""
    trips: list[str] = []
    run = driver._execute

    async def counted(fn: Any, *args: object, **kwargs: object) -> object:
        trips.append(getattr(fn, "__name__", ""))
        return await run(fn, *args, **kwargs)

    driver._execute = counted
    return trips


async def test_a_transaction_waits_for_the_other_writer_and_then_begins(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (v TEXT)"))
        other = _other_writer(path)

        async def write() -> None:
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO t VALUES ('ours')"))

        task = asyncio.create_task(write())
        done, _ = await asyncio.wait({task}, timeout=0.5)
        assert not done  # it cannot begin while the other connection holds the lock
        other.execute("COMMIT")
        other.close()
        await asyncio.wait_for(task, timeout=60)
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT v FROM t ORDER BY v"))).scalars().all()
        assert rows == ["other", "ours"]
    finally:
        await engine.dispose()


def test_polling_gives_up_to_the_busy_handler_and_keeps_its_timeout(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    setup = sqlite3.connect(path, isolation_level=None)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute("CREATE TABLE t (v TEXT)")
    setup.close()
    other = _other_writer(path)
    ours = sqlite3.connect(path, isolation_level=None)
    ours.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    try:
        assert poll_begin(ours, poll=0.0) is False  # still locked: the caller waits on
        assert not ours.in_transaction
        assert ours.execute("PRAGMA busy_timeout").fetchone() == (BUSY_TIMEOUT_MS,)
        other.execute("COMMIT")
        assert poll_begin(ours, poll=0.0) is True
        assert ours.in_transaction
        ours.execute("INSERT INTO t VALUES ('ours')")
        ours.execute("COMMIT")
    finally:
        other.close()
        ours.close()


def test_a_driver_it_cannot_reach_into_begins_the_usual_way() -> None:
    from gateway.store.sqlite import begin_immediate

    assert begin_immediate(object()) is False  # the caller sends BEGIN IMMEDIATE itself


async def test_a_statement_is_one_trip_to_the_drivers_thread(tmp_path: Path) -> None:
    # SQLAlchemy's adapter made four (cursor, execute, fetch, close), each handing the GIL over
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'g.db'}")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (v TEXT)"))
            await conn.execute(text("INSERT INTO t VALUES ('a'), ('b')"))
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None
            trips = 0
            run = driver._execute

            async def counted(*args: object, **kwargs: object) -> object:
                nonlocal trips
                trips += 1
                return await run(*args, **kwargs)

            driver._execute = counted
            try:
                rows = (await conn.execute(text("SELECT v FROM t ORDER BY v"))).scalars().all()
            finally:
                del driver._execute
        assert rows == ["a", "b"] and trips == 1
    finally:
        await engine.dispose()


async def test_a_committed_transaction_is_given_back_without_a_rollback_trip(
    tmp_path: Path,
) -> None:
    # the pool rolls back every connection given back to it: after COMMIT that was a trip to
    # the driver's thread for nothing; a transaction that did not commit is still rolled back
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'g.db'}")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (v TEXT)"))
        async with engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        trips = _count_trips(driver)
        try:
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO t VALUES ('kept')"))
            assert trips == ["poll_begin", "_run", "commit"]
            trips.clear()
            with pytest.raises(RuntimeError):
                async with engine.begin() as conn:
                    await conn.execute(text("INSERT INTO t VALUES ('dropped')"))
                    raise RuntimeError("a failed transaction")
            assert trips == ["poll_begin", "_run", "rollback"]
        finally:
            del driver._execute
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT v FROM t"))).scalars().all()
        assert rows == ["kept"]
    finally:
        await engine.dispose()


async def test_a_cancelled_begin_does_not_leave_the_connection_in_a_transaction(
    tmp_path: Path,
) -> None:
    # A task cancelled while its BEGIN IMMEDIATE waits in the driver's thread (behind another
    # call, or polling for the write lock) gives the connection back to the pool; the BEGIN
    # runs after that. The pool's reset must roll back what it opens: it read SQLite's flag
    # before the BEGIN ran and skipped the ROLLBACK, and then the next BEGIN failed ("cannot
    # start a transaction within a transaction": test_daemon_leases under load) while the idle
    # connection kept the write lock. (A statement cancelled the same way, the reader's plain
    # BEGIN among them, makes SQLAlchemy invalidate the connection instead.)
    path = tmp_path / "g.db"
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (v TEXT)"))
        async with engine.connect() as conn:  # the pool's one connection
            driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        gate = threading.Event()
        blocked = asyncio.ensure_future(driver._execute(gate.wait, 60))  # its thread is busy
        trips = _count_trips(driver)

        async def write() -> None:
            async with engine.begin() as conn:
                await conn.execute(text("SELECT v FROM t"))

        task = asyncio.create_task(write())
        try:
            await wait_for(lambda: trips, timeout=30)  # its BEGIN waits behind the call
            assert trips[0] in ("poll_begin", "_run")
            task.cancel()
            # the pool has the connection back (no ROLLBACK sent), or its ROLLBACK is queued
            await wait_for(lambda: task.done() or "rollback" in trips, timeout=30)
        finally:
            gate.set()  # the BEGIN runs now
        await asyncio.wait_for(blocked, timeout=30)
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=30)
        del driver._execute
        async with engine.begin() as conn:  # the next transaction on the same connection
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 0
        assert not driver._conn.in_transaction  # idle in the pool
        other = sqlite3.connect(path, isolation_level=None, timeout=30)
        try:
            other.execute("BEGIN IMMEDIATE")  # nobody idle holds the write lock
            other.execute("ROLLBACK")
        finally:
            other.close()
        assert "rollback" in trips  # queued behind the cancelled BEGIN
    finally:
        await engine.dispose()


# --- the gateway's writers' lock (gateway.store.sqlite.WriteLock): another gateway process ---
# A plain sqlite3 connection with a WriteLock of its own (its own file description of
# ``<database>-writers``, as another process has) stands in for the other gateway process.


class _OtherGatewayWriter:
    def __init__(self, path: Path) -> None:
        self.lock = WriteLock(str(path) + LOCK_SUFFIX)
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    def begin(self, *, lock_only: bool = False) -> None:
        assert self.lock.acquire(30)
        if not lock_only:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute("INSERT INTO t VALUES ('other')")

    def commit(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("COMMIT")
        self.lock.release()

    def close(self) -> None:
        self.conn.close()


def _lock_is_free(path: Path) -> bool:
    fd = os.open(str(path) + LOCK_SUFFIX, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing lets go of it too
    return True


async def _engine_with_table(path: Path) -> Any:
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (v TEXT)"))
    return engine


async def test_a_writer_waits_for_another_gateway_process_without_trying_begin(
    tmp_path: Path,
) -> None:
    # Polling BEGIN IMMEDIATE every 0.1-1 ms while the other process wrote cost ~110 us of CPU
    # a try; waiting on the writers' lock costs none, and the kernel wakes the waiter at once.
    path = tmp_path / "g.db"
    engine = await _engine_with_table(path)
    other = _OtherGatewayWriter(path)
    try:
        async with engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        tries: list[str] = []
        driver._conn.set_trace_callback(tries.append)
        other.begin()

        async def write() -> None:
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO t VALUES ('ours')"))

        task = asyncio.create_task(write())
        done, _ = await asyncio.wait({task}, timeout=0.3)
        assert not done  # it waits for the other process's transaction
        other.commit()
        await asyncio.wait_for(task, timeout=60)
        assert [s for s in tries if s.startswith("BEGIN")] == ["BEGIN IMMEDIATE"]  # one try
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT v FROM t ORDER BY v"))).scalars().all()
        assert rows == ["other", "ours"]
        assert _lock_is_free(path)  # given back with the COMMIT
    finally:
        other.close()
        await engine.dispose()


async def test_the_writers_lock_is_held_for_the_transaction_and_given_back_however_it_ends(
    tmp_path: Path,
) -> None:
    path = tmp_path / "g.db"
    engine = await _engine_with_table(path)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO t VALUES ('a')"))
            assert not _lock_is_free(path)
        assert _lock_is_free(path)
        with pytest.raises(RuntimeError):
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO t VALUES ('b')"))
                raise RuntimeError("rolled back")
        assert _lock_is_free(path)
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await conn.execute(text("CREATE UNIQUE INDEX u ON t (v)"))
                await conn.execute(text("INSERT INTO t VALUES ('a')"))  # a statement fails
        assert _lock_is_free(path)
        async with engine.begin() as conn:  # a read-only transaction ends the same way
            await conn.execute(text("SELECT count(*) FROM t"))
        assert _lock_is_free(path)
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            driver = (await conn.get_raw_connection()).driver_connection
            assert not _lock_is_free(path)
            await conn.invalidate()  # the connection closed inside its transaction
        assert driver is not None and driver._connection is None
        assert _lock_is_free(path)
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT v FROM t"))).scalars().all() == ["a"]
    finally:
        await engine.dispose()
    assert _lock_is_free(path)


async def test_a_cancelled_begin_gives_the_writers_lock_back(tmp_path: Path) -> None:
    # the BEGIN runs after its task was cancelled (see the test above): the ROLLBACK the pool
    # queues behind it gives the lock back, or every other process would wait for good
    path = tmp_path / "g.db"
    engine = await _engine_with_table(path)
    other = _OtherGatewayWriter(path)
    try:
        other.begin(lock_only=True)  # the BEGIN waits for the lock in the driver's thread

        async def write() -> None:
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO t VALUES ('never')"))

        task = asyncio.create_task(write())
        done, _ = await asyncio.wait({task}, timeout=0.3)
        assert not done
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=30)
        other.commit()  # now the cancelled BEGIN gets the lock, and begins
        await wait_for(lambda: _lock_is_free(path), timeout=30)
        async with engine.begin() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 0
        assert _lock_is_free(path)
    finally:
        other.close()
        await engine.dispose()


async def test_a_writers_lock_never_given_back_is_waited_for_a_bounded_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a stopped process holding the lock (but not SQLite's) must not stop this one's writes for
    # good: past the polling's limit the transaction begins without it; and a process that died
    # holding it wakes nobody (the kernel lets go of its flock): a sleeper looks again
    monkeypatch.setattr(sqlite_store, "BEGIN_POLL_SECONDS", 0.3)
    path = tmp_path / "g.db"
    engine = await _engine_with_table(path)
    stopped = os.open(str(path) + LOCK_SUFFIX, os.O_RDWR)
    try:
        fcntl.flock(stopped, fcntl.LOCK_EX)
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO t VALUES ('ours')"))
        async with engine.begin() as conn:  # and again
            await conn.execute(text("INSERT INTO t VALUES ('again')"))
        assert not _lock_is_free(path)
        monkeypatch.setattr(sqlite_store, "BEGIN_POLL_SECONDS", 60.0)

        async def write() -> None:
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO t VALUES ('after')"))

        task = asyncio.create_task(write())
        done, _ = await asyncio.wait({task}, timeout=0.3)
        assert not done
        os.close(stopped)  # as the process dies: its flock goes, with no wake-up
        stopped = -1
        await asyncio.wait_for(task, timeout=30)
        assert _lock_is_free(path)
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT v FROM t ORDER BY v"))).scalars().all()
        assert rows == ["after", "again", "ours"]
    finally:
        if stopped >= 0:
            os.close(stopped)
        await engine.dispose()


async def test_two_engines_of_one_process_on_one_file_write_in_turn(tmp_path: Path) -> None:
    path = tmp_path / "g.db"
    first = await _engine_with_table(path)
    second = create_engine(f"sqlite+aiosqlite:///{path}")
    try:

        async def writes(engine: Any, name: str) -> None:
            for i in range(30):
                async with engine.begin() as conn:
                    await conn.execute(text("INSERT INTO t VALUES (:v)"), {"v": f"{name}{i}"})

        await asyncio.wait_for(
            asyncio.gather(writes(first, "a"), writes(second, "b"), writes(first, "c")), 60
        )
        async with second.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar() == 90
        assert _lock_is_free(path)
    finally:
        await first.dispose()
        await second.dispose()


def test_only_the_locks_own_descriptor_holds_it(tmp_path: Path) -> None:
    # the futex word's mapping has a descriptor of its own: a duplicate of the lock's would
    # keep the flock held after the holder lets its descriptor go (a process that died, a
    # forked child's copy)
    path = tmp_path / "g.db"
    lock = WriteLock(str(path) + LOCK_SUFFIX)
    assert lock.acquire(1.0)
    assert not _lock_is_free(path)
    os.close(lock._fd)
    assert _lock_is_free(path)
