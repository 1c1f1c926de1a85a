"""Tick leases after a crash: a running tick renews its lease (so leases can be short), a tick
left by a dead daemon of this host is abandoned at once, and a tick skipped for a live holder
says who holds it until when."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import subprocess
import sys

import pytest
import structlog
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import insert, select

import gateway.daemon
from gateway.clock import now
from gateway.daemon import EPOCH, Daemon, Task, owner_gone, run_leased
from gateway.runtime import Runtime
from gateway.store.tables import task_leases
from tests.conftest import wait_for

UTC = dt.UTC
T0 = dt.datetime(2026, 1, 1, tzinfo=UTC)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid


async def hold(runtime: Runtime, task: str, owner: str, seconds: float = 300) -> None:
    """An unfinished tick at T0 whose lease runs ``seconds`` more: a daemon killed mid-tick."""
    async with runtime.engine.begin() as conn:
        await conn.execute(
            insert(task_leases).values(
                task=task,
                tick=T0,
                owner=owner,
                started_at=now(),
                expires_at=now() + dt.timedelta(seconds=seconds),
            )
        )


async def rows(runtime: Runtime) -> dict[str, tuple[str | None, object]]:
    async with runtime.engine.connect() as conn:
        found = (await conn.execute(select(task_leases))).all()
    return {r.owner: (r.outcome, r.detail) for r in found}


def probe(runs: list[int]) -> Task:
    async def work() -> dict[str, int]:
        runs.append(1)
        return {"n": len(runs)}

    return Task("results:civil", IntervalTrigger(seconds=5, start_date=EPOCH), work, leased=True)


def test_owner_gone_only_for_a_dead_process_of_this_host() -> None:
    host = socket.gethostname()
    assert owner_gone(f"{host}:{dead_pid()}:abc123")
    assert not owner_gone(f"{host}:{os.getpid()}:abc123")  # this very daemon
    assert not owner_gone(f"{host}:{os.getppid()}:abc123")  # alive
    assert not owner_gone(f"elsewhere-{host}:{dead_pid()}:abc123")  # cannot tell: lease decides
    assert not owner_gone("d1")


async def test_a_dead_daemons_tick_is_abandoned_at_once(runtime: Runtime) -> None:
    killed = f"{socket.gethostname()}:{dead_pid()}:abc123"
    await hold(runtime, "results:civil", killed)
    runs: list[int] = []
    assert await run_leased(runtime, probe(runs), "me", T0 + dt.timedelta(seconds=5)) == {"n": 1}
    found = await rows(runtime)
    assert found[killed] == ("abandoned", {"why": f"{killed} is gone"})
    assert found["me"] == ("done", {"n": 1})


async def test_a_live_holder_is_named_once(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # what this process already reported is process-wide: the other database's run of this
    # test in the same worker must not have reported our holder already
    monkeypatch.setattr(gateway.daemon, "_reported", set())
    other = "other-host:4242:abc123"
    await hold(runtime, "results:civil", other)
    runs: list[int] = []
    with structlog.testing.capture_logs() as logs:
        for n in (1, 2):
            tick = T0 + dt.timedelta(seconds=5 * n)
            assert await run_leased(runtime, probe(runs), f"me{n}", tick) is None
    assert runs == []
    outcome, detail = (await rows(runtime))["me1"]
    assert outcome == "skipped" and isinstance(detail, dict)
    assert (detail["why"], detail["held_by"]) == ("overlap", other)
    warned = [e for e in logs if e["log_level"] == "warning"]
    assert len(warned) == 1 and warned[0]["held_by"] == other and "until" in warned[0]


async def test_a_running_tick_renews_its_short_lease(runtime: Runtime) -> None:
    gate = asyncio.Event()

    async def slow() -> None:
        await gate.wait()

    task = Task(
        "results:civil",
        IntervalTrigger(seconds=5, start_date=EPOCH),
        slow,
        leased=True,
        lease_seconds=0.6,
    )
    running = asyncio.create_task(run_leased(runtime, task, "me", T0))

    async def lease_end() -> dt.datetime | None:
        async with runtime.engine.connect() as conn:
            return (await conn.execute(select(task_leases.c.expires_at))).scalar()

    await wait_for(lambda: lease_end(), timeout=20)
    first = await lease_end()
    assert first is not None

    async def renewed() -> bool:
        end = await lease_end()
        return end is not None and end > first and end > now()

    await wait_for(renewed, timeout=20)  # still running, still held, well past 0.6 s
    gate.set()
    await running
    assert (await rows(runtime))["me"][0] == "done"


async def test_result_pulls_lease_for_three_ticks_at_least_thirty_seconds(
    runtime: Runtime,
) -> None:
    seconds = runtime.config.gateway.schedule.results_seconds
    task = Daemon(runtime, owner="me").tasks["results:civil"]
    assert task.lease_seconds == max(3 * seconds, 30.0) < 300
