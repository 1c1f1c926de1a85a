"""Cancelling a task that loses a cancellation (Python 3.11's wait_for in the pool checkout)."""

from __future__ import annotations

import asyncio

from gateway.cancelling import cancel_and_wait


async def test_a_task_that_loses_its_cancellation_is_cancelled_again_until_it_ends() -> None:
    lost = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            lost.set()  # swallowed, as 3.11's wait_for does when its result arrives meanwhile
        await asyncio.Event().wait()  # goes on waiting: only a second cancellation ends it

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)  # let it start waiting (a scheduling step, not a wait on time)
    # task.cancel(); await task   <- would wait for good
    await asyncio.wait_for(cancel_and_wait([task]), timeout=60)
    assert lost.is_set() and task.cancelled()


async def test_tasks_that_end_or_fail_are_waited_for_and_their_errors_dropped() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    done = asyncio.create_task(asyncio.sleep(0))
    failed = asyncio.create_task(fails())
    sleeping = asyncio.create_task(asyncio.sleep(3600))
    await asyncio.sleep(0)
    await asyncio.wait_for(cancel_and_wait([done, failed, sleeping]), timeout=60)
    assert done.done() and failed.done() and sleeping.cancelled()
