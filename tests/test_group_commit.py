"""Group commit: shared transactions, answers after commit, failures reach only their caller;
and intake's use of it when the same key arrives several times at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.intake import ApplicationIn, IntakeProblem, submit
from gateway.runtime import Runtime
from gateway.store.clients import Client
from gateway.store.db import create_engine
from gateway.store.group import GroupCommit
from gateway.store.tables import applications
from tests.conftest import application


async def _table_t(tmp_path: Path) -> AsyncEngine:
    """A SQLite database with one table ``t (v INTEGER PRIMARY KEY)``."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'g.db'}")
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (v INTEGER PRIMARY KEY)"))
    return engine


async def test_batch_shares_a_transaction_and_a_failure_reaches_only_its_caller(
    tmp_path: Path,
) -> None:
    engine = await _table_t(tmp_path)
    batches: list[list[int]] = []

    async def store(conn: AsyncConnection, items: list[int]) -> list[int]:
        batches.append(list(items))
        for v in items:
            if v < 0:
                raise ValueError(f"bad item {v}")
            await conn.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": v})
        return [v * 10 for v in items]

    group: GroupCommit[int, int] = GroupCommit(engine, store)
    try:
        results = await asyncio.gather(
            *(group.submit(v) for v in (1, 2, -3, 4)), return_exceptions=True
        )
        assert results[0] == 10 and results[1] == 20 and results[3] == 40
        assert isinstance(results[2], ValueError)
        assert len(batches[0]) == 4  # they arrived together and were tried together first
        async with engine.connect() as conn:
            stored = (await conn.execute(text("SELECT v FROM t ORDER BY v"))).scalars().all()
        assert stored == [1, 2, 4]  # the failed batch left nothing; the retries stored each
    finally:
        await group.aclose()
        await engine.dispose()


async def test_the_same_key_at_once_is_one_application(runtime: Runtime) -> None:
    client = Client("c-same", "t", "C01", False)
    body = ApplicationIn.model_validate(application())
    other = ApplicationIn.model_validate(application(form={"x": 1}))
    results = await asyncio.gather(
        *(submit(runtime, client, "same-key", body) for _ in range(5)),
        submit(runtime, client, "same-key", other),
        return_exceptions=True,
    )
    accepted = [r for r in results[:5] if not isinstance(r, BaseException)]
    assert len(accepted) == 5 and len({r.accepted.id for r in accepted}) == 1
    assert sum(not r.replayed for r in accepted) == 1
    assert isinstance(results[5], IntakeProblem) and results[5].status == 409
    async with runtime.engine.connect() as conn:
        n = (await conn.execute(select(func.count()).select_from(applications))).scalar_one()
    assert n == 1


async def test_a_connection_killed_under_a_batch_costs_a_retry_each_time(tmp_path: Path) -> None:
    # what pg_terminate_backend or a failover does to a batch before its COMMIT: nothing was
    # stored, so the batch is tried again on a fresh connection, as often as that happens up
    # to LOST_CONNECTION_ATTEMPTS in a row; a real error is not retried
    from gateway.errors import DatabaseUnavailable
    from gateway.store.group import LOST_CONNECTION_ATTEMPTS

    engine = await _table_t(tmp_path)
    kills = {"left": 3}
    attempts: list[list[int]] = []

    async def store(conn: AsyncConnection, items: list[int]) -> list[int]:
        attempts.append(list(items))
        for v in items:
            await conn.execute(text("INSERT INTO t (v) VALUES (:v)"), {"v": v})
        if kills["left"]:
            kills["left"] -= 1
            raise DatabaseUnavailable("connection killed", connection_lost=True)
        return items

    group: GroupCommit[int, int] = GroupCommit(engine, store)
    try:
        assert list(await asyncio.gather(group.submit(1), group.submit(2))) == [1, 2]
        assert attempts == [[1, 2]] * 4  # three kills, three retries, one commit
        kills["left"] = LOST_CONNECTION_ATTEMPTS  # a server that kills every connection
        attempts.clear()
        failed = await asyncio.gather(group.submit(3), return_exceptions=True)
        assert isinstance(failed[0], DatabaseUnavailable) and failed[0].connection_lost
        assert len(attempts) == LOST_CONNECTION_ATTEMPTS
        async with engine.connect() as conn:
            stored = (await conn.execute(text("SELECT v FROM t ORDER BY v"))).scalars().all()
        assert stored == [1, 2]  # once each; nothing of the killed attempts
    finally:
        await group.aclose()
        await engine.dispose()


class _EndLost:
    """An engine whose transactions' end (COMMIT, or ROLLBACK after an error) dies with the
    connection the first ``times`` times: what a kill at that moment looks like."""

    def __init__(self, engine: Any, times: int) -> None:
        self.engine, self.times = engine, times

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        from gateway.errors import DatabaseUnavailable

        async with self.engine.connect() as conn:
            tx = await conn.begin()
            try:
                yield conn
            except BaseException:
                await tx.rollback()
                if self.times:
                    self.times -= 1
                    raise DatabaseUnavailable("lost at ROLLBACK", connection_lost=True) from None
                raise
            if self.times:
                self.times -= 1
                await tx.rollback()  # nothing stored (as if COMMIT never arrived)
                raise DatabaseUnavailable("lost at COMMIT", connection_lost=True)
            await tx.commit()


async def test_a_connection_lost_at_commit_is_retried_only_for_an_idempotent_store(
    tmp_path: Path,
) -> None:
    from gateway.errors import DatabaseUnavailable

    engine = await _table_t(tmp_path)
    killed = {"left": 0}

    async def store(conn: AsyncConnection, items: list[int]) -> list[int]:
        for v in items:
            await conn.execute(text("INSERT OR IGNORE INTO t (v) VALUES (:v)"), {"v": v})
        if killed["left"]:  # a statement on a killed connection: its ROLLBACK dies too
            killed["left"] -= 1
            raise DatabaseUnavailable("statement killed", connection_lost=True)
        return items

    plain: GroupCommit[int, int] = GroupCommit(cast(Any, _EndLost(engine, 1)), store)
    again: GroupCommit[int, int] = GroupCommit(
        cast(Any, _EndLost(engine, 1)), store, idempotent=True
    )
    try:
        # COMMIT lost: stored or not is unknown, so only the idempotent store runs again
        failed = await asyncio.gather(plain.submit(1), return_exceptions=True)
        assert isinstance(failed[0], DatabaseUnavailable) and str(failed[0]) == "lost at COMMIT"
        assert await again.submit(2) == 2
        # a killed statement whose ROLLBACK died as well: nothing was stored, retried anyway
        plain_after: GroupCommit[int, int] = GroupCommit(cast(Any, _EndLost(engine, 1)), store)
        killed["left"] = 1
        assert await plain_after.submit(3) == 3
        await plain_after.aclose()
        async with engine.connect() as conn:
            stored = (await conn.execute(text("SELECT v FROM t ORDER BY v"))).scalars().all()
        assert stored == [2, 3]
    finally:
        await plain.aclose()
        await again.aclose()
        await engine.dispose()


async def test_a_lingering_batch_takes_items_that_come_after_its_first(tmp_path: Path) -> None:
    """With ``linger`` a batch begun by an item that came alone waits for more (here: until
    it is full) instead of paying a transaction for that one item."""
    engine = await _table_t(tmp_path)
    batches: list[list[int]] = []

    async def store(conn: AsyncConnection, items: list[int]) -> list[int]:
        batches.append(list(items))
        return items

    group: GroupCommit[int, int] = GroupCommit(engine, store, max_batch=3, linger=60.0)
    try:
        first = asyncio.ensure_future(group.submit(1))
        while group._gathering is None:  # the loop took the first item and lingers
            await asyncio.sleep(0)
        later = [asyncio.ensure_future(group.submit(v)) for v in (2, 3)]
        assert await asyncio.gather(first, *later) == [1, 2, 3]  # full: no 60 s wait
        assert batches == [[1, 2, 3]]
    finally:
        await group.aclose()
        await engine.dispose()


async def test_callbacks_linger_for_company(runtime: Runtime) -> None:
    from gateway.callbacks import LINGER_SECONDS, _group

    assert LINGER_SECONDS > 0 and _group(runtime).linger == LINGER_SECONDS
