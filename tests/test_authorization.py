"""Authorization: a centre's key reads, downloads and hands out only what is its own; ops
endpoints need an ops key."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from gateway.config.loader import Config
from gateway.runtime import Runtime
from tests.handout_fixtures import ID_NUMBER, decide, quiet_runtime, submit

KeyMaker = Callable[..., Awaitable[dict[str, str]]]


@pytest.fixture
async def runtime(example_config: Config) -> AsyncIterator[Runtime]:
    """No simulated departments needed: their answers are applied directly."""
    async with quiet_runtime(example_config) as rt:
        yield rt


async def test_centre_a_cannot_read_download_or_collect_centre_b_results(
    api: httpx.AsyncClient, runtime: Runtime, make_key: KeyMaker
) -> None:
    a, b = await make_key("C01"), await make_key("C02")
    app = await submit(api, b)  # received and handed out at C02
    await decide(runtime, app["id"])
    case = (await api.get(f"/v1/applications/{app['id']}", headers=b)).json()
    download = case["documents"][0]["download"]
    assert (await api.get(download, headers=b)).status_code == 200

    read = await api.get(f"/v1/applications/{app['id']}", headers=a)
    assert read.status_code == 404
    got = await api.get(download, headers=a)
    assert got.status_code == 404 and b"PDF" not in got.content
    collect = await api.post(
        f"/v1/applications/{app['id']}/collect",
        json={"id_number": ID_NUMBER, "clerk": "x"},
        headers=a,
    )
    assert collect.status_code == 404
    mail = await api.post(
        f"/v1/applications/{app['id']}/mail",
        json={"clerk": "x", "tracking_number": "T", "address": "somewhere"},
        headers=a,
    )
    assert mail.status_code == 404
    assert (await api.get("/v1/pickups", headers=a)).json()["items"] == []
    other = await api.get("/v1/pickups", params={"centre": "C02"}, headers=a)
    assert other.status_code == 403 and other.json()["errors"][0]["field"] == "centre"
    listed = (await api.get("/v1/applications", headers=a)).json()["items"]
    assert app["id"] not in [i["id"] for i in listed]
    # nothing happened to the case
    assert (await api.get(f"/v1/applications/{app['id']}", headers=b)).json()[
        "status"
    ] == "ready_for_pickup"


async def test_ops_key_sees_every_centre(
    api: httpx.AsyncClient, runtime: Runtime, make_key: KeyMaker, ops_headers: dict[str, str]
) -> None:
    b = await make_key("C02")
    app = await submit(api, b)
    await decide(runtime, app["id"])
    everywhere = (await api.get("/v1/pickups", headers=ops_headers)).json()["items"]
    assert [p["id"] for p in everywhere] == [app["id"]]
    at_c01 = (await api.get("/v1/pickups", params={"centre": "C01"}, headers=ops_headers)).json()[
        "items"
    ]
    assert at_c01 == []


async def test_ops_endpoints_need_an_ops_key(
    api: httpx.AsyncClient, centre_headers: dict[str, str], ops_headers: dict[str, str]
) -> None:
    for path in ("/v1/ops/withdrawals", "/v1/ops/failures", "/v1/ops/departments"):
        denied = await api.get(path, headers=centre_headers)
        assert denied.status_code == 403, path
        assert (await api.get(path, headers=ops_headers)).status_code == 200, path
    assert (await api.get("/v1/pickups")).status_code == 401
