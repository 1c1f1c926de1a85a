"""The department's concurrency slots under cancellation (no machine timing involved)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.departments.guards import Slots


async def test_a_waiter_cancelled_while_a_slot_is_given_back_leaves_the_count_right() -> None:
    slots = Slots("t", cap=1)
    await slots.take()
    waiting = asyncio.create_task(slots.take())
    await asyncio.sleep(0)  # let it queue (a scheduling step, not a wait on time)
    assert slots.used == 1 and not waiting.done()
    waiting.cancel()  # its future is cancelled now; its handler runs on the next step
    slots.give()  # drops the cancelled waiter and frees the slot
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert slots.used == 0
    await asyncio.wait_for(slots.take(), timeout=10)
    assert slots.used == 1
