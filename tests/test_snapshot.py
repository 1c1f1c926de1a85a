"""The process snapshot (SIGUSR1): a stuck process says what each link and task is doing."""

from __future__ import annotations

import asyncio
import re
from typing import cast

from gateway.config.models import BreakerSettings, DepartmentConfig
from gateway.connector import Connector
from gateway.departments import DepartmentLink
from gateway.snapshot import describe


def _link(code: str, **settings: object) -> DepartmentLink:
    dept = DepartmentConfig(code=code, name=code, connector="idle", **settings)  # type: ignore[arg-type]
    return DepartmentLink(dept, cast(Connector, None))  # the guards need no connector


async def test_the_snapshot_shows_slots_waiters_breakers_and_where_tasks_wait() -> None:
    full = _link("amr", concurrency=1, rate_limit_per_second=2.0)
    down = _link("hrss", breaker=BreakerSettings(threshold=1, cooldown_seconds=60))
    await full.slots.take()
    waiter = asyncio.create_task(full.slots.take(), name="a poll waiting for a slot")
    await asyncio.sleep(0)  # let it queue (a scheduling step, not a wait on time)
    down.breaker.record(False)
    try:
        text = describe([full, down], None)
    finally:
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
    lines = text.splitlines()
    assert (
        "link amr: slots 1/1 in use, 1 waiting; breaker closed (failures 0); rate tokens"
        in (lines[0])
    )
    assert lines[1].startswith("link hrss: slots 0/")
    assert re.search(r"breaker open \(failures 1, open (59\.\d|60\.0) s more\)$", lines[1])
    [waiting] = [line for line in lines if line.startswith("task a poll waiting for a slot")]
    # followed down the awaits to where it waits
    assert "test_snapshot" not in waiting and "take (guards.py:" in waiting
