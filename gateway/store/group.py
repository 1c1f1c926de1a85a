"""Group commit: units of work that arrive together share one transaction.

Each caller awaits its own result, which is given only after the shared commit, so "recorded"
still means committed. On SQLite (one writer, one pooled connection) this turns a transaction
and a pool hand-off per unit into one per batch. If a batch fails, every unit is retried in a
transaction of its own, so one unit's error reaches only its caller.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

T = TypeVar("T")
Work = Callable[[AsyncConnection], Awaitable[T]]


class _Unit(Generic[T]):
    def __init__(self, work: Work[T]) -> None:
        self.work = work
        self.future: asyncio.Future[T] = asyncio.get_running_loop().create_future()


class GroupCommit:
    def __init__(self, engine: AsyncEngine, *, max_batch: int = 64) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._queue: asyncio.Queue[_Unit[Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def run(self, work: Work[T]) -> T:
        """Run ``work`` in a (shared) transaction; returns its result once committed. ``work``
        must not commit or roll back: it shares the transaction with others."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._loop(), name="group commit")
        unit: _Unit[T] = _Unit(work)
        await self._queue.put(unit)
        return await unit.future

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                results = await self._commit(batch)
            except Exception:
                for unit in batch:  # one by one, so a failure reaches only its own caller
                    try:
                        [result] = await self._commit([unit])
                    except Exception as exc:
                        if not unit.future.done():
                            unit.future.set_exception(exc)
                    else:
                        if not unit.future.done():
                            unit.future.set_result(result)
                continue
            for unit, result in zip(batch, results, strict=True):
                if not unit.future.done():
                    unit.future.set_result(result)

    async def _commit(self, batch: list[_Unit[Any]]) -> list[Any]:
        async with self.engine.begin() as conn:
            return [await unit.work(conn) for unit in batch]
