"""Engine creation, schema migration, and the translation of database failures.

Every failure that says "the database is not there" rather than "this request is wrong" leaves
the engine as one exception, :class:`~gateway.errors.DatabaseUnavailable` (or
:class:`~gateway.errors.StorageFull` / :class:`~gateway.errors.StorageUnavailable` for SQLite's
own disk), whatever raised it: the driver on connect (refused, timed out, the server starting
up), a statement (connection killed, statement timeout, SQLite locked), or the pool (no
connection free in time). Callers catch one class; the API answers it with 503, the daemon
pauses on it. Each engine has an :class:`~gateway.outage.Outage` that logs the outage once.

PostgreSQL connections are pre-pinged at checkout (a connection the server killed while idle,
as after a failover, is replaced: one extra round trip, not an error) and recycled after
``recycle_seconds``; statements end after ``statement_timeout`` so a slow database holds a
pooled connection for a bounded time, and a request waits at most ``pool_timeout`` for one.
"""

from __future__ import annotations

import errno
import re
import sqlite3
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, event, inspect, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool
from sqlalchemy.util import await_only

from gateway.errors import (
    DatabaseUnavailable,
    InfrastructureError,
    StorageFull,
    StorageUnavailable,
)
from gateway.outage import Outage
from gateway.store import sqlite

if TYPE_CHECKING:  # alembic costs a daemon ~0.1 s of start-up: imported when it migrates
    from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"

#: seconds a client is told to wait (Retry-After) while the database is out
RETRY_AFTER = 2.0

# SQLSTATEs that mean the server, not the statement: connection exceptions (08), shutdown and
# start-up (57P01-57P03), too many connections / out of resources (53), statement or lock
# timeout (57014, 55P03)
_UNAVAILABLE_CLASSES = ("08", "53")
_UNAVAILABLE_STATES = {"57P01", "57P02", "57P03", "57014", "55P03"}

_OUTAGES: weakref.WeakKeyDictionary[Engine, Outage] = weakref.WeakKeyDictionary()


def outage_of(engine: AsyncEngine) -> Outage:
    """The database :class:`Outage` of ``engine`` (one per engine, made on first use)."""
    sync = engine.sync_engine
    found = _OUTAGES.get(sync)
    if found is None:
        found = _OUTAGES[sync] = Outage("database")
    return found


def unavailable(
    exc: BaseException, *, disconnect: bool = False, server: str | None = None
) -> InfrastructureError | None:
    """The infrastructure error ``exc`` (or an exception it was raised from) means, if any;
    ``server`` (host:port) is named when the server could not be reached."""
    if isinstance(exc, InfrastructureError):
        return exc
    seen: BaseException | None = exc
    while seen is not None:
        found = _one(seen, server)
        if found is not None:
            return found
        seen = seen.__cause__ or seen.__context__
    if disconnect:
        return DatabaseUnavailable(
            f"database connection lost: {_short(exc)}",
            retry_after=RETRY_AFTER,
            connection_lost=True,
        )
    return None


def _one(exc: BaseException, server: str | None = None) -> InfrastructureError | None:
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        if "database or disk is full" in text:
            return StorageFull(f"no space left for the database: {exc}", retry_after=60.0)
        if any(t in text for t in ("disk i/o error", "unable to open", "readonly database")):
            return StorageUnavailable(f"the database file cannot be written: {exc}")
        if "locked" in text or "busy" in text:
            return DatabaseUnavailable(f"database busy: {exc}", retry_after=RETRY_AFTER)
        return None
    state = getattr(exc, "sqlstate", None)
    if isinstance(state, str) and (
        state[:2] in _UNAVAILABLE_CLASSES or state in _UNAVAILABLE_STATES
    ):
        lost = state[:2] == "08" or state in {"57P01", "57P02"}
        return DatabaseUnavailable(
            f"database unavailable: {_short(exc)}", retry_after=RETRY_AFTER, connection_lost=lost
        )
    if isinstance(exc, sa_exc.TimeoutError):  # no pooled connection came free in time
        return DatabaseUnavailable(f"database too slow: {_short(exc)}", retry_after=RETRY_AFTER)
    if isinstance(exc, OSError | TimeoutError) and not isinstance(exc, FileNotFoundError):
        if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            return StorageFull(f"no space left for the database: {exc}", retry_after=60.0)
        at = f" at {server}" if server else ""
        return DatabaseUnavailable(
            f"database unreachable{at}: {_short(exc)}", retry_after=RETRY_AFTER
        )
    if (
        type(exc).__module__.startswith("asyncpg")
        and "ConnectionDoesNotExist" in type(exc).__name__
    ):
        return DatabaseUnavailable(
            f"database connection lost: {_short(exc)}",
            retry_after=RETRY_AFTER,
            connection_lost=True,
        )
    return None


def _short(exc: BaseException) -> str:
    # one line, bounded: the class and the driver's first line, never a statement or parameters
    first = (str(getattr(exc, "orig", None) or exc).splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}"[:300]


class _Pool(AsyncAdaptedQueuePool):
    """Waiting for a free connection too long is the database being too slow, not a bug."""

    def _do_get(self) -> Any:
        try:
            return super()._do_get()
        except sa_exc.TimeoutError as exc:
            raise DatabaseUnavailable(
                f"no database connection free within {self._timeout:g} s (database too slow)",
                retry_after=RETRY_AFTER,
            ) from exc


def failed(
    outage: Outage, exc: BaseException, *, disconnect: bool = False
) -> InfrastructureError | None:
    """What a statement's failure means (:func:`unavailable`), told to the engine's outage.
    A connection killed under a statement (failover, pg_terminate_backend) costs a retry; if
    the server is really gone, the reconnect fails and that starts the outage."""
    found = unavailable(exc, disconnect=disconnect)
    if found is not None and not getattr(found, "connection_lost", False):
        outage.failed(str(found))
    return found


def _watch(engine: AsyncEngine) -> None:
    """Translate failures to :class:`InfrastructureError` and keep the engine's Outage."""
    outage = outage_of(engine)
    sync = engine.sync_engine

    @event.listens_for(sync, "handle_error")
    def _on_error(ctx: ExceptionContext) -> BaseException | None:
        if ctx.is_pre_ping:  # the pool replaces the dead connection itself: not a failure
            return None
        return failed(outage, ctx.original_exception, disconnect=ctx.is_disconnect)

    @event.listens_for(sync, "do_connect")
    def _on_connect(dialect: Any, _rec: Any, cargs: Any, cparams: Any) -> Any:
        try:
            return dialect.connect(*cargs, **cparams)
        except Exception as exc:
            # the server's address, never the credentials: uvloop's refusals do not name it
            where = f"{cparams.get('host') or 'localhost'}:{cparams.get('port') or 5432}"
            found = unavailable(exc, server=where)
            if found is None:
                raise
            outage.failed(str(found))
            raise found from exc

    @event.listens_for(sync, "after_cursor_execute")
    def _on_success(*_args: Any) -> None:
        outage.ok()


def create_engine(
    url: str,
    *,
    echo: bool = False,
    pool_size: int = 10,
    max_overflow: int = 10,
    pool_timeout: float = 10.0,
    recycle_seconds: float = 1800.0,
    statement_timeout: float = 15.0,
    connect_timeout: float = 5.0,
    watch: bool = True,
) -> AsyncEngine:
    """An async engine for ``url``; SQLite gets WAL, a busy timeout and immediate transactions.

    PostgreSQL URLs may carry ``?search_path=`` (tables in one schema) and
    ``?statement_timeout=`` (milliseconds, overrides ``statement_timeout``). ``watch=False``:
    failures are not translated nor logged as an outage (a one-off probe, e.g. check-config).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        settings = {"statement_timeout": str(int(statement_timeout * 1000))}
        # ?search_path=name puts the gateway's tables in one schema (tests use one per test)
        for key in ("search_path", "statement_timeout"):
            value = parsed.query.get(key)
            if isinstance(value, str):
                parsed = parsed.difference_update_query([key])
                settings[key] = value
        engine = create_async_engine(
            parsed,
            echo=echo,
            poolclass=_Pool,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_timeout=pool_timeout,
            pool_recycle=recycle_seconds,
            pool_pre_ping=True,
            connect_args={"server_settings": settings, "timeout": connect_timeout},
        )
        # the pre-ping on every checkout of a pooled connection is the transaction's BEGIN
        # (asyncpg's adapter pings with three round trips of its own before that BEGIN)
        engine.sync_engine.dialect.do_ping = _ping  # type: ignore[method-assign]
        if watch:
            _watch(engine)
        return engine
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    # SQLite has one writer. One pooled connection serialises this process's transactions in an
    # async queue (no busy-wait); BEGIN IMMEDIATE makes other processes wait for the write lock
    # instead of failing on a read-to-write upgrade (gateway.store.sqlite: how they wait).
    engine = _sqlite_engine(
        url,
        echo,
        (
            "journal_mode=WAL",
            "synchronous=NORMAL",
            f"busy_timeout={sqlite.BUSY_TIMEOUT_MS}",
            "foreign_keys=ON",
        ),
    )
    if watch:
        _watch(engine)

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if not sqlite.begin_immediate(conn.connection.driver_connection):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _sqlite_engine(url: Any, echo: bool, pragmas: tuple[str, ...]) -> AsyncEngine:
    """A SQLite engine of one pooled connection (transactions queue for it in this process),
    the driver's own transaction handling off, ``pragmas`` set on every new connection."""
    engine = create_async_engine(
        url,
        echo=echo,
        poolclass=_Pool,
        pool_size=1,
        max_overflow=0,
        pool_timeout=120,
        **sqlite.engine_options(),
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        for pragma in pragmas:
            cur.execute(f"PRAGMA {pragma}")
        cur.close()

    return engine


def create_reader(engine: AsyncEngine, *, watch: bool = True) -> AsyncEngine:
    """An engine for work that only reads, beside ``engine`` (the one it reads the database of).

    On a SQLite file: its own connection, each transaction a plain (deferred) BEGIN with the
    connection ``query_only``. ``engine`` begins every transaction IMMEDIATE, taking the file's
    write lock, so a read there (a daemon's tick finding nothing to do) makes every other
    process's write wait, and queues behind this process's writes on its one connection; a
    WAL reader takes no lock and sees the last commit as of its first statement. A write
    through the reader fails ("attempt to write a readonly database"): what must stay true
    until a write (a read that decides what to write) belongs in ``engine``'s transaction.
    Anything else (PostgreSQL, where reads take no lock anyway; SQLite in memory): ``engine``
    itself."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return engine
    reader = _sqlite_engine(url, False, (f"busy_timeout={sqlite.BUSY_TIMEOUT_MS}", "query_only=ON"))
    if watch:
        _OUTAGES[reader.sync_engine] = outage_of(engine)  # one database, one outage to tell
        _watch(reader)

    @event.listens_for(reader.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")  # deferred: a read lock (a WAL snapshot) at first read

    return reader


def _ping(dbapi_connection: Any) -> bool:
    """Is this pooled PostgreSQL connection alive: the check is the transaction's own BEGIN.

    A connection is checked out to run statements, and asyncpg's adapter begins a transaction
    before its first one anyway; begun here, the BEGIN doubles as the ping (the adapter's own
    ping is three round trips: BEGIN, a statement, ROLLBACK). A failure is handed to the
    adapter as its ping does, so the pool sees a disconnect and replaces the connection. A
    connection checked out and given back unused is rolled back at check-in as any other."""
    begin = getattr(dbapi_connection, "_start_transaction", None)
    if (
        begin is None
        or getattr(dbapi_connection, "_transaction", True) is not None
        or getattr(dbapi_connection, "isolation_level", None) == "autocommit"
    ):
        # not the adapter this was written for, already in a transaction, or one that runs
        # without (autocommit: no BEGIN to check with): one round trip of its own
        try:
            await_only(dbapi_connection.driver_connection.execute("SELECT 1"))
        except Exception as error:
            dbapi_connection._handle_exception(error)
        return True
    await_only(begin())  # raises through the adapter's own error handling
    return True


def _alembic_config(connection: Connection) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def _upgrade(connection: Connection) -> None:
    from alembic import command

    if connection.dialect.name == "postgresql":  # a migration may take longer than a request
        connection.exec_driver_sql("SET LOCAL statement_timeout = 0")
    command.upgrade(_alembic_config(connection), "head")


def _revisions(connection: Connection) -> tuple[str | None, str | None]:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config(connection)).get_current_head()
    return MigrationContext.configure(connection).get_current_revision(), head


_REVISION = re.compile(
    r"""(?m)^(down_revision|revision)\s*(?::[^=]*)?=\s*["']?([\w-]+|None)["']?"""
)


def _newest_revision() -> str | None:
    """The one head of the migration files, read from their ``revision``/``down_revision``
    lines without loading alembic; None when that is not plain (alembic decides then)."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        found = dict((k, v) for k, v in _REVISION.findall(path.read_text(encoding="utf-8")))
        if "revision" not in found or "down_revision" not in found:
            return None
        revisions.add(found["revision"])
        parents.add(found["down_revision"])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 else None


def _pending(connection: Connection) -> bool:
    head = _newest_revision()
    if head is None:
        current, head = _revisions(connection)
        return bool(current != head)
    if not inspect(connection).has_table("alembic_version"):
        return True
    stamped = connection.execute(text("SELECT version_num FROM alembic_version")).scalars()
    return list(stamped) != [head]


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision (a no-op when it is there)."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)


async def revisions(engine: AsyncEngine) -> tuple[str | None, str | None]:
    """(the database's schema revision, None when empty; the newest this code knows)."""
    async with engine.connect() as conn:
        return await conn.run_sync(_revisions)


async def needs_migration(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        return await conn.run_sync(_pending)
