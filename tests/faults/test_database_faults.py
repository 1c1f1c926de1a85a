"""Database faults against real processes: our own PostgreSQL cluster stopped and started,
its connections terminated mid-work, and a table locked so statements hang. The gateway runs as
``gateway serve``; a front desk keeps submitting and retrying with the same Idempotency-Key."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.config.loader import load_config
from gateway.simulators.city import SimulatedCity, simulated_city
from tests.conftest import EXAMPLE, wait_for
from tests.faults.harness import (
    FrontDesk,
    GatewayProcess,
    ThrowawayPostgres,
    gateway_process,
    report,
    throwaway_postgres,
    write_config,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(900)]

FAST = {"decision_delay_seconds": 0.3, "callbacks": False}


@contextlib.asynccontextmanager
async def setup(
    tmp_path: Path, db_url: str | None = None
) -> AsyncIterator[tuple[ThrowawayPostgres, SimulatedCity, GatewayProcess]]:
    async with (
        throwaway_postgres() as pg,
        simulated_city(load_config(EXAMPLE), simulator_overrides={"amr": FAST}) as city,
    ):
        config = write_config(
            tmp_path / "config",
            db_url=db_url or pg.url,
            data_dir=tmp_path / "var",
            sim_urls=city.urls,
        )
        async with gateway_process(config, tmp_path / "gateway.log") as gw:
            yield pg, city, gw


async def settle(desk: FrontDesk, city: SimulatedCity, n: int) -> tuple[int, int, int]:
    """Wait until every accepted case reached the department; (lost, doubled, department cases)."""
    sim = city.states["amr"]
    await wait_for(lambda: len(sim.cases) >= len(desk.accepted), timeout=180, interval=0.5)

    async def past_dispatch() -> bool:
        statuses = await desk.statuses()
        return not (statuses["received"] or statuses["dispatching"])

    await wait_for(past_dispatch, timeout=180, interval=1)
    replayed = await desk.replayed_ids()
    lost = n - len(desk.accepted)
    doubled = (len(desk.accepted) - len(set(replayed.values()))) + (
        len(sim.cases) - len(desk.accepted)
    )
    assert replayed == desk.accepted  # the same key is the same application, after the fault
    return lost, doubled, len(sim.cases)


async def test_database_stopped_and_started(tmp_path: Path) -> None:
    """PostgreSQL is stopped for 30 s while applications arrive at 10/s: every one is
    answered 503 + Retry-After (never 500) until it is stored, none is lost or doubled, the
    gateway logs a handful of lines and recovers within seconds of the database returning."""
    n, rate, outage = 300, 10.0, 30.0
    async with setup(tmp_path) as (pg, city, gw), FrontDesk(gw.url, "outage") as desk:
        deadline = time.monotonic() + 400
        load = asyncio.create_task(desk.run(n, rate, deadline))
        await wait_for(lambda: len(desk.accepted) >= 30, timeout=60)
        before = gw.lines()
        await pg.stop()
        stopped = time.monotonic()
        await asyncio.sleep(outage)  # the fault's length, not a synchronisation
        accepted_during = sum(1 for t in desk.accepted_at if t > stopped + 1)
        await pg.start()
        back = time.monotonic()
        await wait_for(lambda: any(t > back for t in desk.accepted_at), timeout=60)
        recovery = min(t for t in desk.accepted_at if t > back) - back
        await load
        lost, doubled, cases = await settle(desk, city, n)
        outage_log = gw.text_since(before)  # the outage and the catching up after it
        log_lines = len(outage_log.splitlines())
        access_lines = gw.access_lines_since(before)
    print(outage_log)  # what ops saw
    report(
        f"database stopped {outage:.0f} s",
        requests=desk.requests,
        accepted=len(desk.accepted),
        answers_503=desk.answers["503"],
        answers_500=desk.answers["500"],
        conn_errors=desk.answers["conn_error"],
        lost=lost,
        doubled=doubled,
        department_cases=cases,
        recovery_s=round(recovery, 2),
        log_lines=log_lines,
        access_log_lines=access_lines,
    )
    assert desk.refused == []
    assert desk.answers["500"] == 0
    assert desk.answers["503"] > 0 and accepted_during == 0
    assert lost == 0 and doubled == 0
    assert recovery < 5.0
    assert log_lines < 20, outage_log
    assert "database unavailable since" in outage_log and "database back after" in outage_log
    assert "Traceback" not in outage_log


async def test_connections_terminated_mid_work(tmp_path: Path) -> None:
    """Every gateway connection is killed (pg_terminate_backend) twice a second while
    applications arrive and are dispatched: a killed connection costs a retry, not an error
    (no 503, no 500), nothing lost or doubled."""
    n, rate = 150, 15.0
    kill = (
        "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity "
        "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
    )
    async with setup(tmp_path) as (pg, city, gw), FrontDesk(gw.url, "killed") as desk:
        deadline = time.monotonic() + 300
        before = gw.lines()
        load = asyncio.create_task(desk.run(n, rate, deadline))
        killed = 0
        while not load.done():
            killed += int((await pg.sql(kill))[0]["n"])
            await asyncio.sleep(0.5)
        await load
        lost, doubled, cases = await settle(desk, city, n)
        log_text = gw.text_since(before)
    print(log_text)  # what ops saw
    report(
        "connections terminated",
        requests=desk.requests,
        accepted=len(desk.accepted),
        backends_killed=killed,
        answers_503=desk.answers["503"],
        answers_500=desk.answers["500"],
        lost=lost,
        doubled=doubled,
        department_cases=cases,
        log_lines=len(log_text.splitlines()),
    )
    assert killed > 0
    assert desk.refused == [] and desk.answers["500"] == 0
    assert desk.answers["503"] == 0  # the database answered all along: nothing to retry later
    assert lost == 0 and doubled == 0
    assert "Traceback" not in log_text


async def test_database_slowed_by_a_lock(tmp_path: Path) -> None:
    """A table intake writes is locked for 25 s: statements end at the statement timeout and
    intake answers 503 instead of piling requests up; everything is stored once the lock goes."""
    n, rate, hold = 150, 10.0, 25.0
    import asyncpg

    async with throwaway_postgres() as pg, contextlib.AsyncExitStack() as stack:
        city = await stack.enter_async_context(
            simulated_city(load_config(EXAMPLE), simulator_overrides={"amr": FAST})
        )
        config = write_config(
            tmp_path / "config",
            db_url=f"{pg.url}?statement_timeout=2000",
            data_dir=tmp_path / "var",
            sim_urls=city.urls,
        )
        gw = await stack.enter_async_context(gateway_process(config, tmp_path / "gateway.log"))
        async with FrontDesk(gw.url, "slow") as desk:
            deadline = time.monotonic() + 300
            load = asyncio.create_task(desk.run(n, rate, deadline))
            await wait_for(lambda: len(desk.accepted) >= 20, timeout=60)
            before = gw.lines()
            locker = await asyncpg.connect(pg.dsn)
            try:
                tx = locker.transaction()
                await tx.start()
                await locker.execute("LOCK TABLE receipt_counters IN ACCESS EXCLUSIVE MODE")
                locked = time.monotonic()
                await asyncio.sleep(hold)  # the fault's length
                slowest = await _slowest_answer(gw.url)
                # taken while the lock is still held: the batch waiting behind it commits the
                # moment it goes, and its 201s can reach this loop while ``close`` is awaited
                released = time.monotonic()
                await tx.rollback()
            finally:
                await locker.close()
            accepted_while_locked = sum(1 for t in desk.accepted_at if locked + 1 < t < released)
            await wait_for(lambda: any(t > released for t in desk.accepted_at), timeout=60)
            recovery = min(t for t in desk.accepted_at if t > released) - released
            await load
            lost, doubled, cases = await settle(desk, city, n)
            log_text = gw.text_since(before)
    print(log_text)  # what ops saw
    report(
        f"database slowed {hold:.0f} s (table lock, statement_timeout 2 s)",
        requests=desk.requests,
        accepted=len(desk.accepted),
        answers_503=desk.answers["503"],
        answers_500=desk.answers["500"],
        slowest_answer_s=round(slowest, 2),
        lost=lost,
        doubled=doubled,
        department_cases=cases,
        recovery_s=round(recovery, 2),
        log_lines=len(log_text.splitlines()),
    )
    assert desk.refused == [] and desk.answers["500"] == 0
    assert desk.answers["503"] > 0 and accepted_while_locked == 0
    assert slowest < 15.0  # bounded by the statement timeout (a batch or two ahead), not the lock
    assert lost == 0 and doubled == 0
    assert recovery < 5.0
    assert "Traceback" not in log_text


async def _slowest_answer(base_url: str) -> float:
    """How long one new application waits for its answer while the database hangs."""
    import httpx

    from tests.conftest import application
    from tests.faults.harness import FRONT_DESK_KEY

    async with httpx.AsyncClient(base_url=base_url, timeout=60) as client:
        started = time.monotonic()
        r = await client.post(
            "/v1/applications",
            json=application(),
            headers={"Authorization": f"Bearer {FRONT_DESK_KEY}", "Idempotency-Key": "probe"},
        )
        assert r.status_code == 503, r.text
        return time.monotonic() - started
