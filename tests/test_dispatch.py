"""The dispatcher against the real simulated REST departments: delivery, retries with persisted
backoff, the retry budget, permanent errors, leases and fencing, graceful stop, replay."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from gateway.api.app import create_app
from gateway.clock import now
from gateway.config.loader import Config
from gateway.departments import RECORD_MARGIN_SECONDS, DepartmentLink
from gateway.dispatcher import Dispatcher, _Claim
from gateway.envelopes import idempotency_key
from gateway.events import Source
from gateway.intake import ApplicationIn, submit
from gateway.operations import replay
from gateway.poller import poll_sweep
from gateway.runtime import Runtime
from gateway.simulators.city import SimulatedCity, simulated_city
from gateway.snapshot import dispatcher_line
from gateway.states import FINAL, State
from gateway.store import jobs
from gateway.store.clients import Client, create_client
from gateway.store.tables import applications, dispatch_jobs, events
from gateway.updates import Move, move, move_many
from tests.conftest import FAST, application, wait_for

CLIENT = Client(id="c-test", name="test", centre="C01", ops=False)
FAST_RETRY = {
    "base_seconds": 0.05,
    "max_seconds": 0.2,
    "jitter": 0.1,
    "in_call_attempts": 1,
    "max_attempts": 3,
}


async def submit_many(runtime: Runtime, n: int, **changes: Any) -> list[str]:
    ids = []
    for i in range(n):
        body = ApplicationIn.model_validate(application(**changes))
        ids.append((await submit(runtime, CLIENT, f"k{i}-{changes}", body)).accepted.id)
    return ids


async def statuses(runtime: Runtime, ids: list[str]) -> dict[str, str]:
    async with runtime.engine.connect() as conn:
        rows = await conn.execute(
            select(applications.c.id, applications.c.status).where(applications.c.id.in_(ids))
        )
        return {r[0]: r[1] for r in rows.all()}


async def all_in(runtime: Runtime, ids: list[str], states: set[str]) -> bool:
    return set((await statuses(runtime, ids)).values()) <= states


@pytest.fixture
async def started(runtime: Runtime) -> AsyncIterator[Dispatcher]:
    dispatcher = Dispatcher(runtime, seed=1)
    task = asyncio.create_task(dispatcher.run())
    yield dispatcher
    await dispatcher.stop(grace_seconds=2)
    await task


async def test_delivers_and_decides_without_duplicates(
    runtime: Runtime, city: SimulatedCity, started: Dispatcher
) -> None:
    ids = await submit_many(runtime, 20)
    ids += await submit_many(runtime, 10, matter_code="GF00101000", region="339900")
    await wait_for(
        lambda: all_in(runtime, ids, {s.value for s in State} - {"received", "dispatching"})
    )

    async def decided() -> bool:
        await poll_sweep(runtime)
        return await all_in(runtime, ids, {s.value for s in FINAL} | {"supplement_required"})

    await wait_for(decided)
    amr, hrss = city.states["amr"], city.states["hrss"]
    assert amr.stats()["cases"] == 20 and hrss.stats()["cases"] == 10
    assert amr.stats()["duplicates"] == 0
    # the department saw the gateway's idempotency key
    assert set(amr.by_key) == {idempotency_key(i, 1) for i in ids[:20]}
    async with runtime.engine.connect() as conn:
        case_ids = (
            (
                await conn.execute(
                    select(applications.c.department_case_id).where(applications.c.id.in_(ids))
                )
            )
            .scalars()
            .all()
        )
        assert all(case_ids) and len(set(case_ids)) == 30
        # every event is a legal step in order: received first, then forward
        first = (
            (
                await conn.execute(
                    select(events.c.to_status)
                    .where(events.c.application_id == ids[0])
                    .order_by(events.c.id)
                )
            )
            .scalars()
            .all()
        )
    assert first[:3] == ["received", "dispatching", "delivered"]


async def _with_city(example_config: Config, **overrides: Any) -> Any:
    return simulated_city(
        example_config,
        simulator_overrides={"amr": FAST, "hrss": FAST},
        department_overrides=overrides,
    )


async def test_transient_failures_back_off_then_deliver(example_config: Config) -> None:
    async with await _with_city(
        example_config, amr={"retry": FAST_RETRY | {"max_attempts": 50}}
    ) as city:
        runtime = Runtime(city.config)
        await runtime.prepare_database()
        city.states["amr"].mode = "fail503"
        dispatcher = Dispatcher(runtime, seed=2)
        task = asyncio.create_task(dispatcher.run())
        try:
            [app_id] = await submit_many(runtime, 1)

            async def attempted_twice() -> bool:
                async with runtime.engine.connect() as conn:
                    job = await jobs.job_for(conn, app_id, 1)
                    return bool(job and job.attempts >= 2 and job.state == jobs.PENDING)

            await wait_for(attempted_twice)
            async with runtime.engine.connect() as conn:
                job = await jobs.job_for(conn, app_id, 1)
            assert job is not None and "503" in (job.last_error or "")
            assert "retrying (attempt" in (await statuses_error(runtime, app_id))
            assert job.next_attempt_at > job.updated_at  # persisted backoff, not a hot loop
            city.states["amr"].mode = "ok"
            await wait_for(
                lambda: all_in(runtime, [app_id], {"delivered", "accepted", "in_review", *FINAL})
            )
            assert city.states["amr"].stats()["cases"] == 1
        finally:
            await dispatcher.stop(grace_seconds=1)
            await task
            await runtime.aclose()


async def test_retry_budget_then_failed_then_replay(example_config: Config) -> None:
    async with await _with_city(example_config, amr={"retry": FAST_RETRY}) as city:
        runtime = Runtime(city.config)
        await runtime.prepare_database()
        city.states["amr"].mode = "fail503"
        dispatcher = Dispatcher(runtime, seed=3)
        task = asyncio.create_task(dispatcher.run())
        try:
            [app_id] = await submit_many(runtime, 1)
            await wait_for(lambda: all_in(runtime, [app_id], {"failed"}))
            async with runtime.engine.connect() as conn:
                app = (
                    await conn.execute(select(applications).where(applications.c.id == app_id))
                ).one()
                job = await jobs.job_for(conn, app_id, 1)
            assert "gave up after 3 attempts" in app.last_error
            assert job is not None and job.state == jobs.DEAD and job.attempts == 3
            city.states["amr"].mode = "ok"
            change = await replay(runtime, app_id, actor="test")
            assert change.to_status is State.DISPATCHING
            await wait_for(
                lambda: all_in(
                    runtime, [app_id], {"delivered", "accepted", "in_review", *FINAL} - {"failed"}
                )
            )
            assert city.states["amr"].stats()["cases"] == 1
        finally:
            await dispatcher.stop(grace_seconds=1)
            await task
            await runtime.aclose()


async def test_permanent_error_fails_at_once(example_config: Config) -> None:
    wrong = FAST | {"auth_token": "not-the-configured-token"}
    async with simulated_city(example_config, simulator_overrides={"amr": wrong}) as city:
        runtime = Runtime(city.config)
        await runtime.prepare_database()
        dispatcher = Dispatcher(runtime)
        try:
            [app_id] = await submit_many(runtime, 1)
            await dispatcher.sweep()
            await dispatcher.drain()
            async with runtime.engine.connect() as conn:
                app = (
                    await conn.execute(select(applications).where(applications.c.id == app_id))
                ).one()
                job = await jobs.job_for(conn, app_id, 1)
            assert app.status == "failed" and "401" in app.last_error
            assert job is not None and job.attempts == 1
        finally:
            await runtime.aclose()


async def test_business_rejection_becomes_status(example_config: Config) -> None:
    strict = FAST | {"required_fields": ["form.business_name"]}
    async with simulated_city(example_config, simulator_overrides={"amr": strict}) as city:
        runtime = Runtime(city.config)
        await runtime.prepare_database()
        dispatcher = Dispatcher(runtime)
        try:
            [app_id] = await submit_many(runtime, 1)
            await dispatcher.sweep()
            await dispatcher.drain()
            async with runtime.engine.connect() as conn:
                steps = (
                    await conn.execute(
                        select(events.c.to_status, events.c.detail)
                        .where(events.c.application_id == app_id)
                        .order_by(events.c.id)
                    )
                ).all()
            assert "not_accepted" in [s for s, _ in steps], steps
            assert "reason" in dict(steps)["not_accepted"]
        finally:
            await runtime.aclose()


async def test_expired_lease_is_taken_over_and_fenced(
    runtime: Runtime, city: SimulatedCity
) -> None:
    [app_id] = await submit_many(runtime, 1)
    async with runtime.engine.begin() as conn:
        [job] = await jobs.claim(conn, "amr", "dead-worker", 10, lease_seconds=60)
        # the worker died: its lease ran out
        await conn.execute(update(dispatch_jobs).values(next_attempt_at=now()))
    dispatcher = Dispatcher(runtime, owner="new-worker")
    assert await dispatcher.sweep() == 1
    await dispatcher.drain()
    assert (await statuses(runtime, [app_id]))[app_id] in {
        "delivered",
        "accepted",
        "in_review",
        *FINAL,
    }
    async with runtime.engine.begin() as conn:
        # the dead worker's late result is refused by the fence
        assert not await jobs.finish(conn, job.id, "dead-worker", state=jobs.DONE)
    assert city.states["amr"].stats()["cases"] == 1


async def test_stop_releases_leases(runtime: Runtime, city: SimulatedCity) -> None:
    city.states["amr"].mode = "timeout"
    ids = await submit_many(runtime, 3)
    dispatcher = Dispatcher(runtime, owner="stopping-worker")
    assert await dispatcher.sweep() == 3
    await dispatcher.stop(grace_seconds=0.2)
    async with runtime.engine.connect() as conn:
        states = (
            await conn.execute(
                select(dispatch_jobs.c.state, dispatch_jobs.c.lease_owner).where(
                    dispatch_jobs.c.application_id.in_(ids)
                )
            )
        ).all()
    assert states == [(jobs.PENDING, None)] * 3


async def test_concurrent_dispatchers_never_double_deliver(
    runtime: Runtime, city: SimulatedCity
) -> None:
    ids = await submit_many(runtime, 60)
    workers = [Dispatcher(runtime, owner=f"w{i}") for i in range(3)]
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        await wait_for(lambda: all_in(runtime, ids, {"delivered", "accepted", "in_review", *FINAL}))
    finally:
        for w in workers:
            await w.stop(grace_seconds=1)
        await asyncio.gather(*tasks)
    stats = city.states["amr"].stats()
    assert stats["cases"] == 60 and stats["submissions"] == 60 and stats["duplicates"] == 0
    async with runtime.engine.connect() as conn:
        delivered = (
            await conn.execute(
                select(func.count()).select_from(events).where(events.c.to_status == "delivered")
            )
        ).scalar_one()
    assert delivered == 60


async def test_unavailable_department_is_explained(runtime: Runtime) -> None:
    cfg = runtime.config
    depts = dict(cfg.departments)
    depts["nrp"] = depts["nrp"].model_copy(update={"enabled": False})
    depts["civil"] = depts["civil"].model_copy(update={"connector": "carrier-pigeon"})
    rt = Runtime(dataclasses.replace(cfg, departments=depts), engine=runtime.engine)
    try:
        assert "nrp" not in rt.connectors and "disabled" in rt.unavailable["nrp"]
        assert "civil" not in rt.connectors
        assert "'carrier-pigeon' is not installed" in rt.unavailable["civil"]
    finally:
        await rt.http.aclose()


async def statuses_error(runtime: Runtime, app_id: str) -> str:
    async with runtime.engine.connect() as conn:
        q = select(applications.c.last_error).where(applications.c.id == app_id)
        return str((await conn.execute(q)).scalar_one())


def _with_department(runtime: Runtime, **changes: Any) -> Runtime:
    cfg = runtime.config
    depts = {**cfg.departments, "amr": cfg.departments["amr"].model_copy(update=changes)}
    return Runtime(dataclasses.replace(cfg, departments=depts), engine=runtime.engine)


def _link(runtime: Runtime, code: str = "amr") -> DepartmentLink:
    link = runtime.link(code)
    assert link is not None
    return link


def _count_calls(runtime: Runtime, department: str = "amr") -> list[str]:
    """The application ids the department's connector is called with, in order (each a call
    at the department)."""
    connector = _link(runtime, department).connector
    call, calls = connector.submit, []

    async def counted(envelope: Any) -> Any:
        calls.append(envelope.application_id)
        return await call(envelope)

    connector.submit = counted  # type: ignore[method-assign]
    return calls


async def test_concurrency_cap_limits_calls_and_the_queue(
    runtime: Runtime, city: SimulatedCity
) -> None:
    city.states["amr"].mode = "timeout"  # deliveries hang: slots stay taken
    await submit_many(runtime, 5)
    capped = _with_department(runtime, concurrency=2)
    calls = _count_calls(capped)
    dispatcher = Dispatcher(capped, owner="capped")
    try:
        # two calls in the two slots, two more claimed into the queue (at most the
        # concurrency), the fifth left in the database
        assert await dispatcher.sweep() == 4
        assert dispatcher.inflight["amr"] == 2 and dispatcher.queued() == {"amr": 2}
        await wait_for(lambda: len(calls) == 2)
        assert await dispatcher.sweep() == 0  # both slots busy, the queue full
        assert dispatcher.inflight["amr"] == 2 and dispatcher.queued() == {"amr": 2}
        assert _link(capped).slots.used == 2
        assert "queued {'amr': 2}" in dispatcher_line(dispatcher)
        async with capped.engine.connect() as conn:
            held = await conn.execute(
                select(func.count()).where(dispatch_jobs.c.lease_owner == "capped")
            )
            assert held.scalar_one() == 4
    finally:
        await dispatcher.stop(grace_seconds=0.1)
        await capped.http.aclose()
    assert len(calls) == 2  # the queued jobs were never called


async def test_queued_jobs_never_exceed_the_cap_in_calls(
    runtime: Runtime, city: SimulatedCity
) -> None:
    """However the queue fills, calls at the department stay within the concurrency."""
    ids = await submit_many(runtime, 12)
    capped = _with_department(runtime, concurrency=2)
    connector = _link(capped).connector
    call, gate = connector.submit, asyncio.Event()
    now_in, most = [0], [0]

    async def watched(envelope: Any) -> Any:
        now_in[0] += 1
        most[0] = max(most[0], now_in[0])
        try:
            await gate.wait()
            return await call(envelope)
        finally:
            now_in[0] -= 1

    connector.submit = watched  # type: ignore[method-assign]
    dispatcher = Dispatcher(capped, owner="capped")
    task = asyncio.create_task(dispatcher.run())
    try:
        await wait_for(lambda: now_in[0] == 2 and dispatcher.queued() == {"amr": 2})
        assert await dispatcher.sweep() == 0 and now_in[0] == 2
        gate.set()
        await wait_for(lambda: all_in(runtime, ids, AT_OR_PAST_DELIVERY))
    finally:
        gate.set()
        await dispatcher.stop(grace_seconds=1)
        await task
        await capped.http.aclose()
    assert most[0] == 2
    stats = city.states["amr"].stats()
    assert stats["cases"] == 12 and stats["duplicates"] == 0


async def test_rate_limit_limits_calls_and_the_queue(runtime: Runtime, city: SimulatedCity) -> None:
    city.states["amr"].mode = "timeout"
    await submit_many(runtime, 10)
    # one call per 1000 s: a full bucket holds one call and the next token is 1000 s away, so no
    # pause between the two sweeps (a busy machine) can refill it
    limited = _with_department(runtime, rate_limit_per_second=0.001, concurrency=50)
    calls = _count_calls(limited)
    dispatcher = Dispatcher(limited, owner="limited")
    # a lease of an hour: the rate can start 3 more calls before their start-by time (about
    # an hour less a call and the margin); with the default lease (60 s) none
    dispatcher.settings = dispatcher.settings.model_copy(update={"lease_seconds": 3600.0})
    short = Dispatcher(limited, owner="short-lease")
    try:
        assert await dispatcher.sweep() == 4
        assert dispatcher.inflight == {"amr": 1} and dispatcher.queued() == {"amr": 3}
        assert await dispatcher.sweep() == 0  # no token for a call, the queue as big as the rate
        assert dispatcher.inflight == {"amr": 1} and dispatcher.queued() == {"amr": 3}
        assert await short.sweep() == 0  # no token, and the rate starts none within its lease
        await wait_for(lambda: len(calls) == 1)
    finally:
        await dispatcher.stop(grace_seconds=0.1)
        await short.stop(grace_seconds=0.1)
        await limited.http.aclose()
    assert len(calls) == 1


async def test_breaker_opens_after_repeated_transient_failures(
    example_config: Config,
) -> None:
    retry = FAST_RETRY | {"max_attempts": 50, "base_seconds": 0.001, "max_seconds": 0.001}
    # an hour's cool-down: the breaker cannot close again however slow the sweeps are
    breaker = {"threshold": 5, "cooldown_seconds": 3600}
    async with await _with_city(example_config, amr={"retry": retry, "breaker": breaker}) as city:
        runtime = Runtime(city.config)
        await runtime.prepare_database()
        city.states["amr"].mode = "fail503"
        dispatcher = Dispatcher(runtime, owner="breaker")
        try:
            await submit_many(runtime, 1)
            for _ in range(5):  # five failed calls in a row
                await wait_for(lambda: _due(runtime))
                assert await dispatcher.sweep() == 1
                await dispatcher.drain()
            assert dispatcher.breaker_open("amr")
            await wait_for(lambda: _due(runtime))
            assert await dispatcher.sweep() == 0  # open: nothing is claimed for amr
        finally:
            await dispatcher.stop(grace_seconds=0.1)
            await runtime.aclose()


async def _due(runtime: Runtime) -> bool:
    async with runtime.engine.connect() as conn:
        q = (
            select(func.count())
            .select_from(dispatch_jobs)
            .where(dispatch_jobs.c.state == jobs.PENDING, dispatch_jobs.c.next_attempt_at <= now())
        )
        return bool((await conn.execute(q)).scalar_one())


async def test_ops_retry_endpoint_replays_a_failed_case(example_config: Config) -> None:
    async with await _with_city(example_config, amr={"retry": FAST_RETRY}) as city:
        runtime = Runtime(city.config)
        await runtime.prepare_database()
        async with runtime.engine.begin() as conn:
            _c, key = await create_client(conn, name="ops", centre=None, ops=True)
            _c, centre_key = await create_client(conn, name="c", centre="C01", ops=False)
        ops = {"Authorization": f"Bearer {key}"}
        transport = httpx.ASGITransport(app=create_app(runtime))
        city.states["amr"].mode = "fail503"
        dispatcher = Dispatcher(runtime, seed=4)
        task = asyncio.create_task(dispatcher.run())
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as api:
                [app_id] = await submit_many(runtime, 1)
                await wait_for(lambda: all_in(runtime, [app_id], {"failed"}))
                failures = (await api.get("/v1/ops/failures", headers=ops)).json()["items"]
                assert [f["id"] for f in failures] == [app_id]
                assert "gave up after 3 attempts" in failures[0]["last_error"]
                denied = await api.post(
                    f"/v1/ops/applications/{app_id}/retry",
                    headers={"Authorization": f"Bearer {centre_key}"},
                )
                assert denied.status_code == 403
                city.states["amr"].mode = "ok"
                resp = await api.post(f"/v1/ops/applications/{app_id}/retry", headers=ops)
                assert resp.status_code == 200 and resp.json()["status"] == "dispatching"
                await wait_for(lambda: all_in(runtime, [app_id], AT_OR_PAST_DELIVERY))
                again = await api.post(f"/v1/ops/applications/{app_id}/retry", headers=ops)
                assert again.status_code == 409  # not failed any more: nothing to replay
            assert city.states["amr"].stats()["cases"] == 1
        finally:
            await dispatcher.stop(grace_seconds=1)
            await task
            await runtime.aclose()


AT_OR_PAST_DELIVERY = {"delivered", "accepted", "in_review", *FINAL} - {"failed"}


async def test_a_receipt_recorded_after_the_case_failed_keeps_the_reason(
    runtime: Runtime,
) -> None:
    """File drop: the back office may refuse a request (its error folder, read by the result
    pull) before the dispatcher has recorded the request's delivery. The late receipt keeps
    its case id but must not clear why the case failed (make test-10x found the race)."""
    [app_id] = await submit_many(runtime, 1)
    async with runtime.engine.begin() as conn:
        await move(
            conn,
            app_id,
            [State.DISPATCHING, State.FAILED],
            source=Source.POLL,
            actor="test",
            extra={"last_error": "the department refused the request file"},
        )
        receipt = Move(
            app_id,
            [State.DELIVERED],
            {"case_id": "C-1"},
            1,
            {"department_case_id": "C-1", "last_error": None, "next_poll_at": None},
            keep_extra=True,
        )
        assert await move_many(conn, [receipt], source=Source.DISPATCH, actor="test") == [[]]
    async with runtime.engine.connect() as conn:
        row = (await conn.execute(select(applications).where(applications.c.id == app_id))).one()
    assert row.status == State.FAILED.value
    assert row.department_case_id == "C-1"
    assert row.last_error == "the department refused the request file"


async def test_a_finished_call_starts_the_next_queued_job_at_once(
    runtime: Runtime, city: SimulatedCity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When a call ends, the next queued job is called in its slot: no claim transaction and
    no recording in between (the first answer is held unrecorded), and no sweep."""
    await submit_many(runtime, 2)
    one_slot = _with_department(runtime, concurrency=1)
    dispatcher = Dispatcher(one_slot, owner="one-slot")
    connector = _link(one_slot).connector
    call_may_end, recording = asyncio.Event(), asyncio.Event()
    call, record = connector.submit, dispatcher._recorder.submit
    claims: list[str] = []
    claim = jobs.claim_cases

    async def counted(conn: Any, department: str, *args: Any) -> Any:
        claims.append(department)
        return await claim(conn, department, *args)

    async def gated(envelope: Any) -> Any:
        receipt = await call(envelope)
        await call_may_end.wait()
        return receipt

    async def held(item: Any) -> Any:  # answers wait here, before their transaction
        if not isinstance(item, _Claim):  # a claim goes through the recorder on SQLite
            await recording.wait()
        return await record(item)

    monkeypatch.setattr(jobs, "claim_cases", counted)
    connector.submit = gated  # type: ignore[method-assign]
    dispatcher._recorder.submit = held  # type: ignore[method-assign]
    try:
        assert await dispatcher.sweep() == 2  # one called, one queued
        assert dispatcher.queued() == {"amr": 1}
        asked = len(claims)
        await wait_for(lambda: city.states["amr"].stats()["cases"] == 1)
        one_slot.wakeup.clear()
        call_may_end.set()
        await wait_for(lambda: city.states["amr"].stats()["cases"] == 2)
        assert await _done_jobs(runtime) == 0  # the first answer is still unrecorded
        assert len(claims) == asked  # no claim in between
        assert dispatcher.queued() == {}
        assert one_slot.wakeup.is_set()  # and the loop was woken to fill the queue again
        recording.set()
        await wait_for(lambda: _done_jobs(runtime, 2))
    finally:
        call_may_end.set()
        recording.set()
        await dispatcher.stop(grace_seconds=2)
        await one_slot.http.aclose()
    assert city.states["amr"].stats()["duplicates"] == 0


async def test_a_queued_job_past_its_start_by_is_not_called(
    runtime: Runtime, city: SimulatedCity
) -> None:
    """A queued job is called only while its call and the recording of its answer end within
    its lease: past its start-by time it is dropped, its lease left to run out, and another
    claim delivers it (once)."""
    ids = await submit_many(runtime, 2)
    one_slot = _with_department(runtime, concurrency=1)
    clock = [1000.0]
    dispatcher = Dispatcher(one_slot, owner="slow", clock=lambda: clock[0])
    calls = _count_calls(one_slot)
    connector = _link(one_slot).connector
    call, call_may_end = connector.submit, asyncio.Event()

    async def gated(envelope: Any) -> Any:
        receipt = await call(envelope)
        await call_may_end.wait()
        return receipt

    connector.submit = gated  # type: ignore[method-assign]
    link = _link(one_slot)
    start_by = (
        1000.0
        + link.lease_seconds(dispatcher.settings.lease_seconds)
        - link.call_seconds
        - RECORD_MARGIN_SECONDS
    )
    try:
        assert await dispatcher.sweep() == 2
        [queued] = dispatcher._queues["amr"]
        assert queued.start_by == start_by
        assert start_by - 1000.0 >= link.call_seconds  # one call's wait, as the lease allows
        await wait_for(lambda: len(calls) == 1)
        clock[0] = start_by + 0.001  # the first call took (nearly) all the queued job's time
        call_may_end.set()
        await wait_for(lambda: dispatcher.late == {"amr": 1})
        await wait_for(lambda: _done_jobs(runtime, 1))
        assert len(calls) == 1 and dispatcher.queued() == {}
        late = [i for i in ids if i != calls[0]]
        async with runtime.engine.begin() as conn:
            job = await jobs.job_for(conn, late[0], 1)
            assert job is not None and (job.state, job.lease_owner) == (jobs.LEASED, "slow")
            # its lease runs out
            await conn.execute(
                update(dispatch_jobs)
                .where(dispatch_jobs.c.id == job.id)
                .values(next_attempt_at=now())
            )
        other = Dispatcher(runtime, owner="other")
        assert await other.sweep() == 1
        await other.drain()
    finally:
        call_may_end.set()
        await dispatcher.stop(grace_seconds=2)
        await one_slot.http.aclose()
    assert await all_in(runtime, ids, AT_OR_PAST_DELIVERY)
    assert calls == [calls[0]]
    stats = city.states["amr"].stats()
    assert stats["cases"] == 2 and stats["submissions"] == 2 and stats["duplicates"] == 0


async def test_a_queued_job_whose_task_starts_past_its_start_by_is_not_called(
    runtime: Runtime, city: SimulatedCity
) -> None:
    """The queue hands a job to its task in time, but the task first runs after the job's
    start-by time (a busy event loop): the task does not call it either. The slot is given
    back, the job counted late and its lease left to run out."""
    ids = await submit_many(runtime, 2)
    one_slot = _with_department(runtime, concurrency=1)
    reads: list[float] = []  # the clock's next readings, one a read; then the last one again
    last = [1000.0]

    def clock() -> float:
        if reads:
            last[0] = reads.pop(0)
        return last[0]

    dispatcher = Dispatcher(one_slot, owner="busy", clock=clock)
    calls = _count_calls(one_slot)
    link = _link(one_slot)
    call, call_may_end = link.connector.submit, asyncio.Event()

    async def gated(envelope: Any) -> Any:
        receipt = await call(envelope)
        await call_may_end.wait()
        return receipt

    link.connector.submit = gated  # type: ignore[method-assign]
    handed: list[str] = []  # jobs given to a task of their own
    start = dispatcher._start

    def spied(link_: Any, job: Any, envelope: Any, start_by: float | None = None) -> None:
        handed.append(job.application_id)
        start(link_, job, envelope, start_by)

    dispatcher._start = spied  # type: ignore[method-assign,assignment]
    try:
        assert await dispatcher.sweep() == 2
        [queued] = dispatcher._queues["amr"]
        await wait_for(lambda: len(calls) == 1)
        # the first call ends in time for the queue to hand its job on (the queue's reading);
        # the job's own task reads the clock past its start-by
        reads[:] = [queued.start_by - 1.0, queued.start_by + 0.001]
        call_may_end.set()
        await wait_for(lambda: dispatcher.late == {"amr": 1})
        await wait_for(lambda: _done_jobs(runtime, 1))
        assert handed == [calls[0], queued.job.application_id]  # handed on, by the queue
        assert calls == [calls[0]] and dispatcher.queued() == {}
        await wait_for(lambda: dispatcher.inflight["amr"] == 0)
        assert link.reserve(1) == 1  # its slot was given back
        link.unreserve(1)
        async with runtime.engine.connect() as conn:
            job = await jobs.job_for(conn, queued.job.application_id, 1)
        assert job is not None and (job.state, job.lease_owner) == (jobs.LEASED, "busy")
    finally:
        call_may_end.set()
        await dispatcher.stop(grace_seconds=2)
        await one_slot.http.aclose()
    assert sorted(ids) == sorted({*calls, queued.job.application_id})
    assert city.states["amr"].stats()["submissions"] == 1


async def test_an_open_breaker_hands_the_queue_back(example_config: Config) -> None:
    """The breaker opens under queued jobs: they are not called but released (due again at
    once), and delivered when the department is back."""
    retry = FAST_RETRY | {"max_attempts": 50}
    breaker = {"threshold": 1, "cooldown_seconds": 3600}
    async with await _with_city(
        example_config, amr={"retry": retry, "breaker": breaker, "concurrency": 1}
    ) as city:
        runtime = Runtime(city.config)
        await runtime.prepare_database()
        city.states["amr"].mode = "fail503"
        calls = _count_calls(runtime)
        dispatcher = Dispatcher(runtime, owner="breaker")
        task = None
        try:
            ids = await submit_many(runtime, 2)
            assert await dispatcher.sweep() == 2  # one called (and failing), one queued
            await wait_for(lambda: _held_by(runtime, "breaker", 0))
            assert dispatcher.breaker_open("amr") and dispatcher.queued() == {}
            assert len(calls) == 1
            async with runtime.engine.connect() as conn:
                second = await jobs.job_for(conn, next(i for i in ids if i != calls[0]), 1)
            assert second is not None and second.state == jobs.PENDING
            assert second.attempts == 0  # never tried: handed back as it was
            assert await dispatcher.sweep() == 0  # open: nothing claimed
            city.states["amr"].mode = "ok"
            breaker_ = _link(runtime).breaker
            breaker_.clock = lambda: breaker_.open_until + 1  # the cool-down is over
            task = asyncio.create_task(dispatcher.run())
            await wait_for(lambda: all_in(runtime, ids, AT_OR_PAST_DELIVERY))
        finally:
            await dispatcher.stop(grace_seconds=1)
            if task is not None:
                await task
            await runtime.aclose()
        assert len(calls) == 3  # the failed one, then each once
        stats = city.states["amr"].stats()
        assert stats["cases"] == 2 and stats["duplicates"] == 0


async def test_stop_clears_the_queue_and_its_jobs_are_claimable(
    runtime: Runtime, city: SimulatedCity
) -> None:
    city.states["amr"].mode = "timeout"
    ids = await submit_many(runtime, 3)
    one_slot = _with_department(runtime, concurrency=1)
    calls = _count_calls(one_slot)
    dispatcher = Dispatcher(one_slot, owner="stopping")
    try:
        assert await dispatcher.sweep() == 2
        assert dispatcher.queued() == {"amr": 1}
        await wait_for(lambda: len(calls) == 1)
    finally:
        await dispatcher.stop(grace_seconds=0.1)
    assert dispatcher.queued() == {}
    assert await _held_by(runtime, "stopping", 0)
    city.states["amr"].mode = "ok"
    other = Dispatcher(runtime, owner="next")
    try:
        assert await other.sweep() == 3
        await other.drain()
        assert await all_in(runtime, ids, AT_OR_PAST_DELIVERY)
    finally:
        await one_slot.http.aclose()
    assert len(calls) == 1  # the queued job was not called before stop
    stats = city.states["amr"].stats()
    assert stats["cases"] == 3 and stats["duplicates"] == 0


async def _held_by(runtime: Runtime, owner: str, n: int) -> bool:
    """Whether ``owner`` holds exactly ``n`` leased jobs."""
    async with runtime.engine.connect() as conn:
        q = select(func.count()).where(
            dispatch_jobs.c.lease_owner == owner, dispatch_jobs.c.state == jobs.LEASED
        )
        return int((await conn.execute(q)).scalar_one()) == n


async def _done_jobs(runtime: Runtime, n: int | None = None) -> int | bool:
    """How many jobs are done (or, given ``n``, whether that many are)."""
    async with runtime.engine.connect() as conn:
        q = select(func.count()).select_from(dispatch_jobs).where(dispatch_jobs.c.state == "done")
        done = int((await conn.execute(q)).scalar_one())
    return done if n is None else done == n


async def test_a_sweep_claims_every_department_in_one_transaction_on_sqlite(
    runtime: Runtime, city: SimulatedCity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite every transaction takes the one write lock: a sweep's claims for all the
    departments with free slots are one transaction (they were one each, queued one after the
    other behind the recorder's and the API's). PostgreSQL keeps one per department."""
    for code in ("amr", "hrss"):
        city.states[code].mode = "timeout"  # deliveries hang: slots stay taken
    ids = await submit_many(runtime, 3)
    ids += await submit_many(runtime, 2, matter_code="GF00101000", region="339900")
    claimed_in: list[tuple[str, object]] = []
    claim = jobs.claim_cases

    async def watched(conn: Any, department: str, *args: Any) -> Any:
        claimed_in.append((department, conn.get_transaction()))
        return await claim(conn, department, *args)

    monkeypatch.setattr(jobs, "claim_cases", watched)
    dispatcher = Dispatcher(runtime, owner="one-sweep")
    try:
        assert await dispatcher.sweep() == 5
        assert dispatcher.inflight == {"amr": 3, "hrss": 2}
        # every department with free slots was asked (those with nothing due too)
        assert {d for d, _t in claimed_in} == {link.code for link in runtime.links()}
        transactions = {id(t) for _d, t in claimed_in}
        each = runtime.engine.dialect.name == "postgresql"
        assert len(transactions) == (len(claimed_in) if each else 1)
        assert set((await statuses(runtime, ids)).values()) == {"dispatching"}
    finally:
        await dispatcher.stop(grace_seconds=0.1)


async def test_on_sqlite_a_claim_joins_the_answers_being_recorded(
    runtime: Runtime, city: SimulatedCity
) -> None:
    """On SQLite a sweep's claim is stored in the recorder's batch: the answers that freed
    the slots and the claim that fills them are one transaction, not two in a row on the one
    connection."""
    if runtime.engine.dialect.name == "postgresql":
        pytest.skip("PostgreSQL claims in a transaction of its own (row locks in id order)")
    from gateway.dispatcher import _Work

    await submit_many(runtime, 3)
    one_slot = _with_department(runtime, concurrency=1)
    dispatcher = Dispatcher(one_slot, owner="joined")
    calls = _count_calls(one_slot)
    connector = _link(one_slot).connector
    call_may_end, entered, unblock = asyncio.Event(), asyncio.Event(), asyncio.Event()
    call, store = connector.submit, dispatcher._recorder.store
    batches: list[list[str]] = []

    async def gated(envelope: Any) -> Any:
        receipt = await call(envelope)
        await call_may_end.wait()
        return receipt

    async def watched(conn: Any, items: list[Any]) -> Any:
        batches.append([type(i).__name__ for i in items])
        return await store(conn, items)

    async def blocking(_conn: Any) -> list[Any]:  # holds the recorder's batch open
        entered.set()
        await unblock.wait()
        return []

    connector.submit = gated  # type: ignore[method-assign]
    dispatcher._recorder.store = watched
    queue = dispatcher._recorder._queue
    blocker = None
    try:
        assert await dispatcher.sweep() == 2  # one called, one queued
        blocker = asyncio.create_task(dispatcher._recorder.submit(_Work("blocker", blocking)))
        await wait_for(entered.is_set)
        # the first call ends, the queued job is called in its slot and ends: both answers
        # queue behind the blocker
        call_may_end.set()
        await wait_for(lambda: queue.qsize() == 2 and len(calls) == 2)
        sweeping = asyncio.create_task(dispatcher.sweep())  # the freed slot's claim queues too
        await wait_for(lambda: queue.qsize() == 3)
        unblock.set()
        assert await sweeping == 1
        assert ["_Outcome", "_Outcome", "_Claim"] in batches, batches
        await wait_for(lambda: _done_jobs(runtime, 3))
    finally:
        call_may_end.set()
        unblock.set()
        if blocker is not None:
            await blocker
        await dispatcher.stop(grace_seconds=2)
        await one_slot.http.aclose()
