"""Supplements (补正): the department's list is on the case; materials handed in re-send the case
as the next version with the same idempotency lineage; events bound the paused clock."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from gateway.api.app import create_app
from gateway.config.loader import Config
from gateway.dispatcher import Dispatcher
from gateway.poller import poll_sweep
from gateway.runtime import Runtime
from gateway.simulators.city import simulated_city
from gateway.store.clients import create_client
from gateway.store.tables import dispatch_jobs
from tests.conftest import FAST, wait_for
from tests.handout_fixtures import decide, quiet_runtime, status_of, submit

# a first version is asked for a supplement (all but certainly); a re-sent one is decided
ASK_FIRST = {"supplement": 1.0, "approve": 1e-9}
ITEMS = ["营业场所使用证明", "法定代表人身份证明复印件"]


@pytest.fixture
async def runtime(example_config: Config) -> AsyncIterator[Runtime]:
    """No simulated departments for the API tests: their answers are applied directly."""
    async with quiet_runtime(example_config) as rt:
        yield rt


async def upload(api: httpx.AsyncClient, headers: dict[str, str], name: str = "证明.pdf") -> str:
    resp = await api.post(
        "/v1/materials",
        files={"file": (name, b"%PDF-1.4 supplement", "application/pdf")},
        headers=headers,
    )
    assert resp.status_code == 201, resp.text
    material_id: str = resp.json()["id"]
    return material_id


async def test_supplement_resends_as_next_version(
    api: httpx.AsyncClient, runtime: Runtime, centre_headers: dict[str, str]
) -> None:
    app = await submit(api, centre_headers)
    assert await decide(runtime, app["id"], "3", document=None, supplement_items=ITEMS) == [
        "supplement_required"
    ]
    case = (await api.get(f"/v1/applications/{app['id']}", headers=centre_headers)).json()
    assert case["supplement_items"] == ITEMS

    material = await upload(api, centre_headers)
    url = f"/v1/applications/{app['id']}/supplements"
    resp = await api.post(
        url, json={"materials": [material], "clerk": "c9"}, headers=centre_headers
    )
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["version"] == 2 and body["status"] == "dispatching"
    assert body["idempotency_key"] == f"ow-{app['id']}-v2"
    assert body["answers"] == ITEMS

    again = await api.post(
        url, json={"materials": [material], "clerk": "c9"}, headers=centre_headers
    )
    assert again.status_code == 200 and again.json() == body

    case = (await api.get(f"/v1/applications/{app['id']}", headers=centre_headers)).json()
    assert case["version"] == 2 and case["supplement_items"] == []
    assert material in [m["id"] for m in case["materials"]]
    steps = [(e["to_status"], e["version"]) for e in case["history"]]
    assert steps[-2:] == [("supplement_required", 1), ("dispatching", 2)]
    async with runtime.engine.connect() as conn:
        versions = (
            await conn.execute(
                select(dispatch_jobs.c.version).where(dispatch_jobs.c.application_id == app["id"])
            )
        ).scalars()
        assert sorted(versions) == [1, 2]
    # a late answer about version 1 changes nothing
    assert await decide(runtime, app["id"], "3", document=None, version=1) == []


@pytest.mark.parametrize(
    ("materials", "status", "field"),
    [([], 422, "materials"), (["m-nope"], 422, "materials[0]")],
)
async def test_bad_supplement_names_the_field(
    api: httpx.AsyncClient,
    runtime: Runtime,
    centre_headers: dict[str, str],
    materials: list[str],
    status: int,
    field: str,
) -> None:
    app = await submit(api, centre_headers)
    await decide(runtime, app["id"], "3", document=None, supplement_items=ITEMS)
    resp = await api.post(
        f"/v1/applications/{app['id']}/supplements",
        json={"materials": materials},
        headers=centre_headers,
    )
    assert resp.status_code == status
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["errors"][0]["field"] == field
    assert await status_of(api, centre_headers, app["id"]) == "supplement_required"


async def test_supplement_only_when_asked(
    api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    app = await submit(api, centre_headers)
    material = await upload(api, centre_headers)
    resp = await api.post(
        f"/v1/applications/{app['id']}/supplements",
        json={"materials": [material]},
        headers=centre_headers,
    )
    assert resp.status_code == 409 and "received" in resp.json()["detail"]


async def test_other_centre_cannot_supplement(
    api: httpx.AsyncClient, runtime: Runtime, make_key: Callable[..., Awaitable[dict[str, str]]]
) -> None:
    a, b = await make_key("C01"), await make_key("C02")
    app = await submit(api, b)
    await decide(runtime, app["id"], "3", document=None, supplement_items=ITEMS)
    material = await upload(api, a)
    resp = await api.post(
        f"/v1/applications/{app['id']}/supplements", json={"materials": [material]}, headers=a
    )
    assert resp.status_code == 404
    assert await status_of(api, b, app["id"]) == "supplement_required"


@contextlib.asynccontextmanager
async def asking(
    config: Config, code: str, simulator: dict[str, Any], department: dict[str, Any]
) -> AsyncIterator[tuple[Runtime, Any]]:
    """The city with department ``code``'s simulator and link overridden: the runtime and that
    simulator's state."""
    async with simulated_city(
        config,
        simulator_overrides={code: simulator},
        department_overrides={code: department},
    ) as city:
        runtime = Runtime(city.config)
        await runtime.prepare_database()
        try:
            yield runtime, city.states[code]
        finally:
            await runtime.aclose()


@contextlib.asynccontextmanager
async def at_work(
    runtime: Runtime, seed: int
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    """The dispatcher running (stopped after the block), and the API with a C01 key."""
    dispatcher = Dispatcher(runtime, seed=seed)
    task = asyncio.create_task(dispatcher.run())
    try:
        async with runtime.engine.begin() as conn:
            _c, key = await create_client(conn, name="c01", centre="C01", ops=False)
        transport = httpx.ASGITransport(app=create_app(runtime))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as api:
            yield api, {"Authorization": f"Bearer {key}"}
    finally:
        await dispatcher.stop(grace_seconds=2)
        await task


async def supplemented(
    runtime: Runtime, api: httpx.AsyncClient, headers: dict[str, str], app_id: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Wait (polling) for the department to ask for a supplement, hand in a material, wait for
    the result: the case when it was asked, and when ready for pickup."""

    async def reaches(status: str) -> bool:
        await poll_sweep(runtime)
        return await status_of(api, headers, app_id) == status

    await wait_for(lambda: reaches("supplement_required"), timeout=120)
    asked: dict[str, Any] = (await api.get(f"/v1/applications/{app_id}", headers=headers)).json()
    material = await upload(api, headers)
    resp = await api.post(
        f"/v1/applications/{app_id}/supplements", json={"materials": [material]}, headers=headers
    )
    assert resp.status_code == 201
    await wait_for(lambda: reaches("ready_for_pickup"), timeout=120)
    ready: dict[str, Any] = (await api.get(f"/v1/applications/{app_id}", headers=headers)).json()
    return asked, ready


async def test_supplement_round_trip_with_the_department(example_config: Config) -> None:
    """amr asks for a supplement on every first version (and decides re-sent ones)."""
    async with asking(
        example_config,
        "amr",
        FAST | {"mix": {"supplement": 1.0}},
        # polled, not fed: the feed's safety-net polls as often as the polls
        {
            "poll_interval_seconds": 0.1,
            "sync": {"poll_ceiling_seconds": 0.1, "feed_poll_seconds": 0.1},
        },
    ) as (runtime, department):
        async with at_work(runtime, seed=3) as (api, headers):
            app = await submit(api, headers)
            asked, case = await supplemented(runtime, api, headers, app["id"])
        assert asked["supplement_items"] == ITEMS  # the department's own list
        assert case["version"] == 2 and len(case["documents"]) == 1
        [sim_case] = department.cases.values()  # one case at the department, re-sent
        assert sim_case.version == 2
        assert sorted(department.by_key) == [f"ow-{app['id']}-v1", f"ow-{app['id']}-v2"]


async def test_resent_version_that_is_a_new_case_at_the_department(
    example_config: Config,
) -> None:
    """The SOAP department opens a new case for version 2: the gateway must follow the new case
    id (it used to keep polling version 1's case and fall back to supplement_required)."""
    async with asking(
        example_config,
        "nrp",
        {"decision_delay_seconds": 0.2, "mix": ASK_FIRST},
        # polled every 0.1 s however long the case has been quiet (adaptive polling would wait
        # as long again as the case was quiet: seconds, on a busy machine)
        {"poll_interval_seconds": 0.1, "sync": {"poll_ceiling_seconds": 0.1}},
    ) as (runtime, department):
        async with at_work(runtime, seed=5) as (api, headers):
            app = await submit(api, headers, matter_code="GG00305000", region="339900")
            first, case = await supplemented(runtime, api, headers, app["id"])
        assert case["version"] == 2
        assert case["department_case_id"] != first["department_case_id"]
        assert len(department.cases) == 2  # one case per version at this department
