"""SQLite through aiosqlite, made cheaper to wait for and to talk to.

aiosqlite runs each call in its connection's own thread, and SQLAlchemy's adapter makes four
such trips per statement (create a cursor, execute, fetch the rows, close the cursor); each
trip hands the GIL between the event loop and that thread. Here a statement is one trip: the
cursor is made, run, read and closed in the thread (:class:`OneTripCursor`). In the city-day
run the trips were a fifth of the daemon's time holding the GIL, more than any one of its
tasks.

Waiting for another process's write lock: SQLite's busy handler sleeps 1, 2, 5 ... 25, 50,
100 ms between tries, so while another process (API beside daemon) writes in a steady stream,
a waiter wakes too late for the gaps between its transactions and waits whole batches out (in
the city-day run intake waited 12 ms a transaction on average, and submissions ran at a third
of what the CPU allowed). :func:`begin_immediate` polls every 0.1-1 ms instead, for a while.

Both reach into aiosqlite's thread through ``Connection._execute`` and ``_conn`` (private; in
the 0.20-0.22 releases pyproject.toml admits); a release without them gets the adapter's own
cursor and SQLite's busy handler, slower but the same.
"""

from __future__ import annotations

import sqlite3
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import aiosqlite
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT, await_only

#: how long a SQLite statement waits for another process's lock before "database is locked"
BUSY_TIMEOUT_MS = 30_000
#: how long BEGIN IMMEDIATE polls for another process's write lock before it waits in SQLite's
#: own busy handler (busy_timeout, 30 s more) and fails through the usual error path
BEGIN_POLL_SECONDS = 5.0

_REACHABLE = hasattr(aiosqlite.Connection, "_execute") and hasattr(aiosqlite.Connection, "_conn")


def engine_options() -> dict[str, Any]:
    """``create_async_engine`` options for a SQLite URL: the one-trip driver where it works."""
    return {"module": OneTripDBAPI(aiosqlite, sqlite3)} if _REACHABLE else {}


def begin_immediate(driver: Any) -> bool:
    """BEGIN IMMEDIATE on an aiosqlite connection, polling for the write lock (see the module
    doc); False if it did not begin (the lock stayed taken for BEGIN_POLL_SECONDS, an error, or
    a driver this cannot reach): the caller begins the usual way, which waits on and reports
    errors as every statement does."""
    run = getattr(driver, "_execute", None)
    raw = getattr(driver, "_conn", None)
    if run is None or raw is None:
        return False
    return bool(await_only(run(poll_begin, raw, None, _sent(driver))))


class _Trips:
    """Calls sent to a connection's thread, and finished there. A call whose awaiting task is
    cancelled still runs, later: a BEGIN among them opens a transaction after the pool took the
    connection back, so the connection is idle only when none is pending (see
    :meth:`OneTripConnection.rollback`)."""

    __slots__ = ("done", "sent")

    def __init__(self) -> None:
        self.sent = 0  # written in the event loop's thread only
        self.done = 0  # written in the connection's thread only

    def pending(self) -> bool:
        return self.sent != self.done


def _sent(driver: Any) -> _Trips:
    """The driver's trip counts, one more sent."""
    trips: _Trips | None = getattr(driver, "_gateway_trips", None)
    if trips is None:
        trips = driver._gateway_trips = _Trips()
    trips.sent += 1
    return trips


def poll_begin(
    conn: sqlite3.Connection, poll: float | None = None, trips: _Trips | None = None
) -> bool:
    """:func:`begin_immediate` in the connection's thread; ``poll`` seconds (default
    BEGIN_POLL_SECONDS) before it gives up. The busy timeout is left as it was. ``trips``: the
    count this call finishes."""
    try:
        return _poll_begin(conn, BEGIN_POLL_SECONDS if poll is None else poll)
    finally:
        if trips is not None:
            trips.done += 1


def _poll_begin(conn: sqlite3.Connection, limit: float) -> bool:
    conn.execute("PRAGMA busy_timeout=0")
    try:
        deadline = time.monotonic() + limit
        pause = 0.0001
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return True
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    return False
            time.sleep(pause)
            pause = min(pause * 1.5, 0.001)
    finally:
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")


def _run(
    conn: sqlite3.Connection, operation: str, parameters: Any, trips: _Trips
) -> tuple[Any, list[Any], int, int | None]:
    cursor = conn.cursor()
    try:
        if parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        return description, rows, cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()
        trips.done += 1


def _run_many(
    conn: sqlite3.Connection, operation: str, parameters: Sequence[Any], trips: _Trips
) -> tuple[int, int | None]:
    cursor = conn.cursor()
    try:
        cursor.executemany(operation, parameters)
        return cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()
        trips.done += 1


class OneTripCursor(AsyncAdapt_aiosqlite_cursor):
    """The adapter's cursor, each statement one trip to the connection's thread (execute, read
    every row, close); the rows are then served from memory, as the adapter's are."""

    __slots__ = ("_description", "_lastrowid", "_rowcount", "_size")

    def __init__(self, adapt_connection: AsyncAdapt_aiosqlite_connection) -> None:
        # no aiosqlite cursor made up front (the adapter's first trip)
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None
        self._size = 1

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> Any:
        return self._lastrowid

    @property
    def arraysize(self) -> int:
        return self._size

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._size = value

    async def _async_soft_close(self) -> None:
        return None  # nothing is open in the thread between statements

    def close(self) -> None:
        self._rows.clear()

    def execute(self, operation: Any, parameters: Any = None) -> Any:
        conn = self._connection
        try:
            found = await_only(conn._execute(_run, conn._conn, operation, parameters, _sent(conn)))
        except Exception as error:
            self._adapt_connection._handle_exception(error)
        self._description, rows, self._rowcount, self._lastrowid = found
        self._rows = deque(rows)
        return None

    def executemany(self, operation: Any, seq_of_parameters: Any) -> Any:
        conn = self._connection
        try:
            found = await_only(
                conn._execute(_run_many, conn._conn, operation, seq_of_parameters, _sent(conn))
            )
        except Exception as error:
            self._adapt_connection._handle_exception(error)
        self._rowcount, self._lastrowid = found
        self._description = None
        self._rows = deque()
        return None

    def nextset(self) -> None:
        return None  # one statement, one result set

    def setinputsizes(self, *inputsizes: Any) -> None:
        return None


class OneTripConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()
    _cursor_cls = OneTripCursor  # type: ignore[assignment]  # a subclass; typed as exact

    def rollback(self) -> None:
        """ROLLBACK, unless nothing is begun: the pool rolls back every connection given back
        to it, and after a COMMIT that was a trip to the driver's thread for nothing (a
        quarter of a one-statement transaction's trips). Whether a transaction is open is
        SQLite's own flag (``sqlite3_get_autocommit``), read only while no call of ours is
        pending in the connection's thread: a cancelled task's BEGIN still queued there would
        open a transaction after the flag was read, and the connection would go back to the
        pool inside it (the next BEGIN failing, the write lock held). The ROLLBACK queued
        behind such a call ends what it opens."""
        driver = self._connection
        raw = getattr(driver, "_conn", None)
        trips: _Trips | None = getattr(driver, "_gateway_trips", None)
        try:
            idle = (
                raw is not None
                and (trips is None or not trips.pending())
                and not raw.in_transaction
            )
        except (sqlite3.Error, ValueError):  # closed: the adapter's rollback says what it says then
            idle = False
        if not idle:
            super().rollback()


class OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """The adapter's DBAPI module, whose connections make :class:`OneTripCursor` cursors."""

    def connect(self, *arg: Any, **kw: Any) -> AsyncAdapt_aiosqlite_connection:
        connection = super().connect(*arg, **kw)
        connection.__class__ = OneTripConnection  # same slots: only the cursor class differs
        return connection


__all__ = [
    "BEGIN_POLL_SECONDS",
    "BUSY_TIMEOUT_MS",
    "begin_immediate",
    "engine_options",
    "poll_begin",
]
