"""The example city's SOAP department (nrp) end to end: intake -> Dispatcher -> soap connector
-> spyne department -> poll_sweep, on SQLite and PostgreSQL, until every application is final."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select

from gateway.config.loader import Config
from gateway.dispatcher import Dispatcher
from gateway.envelopes import idempotency_key
from gateway.poller import poll_sweep
from gateway.runtime import Runtime
from gateway.simulators.city import SimulatedCity, simulated_city
from gateway.states import FINAL, State
from gateway.store.tables import applications, events
from tests.conftest import wait_for
from tests.test_dispatch import all_in, submit_many

NRP_FAST = {"decision_delay_seconds": 0.3}
MATTERS = [("XK00301000", "339900"), ("XK00304000", "339901101"), ("GG00305000", "339900")]


@pytest.fixture
async def nrp_city(example_config: Config) -> AsyncIterator[SimulatedCity]:
    async with simulated_city(
        example_config,
        simulator_overrides={"nrp": NRP_FAST},
        department_overrides={"nrp": {"poll_interval_seconds": 0.2}},
    ) as city:
        yield city


async def test_nrp_applications_reach_a_final_state(nrp_city: SimulatedCity) -> None:
    runtime = Runtime(nrp_city.config)
    await runtime.prepare_database()
    assert "nrp" in runtime.connectors, runtime.unavailable
    dispatcher = Dispatcher(runtime, seed=7)
    task = asyncio.create_task(dispatcher.run())
    try:
        ids: list[str] = []
        for matter, region in MATTERS:
            ids += await submit_many(runtime, 8, matter_code=matter, region=region)
        after_dispatch = {s.value for s in State} - {"received", "dispatching"}
        await wait_for(lambda: all_in(runtime, ids, after_dispatch), timeout=120)

        async def decided() -> bool:
            await poll_sweep(runtime)
            return await all_in(runtime, ids, {s.value for s in FINAL} | {"supplement_required"})

        await wait_for(decided, timeout=120)
    finally:
        await dispatcher.stop(grace_seconds=2)
        await task
    try:
        nrp = nrp_city.states["nrp"]
        # One case per application: the effect is exactly once. A re-send answered from the
        # department's idempotency record (``duplicates``) is allowed: on a loaded machine a
        # call can outlive its timeout and be retried, which is what the key is for.
        assert nrp.stats()["cases"] == 24
        assert set(nrp.by_key) == {idempotency_key(i, 1) for i in ids}
        async with runtime.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(
                        applications.c.id, applications.c.status, applications.c.department_case_id
                    ).where(applications.c.id.in_(ids))
                )
            ).all()
            approved_cases = {c.id for c in nrp.cases.values() if c.outcome == "approve"}
            approved = [r.id for r in rows if r.department_case_id in approved_cases]
            details = (
                await conn.execute(
                    select(events.c.application_id, events.c.detail, events.c.source).where(
                        events.c.application_id.in_(approved), events.c.to_status == "approved"
                    )
                )
            ).all()
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
        assert {r.department_case_id for r in rows} == set(nrp.cases)
        # the seeded mix approves most cases, each with its certificate stored by content hash
        assert approved and {d.application_id for d in details} == set(approved)
        # a submit re-sent after a timed-out answer (a loaded machine) can be answered with the
        # case already approved: that answer is a receipt, which carries no documents (the
        # refetch task fetches them; this test runs no daemon). Every other approval has them.
        from_receipts = [d for d in details if d.source == "dispatch"]
        assert len(from_receipts) <= nrp.stats()["duplicates"]
        for detail in (d.detail for d in details if d.source != "dispatch"):
            [doc] = detail["documents"]
            content = await runtime.blobs.get(doc["sha256"])
            assert content.startswith(b"%PDF-1.4") and doc["size"] == len(content)
        assert first[:3] == ["received", "dispatching", "delivered"]
    finally:
        await runtime.aclose()
