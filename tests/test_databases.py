"""The test databases themselves: a SQLite copy is at head, a reused PostgreSQL schema is empty."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from gateway.store.clients import create_client
from gateway.store.db import create_engine, needs_migration
from gateway.store.tables import api_clients
from tests.conftest import PG_URL
from tests.databases import SQLITE, SchemaPool, migrated_sqlite


@pytest.mark.postgres
async def test_a_reused_schema_is_empty() -> None:
    if not PG_URL:
        pytest.skip("PostgreSQL tests need GATEWAY_TEST_PG_URL")
    pool = SchemaPool(PG_URL)
    try:
        async with pool.lease() as first:
            engine = create_engine(first)
            async with engine.begin() as conn:
                await create_client(conn, name="left behind", centre="C01", ops=False)
            await engine.dispose()
        assert pool.reuse is True and len(pool.free) == 1
        async with pool.lease() as second:
            assert second == first  # the same schema, emptied
            engine = create_engine(second)
            async with engine.connect() as conn:
                left = (await conn.execute(select(func.count()).select_from(api_clients))).scalar()
            await engine.dispose()
        assert left == 0
    finally:
        pool.drop_all()
    assert pool.free == []


async def test_a_sqlite_copy_is_at_head(tmp_path: Path) -> None:
    target = tmp_path / "a" / "copy.db"
    migrated_sqlite(target)
    engine = create_engine(f"{SQLITE}{target}")
    try:
        assert not await needs_migration(engine)
    finally:
        await engine.dispose()
