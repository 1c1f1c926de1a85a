"""Cancelling a task and knowing it has ended, on Python 3.11 too.

Python 3.11 can drop a cancellation that arrives just as what a task awaits completes
(gh-86296: ``asyncio.wait_for`` returns the result instead of raising; fixed in 3.12), and the
task then goes on. ``task.cancel(); await task`` waits for such a task for good: a tick's lease
renewal that lost its cancellation while it waited for SQLite's one connection renewed and slept
on, and its tick never ended. So a task is cancelled again until it has ended.
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
