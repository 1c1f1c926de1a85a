"""The SOAP change feed (issue 19): a department offering a "changes since" operation
(``ListChanges`` on the simulated spyne department), read by the soap connector when the
department file names it in ``[options.changes]``; against the real spyne server on loopback."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import select

from gateway import changes
from gateway.config.loader import Config
from gateway.dispatcher import Dispatcher
from gateway.poller import poll_every
from gateway.runtime import Runtime
from gateway.simulators.city import SimulatedCity, simulated_city
from gateway.store.tables import applications, events
from tests.conftest import wait_for
from tests.test_dispatch import all_in, submit_many
from tests.test_soap_connector import EPOCH, FAR, envelope, make_connector, soap_department


async def test_list_changes_pages_whole_cases_changed_in_the_window() -> None:
    """Each change is the whole case (status, opinion, certificate, our key), page after page;
    a case that changed before the window is not in it."""
    async with (
        httpx.AsyncClient(timeout=60) as http,
        soap_department(mix={"approve": 1.0}) as (url, state),
    ):
        connector = make_connector(http, url, changes={"page_size": 2})
        assert connector.offers_changes()
        assert not make_connector(http, url).offers_changes()  # no [options.changes]
        receipts = [await connector.submit(envelope(f"k{i}")) for i in range(4)]
        with state.lock:
            state.cases[receipts[3].case_id].created_at -= dt.timedelta(hours=2)
        since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        changed = [u async for u in connector.changes(since, FAR)]
        everything = [u async for u in connector.changes(EPOCH, FAR)]
    assert [u.case_id for u in changed] == [r.case_id for r in receipts[:3]]
    assert len(everything) == 4
    first = changed[0]
    assert first.status == "9" and first.detail == "准予许可" and first.idempotency_key == "k0"
    assert first.occurred_at is not None and first.occurred_at.tzinfo is not None
    [certificate] = first.documents
    assert certificate.content is not None and certificate.content.startswith(b"%PDF-1.4")


@pytest.fixture
async def nrp_city(example_config: Config) -> AsyncIterator[SimulatedCity]:
    """The example city's SOAP department with its feed named, deciding nothing by itself."""
    async with simulated_city(
        example_config,
        simulator_overrides={"nrp": {"decision_delay_seconds": 3600}},
        department_overrides={
            "nrp": {"poll_interval_seconds": 0.2, "options": {"changes": {"page_size": 2}}}
        },
    ) as city:
        yield city


async def test_the_daemon_learns_a_soap_decision_from_the_feed(nrp_city: SimulatedCity) -> None:
    runtime = Runtime(nrp_city.config)
    await runtime.prepare_database()
    try:
        link = runtime.link("nrp")
        assert link is not None and link.offers_changes() and not link.changes_by_sequence()
        assert poll_every(link) == 7 * 86400  # while the feed keeps up: the safety net only
        ids = await submit_many(runtime, 3, matter_code="XK00301000", region="339900")
        dispatcher = Dispatcher(runtime)

        async def delivered() -> bool:  # a call that timed out on a busy machine is retried
            await dispatcher.sweep()
            await dispatcher.drain()
            return await all_in(runtime, ids, {"delivered"})

        await wait_for(delivered, timeout=60)
        first = await changes.sync_department(runtime, "nrp")
        assert first["seen"] == 3 and first["unmatched"] == 0  # delivered: nothing new

        nrp = nrp_city.states["nrp"]
        async with runtime.engine.connect() as conn:
            case_of = dict(
                (
                    await conn.execute(
                        select(applications.c.department_case_id, applications.c.id).where(
                            applications.c.id.in_(ids)
                        )
                    )
                ).all()
            )
        decided = sorted(case_of)[:2]
        with nrp.lock:
            for case_id in decided:
                nrp.cases[case_id].forced = ("9", nrp.clock())
        out = await changes.sync_department(runtime, "nrp")
        assert out["applied"] >= 2 and out["unmatched"] == 0
        again = await changes.sync_department(runtime, "nrp")  # the overlap reads them again
        assert again["seen"] >= 2 and again["applied"] == 0

        async with runtime.engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(events.c.application_id, events.c.actor).where(
                        events.c.application_id.in_(ids), events.c.to_status == "approved"
                    )
                )
            ).all()
        assert sorted(r.application_id for r in rows) == sorted(case_of[c] for c in decided)
        assert {r.actor for r in rows} == {"changes/nrp"}
    finally:
        await runtime.aclose()
