"""Status subscriptions end to end: the daemon delivers every event of a centre's cases to a real
receiving server on loopback, signed, in order per case, retrying while the receiver fails, and
once each after it recovers; replay sends a range again; ops see the delivery state."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.config.models import WebhookSettings
from gateway.daemon import Daemon
from gateway.runtime import Runtime
from gateway.serving import serve_asgi
from gateway.simulators.city import SimulatedCity
from tests.conftest import wait_for
from tests.handout_fixtures import submit
from tests.loopback import loopback_api

QUIET = {"received", "supplement_required", "ready_for_pickup", "failed", "withdrawn"}


class Receiver:
    """A front-desk system's webhook endpoint: checks every signature, fails while told to."""

    def __init__(self) -> None:
        self.secret = ""
        self.failing = True
        self.refused = 0
        self.seen: list[dict[str, Any]] = []
        self.bad_signatures = 0

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        stamp = request.headers["x-timestamp"]
        mac = hmac.new(self.secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256)
        payload = json.loads(body)
        if not hmac.compare_digest(
            request.headers["x-signature"], "sha256=" + mac.hexdigest()
        ) or request.headers["x-event-id"] != str(payload["event_id"]):
            self.bad_signatures += 1
            return JSONResponse({"error": "bad signature"}, status_code=401)
        if self.failing:
            self.refused += 1
            return JSONResponse({"error": "down for maintenance"}, status_code=503)
        self.seen.append(payload)
        return Response(status_code=204)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])


@pytest.fixture
async def runtime(city: SimulatedCity) -> AsyncIterator[Runtime]:
    gw = city.config.gateway
    fast = gw.model_copy(
        update={
            "webhooks": WebhookSettings(base_seconds=0.05, max_seconds=0.3, jitter=0),
            "dispatch": gw.dispatch.model_copy(update={"sweep_interval_seconds": 0.1}),
        }
    )
    rt = Runtime(dataclasses.replace(city.config, gateway=fast))
    await rt.prepare_database()
    try:
        yield rt
    finally:
        await rt.aclose()


@pytest.fixture
async def api(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway on a loopback port (not in-process)."""
    async with loopback_api(runtime) as client:
        yield client


async def history(api: httpx.AsyncClient, headers: dict[str, str], app_id: str) -> list[int]:
    case = (await api.get(f"/v1/applications/{app_id}", headers=headers)).json()
    return [e["id"] for e in case["history"]]


async def test_every_event_is_delivered_once_in_order_after_the_receiver_recovers(
    api: httpx.AsyncClient,
    runtime: Runtime,
    centre_headers: dict[str, str],
    ops_headers: dict[str, str],
    make_key: Callable[..., Awaitable[dict[str, str]]],
) -> None:
    receiver = Receiver()
    async with serve_asgi(receiver.app()) as base:
        made = await api.post("/v1/webhooks", json={"url": f"{base}/hook"}, headers=centre_headers)
        assert made.status_code == 201, made.text
        sub = made.json()
        receiver.secret = sub["secret"]
        assert sub["scope"] == "centre" and sub["centre"] == "C01" and sub["active"]
        # another centre's case is not this subscription's business
        other = await submit(api, await make_key("C02"))
        ids = [(await submit(api, centre_headers))["id"] for _ in range(4)]

        daemon = Daemon(runtime)
        assert "webhooks" in daemon.tasks
        await daemon.start()
        try:

            async def settled() -> bool:
                for app_id in ids:
                    case = await api.get(f"/v1/applications/{app_id}", headers=centre_headers)
                    if case.json()["status"] not in QUIET - {"received"}:
                        return False
                return receiver.refused >= 5

            await wait_for(settled, timeout=60)
            assert receiver.seen == []
            state = (await api.get(f"/v1/webhooks/{sub['id']}", headers=centre_headers)).json()
            assert state["deliveries"]["pending"] >= len(ids)
            assert state["deliveries"]["last_error"] == "HTTP 503"
            ops = (await api.get("/v1/ops/webhooks", headers=ops_headers)).json()["items"]
            assert [s["id"] for s in ops] == [sub["id"]]

            expected = {app_id: await history(api, centre_headers, app_id) for app_id in ids}
            receiver.failing = False

            def all_seen() -> bool:
                got = {e["event_id"] for e in receiver.seen}
                return all(set(evs) <= got for evs in expected.values())

            await wait_for(all_seen, timeout=60)
        finally:
            await daemon.stop()

        counts = Counter(e["event_id"] for e in receiver.seen)
        assert max(counts.values()) == 1, counts
        assert receiver.bad_signatures == 0
        for app_id, evs in expected.items():
            got = [e["event_id"] for e in receiver.seen if e["application_id"] == app_id]
            assert got[: len(evs)] == evs, (app_id, got, evs)  # in order, none missing
            statuses = [e["to_status"] for e in receiver.seen if e["application_id"] == app_id]
            assert statuses[0] == "received"
        assert other["id"] not in {e["application_id"] for e in receiver.seen}
        first = next(e for e in receiver.seen if e["application_id"] == ids[0])
        assert first["receipt_number"].startswith("C01-") and "applicant" not in first

        state = (await api.get(f"/v1/webhooks/{sub['id']}", headers=centre_headers)).json()
        assert state["deliveries"]["pending"] == 0
        assert state["deliveries"]["delivered"] == len(receiver.seen)

        # replay one case's events: they come again, in order, once more each
        evs = expected[ids[1]]
        replayed = await api.post(
            f"/v1/webhooks/{sub['id']}/replay",
            json={"from_event": evs[0], "to_event": evs[-1], "application_id": ids[1]},
            headers=centre_headers,
        )
        assert replayed.status_code == 202 and replayed.json() == {"queued": len(evs)}
        before = len(receiver.seen)
        daemon = Daemon(runtime)
        await daemon.start()
        try:
            await wait_for(lambda: len(receiver.seen) >= before + len(evs), timeout=30)
        finally:
            await daemon.stop()
        again = [e["event_id"] for e in receiver.seen[before:]]
        assert again == evs


async def test_subscriptions_are_checked_and_scoped(
    api: httpx.AsyncClient,
    runtime: Runtime,
    centre_headers: dict[str, str],
    ops_headers: dict[str, str],
    make_key: Callable[..., Awaitable[dict[str, str]]],
) -> None:
    bad = await api.post("/v1/webhooks", json={"url": "ftp://x"}, headers=centre_headers)
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "url"
    ops_try = await api.post("/v1/webhooks", json={"url": "http://a.test/"}, headers=ops_headers)
    assert ops_try.status_code == 403
    mine = (
        await api.post(
            "/v1/webhooks", json={"url": "http://a.test/h", "scope": "key"}, headers=centre_headers
        )
    ).json()
    assert mine["scope"] == "key" and len(mine["secret"]) == 64
    c02 = await make_key("C02")
    assert (await api.get(f"/v1/webhooks/{mine['id']}", headers=c02)).status_code == 404
    assert (await api.get("/v1/webhooks", headers=c02)).json()["items"] == []
    listed = (await api.get("/v1/webhooks", headers=centre_headers)).json()["items"]
    assert [s["id"] for s in listed] == [mine["id"]] and listed[0]["secret"] is None

    # a key-scoped subscription follows only the cases its key submits
    other_key = await make_key("C01")
    theirs = await submit(api, other_key)
    ours = await submit(api, centre_headers)
    pending = (
        await api.get(
            f"/v1/webhooks/{mine['id']}/deliveries",
            params={"state": "pending"},
            headers=centre_headers,
        )
    ).json()["items"]
    assert {d["application_id"] for d in pending} == {ours["id"]}
    assert theirs["id"] not in {d["application_id"] for d in pending}

    bad_range = await api.post(
        f"/v1/webhooks/{mine['id']}/replay",
        json={"from_event": 9, "to_event": 3},
        headers=centre_headers,
    )
    assert bad_range.status_code == 422 and bad_range.json()["code"] == "bad_event_range"

    gone = await api.delete(f"/v1/webhooks/{mine['id']}", headers=centre_headers)
    assert gone.status_code == 200 and gone.json()["active"] is False
    await submit(api, centre_headers)  # nothing is queued for a deleted subscription
    pending = (
        await api.get(f"/v1/webhooks/{mine['id']}/deliveries", headers=centre_headers)
    ).json()["items"]
    assert {d["application_id"] for d in pending} == {ours["id"]}


def test_receiver_helper_refuses_a_wrong_signature() -> None:
    """The test's receiver would notice a badly signed delivery (so bad_signatures == 0 above
    means something)."""
    receiver = Receiver()
    receiver.secret = "s"
    scope_body = json.dumps({"event_id": 1}).encode()

    async def go() -> int:
        transport = httpx.ASGITransport(app=receiver.app())
        async with httpx.AsyncClient(transport=transport, base_url="http://r") as client:
            resp = await client.post(
                "/hook",
                content=scope_body,
                headers={"x-timestamp": "1", "x-signature": "sha256=00", "x-event-id": "1"},
            )
            return resp.status_code

    assert asyncio.run(go()) == 401


async def test_a_subscription_may_point_only_at_allowed_hosts(
    api: httpx.AsyncClient, runtime: Runtime, centre_headers: dict[str, str]
) -> None:
    settings = runtime.config.gateway.webhooks
    settings.allowed_hosts = ["127.0.0.1", "*.c01.example"]
    for url, status in (
        ("http://127.0.0.1:9/h", 201),
        ("https://frontdesk.c01.example/h", 201),
        ("http://169.254.169.254/latest", 422),
        ("http://c01.example.evil.test/h", 422),
        ("http://user:pw@127.0.0.1:9/h", 422),
    ):
        resp = await api.post("/v1/webhooks", json={"url": url}, headers=centre_headers)
        assert resp.status_code == status, (url, resp.text)
        if status == 422:
            assert resp.json()["errors"][0]["field"] == "url"
    refused = await api.post(
        "/v1/webhooks", json={"url": "http://10.0.0.1/h"}, headers=centre_headers
    )
    assert refused.json()["code"] == "webhook_host_not_allowed"
