"""The sync daemon: tick leases, the scheduler's tasks, and three daemon processes sharing one
database without doing any tick or any case twice."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import re
import signal
import weakref
import zoneinfo
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Row, func, select

from gateway import workdays
from gateway.clock import now
from gateway.clocks import CHINA
from gateway.config.loader import Config, load_config
from gateway.daemon import EPOCH, Daemon, Task, run_leased, tick_of
from gateway.intake import ApplicationIn, submit
from gateway.runtime import Runtime
from gateway.service import serve_until_signalled, settle_heap
from gateway.simulators.city import simulated_city
from gateway.states import FINAL
from gateway.store.clients import Client
from gateway.store.tables import applications, events, task_leases
from tests.conftest import EXAMPLE, application, wait_for
from tests.test_crash_recovery import start_daemon, write_config

CLIENT = Client(id="c-daemon", name="daemon test", centre="C01", ops=False)
SETTLED = {s.value for s in FINAL} | {"supplement_required"}
UTC = dt.UTC


def test_interval_ticks_are_the_same_instant_in_every_daemon() -> None:
    trigger = IntervalTrigger(seconds=30, start_date=EPOCH, timezone=UTC)
    base = dt.datetime(2026, 3, 2, 10, 0, 0, tzinfo=UTC)
    # a run 0.2 s or 29 s late belongs to the same tick; 30 s late is the next one
    assert tick_of(trigger, base + dt.timedelta(seconds=0.2), 60) == base
    assert tick_of(trigger, base + dt.timedelta(seconds=29), 60) == base
    assert tick_of(trigger, base + dt.timedelta(seconds=30), 60) == base + dt.timedelta(seconds=30)


def test_cron_tick_is_the_last_fire_time() -> None:
    tz = zoneinfo.ZoneInfo("Asia/Shanghai")
    trigger = CronTrigger.from_crontab("0 2 * * *", timezone=tz)
    fired = dt.datetime(2026, 3, 2, 2, 0, tzinfo=tz)
    assert tick_of(trigger, fired + dt.timedelta(seconds=40), 60) == fired.astimezone(UTC)
    every = CronTrigger.from_crontab("* * * * *", timezone=tz)
    assert tick_of(every, fired + dt.timedelta(seconds=61), 120) == (
        fired + dt.timedelta(minutes=1)
    ).astimezone(UTC)


async def test_a_tick_runs_once_whoever_asks(runtime: Runtime) -> None:
    ran: list[str] = []

    async def work() -> dict[str, int]:
        ran.append("x")
        await asyncio.sleep(0)
        return {"n": len(ran)}

    task = Task("probe", IntervalTrigger(seconds=5, start_date=EPOCH), work, leased=True)
    tick = dt.datetime(2026, 1, 1, tzinfo=UTC)
    results = await asyncio.gather(*(run_leased(runtime, task, f"d{i}", tick) for i in range(3)))
    assert ran == ["x"] and sum(r is not None for r in results) == 1
    # the next tick runs again; a tick while an earlier one is still open is skipped
    assert await run_leased(runtime, task, "d1", tick + dt.timedelta(seconds=5)) == {"n": 2}
    async with runtime.engine.begin() as conn:
        rows = (await conn.execute(select(task_leases).order_by(task_leases.c.tick))).all()
    assert [(r.outcome, r.detail) for r in rows] == [("done", {"n": 1}), ("done", {"n": 2})]


async def test_overlapping_tick_is_skipped_and_failure_recorded(runtime: Runtime) -> None:
    gate = asyncio.Event()

    async def slow() -> None:
        await gate.wait()
        return None

    async def boom() -> None:
        raise RuntimeError("department list unavailable")

    task = Task("slow", IntervalTrigger(seconds=1, start_date=EPOCH), slow, leased=True)
    t0 = dt.datetime(2026, 1, 1, tzinfo=UTC)
    first = asyncio.create_task(run_leased(runtime, task, "a", t0))

    async def started() -> bool:
        async with runtime.engine.connect() as conn:
            q = select(func.count()).select_from(task_leases)
            return bool((await conn.execute(q)).scalar())

    await wait_for(started)
    assert await run_leased(runtime, task, "b", t0 + dt.timedelta(seconds=1)) is None
    gate.set()
    await first
    failing = Task("boom", IntervalTrigger(seconds=1, start_date=EPOCH), boom, leased=True)
    with pytest.raises(RuntimeError):
        await run_leased(runtime, failing, "a", t0)
    async with runtime.engine.connect() as conn:
        rows = {
            (r.task, r.owner): (r.outcome, r.detail)
            for r in (await conn.execute(select(task_leases))).all()
        }
    outcome, why = rows[("slow", "b")]
    assert (outcome, why["why"], why["held_by"]) == ("skipped", "overlap", "a")
    assert rows[("slow", "a")][0] == "done"
    assert rows[("boom", "a")] == ("failed", {"error": "RuntimeError: department list unavailable"})


async def test_daemon_schedules_every_task_and_stops_cleanly(runtime: Runtime) -> None:
    daemon = Daemon(runtime)
    names = set(daemon.tasks)
    assert {"dispatch", "deadlines", "housekeeping", "poll:amr", "reconcile:amr"} <= names
    await daemon.start()
    try:
        body = ApplicationIn.model_validate(application())
        ids = [(await submit(runtime, CLIENT, f"d-{i}", body)).accepted.id for i in range(3)]

        async def decided() -> bool:
            async with runtime.engine.connect() as conn:
                rows = (
                    await conn.execute(
                        select(applications.c.status).where(applications.c.id.in_(ids))
                    )
                ).all()
            return all(r.status in SETTLED for r in rows)

        await wait_for(decided)
        daemon.run_soon("housekeeping")

        async def housekept() -> bool:
            async with runtime.engine.connect() as conn:
                q = select(task_leases.c.outcome).where(task_leases.c.task == "housekeeping")
                return (await conn.execute(q)).scalar() == "done"

        await wait_for(housekept)
    finally:
        await daemon.stop()
    assert not daemon.scheduler.running or daemon.scheduler.state == 2  # paused, then shut down


def _ticks(logs: list[Path]) -> Counter[tuple[str, str]]:
    won: Counter[tuple[str, str]] = Counter()
    for log in logs:
        for m in re.finditer(r"tick won\s.*?task=(\S+) tick=(\S+)", log.read_text()):
            won[(m.group(1), m.group(2))] += 1
    return won


@pytest.mark.slow
async def test_three_daemons_share_one_database(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_LOG_LEVEL", "DEBUG")  # "tick won" lines are DEBUG
    n = 60
    example = load_config(EXAMPLE)
    fast = {"decision_delay_seconds": 0.3, "callbacks": False}
    async with simulated_city(example, simulator_overrides={"amr": fast, "hrss": fast}) as city:
        config_path = write_config(tmp_path / "config", db_url, city.urls)
        text = config_path.read_text() + (
            "\n[gateway.schedule]\ndeadlines_seconds = 0.5\nhousekeeping_seconds = 1.0\n"
        )
        config_path.write_text(text)
        for code in ("amr", "hrss"):
            dept = config_path.parent / "departments" / f"{code}.toml"
            body = re.sub(
                r"(?m)^poll_interval_seconds = .*$", "poll_interval_seconds = 0.3", dept.read_text()
            )
            dept.write_text(body)
        runtime = Runtime(load_config(config_path))
        await runtime.prepare_database()
        logs = [tmp_path / f"daemon-{i}.log" for i in range(3)]
        procs = [start_daemon(config_path, log) for log in logs]
        try:
            ids = [
                (
                    await submit(
                        runtime, CLIENT, f"many-{i}", ApplicationIn.model_validate(application())
                    )
                ).accepted.id
                for i in range(n)
            ]

            async def all_decided() -> bool:
                async with runtime.engine.connect() as conn:
                    rows = (await conn.execute(select(applications.c.status))).all()
                return len(rows) == n and all(r.status in SETTLED for r in rows)

            # generous: three daemons and the simulators start on two busy cores (CI's load 15+
            # ran out of 60 s)
            await wait_for(all_decided, timeout=180)

            async def ticks_from_all() -> bool:
                rows = await _lease_rows(runtime)
                owners = {r.owner for r in rows if r.task == "deadlines"}
                return len(owners) >= 2

            await wait_for(ticks_from_all, timeout=30)
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            codes = [p.wait(timeout=30) for p in procs]
        assert codes == [0, 0, 0], [log.read_text()[-2000:] for log in logs]
        try:
            # each periodic tick ran in exactly one daemon (the logs of all three agree)
            won = _ticks(logs)
            assert won and max(won.values()) == 1, won.most_common(3)
            rows = await _lease_rows(runtime)
            ran = {(r.task, r.tick.isoformat()) for r in rows if r.outcome != "skipped"}
            assert ran >= set(won)
            ours = [r for r in rows if r.task in ("deadlines", "housekeeping")]
            assert ours and all(r.outcome in ("done", "skipped", "released") for r in ours)
            # no case dispatched twice, no status applied twice
            stats = city.states["amr"].stats()
            hrss = city.states["hrss"].stats()
            assert stats["cases"] + hrss["cases"] == n
            assert stats["submissions"] == stats["cases"] + stats["duplicates"]
            async with runtime.engine.connect() as conn:
                steps = (
                    await conn.execute(
                        select(events.c.application_id, events.c.version, events.c.to_status)
                    )
                ).all()
            assert steps and max(Counter(steps).values()) == 1
            assert {a for a, _v, _s in steps} == set(ids)
        finally:
            await runtime.aclose()


async def _lease_rows(runtime: Runtime) -> list[Row[Any]]:
    async with runtime.engine.connect() as conn:
        return list((await conn.execute(select(task_leases))).all())


async def test_the_snapshot_tells_when_each_tick_runs_next(runtime: Runtime) -> None:
    from gateway.snapshot import describe

    daemon = Daemon(runtime)
    await daemon.start()
    try:
        # the scheduler sets its timer once the loop runs its first wake-up
        await wait_for(lambda: "wakes in" in describe([], daemon.dispatcher))
        text = describe(runtime.links(), daemon.dispatcher)
    finally:
        await daemon.stop()
    lines = text.splitlines()
    [scheduler] = [line for line in lines if line.startswith("scheduler ")]
    assert scheduler.startswith("scheduler running: wakes in ") and "paused 0.0 s" in scheduler
    ticks = {line.split()[1][:-1]: line for line in lines if line.startswith("tick ")}
    assert set(ticks) == set(daemon.tasks)  # a silently skipped tick shows its next run here
    assert ", running " in ticks["dispatch"] and "next in " in ticks["dispatch"]


def test_settle_heap_freezes_what_start_up_left_and_frees_its_garbage() -> None:
    """``gateway serve``/``daemon`` freeze the start-up heap once started (full collections
    then skip it); cyclic garbage left by start-up is collected first, not frozen."""

    class Node:
        me: Any = None

    cycle = Node()
    cycle.me = cycle
    gone = weakref.ref(cycle)
    kept = Node()
    del cycle
    try:
        settle_heap()
        assert gone() is None  # collected before the freeze
        assert gc.get_freeze_count() > 0
        # the live object left every generation a collection walks
        assert not any(o is kept for g in range(3) for o in gc.get_objects(generation=g))
    finally:
        gc.unfreeze()


async def test_a_wake_up_during_a_dispatch_tick_sweeps_again(runtime: Runtime) -> None:
    """A slot freed while the dispatch tick runs (its sweep found nothing) is swept at once:
    APScheduler drops the run_soon of a tick still running, so it used to wait an interval."""
    daemon = Daemon(runtime)
    watcher = asyncio.create_task(daemon._watch_wakeup())
    sweeps: list[int] = []

    async def sweep(*, skip_empty: bool = False) -> int:
        sweeps.append(len(sweeps))
        if len(sweeps) == 1:  # a delivery ends during the first sweep
            runtime.wakeup.set()
            await wait_for(lambda: not runtime.wakeup.is_set())  # the watcher has seen it
        return 0

    daemon.dispatcher.sweep = sweep  # type: ignore[method-assign]
    try:
        await daemon._dispatch()
    finally:
        watcher.cancel()
    assert sweeps == [0, 1]


async def test_serving_builds_the_working_day_tables_before_the_first_request(
    gateway_config: Config,
) -> None:
    """The running totals of working days are built at start-up (and settle with the heap), not
    in the first intake batch: built there they cost that request ~0.3-0.5 s of CPU."""
    workdays._year.cache_clear()
    workdays._before.cache_clear()
    misses: list[int] = []

    async def ready(_url: str | None) -> None:
        before = workdays._year.cache_info().misses
        today = now().astimezone(CHINA).date()
        for days in (1, 20, 60):
            workdays.add_workdays(today, days)
        misses.append(workdays._year.cache_info().misses - before)
        signal.raise_signal(signal.SIGTERM)  # serve_until_signalled's own way to stop

    try:
        await serve_until_signalled(gateway_config, api=False, daemon=False, on_ready=ready)
    finally:
        gc.unfreeze()
    assert misses == [0]
