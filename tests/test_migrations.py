"""Migrations: one head, and the migrated schema is exactly what gateway/store/tables.py says."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text

from gateway.store.db import MIGRATIONS, _newest_revision, create_engine, migrate, needs_migration
from gateway.store.tables import metadata


def test_single_head() -> None:
    script = ScriptDirectory(str(MIGRATIONS))
    assert len(script.get_heads()) == 1, "two migrations claim the same parent: renumber one"
    # the start-up check reads the files without alembic: it must find the same head
    assert _newest_revision() == script.get_current_head()


async def test_migrated_schema_matches_tables(empty_db_url: str, tmp_path: Path) -> None:
    engine = create_engine(empty_db_url)
    try:
        assert await needs_migration(engine)
        await migrate(engine)
        await migrate(engine)  # idempotent
        assert not await needs_migration(engine)
        async with engine.begin() as conn:  # a schema one migration behind
            await conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
        assert await needs_migration(engine)
        async with engine.begin() as conn:
            head = _newest_revision()
            await conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": head})
        assert not await needs_migration(engine)

        def diff(conn: Connection) -> list[object]:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(ctx, metadata))

        async with engine.connect() as conn:
            assert await conn.run_sync(diff) == []
    finally:
        await engine.dispose()
