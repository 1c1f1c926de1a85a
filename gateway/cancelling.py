"""Cancelling a task and knowing it has ended, on Python 3.11 too.

Python 3.11's ``asyncio.wait_for``, which SQLAlchemy's pool checkout uses, returns what it
waited for and drops a cancellation that arrives just as that does (bpo-42130 family; fixed in
3.12). A task that lost its cancellation goes on, and ``task.cancel(); await task`` then waits
for it for good: a daemon's tick, a delivery or the group-commit loop that was waiting for
SQLite's one connection as the process stopped kept the stop waiting. So a task is cancelled
again until it has ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

#: seconds between cancellations of a task that is still running
AGAIN_SECONDS = 0.5


async def cancel_and_wait(tasks: Iterable[asyncio.Task[object]]) -> None:
    """Cancel ``tasks`` and return once every one has ended (their outcomes are dropped)."""
    tasks = list(tasks)
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=AGAIN_SECONDS)
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" at exit


__all__ = ["AGAIN_SECONDS", "cancel_and_wait"]
