"""The simulated REST department, exercised over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hmac
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from pydantic import ValidationError

from gateway.cli.simulate_cmd import RunningSimulator, run_simulators, simulator_table
from gateway.config.loader import load_config
from gateway.config.models import DepartmentConfig
from gateway.errors import ConfigError
from gateway.simulators import SIMULATORS
from gateway.simulators.rest_department import (
    RestDepartmentState,
    RestSimulatorSettings,
    create_rest_department,
    sign,
)
from gateway.simulators.server import serve_asgi
from tests.conftest import wait_for
from tests.rest_fixtures import department_client

FINAL = {"9", "4", "3", "2"}


async def _submit(client: httpx.AsyncClient, base: str, key: str, **body: Any) -> httpx.Response:
    return await client.post(
        f"{base}/api/v1/cases", json=body or {"x": 1}, headers={"Idempotency-Key": key}
    )


async def test_serve_asgi_binds_a_free_port_and_stops() -> None:
    app = FastAPI()

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    async with serve_asgi(app) as base_url:
        port = int(base_url.rsplit(":", 1)[1])
        assert port > 0
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{base_url}/ping")).json() == {"pong": "yes"}
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"{base_url}/ping")


async def test_serve_asgi_reports_a_taken_port() -> None:
    async with serve_asgi(FastAPI()) as base_url:
        port = int(base_url.rsplit(":", 1)[1])
        with pytest.raises(RuntimeError, match=f"cannot serve on 127.0.0.1:{port}"):
            async with serve_asgi(FastAPI(), port=port):
                pass


async def test_create_and_dedupe() -> None:
    async with department_client(decision_delay_seconds=60) as (base, state, client):
        first = await _submit(client, base, "k-1", version=2)
        again = await _submit(client, base, "k-1", version=2)
        stats = (await client.get(f"{base}/_stats")).json()
    assert first.status_code == 201
    assert again.status_code == 200
    case = first.json()["case"]
    assert case["id"].startswith("AMR-") and case["id"].endswith("-000001")
    assert case["status"] == "0"
    assert case["idempotency_key"] == "k-1"
    assert case["version"] == 2
    assert again.json()["case"]["id"] == case["id"]
    assert stats["cases"] == 1 and stats["duplicates"] == 1 and stats["submissions"] == 2
    assert state.stats()["cases"] == 1
    assert state.cases[case["id"]].body == {"version": 2}


async def test_missing_idempotency_key_is_400() -> None:
    async with department_client() as (base, state, client):
        response = await client.post(f"{base}/api/v1/cases", json={"a": 1})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "missing_idempotency_key"
    assert state.stats()["cases"] == 0


async def test_non_object_body_and_required_fields_are_422() -> None:
    async with department_client(required_fields=["applicant.idNo"]) as (base, state, client):
        as_list = await client.post(
            f"{base}/api/v1/cases", json=[1], headers={"Idempotency-Key": "a"}
        )
        missing = await _submit(client, base, "b", applicant={"name": "x"})
    assert as_list.status_code == 422
    assert missing.status_code == 422
    assert "applicant.idNo" in missing.json()["error"]["message"]
    assert state.stats()["cases"] == 0


async def test_immediate_decision_with_zero_delay() -> None:
    settings: dict[str, Any] = {"decision_delay_seconds": 0, "mix": {"approve": 1}}
    async with department_client(**settings) as (base, _state, client):
        created = (await _submit(client, base, "k")).json()["case"]
        read = (await client.get(f"{base}/api/v1/cases/{created['id']}")).json()["case"]
    assert created["status"] == "9"
    assert read["status"] == "9"
    assert read["opinion"]
    [doc] = read["documents"]
    assert doc["content_type"] == "application/pdf"
    assert base64.b64decode(doc["content_b64"]).startswith(b"%PDF")


@pytest.mark.parametrize(
    ("outcome", "status"), [("reject", "4"), ("supplement", "3"), ("not_accept", "2")]
)
async def test_each_outcome_reaches_its_status(outcome: str, status: str) -> None:
    async with department_client(decision_delay_seconds=0, mix={outcome: 1}) as (base, _, client):
        case = (await _submit(client, base, "k")).json()["case"]
    assert case["status"] == status
    assert case["documents"] == []
    assert bool(case["supplement_items"]) is (outcome == "supplement")
    assert case["opinion"]


async def test_lifecycle_over_http_follows_the_department_clock() -> None:
    """Over HTTP, a case moves received -> accepted -> in review -> approved as the
    department's clock moves (a clock the test sets: a busy machine cannot skip a step)."""
    start = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    now = [start]
    async with department_client(decision_delay_seconds=10, mix={"approve": 1}) as (
        base,
        state,
        client,
    ):
        state.clock = lambda: now[0]
        case_id = (await _submit(client, base, "k")).json()["case"]["id"]
        seen = []
        for seconds in (0, 5, 8, 10, 100):
            now[0] = start + dt.timedelta(seconds=seconds)
            seen.append((await client.get(f"{base}/api/v1/cases/{case_id}")).json()["case"])
    assert [case["status"] for case in seen] == ["0", "1", "5", "9", "9"]
    assert seen[-1]["updated_at"] == "2026-03-01T00:00:10Z"


def test_lifecycle_follows_the_clock() -> None:
    start = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    now = [start]
    settings = RestSimulatorSettings(decision_delay_seconds=10, mix={"reject": 1})
    _app, state = create_rest_department(settings, clock=lambda: now[0])
    case, new = state.create("k", {})
    assert new
    statuses = []
    for seconds in (0, 5, 8, 10, 100):
        now[0] = start + dt.timedelta(seconds=seconds)
        statuses.append(state.view(case)["status"])
    assert statuses == ["0", "1", "5", "4", "4"]
    assert state.view(case)["updated_at"] == "2026-03-01T00:00:10Z"


def test_outcome_is_deterministic_in_seed_and_key() -> None:
    def outcomes(seed: int) -> list[str]:
        _app, state = create_rest_department(RestSimulatorSettings(seed=seed))
        return [state.outcome_for(f"key-{i}") for i in range(200)]

    assert outcomes(1) == outcomes(1)
    assert outcomes(1) != outcomes(2)
    counts = {o: outcomes(7).count(o) for o in ("approve", "reject", "supplement", "not_accept")}
    assert counts["approve"] > counts["reject"] > 0
    assert sum(counts.values()) == 200


def test_settings_reject_unknown_keys_and_outcomes() -> None:
    with pytest.raises(ValidationError, match="colour"):
        RestSimulatorSettings.model_validate({"colour": "red"})
    with pytest.raises(ValidationError, match="unknown outcomes"):
        RestSimulatorSettings(mix={"maybe": 1.0})


async def test_list_pages_with_cursor_and_time_window() -> None:
    async with department_client(decision_delay_seconds=0) as (base, _, client):
        for i in range(5):
            await _submit(client, base, f"k-{i}")
        ids: list[str] = []
        cursor = None
        pages = 0
        while True:
            params: dict[str, Any] = {"limit": 2}
            if cursor:
                params["cursor"] = cursor
            page = (await client.get(f"{base}/api/v1/cases", params=params)).json()
            pages += 1
            ids += [item["id"] for item in page["items"]]
            assert all({"idempotency_key", "status", "updated_at"} <= set(i) for i in page["items"])
            cursor = page["next"]
            if cursor is None:
                break
        future = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).isoformat()
        none = (await client.get(f"{base}/api/v1/cases", params={"since": future})).json()
        past = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)).isoformat()
        before = (await client.get(f"{base}/api/v1/cases", params={"until": past})).json()
        bad = await client.get(f"{base}/api/v1/cases", params={"since": "yesterday"})
    assert pages == 3
    assert len(ids) == len(set(ids)) == 5
    assert none == {"items": [], "next": None}
    assert before["items"] == []
    assert bad.status_code == 400


async def test_unknown_case_is_404() -> None:
    async with department_client() as (base, _, client):
        response = await client.get(f"{base}/api/v1/cases/AMR-2026-999999")
    assert response.status_code == 404
    assert "AMR-2026-999999" in response.json()["error"]["message"]


async def test_fault_modes() -> None:
    async with department_client() as (base, state, client):
        await client.post(f"{base}/_control", json={"mode": "fail503"})
        down = await _submit(client, base, "a")
        await client.post(f"{base}/_control", json={"mode": "fail429", "retry_after": 7})
        limited = await _submit(client, base, "b")
        await client.post(f"{base}/_control", json={"mode": "timeout"})
        with pytest.raises(httpx.ReadTimeout):
            await client.post(
                f"{base}/api/v1/cases",
                json={},
                headers={"Idempotency-Key": "c"},
                timeout=0.2,
            )
        await client.post(f"{base}/_control", json={"mode": "slow", "slow_seconds": 0.3})
        loop = asyncio.get_running_loop()
        started = loop.time()
        slow = await _submit(client, base, "d")
        took = loop.time() - started
        await client.post(f"{base}/_control", json={"mode": "ok"})
        fine = await _submit(client, base, "e")
        bad_mode = await client.post(f"{base}/_control", json={"mode": "explode"})
    assert down.status_code == 503
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "7"
    assert slow.status_code == 201 and took >= 0.3
    assert fine.status_code == 201
    assert bad_mode.status_code == 422
    # only the slow and the ok submission created cases
    assert state.stats()["cases"] == 2


async def test_bearer_auth() -> None:
    async with department_client(auth_token="s3cret") as (base, state, client):
        anonymous = await _submit(client, base, "a")
        wrong = await client.get(f"{base}/api/v1/cases", headers={"Authorization": "Bearer nope"})
        right = await client.post(
            f"{base}/api/v1/cases",
            json={},
            headers={"Idempotency-Key": "a", "Authorization": "Bearer s3cret"},
        )
    assert anonymous.status_code == 401
    assert wrong.status_code == 401
    assert right.status_code == 201
    assert state.stats()["cases"] == 1


async def test_api_key_auth() -> None:
    async with department_client(auth_key="k1", auth_header="X-Dept-Key") as (base, state, client):
        anonymous = await _submit(client, base, "a")
        right = await client.post(
            f"{base}/api/v1/cases",
            json={},
            headers={"Idempotency-Key": "a", "X-Dept-Key": "k1"},
        )
    assert anonymous.status_code == 401
    assert right.status_code == 201
    assert state.stats()["cases"] == 1


def test_sign_matches_hmac_definition() -> None:
    body = b'{"a":1}'
    expected = hmac.new(b"k", b"1700000000." + body, "sha256").hexdigest()
    assert sign("k", "1700000000", body) == f"sha256={expected}"
    assert sign("k", "1700000001", body) != sign("k", "1700000000", body)


async def test_signed_callback_reaches_a_real_receiver() -> None:
    received: list[dict[str, Any]] = []
    attempts: list[int] = []
    receiver = FastAPI()

    @receiver.post("/v1/callbacks/amr")
    async def callback(request: Request) -> Response:
        body = await request.body()
        attempts.append(1)
        if len(attempts) == 1:
            return Response(status_code=503)  # the gateway is briefly down: must be retried
        timestamp = request.headers["X-Timestamp"]
        ok = hmac.compare_digest(request.headers["X-Signature"], sign("cb-secret", timestamp, body))
        received.append({"ok": ok, "event_id": request.headers["X-Event-Id"], **json.loads(body)})
        return Response(status_code=204)

    async with serve_asgi(receiver) as receiver_url:
        settings = RestSimulatorSettings(
            decision_delay_seconds=0.1,
            mix={"supplement": 1},
            callbacks=True,
            callback_url=f"{receiver_url}/v1/callbacks/amr",
            callback_secret="cb-secret",
            callback_backoff_seconds=0.01,
        )
        app, state = create_rest_department(settings)
        async with serve_asgi(app) as base:
            async with httpx.AsyncClient() as client:
                case = (await _submit(client, base, "k-cb")).json()["case"]
            # the receiver records before it answers; the simulator counts once it has the answer
            await wait_for(lambda: state.stats()["callbacks_sent"] == 1)
    [event] = received
    assert event["ok"] is True
    assert event["case_id"] == case["id"]
    assert event["idempotency_key"] == "k-cb"
    assert event["status"] == "3"
    assert event["supplement_items"]
    assert event["event_id"]
    assert len(attempts) == 2


async def test_a_callback_never_taken_is_given_up_after_its_attempts() -> None:
    attempts: list[int] = []
    receiver = FastAPI()

    @receiver.post("/v1/callbacks/amr")
    async def callback() -> Response:
        attempts.append(1)
        return Response(status_code=500)

    async with serve_asgi(receiver) as receiver_url:
        settings = RestSimulatorSettings(
            decision_delay_seconds=0.1,
            mix={"supplement": 1},  # one event (as in the test above)
            callbacks=True,
            callback_url=f"{receiver_url}/v1/callbacks/amr",
            callback_attempts=3,
            callback_backoff_seconds=0.01,
        )
        app, state = create_rest_department(settings)
        async with serve_asgi(app) as base:
            async with httpx.AsyncClient() as client:
                await _submit(client, base, "k-never")
            await wait_for(lambda: state.stats()["callbacks_failed"] >= 1)
    assert len(attempts) == 3
    assert state.stats()["callbacks_sent"] == 0


async def test_pending_callbacks_are_cancelled_on_shutdown() -> None:
    settings = RestSimulatorSettings(
        decision_delay_seconds=3600, callbacks=True, callback_url="http://127.0.0.1:9/cb"
    )
    app, state = create_rest_department(settings)
    async with serve_asgi(app) as base:
        async with httpx.AsyncClient() as client:
            await _submit(client, base, "k")
        assert len(state.tasks) == 1
    assert state.tasks == set()


def test_registry_builds_rest_simulators() -> None:
    factory = SIMULATORS["rest"]
    settings, app, state = factory.build({"kind": "rest", "seed": 3})
    assert isinstance(settings, RestSimulatorSettings)
    assert isinstance(app, FastAPI)
    assert isinstance(state, RestDepartmentState)
    assert state.settings.seed == 3


def _department(code: str, simulator: dict[str, Any] | None, **extra: Any) -> DepartmentConfig:
    return DepartmentConfig(code=code, name=code, connector="rest", simulator=simulator, **extra)


async def test_run_simulators_starts_each_department_and_fills_callbacks() -> None:
    departments = {
        "amr": _department(
            "amr",
            {"kind": "rest", "callbacks": True, "decision_delay_seconds": 60},
            callback_secrets=["first-secret", "old-secret"],
        ),
        "nrp": _department("nrp", {"kind": "carrier_pigeon"}),
        "civil": _department("civil", None),
    }
    stop = asyncio.Event()
    answers: list[int] = []

    def ready(rows: list[RunningSimulator]) -> None:
        async def probe() -> None:
            url = next(r.url for r in rows if r.department == "amr")
            async with httpx.AsyncClient() as client:
                answers.append((await client.get(f"{url}/_stats")).status_code)
            stop.set()

        tasks.append(asyncio.create_task(probe()))

    tasks: list[asyncio.Task[None]] = []
    async with asyncio.timeout(10):
        rows = await run_simulators(departments, "http://gw.test:8080/", stop=stop, on_ready=ready)
    await asyncio.gather(*tasks)
    assert answers == [200]
    by_code = {r.department: r for r in rows}
    assert set(by_code) == {"amr", "nrp"}
    assert (
        by_code["nrp"].url is None and by_code["nrp"].note == "no simulator for kind carrier_pigeon"
    )
    settings = by_code["amr"].state.settings
    assert settings.callback_url == "http://gw.test:8080/v1/callbacks/amr"
    assert settings.callback_secret == "first-secret"


async def test_run_simulators_only_and_bad_tables() -> None:
    bad = {"amr": _department("amr", {"kind": "rest", "colour": "red"})}
    with pytest.raises(ConfigError, match="colour"):
        await run_simulators(bad, "http://gw")
    with pytest.raises(ConfigError, match="'nope'"):
        await run_simulators(bad, "http://gw", only=["nope"])
    stop = asyncio.Event()
    stop.set()
    rows = await run_simulators(
        {"civil": _department("civil", None)}, "http://gw", only=["civil"], stop=stop
    )
    assert [(r.department, r.url, r.note) for r in rows] == [
        ("civil", None, "no [simulator] table")
    ]


def test_example_config_simulator_tables_are_valid() -> None:
    env = {"AMR_API_TOKEN": "t", "AMR_CALLBACK_SECRET": "s", "HRSS_API_KEY": "k"}
    config = load_config(Path(__file__).parent.parent / "config" / "gateway.toml", env=env)
    built = []
    for department in config.departments.values():
        table = department.simulator
        if table and table.get("kind") == "rest":
            settings, _app, _state = SIMULATORS[table["kind"]].build(
                simulator_table(department, "http://127.0.0.1:8080")
            )
            built.append((department.code, settings))
    assert built, "the example config should simulate at least one REST department"
    for code, settings in built:
        assert isinstance(settings, RestSimulatorSettings)
        assert settings.port > 0, code
        if settings.callbacks:
            assert settings.callback_url == f"http://127.0.0.1:8080/v1/callbacks/{code}"
            assert settings.callback_secret


async def test_settings_changed_while_running_apply_to_every_endpoint() -> None:
    """Tests slow a running department down through ``state.settings``; withdraw and the
    listing must read the delay the case view reads, or a busy machine sees a case decided
    that the test holds open."""
    async with department_client(decision_delay_seconds=0, mix={"approve": 1}) as (
        base,
        state,
        client,
    ):
        state.settings = state.settings.model_copy(update={"decision_delay_seconds": 3600})
        case_id = (await _submit(client, base, "k")).json()["case"]["id"]
        listed = (await client.get(f"{base}/api/v1/cases")).json()["items"]
        withdrawn = await client.post(f"{base}/api/v1/cases/{case_id}/withdraw")
    assert [item["status"] for item in listed] == ["0"]
    assert withdrawn.status_code == 200, withdrawn.text


async def test_callbacks_share_one_connection_and_carry_the_signed_headers() -> None:
    """The callback sender (aiohttp, one session per department): every event signed over the
    exact body, JSON typed, with its event id and a traceparent, over one kept-alive connection."""
    seen: list[tuple[Any, dict[str, str], bytes]] = []
    receiver = FastAPI()

    @receiver.post("/v1/callbacks/amr")
    async def callback(request: Request) -> Response:
        seen.append((request.client, dict(request.headers), await request.body()))
        return Response(status_code=204)

    async with serve_asgi(receiver) as receiver_url:
        settings = RestSimulatorSettings(
            decision_delay_seconds=0,
            callbacks=True,
            callback_url=f"{receiver_url}/v1/callbacks/amr",
            callback_secret="cb-secret",
        )
        app, state = create_rest_department(settings)
        async with serve_asgi(app) as base, httpx.AsyncClient() as client:
            for i in range(3):
                await _submit(client, base, f"k-{i}")
                await wait_for(lambda i=i: state.stats()["callbacks_sent"] == i + 1)
    assert len({client for client, _headers, _body in seen}) == 1  # one connection, kept alive
    for _client, headers, body in seen:
        assert headers["content-type"] == "application/json"
        assert headers["x-signature"] == sign("cb-secret", headers["x-timestamp"], body)
        assert headers["x-event-id"] == json.loads(body)["event_id"]
        assert headers["traceparent"].startswith("00-")
    assert state.http is None  # closed with the app


async def test_a_callback_nobody_answers_is_counted_failed() -> None:
    """A refused connection is a failed attempt like a 5xx: tried again, then given up."""
    settings = RestSimulatorSettings(
        decision_delay_seconds=0,
        callbacks=True,
        callback_url="http://127.0.0.1:9/v1/callbacks/amr",
        callback_attempts=2,
        callback_backoff_seconds=0.01,
    )
    app, state = create_rest_department(settings)
    async with serve_asgi(app) as base:
        async with httpx.AsyncClient() as client:
            await _submit(client, base, "k-refused")
        await wait_for(lambda: state.stats()["callbacks_failed"] == 1)
    assert state.stats()["callbacks_sent"] == 0
