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

Our own writers (every process of the gateway on the same file) also queue on a lock of their
own first (:class:`WriteLock`: ``flock`` on ``<database>-writers``, taken in the connection's
thread just before BEGIN IMMEDIATE and given back when the transaction ends): the kernel wakes
a waiter the moment the holder lets go, so the waiter neither sleeps past the gap nor spends
CPU trying (the polls were ~6 % of the API process's CPU in a city day, ~110 us a try, each
waking the thread and taking the GIL back). BEGIN IMMEDIATE and its polling stay behind it for
writers that do not take it (the sqlite3 shell, a backup tool), and a wait for our own lock is
bounded as the polling was: past BEGIN_POLL_SECONDS the transaction begins without it, in
SQLite's busy handler as before.

Both reach into aiosqlite's thread through ``Connection._execute`` and ``_conn`` (private; in
the 0.20-0.22 releases pyproject.toml admits); a release without them gets the adapter's own
cursor and SQLite's busy handler, slower but the same.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import mmap
import os
import platform
import sqlite3
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
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
    hold = _hold_of(driver)
    if hold is None:
        hold = driver._gateway_hold = _Hold()
    return bool(await_only(run(poll_begin, raw, None, _sent(driver), hold)))


#: the side file our writers lock, beside the database (as SQLite's ``-wal`` and ``-shm``)
LOCK_SUFFIX = "-writers"


class WriteLock:
    """This process's share of the gateway's writers' lock on one database file: ``flock`` on
    ``<database>-writers`` across processes, one holder at a time within this process.

    A connection's thread takes it (:meth:`acquire`) before BEGIN IMMEDIATE and gives it back
    (:meth:`release`) when the transaction has ended. Uncontended, taking it is one ``flock``
    call. A waiter sleeps on a futex in the file's first word (a shared mapping), which every
    release bumps and wakes: the kernel wakes it as the holder lets go, in its own thread, with
    no hand-over through another thread. The lock itself is the ``flock`` (the kernel lets go
    of it if its holder dies, which wakes nobody: a sleeper looks again every
    :data:`RECHECK_SECONDS`), and a waiter gives up after ``timeout``, so a holder that never
    lets go (a stopped process) costs a bounded wait, as SQLite's own lock did."""

    #: how long a waiter sleeps at most before it tries again without being woken
    RECHECK_SECONDS = 0.02

    def __init__(self, path: str) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_size < mmap.PAGESIZE:
                os.ftruncate(fd, mmap.PAGESIZE)  # never shrunk: a sleeper's word stays mapped
            # mapped through a descriptor of its own: mmap keeps a duplicate of it, and a
            # duplicate of ``fd`` would hold the flock (after a fork too) wherever it lives on
            mapped = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            try:
                self._map = mmap.mmap(mapped, mmap.PAGESIZE, mmap.MAP_SHARED)
            finally:
                os.close(mapped)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._word = ctypes.c_uint32.from_buffer(self._map)  # releases so far (wraps)
        self._address = ctypes.addressof(self._word)
        self._local = threading.Lock()  # this process's one holder

    def acquire(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        if not self._local.acquire(timeout=max(timeout, 0.0)):
            return False
        try:
            while True:
                seen = self._word.value  # before trying: a release after it changes it
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    pass
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                _futex_wait(self._address, seen, min(left, self.RECHECK_SECONDS))
        except BaseException:
            self._local.release()
            raise
        self._local.release()
        return False

    def release(self) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._local.release()
        self._word.value += 1  # after letting go: a waiter that saw the old value is woken
        _futex_wake(self._address)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


#: futex(2)'s number where it is known (Linux); elsewhere there is no writers' lock
_SYS_FUTEX = (
    {"x86_64": 202, "aarch64": 98}.get(platform.machine()) if sys.platform == "linux" else None
)
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1
_WAKE_ALL = 2**31 - 1
_syscall: Any = None
if _SYS_FUTEX is not None:
    try:
        _syscall = ctypes.CDLL(None, use_errno=True).syscall  # called without the GIL
        _syscall.restype = ctypes.c_long
    except (OSError, AttributeError):
        _syscall = None


def _futex_wait(address: int, expected: int, seconds: float) -> None:
    """Sleep while the word at ``address`` is ``expected``, at most ``seconds`` (woken by
    :func:`_futex_wake`, a signal, or a word already changed: the caller looks again)."""
    sec = int(seconds)
    pause = _Timespec(sec, int((seconds - sec) * 1e9))
    _syscall(
        _SYS_FUTEX,
        ctypes.c_void_p(address),
        _FUTEX_WAIT,
        ctypes.c_uint32(expected),
        ctypes.byref(pause),
        None,
        0,
    )


def _futex_wake(address: int) -> None:
    _syscall(_SYS_FUTEX, ctypes.c_void_p(address), _FUTEX_WAKE, _WAKE_ALL, None, None, 0)


_LOCKS: dict[str, WriteLock] = {}
_LOCKS_MADE = threading.Lock()


def _forget_locks() -> None:
    """In a forked child: the parent's locks are the parent's (its file descriptions, which a
    child's copy would keep held past the parent's death); the child opens its own."""
    global _LOCKS_MADE
    _LOCKS_MADE = threading.Lock()
    for lock in _LOCKS.values():
        with contextlib.suppress(OSError):
            os.close(lock._fd)
    _LOCKS.clear()


os.register_at_fork(after_in_child=_forget_locks)


def write_lock(database: str) -> WriteLock | None:
    """The process's :class:`WriteLock` for a database file (None for one in memory, where
    the side file cannot be opened, or off Linux: then only SQLite's own lock and the
    polling)."""
    if not database or _syscall is None:
        return None
    path = os.path.realpath(database) + LOCK_SUFFIX
    with _LOCKS_MADE:
        lock = _LOCKS.get(path)
        if lock is None:
            try:
                lock = _LOCKS[path] = WriteLock(path)
            except (OSError, ValueError):
                return None
        return lock


class _Hold:
    """One connection's part in the writers' lock: which lock (found in the connection's
    thread at its first BEGIN), and whether this connection holds it now."""

    __slots__ = ("held", "lock", "looked")

    def __init__(self) -> None:
        self.lock: WriteLock | None = None
        self.looked = False
        self.held = False

    def take(self, conn: sqlite3.Connection, timeout: float) -> None:
        """In the connection's thread, before BEGIN IMMEDIATE."""
        if self.held:  # still ours (a transaction that ended where nothing noticed)
            return
        if not self.looked:
            self.looked = True
            main = [row[2] for row in conn.execute("PRAGMA database_list") if row[1] == "main"]
            self.lock = write_lock(main[0] if main else "")
        if self.lock is not None and self.lock.acquire(timeout):
            self.held = True

    def end(self, conn: sqlite3.Connection | None) -> None:
        """Give the lock back unless ``conn`` is still inside a transaction (None: closed).
        In the connection's thread, or where no call is pending in it."""
        if self.held and (conn is None or not _in_transaction(conn)):
            self.held = False
            assert self.lock is not None
            self.lock.release()


def _in_transaction(conn: sqlite3.Connection) -> bool:
    try:
        return conn.in_transaction
    except (sqlite3.Error, ValueError):  # closed: no transaction
        return False


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
    conn: sqlite3.Connection,
    poll: float | None = None,
    trips: _Trips | None = None,
    hold: _Hold | None = None,
) -> bool:
    """:func:`begin_immediate` in the connection's thread; ``poll`` seconds (default
    BEGIN_POLL_SECONDS) before it gives up. The busy timeout is left as it was. ``trips``: the
    count this call finishes. ``hold``: the connection's part in the writers' lock, taken
    first (waiting at most ``poll`` seconds for it) and kept while the transaction is open."""
    limit = BEGIN_POLL_SECONDS if poll is None else poll
    try:
        if hold is not None:
            started = time.monotonic()
            hold.take(conn, limit)
            limit = max(0.0, limit - (time.monotonic() - started))
        return _poll_begin(conn, limit)
    finally:
        if hold is not None:
            hold.end(conn)  # not begun: not kept
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
    conn: sqlite3.Connection, operation: str, parameters: Any, trips: _Trips, hold: _Hold | None
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
        if hold is not None:
            hold.end(conn)  # a COMMIT or ROLLBACK sent as a statement, an error's rollback
        trips.done += 1


def _run_many(
    conn: sqlite3.Connection,
    operation: str,
    parameters: Sequence[Any],
    trips: _Trips,
    hold: _Hold | None,
) -> tuple[int, int | None]:
    cursor = conn.cursor()
    try:
        cursor.executemany(operation, parameters)
        return cursor.rowcount, cursor.lastrowid
    finally:
        cursor.close()
        if hold is not None:
            hold.end(conn)
        trips.done += 1


def commit(conn: sqlite3.Connection, trips: _Trips, hold: _Hold | None) -> None:
    """COMMIT in the connection's thread, the writers' lock given back after it."""
    _end(conn.commit, conn, trips, hold)


def rollback(conn: sqlite3.Connection, trips: _Trips, hold: _Hold | None) -> None:
    """ROLLBACK in the connection's thread, the writers' lock given back after it."""
    _end(conn.rollback, conn, trips, hold)


def _end(
    how: Callable[[], None], conn: sqlite3.Connection, trips: _Trips, hold: _Hold | None
) -> None:
    try:
        how()
    finally:
        if hold is not None:
            hold.end(conn)
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
            found = await_only(
                conn._execute(_run, conn._conn, operation, parameters, _sent(conn), _hold_of(conn))
            )
        except Exception as error:
            self._adapt_connection._handle_exception(error)
        self._description, rows, self._rowcount, self._lastrowid = found
        self._rows = deque(rows)
        return None

    def executemany(self, operation: Any, seq_of_parameters: Any) -> Any:
        conn = self._connection
        try:
            found = await_only(
                conn._execute(
                    _run_many,
                    conn._conn,
                    operation,
                    seq_of_parameters,
                    _sent(conn),
                    _hold_of(conn),
                )
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
        hold = _hold_of(driver)
        if idle:
            if hold is not None:
                hold.end(raw)  # nothing pending in the thread: safe from here
            return
        if not self._end(committing=False):
            super().rollback()

    def commit(self) -> None:
        """COMMIT, the writers' lock given back in the same trip."""
        if not self._end(committing=True):
            super().commit()

    def _end(self, *, committing: bool) -> bool:
        """COMMIT or ROLLBACK with the writers' lock given back in the same trip; False where
        the connection takes no part in the lock (the adapter's own call then)."""
        driver = self._connection
        raw = getattr(driver, "_conn", None)
        hold = _hold_of(driver)
        if hold is None or raw is None or not driver._connection:
            return False
        try:
            ending = commit if committing else rollback
            await_only(driver._execute(ending, raw, _sent(driver), hold))
        except Exception as error:
            self._handle_exception(error)
        return True

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._let_go()

    def terminate(self) -> None:  # invalidated: closed without a ROLLBACK
        try:
            super().terminate()
        finally:
            self._let_go()

    def _let_go(self) -> None:
        hold = _hold_of(self._connection)
        if hold is not None:
            hold.end(None)  # a closed connection's transaction is over


def _hold_of(driver: Any) -> _Hold | None:
    hold: _Hold | None = getattr(driver, "_gateway_hold", None)
    return hold


class OneTripDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """The adapter's DBAPI module, whose connections make :class:`OneTripCursor` cursors."""

    def connect(self, *arg: Any, **kw: Any) -> AsyncAdapt_aiosqlite_connection:
        connection = super().connect(*arg, **kw)
        connection.__class__ = OneTripConnection  # same slots: only the cursor class differs
        return connection


__all__ = [
    "BEGIN_POLL_SECONDS",
    "BUSY_TIMEOUT_MS",
    "WriteLock",
    "begin_immediate",
    "engine_options",
    "poll_begin",
    "write_lock",
]
