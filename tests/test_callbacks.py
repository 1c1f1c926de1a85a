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
    """A department's callback: the event id in the signed body (and echoed in X-Event-Id)."""
    raw = json.dumps({"event_id": event_id, **body}).encode()
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

            await wait_for(decided)
            # the gateway applies a callback before it answers; the simulator counts after
            await wait_for(lambda: state.stats()["callbacks_sent"] >= 5)


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


# -- issue 12 item 3: what is not signed is not trusted ------------------------------------------


async def _supplemented_and_resent(
    runtime: Runtime, api: httpx.AsyncClient, headers: dict[str, str]
) -> tuple[str, str, tuple[bytes, dict[str, str]]]:
    """A case asked for a supplement by a signed callback (returned, as an attacker on the
    network would have captured it), supplemented and re-sent as version 2."""
    app_id, case_id = await _delivered_case(runtime, api, headers)
    captured = signed(
        {"case_id": case_id, "status": "3", "supplement_items": ["证明"]},
        ts=int(time.time()) - 5,
        event_id="ask-1",
    )
    first = await api.post("/v1/callbacks/amr", content=captured[0], headers=captured[1])
    assert first.json()["status"] == "applied"
    upload = await api.post(
        "/v1/materials",
        files={"file": ("证明.pdf", b"%PDF-1.4 supplement", "application/pdf")},
        headers=headers,
    )
    resent = await api.post(
        f"/v1/applications/{app_id}/supplements",
        json={"materials": [upload.json()["id"]]},
        headers=headers,
    )
    assert resent.status_code == 201, resent.text
    dispatcher = Dispatcher(runtime)
    await dispatcher.sweep()
    await dispatcher.drain()
    view = (await api.get(f"/v1/applications/{app_id}", headers=headers)).json()
    assert view["version"] == 2 and view["status"] not in ("supplement_required", "dispatching")
    return app_id, view["status"], captured


async def test_replayed_callback_with_a_new_event_id_header_is_refused(
    runtime: Runtime, api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    app_id, status, (raw, headers) = await _supplemented_and_resent(runtime, api, centre_headers)
    replay = await api.post(
        "/v1/callbacks/amr", content=raw, headers={**headers, "X-Event-Id": "fresh-id"}
    )
    assert replay.status_code == 401 and replay.json()["title"] == "Event id not signed"
    # without the header the body's own (signed) id makes it a duplicate
    no_header = {k: v for k, v in headers.items() if k != "X-Event-Id"}
    again = await api.post("/v1/callbacks/amr", content=raw, headers=no_header)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    view = (await api.get(f"/v1/applications/{app_id}", headers=centre_headers)).json()
    assert view["status"] == status and view["version"] == 2


async def test_callback_signed_before_the_resend_cannot_move_the_new_version(
    runtime: Runtime, api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    """A genuine but older event (signed before version 2 existed, no version named) is
    stale; an update naming version 2 by its idempotency key applies."""
    app_id, status, (_raw, captured) = await _supplemented_and_resent(runtime, api, centre_headers)
    view = (await api.get(f"/v1/applications/{app_id}", headers=centre_headers)).json()
    case_id = view["department_case_id"]
    # signed when the first supplement was asked for, before version 2 existed
    raw, headers = signed(
        {"case_id": case_id, "status": "3"}, ts=int(captured["X-Timestamp"]), event_id="ask-again"
    )
    old = await api.post("/v1/callbacks/amr", content=raw, headers=headers)
    assert old.status_code == 200 and old.json()["status"] == "unchanged"
    raw, headers = signed(
        {"case_id": case_id, "status": "3", "idempotency_key": f"ow-{app_id}-v1"},
        event_id="named-v1",
    )
    named_old = await api.post("/v1/callbacks/amr", content=raw, headers=headers)
    assert named_old.json()["status"] == "unchanged"
    assert (await api.get(f"/v1/applications/{app_id}", headers=centre_headers)).json()[
        "status"
    ] == status
    raw, headers = signed(
        {"case_id": case_id, "status": "9", "idempotency_key": f"ow-{app_id}-v2"},
        event_id="named-v2",
    )
    current = await api.post("/v1/callbacks/amr", content=raw, headers=headers)
    assert current.json()["status"] == "applied"


async def test_callback_without_a_signed_event_id_is_refused(
    runtime: Runtime, api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    app_id, case_id = await _delivered_case(runtime, api, centre_headers)
    raw = json.dumps({"case_id": case_id, "status": "9"}).encode()
    stamp = str(int(time.time()))
    headers = {
        "X-Timestamp": stamp,
        "X-Signature": sign(SECRET, stamp, raw),
        "X-Event-Id": "only-in-the-header",
        "content-type": "application/json",
    }
    resp = await api.post("/v1/callbacks/amr", content=raw, headers=headers)
    assert resp.status_code == 422 and resp.json()["title"] == "Missing event id"
    view = (await api.get(f"/v1/applications/{app_id}", headers=centre_headers)).json()
    assert view["status"] == "delivered"


async def test_callbacks_that_arrive_together_are_judged_in_one_transaction(
    runtime: Runtime, api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    from sqlalchemy import event

    from gateway.callbacks import _applier, _Pushed

    _app_id, case_id = await _delivered_case(runtime, api, centre_headers)
    parse = runtime.connectors["amr"].parse_callback
    stamp = int(time.time())

    def pushed(case: str, status: str, event_id: str) -> _Pushed:
        body = {"case_id": case, "status": status, "event_id": event_id}
        return _Pushed("amr", parse(body), stamp, event_id, [])

    batch = [
        pushed(case_id, "5", "ev-a"),  # in review
        pushed(case_id, "9", "ev-b"),  # approved: judged after the first is written
        pushed(case_id, "9", "ev-b"),  # the same event again within the batch
        pushed("NO-SUCH-CASE", "9", "ev-c"),
    ]
    begun: list[object] = []

    def count(conn: object) -> None:
        begun.append(conn)

    event.listen(runtime.engine.sync_engine, "begin", count)
    try:
        async with runtime.engine.begin() as conn:
            out = await _applier(runtime)(conn, batch)
    finally:
        event.remove(runtime.engine.sync_engine, "begin", count)
    assert len(begun) == 1  # matching included: no transaction of its own
    moved = [[c.to_status.value for c in o[1].changes] if o else None for o in out]
    assert moved == [["in_review"], ["approved"], [], None]
    assert [o[1].duplicate if o else None for o in out] == [False, False, True, None]
    async with runtime.engine.begin() as conn:  # the events were recorded with the changes
        again = await _applier(runtime)(conn, batch[:2])
    assert [o[1].duplicate for o in again if o] == [True, True]


async def test_the_callback_shortcut_answers_as_fastapis_route(
    runtime: Runtime,
    api: httpx.AsyncClient,
    centre_headers: dict[str, str],
    routes_walked: list[str],
) -> None:
    """A callback with ``Content-Type: application/json`` is answered by the front
    middleware's shortcut, without Starlette's router; any other spelling by FastAPI's route.
    Status, headers (in order) and body are the same both ways, for an applied callback, a
    duplicate, an unchanged one and every kind of refusal."""
    walked = routes_walked
    case_ids = []
    for i in range(2):
        resp = await api.post(
            "/v1/applications",
            json=application(),
            headers={**centre_headers, "Idempotency-Key": f"shortcut-{i}"},
        )
        assert resp.status_code == 201
    dispatcher = Dispatcher(runtime)
    await dispatcher.sweep()
    await dispatcher.drain()
    listed = (await api.get("/v1/applications", headers=centre_headers)).json()["items"]
    case_ids = [item["department_case_id"] for item in listed]
    assert len(case_ids) == 2 and all(case_ids)
    walked.clear()

    def both(body: dict[str, Any], event_id: str) -> list[tuple[bytes, dict[str, str]]]:
        return [signed(body, event_id=event_id), signed(body, event_id=event_id)]

    bad_sig = {"X-Signature": "sha256=" + "1" * 64}
    cases: list[tuple[str, list[tuple[bytes, dict[str, str]]], dict[str, str], int, str]] = [
        (
            "amr",
            [signed({"case_id": c, "status": "5"}, event_id=f"s-{c}") for c in case_ids],
            {},
            200,
            "applied",
        ),
        (
            "amr",
            both({"case_id": case_ids[0], "status": "5"}, f"s-{case_ids[0]}"),
            {},
            200,
            "duplicate",
        ),
        (
            "amr",
            [signed({"case_id": case_ids[i], "status": "5"}, event_id=f"u-{i}") for i in range(2)],
            {},
            200,
            "unchanged",
        ),
        ("amr", both({"case_id": case_ids[0], "status": "9"}, "b"), bad_sig, 401, ""),
        ("amr", both({"case_id": case_ids[0], "status": "9"}, "b"), {"X-Event-Id": "x"}, 401, ""),
        ("amr", both({"case_id": "NO-SUCH-CASE", "status": "9"}, "n"), {}, 404, ""),
        ("amr", both({"status": "9"}, "m"), {}, 422, ""),
        ("nope", both({"case_id": case_ids[0], "status": "9"}, "d"), {}, 404, ""),
        ("hrss", both({"case_id": case_ids[0], "status": "9"}, "h"), {}, 404, ""),
        ("amr", [(b"", {}), (b"", {})], {}, 401, ""),  # unsigned, empty
    ]
    for department, pair, extra, status, outcome in cases:
        answers = []
        for (raw, headers), content_type in zip(
            pair, ("application/json", "application/json; charset=utf-8"), strict=True
        ):
            walked.clear()
            resp = await api.post(
                f"/v1/callbacks/{department}",
                content=raw,
                headers={**headers, **extra, "content-type": content_type},
            )
            assert walked == ([] if content_type == "application/json" else [resp.request.url.path])
            got = resp.json()
            if status == 200:
                assert got["status"] == outcome
                got["application_id"] = "-" if got["application_id"] else None
            answers.append((resp.status_code, resp.headers.raw, got))
        assert answers[0] == answers[1], (department, status, outcome)
        assert answers[0][0] == status, answers[0]
