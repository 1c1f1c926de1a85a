"""Finding a case by its receipt number, and paging every list with one cursor mechanism."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config.loader import Config
from gateway.events import Source
from gateway.runtime import Runtime
from gateway.states import State
from gateway.updates import move
from tests.conftest import TEST_SECRETS
from tests.handout_fixtures import decide, quiet_runtime, submit
from tests.loopback import loopback_api
from tests.test_crash_recovery import write_config


@pytest.fixture
async def runtime(example_config: Config) -> AsyncIterator[Runtime]:
    async with quiet_runtime(example_config) as rt:
        yield rt


@pytest.fixture
async def api(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway on a loopback port (not in-process)."""
    async with loopback_api(runtime) as client:
        yield client


async def every_page(
    api: httpx.AsyncClient, path: str, headers: dict[str, str], limit: int, **params: str
) -> list[list[dict[str, Any]]]:
    pages: list[list[dict[str, Any]]] = []
    cursor: str | None = None
    while True:
        query = {**params, "limit": str(limit), **({"cursor": cursor} if cursor else {})}
        resp = await api.get(path, params=query, headers=headers)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert set(body) >= {"items", "next_cursor"}
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
        assert len(pages) < 100, "the cursor does not advance"


async def test_receipt_number_finds_exactly_its_case(
    api: httpx.AsyncClient,
    centre_headers: dict[str, str],
    make_key: Callable[..., Awaitable[dict[str, str]]],
) -> None:
    apps = [await submit(api, centre_headers) for _ in range(3)]
    wanted = apps[1]["receipt_number"]
    resp = await api.get(
        "/v1/applications", params={"receipt_number": wanted}, headers=centre_headers
    )
    assert [a["id"] for a in resp.json()["items"]] == [apps[1]["id"]]
    assert resp.json()["next_cursor"] is None
    # exact, not a prefix
    prefix = wanted.rsplit("-", 1)[0]
    resp = await api.get(
        "/v1/applications", params={"receipt_number": prefix}, headers=centre_headers
    )
    assert resp.json()["items"] == []
    # another centre's key does not find it
    c02 = await make_key("C02")
    resp = await api.get("/v1/applications", params={"receipt_number": wanted}, headers=c02)
    assert resp.json()["items"] == []


async def test_gateway_status_takes_a_receipt_number(
    api: httpx.AsyncClient, centre_headers: dict[str, str], runtime: Runtime, tmp_path: Path
) -> None:
    app = await submit(api, centre_headers)
    config = write_config(tmp_path / "config", runtime.config.gateway.database_url, {})
    env = {**os.environ, **TEST_SECRETS}
    cmd = [sys.executable, "-m", "gateway", "status", "--config", str(config), "--json"]

    def status(number: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*cmd, number], capture_output=True, env=env, timeout=120)

    # both processes at once: each spends most of its time starting up
    done, missing = await asyncio.gather(
        asyncio.to_thread(status, app["receipt_number"]),
        asyncio.to_thread(status, "C01-20000101-00001"),
    )
    assert done.returncode == 0, done.stderr.decode()
    shown = json.loads(done.stdout)
    assert shown["id"] == app["id"] and shown["receipt_number"] == app["receipt_number"]
    assert shown["history"][0]["to_status"] == "received"
    assert missing.returncode == 1
    assert "receipt number" in missing.stderr.decode()


async def test_applications_page_through_everything_once(
    api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    ids = {(await submit(api, centre_headers))["id"] for _ in range(7)}
    pages = await every_page(api, "/v1/applications", centre_headers, 3)
    assert [len(p) for p in pages] == [3, 3, 1]
    seen = [a["id"] for p in pages for a in p]
    assert len(seen) == len(set(seen)) and set(seen) == ids
    # a full last page still says it is the last (limit + 1 is read, not guessed)
    pages = await every_page(api, "/v1/applications", centre_headers, 7)
    assert [len(p) for p in pages] == [7]


async def test_pickups_page_and_are_not_capped(
    api: httpx.AsyncClient, centre_headers: dict[str, str], runtime: Runtime
) -> None:
    ids = []
    for _ in range(5):
        app = await submit(api, centre_headers)
        await decide(runtime, app["id"])
        ids.append(app["id"])
    pages = await every_page(api, "/v1/pickups", centre_headers, 2)
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [p["id"] for page in pages for p in page] == ids  # oldest ready first


async def test_ops_failures_page(
    api: httpx.AsyncClient,
    centre_headers: dict[str, str],
    ops_headers: dict[str, str],
    runtime: Runtime,
) -> None:
    ids = set()
    for _ in range(5):
        app = await submit(api, centre_headers)
        async with runtime.engine.begin() as conn:
            await move(
                conn,
                app["id"],
                [State.DISPATCHING, State.FAILED],
                source=Source.DISPATCH,
                actor="test",
            )
        ids.add(app["id"])
    pages = await every_page(api, "/v1/ops/failures", ops_headers, 2)
    assert [len(p) for p in pages] == [2, 2, 1]
    assert {a["id"] for p in pages for a in p} == ids


async def test_config_lists_page_the_same_way(
    api: httpx.AsyncClient, centre_headers: dict[str, str], ops_headers: dict[str, str]
) -> None:
    matters = await every_page(api, "/v1/matters", centre_headers, 2)
    codes = [m["code"] for p in matters for m in p]
    assert codes == sorted(codes) and len(codes) == len(set(codes)) >= 4
    depts = await every_page(api, "/v1/ops/departments", ops_headers, 1)
    assert len(depts) >= 2 and all(len(p) == 1 for p in depts)
    methods = await every_page(api, "/v1/delivery-methods", centre_headers, 1)
    assert "manual" in {m["name"] for p in methods for m in p}


async def test_a_cursor_is_checked(
    api: httpx.AsyncClient, centre_headers: dict[str, str], ops_headers: dict[str, str]
) -> None:
    for _ in range(2):
        await submit(api, centre_headers)
    first = await api.get("/v1/applications", params={"limit": "1"}, headers=centre_headers)
    cursor = first.json()["next_cursor"]
    assert cursor
    for bad, path, headers in (
        ("not-a-cursor!", "/v1/applications", centre_headers),
        (cursor[:-3], "/v1/applications", centre_headers),
        (cursor, "/v1/pickups", centre_headers),  # another list's cursor
        (cursor, "/v1/ops/failures", ops_headers),
    ):
        resp = await api.get(path, params={"cursor": bad}, headers=headers)
        assert resp.status_code == 400, (bad, path, resp.text)
        body = resp.json()
        assert body["code"] == "bad_cursor"
        assert body["errors"] == [
            {"field": "cursor", "code": "bad_cursor", "message": body["detail"]}
        ]
    for limit in ("0", "501"):
        resp = await api.get("/v1/pickups", params={"limit": limit}, headers=centre_headers)
        assert resp.status_code == 422
        assert resp.json()["errors"][0]["field"] == "limit"
        assert resp.json()["errors"][0]["code"] == "out_of_range"


async def test_no_list_endpoint_answers_a_bare_array(api: httpx.AsyncClient) -> None:
    """Every list is a page (items + next_cursor, with limit and cursor): a bare JSON array
    could only be cut short silently."""
    spec = (await api.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    bare, unpaged = [], []
    for path, item in spec["paths"].items():
        op = item.get("get")
        if op is None:
            continue
        content = op["responses"].get("200", {}).get("content", {})
        schema = content.get("application/json", {}).get("schema", {})
        if schema.get("type") == "array":
            bare.append(path)
        ref = schema.get("$ref", "")
        props = schemas.get(ref.rsplit("/", 1)[-1], {}).get("properties", {})
        if "next_cursor" in props:
            params = {p["name"] for p in op.get("parameters", [])}
            if not {"limit", "cursor"} <= params:
                unpaged.append(path)
    assert bare == [], bare
    assert unpaged == [], unpaged
