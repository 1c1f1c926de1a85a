"""Statements sent straight through the database driver on SQLite, inside the caller's
SQLAlchemy transaction (the hot paths: the intake group commit; the dispatch path's status
writes, events and outbox fan-out in :func:`gateway.store.cases.write_many`).

SQLAlchemy builds an execution context around each statement (parameters processed, result
metadata), and its asyncio cursor adapter handed each statement to aiosqlite's thread three or
four times: 65-90 us of event-loop CPU per statement on the benchmark machine, against 10-12 us
for aiosqlite's own ``executemany`` or ``execute_fetchall`` (one hand-off). Every SQLite
statement is one hand-off now (:mod:`gateway.store.sqlite`); what this path still saves on the
hot path is the execution context. The statements here are SQLAlchemy
constructs compiled once per dialect; every value goes through its column's or parameter's own
bind processor and every result value through its result processor (the dialect's JSON
serialiser, naive-UTC datetimes, the applicant sealed with the engine's PII cipher), so what is
stored and read is what ``conn.execute`` would store and read. A list is one JSON-array
parameter read with ``json_each`` (one statement text whatever its length). Errors are
translated by the function the engine's ``handle_error`` hook uses
(:func:`gateway.store.db.failed`: a failure of the database itself also marks its outage).

Other engines go through SQLAlchemy: PostgreSQL gets its list as one array (``= ANY``).
"""

from __future__ import annotations

import datetime as dt
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    Dialect,
    Executable,
    Row,
    Table,
    bindparam,
    func,
    insert,
)
from sqlalchemy import select as sa_select
from sqlalchemy.engine.result import IteratorResult, SimpleResultMetaData
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.db import failed, outage_of
from gateway.store.lists import OneOf, PerEngine

Processor = Callable[[Any], Any] | None
#: SQL, the parameters' names and bind processors in order, the result columns' processors,
#: the values of parameters the statement holds itself (``.values(state="leased")``)
_Compiled = tuple[str, tuple[tuple[str, Processor], ...], tuple[Processor, ...], Mapping[str, Any]]

_COMPILED: weakref.WeakKeyDictionary[Dialect, dict[object, _Compiled]] = weakref.WeakKeyDictionary()


def _compile(dialect: Dialect, key: object, stmt: Any, keys: Sequence[str] | None) -> _Compiled:
    found = _COMPILED.setdefault(dialect, {}).get(key)
    if found is not None:
        return found
    compiled = stmt.compile(dialect=dialect, column_keys=None if keys is None else list(keys))
    order = compiled.positiontup or []
    if keys is not None and sorted(order) != sorted(keys):
        raise ValueError("the rows' columns are not the statement's (a column default?)")
    binds = tuple(
        (name, compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect))
        for name in order
    )
    results = tuple(
        col.type.dialect_impl(dialect).result_processor(dialect, None)
        for col in getattr(stmt, "exported_columns", ())
    )
    fixed = {}
    for name in order:
        bind = compiled.binds[name]
        if bind.callable is not None:
            raise ValueError(f"parameter {name} has a value computed at run time")
        if not bind.required:
            fixed[name] = bind.value
    found = _COMPILED[dialect][key] = (compiled.string, binds, results, fixed)
    return found


async def _send(conn: AsyncConnection, call: Callable[[Any], Awaitable[Any]]) -> Any:
    driver = (await conn.get_raw_connection()).driver_connection
    assert driver is not None
    outage = outage_of(conn.engine)
    try:
        done = await call(driver)
    except Exception as exc:
        found = failed(outage, exc)
        if found is None:
            raise
        raise found from exc
    outage.ok()
    return done


def _values(binds: tuple[tuple[str, Processor], ...], params: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple([params[n] if p is None else p(params[n]) for n, p in binds])


async def insert_many(conn: AsyncConnection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """``conn.execute(insert(table), rows)``: every row has the same keys (the columns set)."""
    if not rows:
        return
    if conn.dialect.name != "sqlite":
        await conn.execute(insert(table), list(rows))
        return
    keys = tuple(rows[0])
    sql, binds, _r, _f = _compile(conn.dialect, (table.name, keys), insert(table), keys)
    columns = [_column([row[name] for row in rows], process) for name, process in binds]
    values = list(zip(*columns, strict=True))
    await _send(conn, lambda driver: driver.executemany(sql, values))


async def execute_many(
    conn: AsyncConnection, stmt: Executable, rows: Sequence[Mapping[str, Any]]
) -> None:
    """``conn.execute(stmt, rows)`` for a prebuilt statement whose every parameter is bound by
    name (no column defaults, no expanding parameters; each row gives them all): one
    ``executemany``. The statement object is its cache key: build it once."""
    if not rows:
        return
    if conn.dialect.name != "sqlite":
        await conn.execute(stmt, list(rows))
        return
    sql, binds, _r, fixed = _compile(conn.dialect, stmt, stmt, None)
    if fixed:
        rows = [{**fixed, **row} for row in rows]
    columns = [_column([row[name] for row in rows], process) for name, process in binds]
    values = list(zip(*columns, strict=True))
    await _send(conn, lambda driver: driver.executemany(sql, values))


def _column(values: list[Any], process: Processor) -> list[Any]:
    if process is None:
        return values
    if isinstance(values[0], dt.date):  # datetimes too: a batch's rows share their timestamps
        memo: dict[Any, Any] = {}
        return [memo[v] if v in memo else memo.setdefault(v, process(v)) for v in values]
    return [process(v) for v in values]


def _json_each(column: ColumnElement[Any], name: str) -> ColumnElement[bool]:
    listed = func.json_each(bindparam(name, type_=JSON)).table_valued("value")
    return column.in_(sa_select(listed.c.value))


class Query:
    """A statement returning rows, built once per form by ``build(one_of)`` (see
    :class:`~gateway.store.lists.PerEngine`; on SQLite a list is a JSON array read with
    ``json_each``). ``await q.all(conn, params)``: the rows as tuples, in the statement's column
    order. The statement must not need SQLAlchemy at run time (no column defaults, no
    expanding parameters)."""

    def __init__(self, build: Callable[[OneOf], Executable]) -> None:
        self._engines = PerEngine(build)
        self._sqlite = build(_json_each)
        self._meta: weakref.WeakKeyDictionary[Dialect, SimpleResultMetaData] = (
            weakref.WeakKeyDictionary()
        )

    async def all(self, conn: AsyncConnection, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        if conn.dialect.name != "sqlite":
            result = await conn.execute(self._engines.for_(conn), dict(params))
            return [tuple(row) for row in result.all()]
        sql, binds, results, fixed = _compile(conn.dialect, self, self._sqlite, None)
        values = _values(binds, {**fixed, **params} if fixed else params)
        rows = await _send(conn, lambda driver: driver.execute_fetchall(sql, values))
        return [
            tuple([v if p is None else p(v) for v, p in zip(row, results, strict=True)])
            for row in rows
        ]

    async def rows(self, conn: AsyncConnection, params: Mapping[str, Any]) -> list[Row[Any]]:
        """The rows as SQLAlchemy's ``Row`` (by name, ``_mapping``), as ``conn.execute(...)
        .all()`` gives them; each value converted by its column's result processor."""
        if conn.dialect.name != "sqlite":
            return list((await conn.execute(self._engines.for_(conn), dict(params))).all())
        sql, binds, results, fixed = _compile(conn.dialect, self, self._sqlite, None)
        values = _values(binds, {**fixed, **params} if fixed else params)
        found = await _send(conn, lambda driver: driver.execute_fetchall(sql, values))
        if not found:
            return []
        meta = self._meta.get(conn.dialect)
        if meta is None:  # per dialect, as the processors are (a PII cipher is an engine's)
            names = [c.key for c in getattr(self._sqlite, "exported_columns", ())]
            processors: list[Any] = list(results)
            meta = self._meta[conn.dialect] = SimpleResultMetaData(names, _processors=processors)
        # the processors run in SQLAlchemy's compiled row code, as for conn.execute
        result: IteratorResult[Any] = IteratorResult(meta, iter(found))
        return list(result.all())

    async def run(self, conn: AsyncConnection, params: Mapping[str, Any]) -> None:
        """The statement for its effect (an INSERT or UPDATE without RETURNING)."""
        if conn.dialect.name != "sqlite":
            await conn.execute(self._engines.for_(conn), dict(params))
            return
        sql, binds, _r, fixed = _compile(conn.dialect, self, self._sqlite, None)
        values = _values(binds, {**fixed, **params} if fixed else params)
        await _send(conn, lambda driver: driver.execute_fetchall(sql, values))
