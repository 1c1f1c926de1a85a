"""The department link's rules seen from the workers: a poison application fails alone and
permanently (a deterministic local error never feeds the breaker), and a lease always outlives
the worst-case call it covers."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from sqlalchemy import select, update

from gateway.config.models import DepartmentConfig, RetryPolicy
from gateway.connector import CaseSummary, Connector
from gateway.departments import RECORD_MARGIN_SECONDS, DepartmentLink
from gateway.dispatcher import Dispatcher
from gateway.errors import TransientError
from gateway.intake import ApplicationIn, submit
from gateway.runtime import Runtime
from gateway.simulators.city import SimulatedCity
from gateway.store import jobs
from gateway.store.clients import Client
from gateway.store.tables import applications, dispatch_jobs
from tests.conftest import application, wait_for

CLIENT = Client(id="c-rules", name="rules", centre="C01", ops=False)
DELIVERED = {"delivered", "accepted", "in_review", "approved", "rejected", "ready_for_pickup"}


async def accept(runtime: Runtime, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        body = ApplicationIn.model_validate(application())
        ids.append((await submit(runtime, CLIENT, uuid.uuid4().hex, body)).accepted.id)
    return ids


async def rows(runtime: Runtime, ids: list[str]) -> dict[str, Any]:
    async with runtime.engine.connect() as conn:
        q = select(applications).where(applications.c.id.in_(ids))
        return {r.id: r for r in (await conn.execute(q)).all()}


def _nested(depth: int) -> dict[str, Any]:
    form: dict[str, Any] = {}
    for _ in range(depth):
        form = {"a": form}
    return form


async def test_poison_applications_fail_alone_and_the_department_flows_on(
    runtime: Runtime, city: SimulatedCity
) -> None:
    # stored before intake bounded forms (or by an older gateway): the dispatcher meets them
    deep, surrogate = await accept(runtime, 2)
    async with runtime.engine.begin() as conn:
        await conn.execute(
            update(applications).where(applications.c.id == deep).values(form=_nested(300))
        )
        await conn.execute(
            update(applications)
            .where(applications.c.id == surrogate)
            .values(form={"name": "a\ud800b"})
        )
    normal = await accept(runtime, 10)
    dispatcher = Dispatcher(runtime, seed=3)
    started = time.monotonic()
    task = asyncio.create_task(dispatcher.run())
    try:

        async def flowed() -> bool:
            found = await rows(runtime, normal)
            return all(r.status in DELIVERED for r in found.values())

        await wait_for(flowed, timeout=60)
        took = time.monotonic() - started
        await wait_for(lambda: _all_failed(runtime, [deep, surrogate]), timeout=30)
    finally:
        await dispatcher.stop(grace_seconds=2)
        await task
    poisoned = await rows(runtime, [deep, surrogate])
    assert "serialization depth" in poisoned[deep].last_error
    assert "surrogates not allowed" in poisoned[surrogate].last_error
    assert all("permanent" in r.last_error for r in poisoned.values())
    link = runtime.link("amr")
    assert link is not None and link.breaker.failures == 0  # never fed the breaker
    assert REGISTRY.get_sample_value("gateway_breaker_open", {"department": "amr"}) == 0
    print(f"\n10 normal applications after 2 poison ones delivered in {took:.2f} s")


async def _all_failed(runtime: Runtime, ids: list[str]) -> bool:
    return all(r.status == "failed" for r in (await rows(runtime, ids)).values())


# -- leases -----------------------------------------------------------------------------------


def _link(**settings: Any) -> DepartmentLink:
    dept = DepartmentConfig(code="slow", name="slow", connector="idle", **settings)
    return DepartmentLink(dept, cast(Connector, None))  # the rule needs no connector


@given(
    timeout=st.floats(min_value=0.001, max_value=86_400),
    attempts=st.integers(min_value=1, max_value=5),
    wait=st.floats(min_value=0, max_value=3_600),
    configured=st.floats(min_value=0.001, max_value=86_400),
)
def test_the_lease_outlives_the_worst_case_call(
    timeout: float, attempts: int, wait: float, configured: float
) -> None:
    link = _link(
        timeout_seconds=timeout,
        retry=RetryPolicy(in_call_attempts=attempts, in_call_wait_seconds=wait),
    )
    worst_call = attempts * timeout + (attempts - 1) * wait  # every attempt to its deadline
    worst_wait_for_a_slot = worst_call  # bounded by the same deadline
    lease = link.lease_seconds(configured)
    assert lease >= worst_wait_for_a_slot + worst_call + RECORD_MARGIN_SECONDS - 1e-6
    assert lease >= configured


async def test_no_other_worker_takes_a_job_while_its_slowest_call_runs(
    runtime: Runtime, city: SimulatedCity
) -> None:
    """The slowest in-call settings (5 attempts, each to its deadline) against a department
    that never answers, with a configured lease far shorter than the call: the lease still
    covers the whole call, so a second dispatcher claims nothing until the first records."""
    slowest = RetryPolicy(in_call_attempts=5, in_call_wait_seconds=0.2, max_attempts=50)
    cfg = runtime.config
    dept = cfg.departments["amr"].model_copy(update={"timeout_seconds": 0.5, "retry": slowest})
    settings = cfg.gateway.model_copy(
        update={"dispatch": cfg.gateway.dispatch.model_copy(update={"lease_seconds": 0.1})}
    )
    config = dataclasses.replace(
        cfg, gateway=settings, departments={**cfg.departments, "amr": dept}
    )
    first_rt = Runtime(config, engine=runtime.engine)
    second_rt = Runtime(config, engine=runtime.engine)
    city.states["amr"].mode = "timeout"  # the department holds every request
    [app_id] = await accept(runtime, 1)
    first, second = Dispatcher(first_rt, owner="first"), Dispatcher(second_rt, owner="second")
    try:
        assert await first.sweep() == 1
        started = time.monotonic()
        taken_over = 0
        while first.tasks:  # the call runs: 5 x 0.5 s + 4 x 0.2 s at the least
            taken_over += await second.sweep()
            await asyncio.sleep(0.05)
        took = time.monotonic() - started
        assert taken_over == 0
        assert took >= 5 * 0.5
        async with runtime.engine.connect() as conn:
            job = (
                await conn.execute(
                    select(dispatch_jobs).where(dispatch_jobs.c.application_id == app_id)
                )
            ).one()
        assert job.state == jobs.PENDING and job.attempts == 1  # recorded by the first, once
        assert "within 0.5s" in (job.last_error or "")
    finally:
        await first.stop(grace_seconds=0.1)
        await second.stop(grace_seconds=0.1)
        await first_rt.http.aclose()
        await second_rt.http.aclose()


# -- one cap across workers -------------------------------------------------------------------


async def test_one_cap_across_every_worker(runtime: Runtime, city: SimulatedCity) -> None:
    """Dispatch, polls, withdrawals and health checks at once against a department that holds
    every request: never more than its ``concurrency`` at the department."""
    from gateway import poller, withdrawals
    from tests.hostile_department import hostile

    async with hostile(city.urls["amr"]) as (door, url):
        cfg = runtime.config
        amr = cfg.departments["amr"]
        options = {**amr.options, "base_url": url + "/api/v1"}
        dept = amr.model_copy(update={"options": options, "concurrency": 2, "timeout_seconds": 20})
        rt = Runtime(
            dataclasses.replace(cfg, departments={**cfg.departments, "amr": dept}),
            engine=runtime.engine,
        )
        dispatcher = Dispatcher(rt, owner="capped")
        try:
            held = await accept(rt, 4)  # delivered first: the department holds them
            # two called, two queued: each called in the slot a call frees
            assert await dispatcher.sweep() == 4
            await dispatcher.drain()
            assert door.max_inflight <= 2 and dispatcher.queued() == {}
            for app_id in held[:2]:
                await withdrawals.withdraw(rt, CLIENT, app_id, withdrawals.WithdrawIn())
            await accept(rt, 3)  # waiting to be dispatched
            link = rt.link("amr")
            assert link is not None
            door.mode = "hold"
            work = [
                asyncio.create_task(poller.poll_department(rt, "amr")),
                asyncio.create_task(withdrawals.sweep(rt, "capped")),
                asyncio.create_task(dispatcher.sweep()),
                asyncio.create_task(link.health()),
            ]
            await wait_for(lambda: door.inflight == 2 and link.slots._waiters, timeout=20)
            door.release.set()
            await asyncio.gather(*work)
            await dispatcher.drain()
            assert door.max_inflight <= 2
            assert door.requests > 2  # the others got their turn
        finally:
            await dispatcher.stop(grace_seconds=1)
            await rt.http.aclose()


async def test_rounds_wait_while_the_breaker_is_open(runtime: Runtime, city: SimulatedCity) -> None:
    """Polls and result pulls ask nothing and claim nothing while the breaker is open: the
    cases stay due for the first round after the cool-down."""
    from gateway import poller, results

    dispatcher = Dispatcher(runtime, owner="w")
    [app_id] = await accept(runtime, 1)
    assert await dispatcher.sweep() == 1
    await dispatcher.drain()
    link = runtime.link("amr")
    assert link is not None
    for _ in range(link.breaker.threshold):
        link.breaker.record(False)
    before = (await rows(runtime, [app_id]))[app_id].next_poll_at
    assert await poller.poll_department(runtime, "amr") == 0
    assert await results.pull_department(runtime, "amr") == 0
    assert (await rows(runtime, [app_id]))[app_id].next_poll_at == before  # not claimed
    await dispatcher.stop(grace_seconds=1)


async def test_another_process_sees_an_open_breaker(
    tmp_path: Path, db_url: str, city: SimulatedCity
) -> None:
    """A daemon's breaker is recorded when it opens and closes: the ops API of another process
    and ``gateway status`` show it."""
    import httpx
    from typer.testing import CliRunner

    from gateway.api.app import create_app
    from gateway.cli import app as cli
    from gateway.config.loader import load_config
    from gateway.store import breakers
    from gateway.store.clients import create_client
    from tests.conftest import TEST_SECRETS
    from tests.test_crash_recovery import write_config

    config = write_config(tmp_path / "config", db_url, city.urls)
    daemon = Runtime(load_config(config))
    await daemon.prepare_database()
    api = Runtime(load_config(config))
    try:
        [app_id] = await accept(daemon, 1)
        link = daemon.link("amr")
        assert link is not None
        # open for an hour, not the default cool-down: gateway status below must still see it
        # open however long the machine takes to get there (load ~25: it did not)
        link.breaker.cooldown = 3600.0
        for _ in range(link.breaker.threshold):
            link.breaker.record(False)  # what failed calls do

        async def recorded() -> bool:
            async with daemon.engine.connect() as conn:
                return [b.department for b in await breakers.open_ones(conn)] == ["amr"]

        await wait_for(recorded, timeout=10)
        async with api.engine.begin() as conn:
            _c, key = await create_client(conn, name="ops", centre=None, ops=True)
        transport = httpx.ASGITransport(app=create_app(api))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            page = await client.get(
                "/v1/ops/departments", headers={"Authorization": f"Bearer {key}"}
            )
        shown = {d["code"]: d["breaker_open"] for d in page.json()["items"]}
        assert shown["amr"] is True and shown["hrss"] is False
        assert not api.link("amr").breaker_open()  # type: ignore[union-attr]  # its own: closed

        result = await asyncio.to_thread(
            CliRunner().invoke, cli, ["status", app_id, "--config", str(config)], env=TEST_SECRETS
        )
        assert result.exit_code == 0, result.output
        assert "amr: breaker open in" in result.output

        link.breaker.record(True)  # a success closes it

        async def cleared() -> bool:
            async with daemon.engine.connect() as conn:
                return await breakers.open_ones(conn) == []

        await wait_for(cleared, timeout=10)
    finally:
        await api.aclose()
        await daemon.aclose()


# -- paged reads ------------------------------------------------------------------------------

EPOCH = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class _Listing:
    """A listing that yields two cases at once, then waits for ``more`` before a third."""

    last_listing_pages: int | None = None

    def __init__(self) -> None:
        self.more = asyncio.Event()

    async def list_cases(self, since: Any, until: Any) -> AsyncIterator[CaseSummary]:
        for i in range(2):
            yield CaseSummary(case_id=f"C{i}", status="1")
        await self.more.wait()
        yield CaseSummary(case_id="C2", status="1")


async def test_a_listing_step_has_a_deadline_and_the_reader_does_not() -> None:
    """Each step of a listing ends within timeout_seconds (one timer for the whole listing);
    time the reader spends between steps is its own."""
    listing = _Listing()
    dept = DepartmentConfig(code="slow", name="slow", connector="idle", timeout_seconds=1.0)
    link = DepartmentLink(dept, cast(Connector, listing))
    got: list[str] = []
    started = time.monotonic()
    with pytest.raises(TransientError):
        async for case in link.list_cases(EPOCH, EPOCH):
            got.append(case.case_id)
            await asyncio.sleep(1.5)  # longer than a step may take: not the listing's time
    took = time.monotonic() - started
    assert got == ["C0", "C1"]
    assert took >= 3.0  # both pauses of the reader, then the hanging step's own second
    assert link.slots.used == 0  # the listing's slot is given back

    # a step that waits less than its deadline goes on: a deadline a busy machine cannot miss
    # (0.5 s against 1 s could be missed at load 20)
    roomy = dept.model_copy(update={"timeout_seconds": 60.0})
    listing = _Listing()
    link = DepartmentLink(roomy, cast(Connector, listing))
    asyncio.get_running_loop().call_later(0.5, listing.more.set)
    assert [c.case_id async for c in link.list_cases(EPOCH, EPOCH)] == ["C0", "C1", "C2"]
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
