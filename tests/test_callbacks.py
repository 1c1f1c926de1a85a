"""Signed department callbacks: signature, clock window, replay, rotation, unknown department,
and the simulated department pushing real callbacks to the real API."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from gateway.api.app import create_app
from gateway.callbacks import CallbackRejected, sign, verify
from gateway.dispatcher import Dispatcher
from gateway.runtime import Runtime
from gateway.simulators.city import SimulatedCity
from gateway.simulators.rest_department import sign as simulator_sign
from gateway.simulators.server import serve_asgi
from gateway.states import FINAL
from tests.conftest import TEST_SECRETS, application, wait_for

SECRET = TEST_SECRETS["AMR_CALLBACK_SECRET"]


def signed(
    body: dict[str, Any], *, secret: str = SECRET, ts: int | None = None, event_id: str = "ev-1"
) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    stamp = str(int(time.time()) if ts is None else ts)
    return raw, {
        "X-Timestamp": stamp,
        "X-Signature": sign(secret, stamp, raw),
        "X-Event-Id": event_id,
        "content-type": "application/json",
    }


def test_gateway_and_simulator_sign_alike() -> None:
    assert sign("s", "1", b"x") == simulator_sign("s", "1", b"x")


@pytest.mark.parametrize(
    ("offset", "signature", "title"),
    [
        (None, "sha256=00", "Unsigned callback"),
        ("abc", "sha256=00", "Bad timestamp"),
        (-301, None, "Stale callback"),
        (301, None, "Stale callback"),
        (0, "sha256=" + "0" * 64, "Bad signature"),
    ],
    ids=["unsigned", "garbage-timestamp", "stale", "future", "bad-signature"],
)
def test_verify_rejects(offset: int | str | None, signature: str | None, title: str) -> None:
    body = b"{}"
    timestamp = str(int(time.time()) + offset) if isinstance(offset, int) else offset
    sig = signature or (sign(SECRET, timestamp, body) if timestamp else None)
    with pytest.raises(CallbackRejected) as exc:
        verify([SecretStr(SECRET)], timestamp, sig, body)
    assert exc.value.title == title and exc.value.status == 401


def test_rotation_accepts_either_secret() -> None:
    stamp = str(int(time.time()))
    secrets = [SecretStr("old-secret"), SecretStr("new-secret")]
    for s in ("old-secret", "new-secret"):
        verify(secrets, stamp, sign(s, stamp, b"x"), b"x")
    with pytest.raises(CallbackRejected):
        verify(secrets, stamp, sign("retired", stamp, b"x"), b"x")


async def _delivered_case(
    runtime: Runtime, api: httpx.AsyncClient, headers: dict[str, str]
) -> tuple[str, str]:
    resp = await api.post(
        "/v1/applications", json=application(), headers={**headers, "Idempotency-Key": "cb-1"}
    )
    app_id = resp.json()["id"]
    dispatcher = Dispatcher(runtime)
    await dispatcher.sweep()
    await dispatcher.drain()
    view = (await api.get(f"/v1/applications/{app_id}", headers=headers)).json()
    return app_id, view["department_case_id"]


async def test_callback_applies_once_and_replay_is_noop(
    runtime: Runtime, api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    app_id, case_id = await _delivered_case(runtime, api, centre_headers)
    body = {"case_id": case_id, "status": "9", "opinion": "准予许可", "event_id": "ev-9"}
    raw, headers = signed(body, event_id="ev-9")
    first = await api.post("/v1/callbacks/amr", content=raw, headers=headers)
    assert first.status_code == 200 and first.json()["status"] == "applied"
    again = await api.post("/v1/callbacks/amr", content=raw, headers=headers)
    assert again.json()["status"] == "duplicate"
    history = (await api.get(f"/v1/applications/{app_id}", headers=centre_headers)).json()
    callback_events = [e for e in history["history"] if e["source"] == "callback"]
    assert len(callback_events) == 1 and callback_events[0]["to_status"] == "approved"
    # a late, older update (in review) is a no-op: status never moves backwards
    raw, headers = signed({"case_id": case_id, "status": "5"}, event_id="ev-5")
    late = await api.post("/v1/callbacks/amr", content=raw, headers=headers)
    assert late.json()["status"] == "unchanged"
    assert (await api.get(f"/v1/applications/{app_id}", headers=centre_headers)).json()[
        "status"
    ] == "approved"


async def test_callback_problems(
    runtime: Runtime, api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    _app_id, case_id = await _delivered_case(runtime, api, centre_headers)
    raw, headers = signed({"case_id": case_id, "status": "9"})
    bad = await api.post(
        "/v1/callbacks/amr", content=raw, headers={**headers, "X-Signature": "sha256=" + "1" * 64}
    )
    assert bad.status_code == 401 and bad.json()["title"] == "Bad signature"
    stale_raw, stale = signed({"case_id": case_id, "status": "9"}, ts=int(time.time()) - 3600)
    assert (
        await api.post("/v1/callbacks/amr", content=stale_raw, headers=stale)
    ).status_code == 401
    unknown = await api.post("/v1/callbacks/nope", content=raw, headers=headers)
    assert unknown.status_code == 404
    # hrss has no callback secret: it cannot push
    assert (await api.post("/v1/callbacks/hrss", content=raw, headers=headers)).status_code == 404
    raw, headers = signed({"case_id": "NO-SUCH-CASE", "status": "9"}, event_id="ev-x")
    assert (await api.post("/v1/callbacks/amr", content=raw, headers=headers)).status_code == 404
    raw, headers = signed({"status": "9"}, event_id="ev-y")
    missing = await api.post("/v1/callbacks/amr", content=raw, headers=headers)
    assert missing.status_code == 422 and "case_id" in missing.json()["detail"]


async def test_simulator_pushes_signed_callbacks(
    runtime: Runtime, city: SimulatedCity, centre_headers: dict[str, str]
) -> None:
    # amr's poll interval is long here, so only the pushed callbacks can decide the cases
    runtime.config.departments["amr"] = runtime.config.departments["amr"].model_copy(
        update={"poll_interval_seconds": 3600}
    )
    state = city.states["amr"]
    state.settings = state.settings.model_copy(update={"callbacks": True})
    async with serve_asgi(create_app(runtime), lifespan="off") as url:
        city.set_callback_url(url)
        async with httpx.AsyncClient(base_url=url) as http:
            ids = []
            for i in range(5):
                r = await http.post(
                    "/v1/applications",
                    json=application(),
                    headers={**centre_headers, "Idempotency-Key": f"push-{i}"},
                )
                ids.append(r.json()["id"])
            dispatcher = Dispatcher(runtime)
            await dispatcher.sweep()
            await dispatcher.drain()

            async def decided() -> bool:
                views = [
                    (await http.get(f"/v1/applications/{i}", headers=centre_headers)).json()
                    for i in ids
                ]
                return all(
                    v["status"] in {s.value for s in FINAL} | {"supplement_required"} for v in views
                )

            await wait_for(decided, timeout=15)
            # the gateway applies a callback before it answers; the simulator counts after
            await wait_for(lambda: state.stats()["callbacks_sent"] >= 5, timeout=5)


async def test_rotation_through_the_api(
    runtime: Runtime, api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    """During a rotation both secrets sign valid callbacks; a retired one does not."""
    runtime.config.departments["amr"] = runtime.config.departments["amr"].model_copy(
        update={"callback_secrets": [SecretStr("old-secret"), SecretStr("new-secret")]}
    )
    app_id, case_id = await _delivered_case(runtime, api, centre_headers)
    raw, headers = signed({"case_id": case_id, "status": "1"}, secret="old-secret", event_id="r1")
    old = await api.post("/v1/callbacks/amr", content=raw, headers=headers)
    assert old.status_code == 200 and old.json()["status"] == "applied"
    raw, headers = signed({"case_id": case_id, "status": "5"}, secret="new-secret", event_id="r2")
    new = await api.post("/v1/callbacks/amr", content=raw, headers=headers)
    assert new.status_code == 200 and new.json()["status"] == "applied"
    raw, headers = signed({"case_id": case_id, "status": "9"}, secret=SECRET, event_id="r3")
    retired = await api.post("/v1/callbacks/amr", content=raw, headers=headers)
    assert retired.status_code == 401 and retired.json()["title"] == "Bad signature"
    view = (await api.get(f"/v1/applications/{app_id}", headers=centre_headers)).json()
    assert view["status"] == "in_review"


async def test_future_timestamp_unknown_department_and_resigned_replay(
    runtime: Runtime, api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    app_id, case_id = await _delivered_case(runtime, api, centre_headers)
    body = {"case_id": case_id, "status": "9"}
    raw, future = signed(body, ts=int(time.time()) + 3600, event_id="f1")
    ahead = await api.post("/v1/callbacks/amr", content=raw, headers=future)
    assert ahead.status_code == 401 and ahead.json()["title"] == "Stale callback"
    raw, headers = signed(body, event_id="f1")
    unknown = await api.post("/v1/callbacks/no_such_dept", content=raw, headers=headers)
    assert unknown.status_code == 404 and unknown.json()["title"] == "Unknown department"
    # the rejected attempts applied nothing; the first good delivery applies once
    first = await api.post("/v1/callbacks/amr", content=raw, headers=headers)
    assert first.json()["status"] == "applied"
    # the department retries the same event later, freshly signed: still a no-op
    raw, later = signed(body, ts=int(time.time()) + 5, event_id="f1")
    again = await api.post("/v1/callbacks/amr", content=raw, headers=later)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    history = (await api.get(f"/v1/applications/{app_id}", headers=centre_headers)).json()
    assert [e["to_status"] for e in history["history"] if e["source"] == "callback"] == ["approved"]
