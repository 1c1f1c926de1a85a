"""Tick leases after a crash: a running tick renews its lease (so leases can be one tick
interval), a tick left by a dead daemon of this host is abandoned at once, one whose daemon on
another host stopped renewing is waited for and taken over when its lease runs out, and a tick
held up by a live holder says who holds it until when (log and the department's health)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx
import structlog
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import event, insert, select, update

from gateway.clock import now
from gateway.daemon import (
    EPOCH,
    MIN_LEASE_SECONDS,
    Daemon,
    Task,
    TaskFunc,
    owner_gone,
    run_leased,
    tick_of,
)
from gateway.runtime import Runtime
from gateway.store.tables import task_leases
from tests.conftest import wait_for

UTC = dt.UTC
T0 = dt.datetime(2026, 1, 1, tzinfo=UTC)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    return proc.pid


async def hold(
    runtime: Runtime,
    task: str,
    owner: str,
    seconds: float = 300,
    *,
    tick: dt.datetime = T0,
    started: dt.datetime | None = None,
) -> dt.datetime:
    """An unfinished tick whose lease runs ``seconds`` more from its last renewal (now): a
    daemon killed mid-tick. Returns the lease's end."""
    renewed = now()
    until = renewed + dt.timedelta(seconds=seconds)
    async with runtime.engine.begin() as conn:
        await conn.execute(
            insert(task_leases).values(
                task=task, tick=tick, owner=owner, started_at=started or renewed, expires_at=until
            )
        )
    return until


async def rows(runtime: Runtime) -> dict[str, tuple[str | None, object]]:
    async with runtime.engine.connect() as conn:
        found = (await conn.execute(select(task_leases))).all()
    return {r.owner: (r.outcome, r.detail) for r in found}


def results_task(run: TaskFunc, *, every: float = 5, lease_seconds: float = 300.0) -> Task:
    """The department civil's leased results task, ticking ``every`` seconds, doing ``run``."""
    trigger = IntervalTrigger(seconds=every, start_date=EPOCH)
    return Task("results:civil", trigger, run, leased=True, lease_seconds=lease_seconds)


def probe(runs: list[int]) -> Task:
    async def work() -> dict[str, int]:
        runs.append(1)
        return {"n": len(runs)}

    return results_task(work)


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


async def test_a_tick_with_the_way_clear_is_two_write_transactions(runtime: Runtime) -> None:
    # the result pulls and change feeds tick every few seconds: the claim and the look for an
    # earlier tick still running are one transaction, the tick's end the other (it was three)
    runs: list[int] = []
    begun: list[object] = []
    count = begun.append  # one bound method, so that remove finds it
    event.listen(runtime.engine.sync_engine, "begin", count)
    try:
        assert await run_leased(runtime, probe(runs), "me", T0) == {"n": 1}
    finally:
        event.remove(runtime.engine.sync_engine, "begin", count)
    assert len(begun) == 2
    assert (await rows(runtime))["me"] == ("done", {"n": 1})
    # a tick another daemon won is one transaction: the claim that found the row taken
    begun.clear()
    event.listen(runtime.engine.sync_engine, "begin", count)
    try:
        assert await run_leased(runtime, probe(runs), "other", T0) is None
    finally:
        event.remove(runtime.engine.sync_engine, "begin", count)
    assert len(begun) == 1 and runs == [1]


async def test_a_live_holder_is_named_once(runtime: Runtime) -> None:
    other = "other-host:4242:abc123"
    await hold(runtime, "results:civil", other)
    runs: list[int] = []
    reported: dict[str, dt.datetime] = {}  # a daemon's memory of holders it named
    with structlog.testing.capture_logs() as logs:
        for n in (1, 2):
            tick = T0 + dt.timedelta(seconds=5 * n)
            found = await run_leased(runtime, probe(runs), f"me{n}", tick, reported=reported)
            assert found is None
    assert runs == []
    outcome, detail = (await rows(runtime))["me1"]
    assert outcome == "skipped" and isinstance(detail, dict)
    assert (detail["why"], detail["held_by"]) == ("overlap", other)
    warned = [e for e in logs if e["log_level"] == "warning"]
    assert len(warned) == 1 and warned[0]["held_by"] == other and "until" in warned[0]
    assert reported == {"results:civil": T0}  # one entry per task, however many ticks


async def test_a_tick_whose_end_was_not_recorded_does_not_hold_its_own_daemon_back(
    runtime: Runtime,
) -> None:
    # the daemon won T0, then the database refused the write of its end (a full disk): the
    # row stays open with its lease running; a daemon runs one tick of a task at a time, so
    # its next tick knows the open one is over instead of waiting for the lease to run out
    await hold(runtime, "results:civil", "me", seconds=300)
    runs: list[int] = []
    with structlog.testing.capture_logs() as logs:
        done = await run_leased(runtime, probe(runs), "me", T0 + dt.timedelta(seconds=5))
    assert done == {"n": 1}
    async with runtime.engine.connect() as conn:
        found = (await conn.execute(select(task_leases).order_by(task_leases.c.tick))).all()
    assert [(r.outcome, r.detail) for r in found] == [
        ("abandoned", {"why": "its end was not recorded"}),
        ("done", {"n": 1}),
    ]
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "task resumes: the earlier tick is over (its end was not recorded)"
    ]
    # another daemon's open tick still holds (only the lease tells when it is over)
    await hold(runtime, "results:civil", "other-host:1:abc", tick=T0 + dt.timedelta(seconds=7))
    assert await run_leased(runtime, probe(runs), "me", T0 + dt.timedelta(seconds=10)) is None


async def test_a_running_tick_renews_its_short_lease(runtime: Runtime) -> None:
    gate = asyncio.Event()

    async def slow() -> None:
        await gate.wait()

    task = results_task(slow, lease_seconds=0.6)
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


class _LateCheckout:
    """The runtime with an engine whose next ``begin()`` waits for the connection and, like
    Python 3.11's ``asyncio.wait_for`` in the pool's checkout when the connection arrives with
    the cancellation, drops a cancellation that comes meanwhile."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self.engine = self
        self.armed = False
        self.waiting = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runtime, name)

    def connect(self) -> Any:
        return self._runtime.engine.connect()

    def begin(self) -> Any:
        if not self.armed:
            return self._runtime.engine.begin()
        self.armed = False
        return self._late()

    @contextlib.asynccontextmanager
    async def _late(self) -> AsyncIterator[Any]:
        self.waiting.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
        async with self._runtime.engine.begin() as conn:
            yield conn


async def test_a_tick_ends_when_its_renewal_loses_the_cancellation(runtime: Runtime) -> None:
    """The renewal waits for the (one SQLite) connection as the tick ends, and the cancellation
    is lost on the way: the tick still ends (it used to wait for the renewal for good, and its
    task never ran again: a department's results were no longer read)."""
    late = _LateCheckout(runtime)

    async def work() -> dict[str, int]:
        late.armed = True
        await late.waiting.wait()  # the renewal is waiting for the connection now
        return {"n": 1}

    task = results_task(work, lease_seconds=0.3)
    done = await asyncio.wait_for(run_leased(cast(Runtime, late), task, "me", T0), timeout=30)
    assert done == {"n": 1}
    assert (await rows(runtime))["me"][0] == "done"


async def test_result_pulls_lease_for_one_tick_interval(runtime: Runtime) -> None:
    seconds = runtime.config.gateway.schedule.results_seconds
    task = Daemon(runtime, owner="me").tasks["results:civil"]
    assert task.lease_seconds == max(seconds, MIN_LEASE_SECONDS) == seconds


async def test_a_holder_on_another_host_that_stops_renewing_is_waited_for_one_tick(
    runtime: Runtime,
) -> None:
    """A daemon on another host took the results tick, renewed its lease once, and died: the
    next daemon's tick waits for that lease (one tick interval) instead of skipping, reads as
    soon as it runs out, before the next tick would have come, and the log says why."""
    # a 10 s tick (and lease): the daemon started after the hold must still find it held on a
    # busy machine; with 3 s it started after the lease had run out (make test-10x and CI's
    # test-stress, load ~15) and found nothing to wait for
    schedule = runtime.config.gateway.schedule.model_copy(update={"results_seconds": 10.0})
    gateway_settings = runtime.config.gateway.model_copy(update={"schedule": schedule})
    runtime.config = dataclasses.replace(runtime.config, gateway=gateway_settings)
    daemon = Daemon(runtime, owner=f"{socket.gethostname()}:{os.getpid()}:me0001")
    results = daemon.tasks["results:civil"]
    step = results.lease_seconds
    assert step == 10.0
    read_at: list[dt.datetime] = []

    async def read_results() -> dict[str, int]:
        read_at.append(now())
        return {"applied": 0}

    daemon.tasks = {results.name: dataclasses.replace(results, run=read_results)}
    other = "other-host:4242:abc123"
    tick = tick_of(results.trigger, now(), 60)
    # the lease ends 0.8 of a tick after the daemon's first tick (tick + step), wherever in
    # the interval the test starts: renewed for `step` from the set-up time, it ended just
    # after that tick when the set-up fell just after a boundary, and a late first tick at
    # load ~15 found it over (CI stop 23's re-run)
    ends = tick + dt.timedelta(seconds=1.8 * step)
    until = await hold(runtime, results.name, other, (ends - now()).total_seconds(), tick=tick)
    with structlog.testing.capture_logs() as logs:
        await daemon.start()
        try:
            await wait_for(lambda: read_at, timeout=60)
        finally:
            await daemon.stop()
    assert read_at[0] > until  # never while the lease held
    assert read_at[0] - until < dt.timedelta(seconds=step)  # not a whole tick later
    held = [e for e in logs if e["event"].startswith("task held")]
    assert len(held) == 1
    assert (held[0]["department"], held[0]["holder_host"], held[0]["holder_pid"]) == (
        "civil",
        "other-host",
        "4242",
    )
    assert held[0]["until"] == until.isoformat()
    [resumed] = [e for e in logs if "lease ran out" in e["event"]]
    assert resumed["held_by"] == other and resumed["log_level"] == "warning"
    outcome, detail = (await rows(runtime))[other]
    assert outcome == "abandoned" and isinstance(detail, dict)
    assert detail["why"].startswith(f"{other} stopped renewing its lease")


async def test_a_holder_that_finishes_while_waited_for_is_not_taken_for_dead(
    runtime: Runtime,
) -> None:
    ran_at: list[dt.datetime] = []

    async def work() -> dict[str, int]:
        ran_at.append(now())
        return {"n": 1}

    task = results_task(work, every=30)
    tick = now()  # the holder's lease ends long before this task's next tick: it is waited for
    other = "other-host:4242:abc123"
    held_tick = tick - dt.timedelta(seconds=30)
    until = await hold(runtime, task.name, other, 20, tick=held_tick)
    with structlog.testing.capture_logs() as logs:
        waiting = asyncio.create_task(run_leased(runtime, task, "me", tick))
        await wait_for(lambda: any(e["event"].startswith("task held") for e in logs), timeout=30)
        assert not waiting.done()
        async with runtime.engine.begin() as conn:
            await conn.execute(
                update(task_leases)
                .where(task_leases.c.owner == other)
                .values(finished_at=now(), outcome="done")
            )
        assert await waiting == {"n": 1}
    assert ran_at[0] < until  # it ran when the holder finished, not when its lease would end
    assert not [e for e in logs if "lease ran out" in e["event"]]
    assert (await rows(runtime))[other][0] == "done"


async def test_a_live_holder_shows_in_the_departments_health(
    runtime: Runtime, api: httpx.AsyncClient, ops_headers: dict[str, str]
) -> None:
    started = now() - dt.timedelta(minutes=5)
    until = await hold(runtime, "results:civil", "other-host:4242:abc123", started=started)
    resp = await api.get("/v1/ops/departments", headers=ops_headers)
    assert resp.status_code == 200
    depts = {d["code"]: d for d in resp.json()["items"]}
    held = depts["civil"]["results_held_by"]
    assert held == (
        f"held by other-host pid 4242 since {started:%H:%M:%S} UTC, "
        f"lease until {until:%H:%M:%S} UTC"
    )
    assert f"result reading {held}" in depts["civil"]["health_detail"]
    assert depts["amr"]["results_held_by"] is None
