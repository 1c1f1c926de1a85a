"""Statements sent straight through asyncpg on PostgreSQL, inside the caller's SQLAlchemy
transaction (the dispatch path: the claim, the recorder's fence and lock, the status writes
with their events and outbox fan-out).

:mod:`gateway.store.driver` does this for SQLite. On PostgreSQL SQLAlchemy's execution of a
prebuilt statement still builds an execution context per call: the parameters processed one by
one (for an array parameter, every item through the item type's processor), the asyncpg cursor
adapter entered through a greenlet, the result wrapped: a large share of the dispatch store
path's CPU (docs/performance.md, issue 16, session 8). Here a statement is a SQLAlchemy
construct compiled once per dialect (``$n`` parameters with the dialect's casts, as SQLAlchemy
sends them); every value goes through its parameter's own bind processor (an array's items
through the item type's, a batch's shared datetimes converted once) and every result value
through its column's result processor (naive-UTC datetimes, the applicant opened with the
engine's PII cipher); JSON is decoded by the codec SQLAlchemy's dialect set on the connection.
So what is stored and read is what ``conn.execute`` would store and read
(tests/test_store_write_path.py compares the rows). asyncpg prepares each text once per
connection (its statement cache). Errors are translated as the engine's ``handle_error`` hook
does (:func:`gateway.store.db.failed`).
"""

from __future__ import annotations

import datetime as dt
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import ARRAY, Dialect, Executable, Row
from sqlalchemy.engine.result import IteratorResult, SimpleResultMetaData
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.db import failed, outage_of

Processor = Callable[[Any], Any] | None


class _Compiled:
    __slots__ = ("binds", "meta", "sql")

    def __init__(
        self,
        sql: str,
        binds: tuple[tuple[str, Processor, bool, Any], ...],
        meta: SimpleResultMetaData | None,
    ) -> None:
        self.sql = sql
        #: per ``$n`` in order: the parameter's name, its processor (an array's: its items'),
        #: whether it is an array, and the value the statement holds itself (or ``_NONE``)
        self.binds = binds
        self.meta = meta


_NONE = object()


def _compile(dialect: Dialect, stmt: Any) -> _Compiled:
    compiled = stmt.compile(dialect=dialect)
    if "__[POSTCOMPILE_" in compiled.string:
        raise ValueError("an expanding parameter: give a list as one array (= ANY)")
    binds = []
    for name in compiled.positiontup or ():
        bind = compiled.binds[name]
        if bind.callable is not None:
            raise ValueError(f"parameter {name} has a value computed at run time")
        kind = bind.type.dialect_impl(dialect)
        array = isinstance(kind, ARRAY)
        if array:
            # items one by one with memo for shared values (below), not ARRAY's generic walk
            item = kind.item_type.dialect_impl(dialect)
            process = item.bind_processor(dialect)
        else:
            process = kind.bind_processor(dialect)
        binds.append((name, process, array, _NONE if bind.required else bind.value))
    columns = list(getattr(stmt, "exported_columns", ()))
    meta = None
    if columns:
        processors: list[Any] = [
            c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns
        ]
        meta = SimpleResultMetaData([c.key for c in columns], _processors=processors)
    return _Compiled(compiled.string, tuple(binds), meta)


async def _send(conn: AsyncConnection, call: Callable[[Any], Awaitable[Any]]) -> Any:
    """``call(asyncpg connection)``; a failure translated as the engine's ``handle_error`` hook
    translates one. A statement on a connection that closed under it, or whose protocol broke
    (a backend terminated mid-statement: asyncpg's ``InternalClientError``, "another operation
    is in progress", while the server's goodbye is being read) lost its connection: one retry
    (gateway.store.group), not a bug. A broken one is closed here, so that the pool drops it."""
    raw = await conn.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    outage = outage_of(conn.engine)
    try:
        await _begun(raw.dbapi_connection)  # in the caller's transaction, begun if not yet
        done = await call(driver)
    except Exception as exc:
        broken = any(c.__name__ == "InternalClientError" for c in type(exc).__mro__)
        lost = broken or driver.is_closed()
        if lost and not driver.is_closed():
            driver.terminate()
        found = failed(outage, exc, disconnect=lost)
        if found is None:
            raise
        raise found from exc
    outage.ok()
    return done


async def _begun(adapter: Any) -> None:
    """Inside the transaction asyncpg's adapter would run a statement of its own in: it
    begins one lazily, before its first statement (unless autocommit). The pool's ping begins
    it at checkout (gateway.store.db), but a new pooled connection is not pinged: without
    this, a statement sent straight through asyncpg as the first of a transaction on a new
    connection ran on its own, committed at once (its row locks gone with it)."""
    if getattr(adapter, "_transaction", True) is None and (
        getattr(adapter, "isolation_level", None) != "autocommit"
    ):
        await adapter._start_transaction()


def _items(values: Sequence[Any], process: Processor) -> list[Any]:
    if process is None:
        return list(values)
    if values and isinstance(values[0], dt.date):  # a batch's rows share their timestamps
        memo: dict[Any, Any] = {}
        return [memo[v] if v in memo else memo.setdefault(v, process(v)) for v in values]
    return [process(v) for v in values]


class Statement:
    """A prebuilt statement (no column defaults, every parameter bound by name; a list is an
    array parameter, e.g. ``= ANY``), compiled once per dialect. PostgreSQL (asyncpg) only."""

    def __init__(self, stmt: Executable) -> None:
        self.stmt = stmt
        self._compiled: weakref.WeakKeyDictionary[Dialect, _Compiled] = weakref.WeakKeyDictionary()

    def _for(self, conn: AsyncConnection) -> _Compiled:
        found = self._compiled.get(conn.dialect)
        if found is None:  # per dialect: a PII cipher is an engine's
            found = self._compiled[conn.dialect] = _compile(conn.dialect, self.stmt)
        return found

    @staticmethod
    def _values(compiled: _Compiled, params: Mapping[str, Any]) -> list[Any]:
        out = []
        for name, process, array, fixed in compiled.binds:
            value = params[name] if fixed is _NONE else fixed
            if array:
                out.append(None if value is None else _items(value, process))
            else:
                out.append(value if process is None else process(value))
        return out

    async def fetch(self, conn: AsyncConnection, params: Mapping[str, Any]) -> list[Any]:
        """The rows as asyncpg gives them (no result processing: for plain columns)."""
        c = self._for(conn)
        values = self._values(c, params)
        found: list[Any] = await _send(conn, lambda driver: driver.fetch(c.sql, *values))
        return found

    async def rows(self, conn: AsyncConnection, params: Mapping[str, Any]) -> list[Row[Any]]:
        """The rows as SQLAlchemy's ``Row`` (by name, ``_mapping``), as ``conn.execute(...)
        .all()`` gives them; each value converted by its column's result processor."""
        c = self._for(conn)
        found = await self.fetch(conn, params)
        if not found:
            return []
        assert c.meta is not None
        result: IteratorResult[Any] = IteratorResult(c.meta, iter(found))
        return list(result.all())

    async def run(self, conn: AsyncConnection, params: Mapping[str, Any]) -> None:
        """The statement for its effect."""
        c = self._for(conn)
        values = self._values(c, params)
        await _send(conn, lambda driver: driver.execute(c.sql, *values))


__all__ = ["Statement"]
