"""Group commit: items that arrive together are stored in one transaction.

Each caller awaits its own result, which is given only after the shared commit, so "stored"
still means committed. On SQLite (one writer, one pooled connection) this turns a transaction
and a pool hand-off per item into one per batch, and lets ``store`` use multi-row statements.
If a batch fails, every item is retried in a transaction of its own, so one item's error
(say, a key another process stored meanwhile) reaches only its own caller. An infrastructure
failure is not an item's fault: the whole batch gets it at once (no per-item retries against a
database that is down), except a connection killed before the commit was sent (failover,
``pg_terminate_backend``): nothing was stored, so each killed connection costs one retry of the
batch on a fresh connection, up to :data:`LOST_CONNECTION_ATTEMPTS` in a row (a server that is
really gone fails the reconnect instead, and that is answered at once). A connection killed at
the COMMIT itself leaves unknown whether the batch was stored: it is retried only for an
``idempotent`` store. The queue is bounded
(``max_queue``): when it is full ``submit`` raises :class:`~gateway.errors.Overloaded`
instead of letting memory grow. ``linger``: a batch that starts with fewer than ``max_batch``
items waiting waits that long for more (or until it is full) before it begins; for items
that trickle in one at a time, where each would otherwise pay a whole transaction.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.cancelling import cancel_and_wait
from gateway.errors import DatabaseUnavailable, InfrastructureError, Overloaded

#: attempts of one batch whose connection is killed under it each time; past it, the batch's
#: callers get the error (a server that accepts connections only to lose them is an outage).
#: Each attempt starts on a fresh connection at once: with every connection killed twice a
#: second on a machine at load 24, 10 were too few for 64 of 215 requests (a batch there can
#: take most of the half second between kills)
LOST_CONNECTION_ATTEMPTS = 30

I = TypeVar("I")  # noqa: E741
R = TypeVar("R")
Store = Callable[[AsyncConnection, list[I]], Awaitable[list[R]]]


class GroupCommit(Generic[I, R]):
    """``await group.submit(item)`` -> ``store``'s result for that item, after the commit.

    ``store(conn, items)`` runs inside the shared transaction, must not commit or roll back,
    and returns one result per item, in order. ``idempotent``: see the attribute.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        store: Store[I, R],
        *,
        max_batch: int = 64,
        max_queue: int = 0,
        idempotent: bool = False,
        linger: float = 0.0,
    ) -> None:
        self.engine = engine
        #: ``store`` run again after a COMMIT whose outcome is unknown finds what the first run
        #: stored (intake by Idempotency-Key, a read): such a batch is retried too
        self.idempotent = idempotent
        self.store = store
        self.max_batch = max_batch
        self.max_queue = max_queue  # 0: unbounded (callers bound themselves)
        self.linger = linger
        #: set while a batch lingers: done once the timer fires or the batch is full
        self._gathering: asyncio.Future[None] | None = None
        self._queue: asyncio.Queue[tuple[I, asyncio.Future[R]]] = asyncio.Queue(max_queue)
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: I) -> R:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name="group commit")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((item, future))
        except asyncio.QueueFull:
            raise Overloaded(
                f"{self.max_queue} items are already waiting to be stored", retry_after=1.0
            ) from None
        gathering = self._gathering
        if gathering is not None and self._queue.qsize() + 1 >= self.max_batch:
            _wake(gathering)
        return await future

    async def aclose(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])

    async def _loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            if self.linger > 0 and self._queue.qsize() + 1 < self.max_batch:
                await self._linger()
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                results = await self._commit([item for item, _f in batch])
            except InfrastructureError as exc:  # not the items' fault: all get it, no retries
                for _item, future in batch:
                    _settle(future, exc)
                continue
            except Exception:
                await self._one_by_one(batch)
                continue
            for (_item, future), result in zip(batch, results, strict=True):
                _settle(future, result)

    async def _linger(self) -> None:
        loop = asyncio.get_running_loop()
        self._gathering = gathering = loop.create_future()
        timer = loop.call_later(self.linger, _wake, gathering)
        try:
            await gathering
        finally:
            timer.cancel()
            self._gathering = None

    async def _one_by_one(self, batch: list[tuple[I, asyncio.Future[R]]]) -> None:
        """A failure reaches only its own caller (until the database itself fails)."""
        down: InfrastructureError | None = None
        for item, future in batch:
            if down is not None:
                _settle(future, down)
                continue
            try:
                [result] = await self._commit([item])
            except InfrastructureError as exc:
                down = exc
                _settle(future, exc)
            except Exception as exc:
                _settle(future, exc)
            else:
                _settle(future, result)

    async def _commit(self, items: list[I]) -> list[R]:
        for attempt in range(1, LOST_CONNECTION_ATTEMPTS + 1):
            try:
                return await self._commit_once(items)
            except _NotSent as lost:  # died before COMMIT: nothing stored; a new one may do
                if attempt == LOST_CONNECTION_ATTEMPTS:
                    raise lost.error from None
        raise AssertionError("unreachable")

    async def _commit_once(self, items: list[I]) -> list[R]:
        try:
            async with self.engine.begin() as conn:
                try:
                    return await self.store(conn, items)
                except DatabaseUnavailable as exc:
                    # raised by a statement, so the transaction was never committed
                    if exc.connection_lost:
                        raise _NotSent(exc) from exc
                    raise
        except DatabaseUnavailable as exc:
            # the connection died as the transaction ended: rolling back after a killed
            # statement (nothing stored), or at COMMIT (stored or not: only a store that finds
            # what an earlier attempt stored may run again)
            if exc.connection_lost and (_after_not_sent(exc) or self.idempotent):
                raise _NotSent(exc) from exc
            raise


def _after_not_sent(exc: BaseException) -> bool:
    seen: BaseException | None = exc.__context__
    while seen is not None:
        if isinstance(seen, _NotSent):
            return True
        seen = seen.__context__
    return False


class _NotSent(Exception):
    def __init__(self, error: DatabaseUnavailable) -> None:
        self.error = error
        super().__init__(str(error))


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _settle(future: asyncio.Future[R], outcome: R | BaseException) -> None:
    if future.done():  # the caller went away (cancelled): the item is stored all the same
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class Owner(Protocol):
    """What a group commit can be shared by (a Runtime): its engine, and what it runs when it
    closes."""

    engine: AsyncEngine
    on_close: list[Callable[[], Awaitable[None]]]


_SHARED: weakref.WeakKeyDictionary[Any, dict[str, GroupCommit[Any, Any]]] = (
    weakref.WeakKeyDictionary()
)


def shared(
    owner: Owner, name: str, make: Callable[[], Store[I, R]], **options: Any
) -> GroupCommit[I, R]:
    """The group commit called ``name`` of ``owner``: made on first use (``make()`` gives its
    store; ``options`` as for :class:`GroupCommit`), closed when the owner closes."""
    groups = _SHARED.setdefault(owner, {})
    group: GroupCommit[I, R] | None = groups.get(name)
    if group is None:
        group = groups[name] = GroupCommit(owner.engine, make(), **options)
        owner.on_close.append(group.aclose)
    return group
