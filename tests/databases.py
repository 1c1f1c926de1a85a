"""Test databases, made cheaply (a plain module; the fixtures are in conftest.py).

Creating and migrating a database for every test was most of the suite's set-up time: ~0.2 s of
CPU for SQLite and ~1.3 s for a PostgreSQL schema (CREATE, ten migrations, DROP ... CASCADE).
Each process (each xdist worker) migrates once and then:

- SQLite: copies the migrated file (about a millisecond);
- PostgreSQL: reuses its migrated schemas, emptied between tests (DELETE, sequences back to 1);
  a schema that cannot be emptied within 10 s is dropped instead and never reused.

Migrating itself is tested from empty databases (tests/test_migrations.py, ``empty_db_url``).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import asyncpg

from gateway.store.db import create_engine, migrate
from gateway.store.tables import metadata

SQLITE = "sqlite+aiosqlite:///"
TABLES = metadata.sorted_tables  # parents before children
_migrated: list[Path] = []


def _run_apart(coro: Coroutine[Any, Any, Any]) -> Any:
    # a thread of its own: the caller may be inside a running event loop
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _migrate(url: str) -> None:
    engine = create_engine(url)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()  # SQLite: the last connection folds the WAL into the file


def migrated_sqlite(target: Path) -> None:
    """Put a SQLite database migrated to head at ``target``."""
    if not _migrated:
        folder = tempfile.mkdtemp(prefix="gateway-migrated-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        template = Path(folder) / "head.db"
        _run_apart(_migrate(f"{SQLITE}{template}"))
        _migrated.append(template)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_migrated[0], target)


def in_schema(url: str, schema: str) -> str:
    """``url`` with the gateway's tables in ``schema`` (gateway.store.db reads search_path)."""
    return f"{url}{'&' if '?' in url else '?'}search_path={schema}"


async def _admin(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url.replace("+asyncpg", "", 1), timeout=30)


@contextlib.asynccontextmanager
async def empty_schema(url: str) -> AsyncIterator[str]:
    """A new empty schema for the block; yields its URL."""
    schema = f"t_{secrets.token_hex(6)}"
    admin = await _admin(url)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        try:
            yield in_schema(url, schema)
        finally:
            await admin.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await admin.close()


async def _rows(admin: asyncpg.Connection, schema: str) -> int:
    counts = " UNION ALL ".join(f'SELECT count(*) AS n FROM {schema}."{t.name}"' for t in TABLES)
    return int(await admin.fetchval(f"SELECT coalesce(sum(n), 0) FROM ({counts}) AS c"))


class SchemaPool:
    """Migrated schemas in one PostgreSQL database, reused by this process one test at a time."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.free: list[str] = []
        self.reuse: bool | None = None  # known once the first schema is migrated

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[str]:
        """A migrated, empty schema for the block; yields its URL."""
        admin = await _admin(self.url)
        try:
            if self.free:
                schema = self.free.pop()
            else:
                schema = f"t_{secrets.token_hex(6)}"
                await admin.execute(f"CREATE SCHEMA {schema}")
                await _migrate(in_schema(self.url, schema))
                if self.reuse is None:
                    # emptying would also delete rows a migration put there: then never reuse
                    self.reuse = not await _rows(admin, schema)
            reusable = False
            try:
                yield in_schema(self.url, schema)
                reusable = bool(self.reuse) and await self._empty(admin, schema)
            finally:
                if reusable:
                    self.free.append(schema)
                else:
                    await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await admin.close()

    async def _empty(self, admin: asyncpg.Connection, schema: str) -> bool:
        # DELETE, children first, and sequences back to 1: on tables this small it is far
        # cheaper than TRUNCATE, which makes new files for every table (~1.5 s on a busy machine)
        deletes = "".join(f'DELETE FROM {schema}."{t.name}";' for t in reversed(TABLES))
        sequences = await admin.fetch(
            "SELECT sequencename FROM pg_sequences WHERE schemaname = $1", schema
        )
        restarts = "".join(
            f"SELECT setval('{schema}.\"{s['sequencename']}\"', 1, false);" for s in sequences
        )
        try:
            async with admin.transaction():
                # a connection the test left open in a transaction would block the deletes
                await admin.execute("SET LOCAL lock_timeout = '10s'")
                await admin.execute(deletes + restarts)
        except asyncpg.PostgresError:
            return False
        return True

    def drop_all(self) -> None:
        """Drop the schemas this process kept (at the end of the session)."""
        if not self.free:
            return

        async def drop() -> None:
            admin = await _admin(self.url)
            try:
                for schema in self.free:
                    await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            finally:
                await admin.close()

        _run_apart(drop())
        self.free.clear()
