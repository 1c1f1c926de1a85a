"""The built-in ``rest`` connector against the real simulated department (respx only for
answers a real server can't easily be made to give)."""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from gateway_rest.connector import RestConnector
from gateway_rest.options import RestOptions
from pydantic import ValidationError

from gateway.config.loader import load_config
from gateway.connector import Envelope, MaterialRef, Receipt
from gateway.errors import CaseNotFound, DepartmentRejected, PermanentError, TransientError
from gateway.http import make_client
from gateway.simulators.server import serve_asgi
from gateway.testing.ports import free_port
from tests.rest_fixtures import (
    ID_NUMBER,
    MAPPED_BODY,
    make_connector,
    make_envelope,
    rest_options,
    running_department,
)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture(params=["httpx", "aiohttp"])
async def any_http(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    """Both transports the gateway may hand a connector: plain httpx and httpx over aiohttp."""
    client = make_client() if request.param == "aiohttp" else httpx.AsyncClient()
    async with client:
        yield client


async def test_submit_is_idempotent_and_maps_the_body(any_http: httpx.AsyncClient) -> None:
    http = any_http
    async with running_department(decision_delay_seconds=60) as (base, state):
        connector = make_connector(rest_options(base), http)
        first = await connector.submit(make_envelope("app-1:v2", version=2))
        second = await connector.submit(make_envelope("app-1:v2", version=2))
    assert first.case_id == second.case_id
    assert first.status == "0"
    assert state.stats()["cases"] == 1 and state.stats()["duplicates"] == 1
    [case] = state.cases.values()
    assert case.idempotency_key == "app-1:v2"
    assert case.version == 2
    assert case.body == {
        "applicant": {"name": "张三", "idNo": ID_NUMBER},
        "item": {"code": "XK00123000", "region": "310101"},
        "form": {"shop": {"name": "小店", "area": 42}},
        "version": 2,
        "ref": "C01-20260301-0001",
        "channel": "onewindow",
    }


async def test_default_body_is_the_envelope(http: httpx.AsyncClient) -> None:
    async with running_department() as (base, state):
        connector = make_connector(RestOptions(base_url=f"{base}/api/v1"), http)
        await connector.submit(make_envelope())
    [case] = state.cases.values()
    assert case.body["application_id"] == "app-1"
    assert case.body["applicant"]["id_number"] == ID_NUMBER
    assert "materials" not in case.body


async def test_map_payload_hook_wins_over_declarative_mapping(http: httpx.AsyncClient) -> None:
    def hook(envelope: Envelope) -> dict[str, Any] | None:
        return {"custom": envelope.receipt_number}

    async with running_department() as (base, state):
        connector = make_connector(rest_options(base), http, map_payload=hook)
        await connector.submit(make_envelope())
    [case] = state.cases.values()
    assert case.body == {"custom": "C01-20260301-0001", "channel": "onewindow"}


async def test_materials_inline_base64(http: httpx.AsyncClient) -> None:
    material = MaterialRef(
        id="m1", sha256="ab" * 32, filename="id.pdf", content_type="application/pdf", size=5
    )
    reads: list[str] = []

    async def read(ref: MaterialRef) -> bytes:
        reads.append(ref.id)
        return b"%PDF!"

    async with running_department() as (base, state):
        options = rest_options(
            base, submit={"body": {"ref": "receipt_number"}, "materials": "inline_base64"}
        )
        connector = make_connector(options, http, read_material=read)
        await connector.submit(make_envelope(materials=[material]))
    [case] = state.cases.values()
    [inline] = case.body["materials"]
    assert reads == ["m1"]
    assert base64.b64decode(inline["content_b64"]) == b"%PDF!"
    assert inline["filename"] == "id.pdf"


async def test_poll_maps_status_opinion_and_documents(any_http: httpx.AsyncClient) -> None:
    http = any_http
    async with running_department(decision_delay_seconds=0, mix={"approve": 1}) as (base, _):
        connector = make_connector(rest_options(base), http)
        receipt = await connector.submit(make_envelope())
        update = await connector.poll(receipt)
    assert update is not None
    assert update.case_id == receipt.case_id
    assert update.status == "9"
    assert update.detail == "准予许可"
    assert update.occurred_at is not None and update.occurred_at.tzinfo is not None
    [doc] = update.documents
    assert doc.content is not None and doc.content.startswith(b"%PDF")
    assert doc.name == f"certificate-{receipt.case_id}.pdf"


async def test_poll_maps_supplement_items(http: httpx.AsyncClient) -> None:
    async with running_department(decision_delay_seconds=0, mix={"supplement": 1}) as (base, _):
        connector = make_connector(rest_options(base), http)
        update = await connector.poll(await connector.submit(make_envelope()))
    assert update is not None and update.status == "3"
    assert update.supplement_items and update.documents == []


async def test_poll_without_options_returns_none(http: httpx.AsyncClient) -> None:
    connector = make_connector(RestOptions(base_url="http://127.0.0.1:9/api"), http)
    assert await connector.poll(Receipt(case_id="X")) is None


async def test_poll_unknown_case_is_case_not_found(http: httpx.AsyncClient) -> None:
    async with running_department() as (base, _):
        connector = make_connector(rest_options(base), http)
        with pytest.raises(CaseNotFound, match=r"amr: no such case AMR-2026-424242 \(HTTP 404\)"):
            await connector.poll(Receipt(case_id="AMR-2026-424242"))


async def test_list_cases_follows_cursors(any_http: httpx.AsyncClient) -> None:
    http = any_http
    async with running_department(decision_delay_seconds=0) as (base, _):
        connector = make_connector(rest_options(base), http)
        keys = {f"app-{i}:v1" for i in range(5)}
        for key in keys:
            await connector.submit(make_envelope(key))
        now = dt.datetime.now(dt.UTC)
        listed = [
            c
            async for c in connector.list_cases(
                now - dt.timedelta(hours=1), now + dt.timedelta(hours=1)
            )
        ]
        empty = [
            c
            async for c in connector.list_cases(
                now + dt.timedelta(hours=1), now + dt.timedelta(hours=2)
            )
        ]
    assert {c.idempotency_key for c in listed} == keys
    assert len({c.case_id for c in listed}) == 5
    assert all(c.updated_at is not None for c in listed)
    assert empty == []


async def test_list_cases_without_options_is_not_supported(http: httpx.AsyncClient) -> None:
    connector = make_connector(RestOptions(base_url="http://127.0.0.1:9/api"), http)
    now = dt.datetime.now(dt.UTC)
    with pytest.raises(NotImplementedError):
        [c async for c in connector.list_cases(now, now)]


async def test_503_is_transient(any_http: httpx.AsyncClient) -> None:
    http = any_http
    async with running_department() as (base, state):
        state.mode = "fail503"
        connector = make_connector(rest_options(base), http)
        with pytest.raises(TransientError, match=r"amr: POST /cases: HTTP 503") as caught:
            await connector.submit(make_envelope())
    assert state.stats()["cases"] == 0
    assert caught.value.retry_after is None


async def test_429_is_transient_with_retry_after(any_http: httpx.AsyncClient) -> None:
    http = any_http
    async with running_department() as (base, state):
        state.mode, state.retry_after = "fail429", 7
        connector = make_connector(rest_options(base), http)
        with pytest.raises(TransientError, match="429") as caught:
            await connector.submit(make_envelope())
    assert caught.value.retry_after == 7


async def test_timeout_is_transient(any_http: httpx.AsyncClient) -> None:
    http = any_http
    async with running_department() as (base, state):
        state.mode = "timeout"
        connector = make_connector(rest_options(base, timeout_seconds=0.2), http)
        with pytest.raises(TransientError, match="timed out") as caught:
            await connector.submit(make_envelope())
    assert isinstance(caught.value.__cause__, httpx.TimeoutException)


async def test_connection_refused_is_transient(any_http: httpx.AsyncClient) -> None:
    http = any_http
    port = free_port()  # nothing listens there
    connector = make_connector(rest_options(f"http://127.0.0.1:{port}"), http)
    with pytest.raises(TransientError, match="connection failed") as caught:
        await connector.submit(make_envelope())
    assert isinstance(caught.value.__cause__, httpx.TransportError)
    health = await connector.health()
    assert health.ok is False and "connection failed" in health.detail


async def test_reject_status_is_a_business_answer(any_http: httpx.AsyncClient) -> None:
    http = any_http
    async with running_department(required_fields=["applicant.licence"]) as (base, state):
        connector = make_connector(rest_options(base), http)
        with pytest.raises(DepartmentRejected) as caught:
            await connector.submit(make_envelope())
    assert "applicant.licence" in caught.value.reason
    assert caught.value.status == "not_accepted"
    assert state.stats()["cases"] == 0


async def test_other_4xx_is_permanent(http: httpx.AsyncClient) -> None:
    async with running_department() as (base, _):
        # the department expects Idempotency-Key; a misconfigured header name gets a 400
        connector = make_connector(rest_options(base, idempotency_header="X-Request-Id"), http)
        with pytest.raises(PermanentError, match=r"amr: POST /cases: HTTP 400"):
            await connector.submit(make_envelope())


async def test_missing_case_id_in_answer_is_permanent(http: httpx.AsyncClient) -> None:
    async with running_department() as (base, _):
        options = rest_options(base, submit={"response": {"case_id": "case.caseNo"}})
        connector = make_connector(options, http)
        with pytest.raises(PermanentError, match=r"'case\.caseNo'"):
            await connector.submit(make_envelope())


@respx.mock
async def test_non_json_2xx_is_permanent() -> None:
    respx.post("http://dept.test/api/cases").mock(
        return_value=httpx.Response(
            200, text="<html>OK</html>", headers={"content-type": "text/html"}
        )
    )
    async with httpx.AsyncClient() as client:
        connector = make_connector(RestOptions(base_url="http://dept.test/api"), client)
        with pytest.raises(PermanentError, match="not JSON") as caught:
            await connector.submit(make_envelope())
    assert "text/html" in str(caught.value)


@respx.mock
async def test_retry_after_as_http_date() -> None:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120)
    respx.post("http://dept.test/api/cases").mock(
        return_value=httpx.Response(
            503, headers={"Retry-After": email.utils.format_datetime(when, usegmt=True)}
        )
    )
    async with httpx.AsyncClient() as client:
        connector = make_connector(RestOptions(base_url="http://dept.test/api"), client)
        with pytest.raises(TransientError) as caught:
            await connector.submit(make_envelope())
    assert caught.value.retry_after is not None and 100 < caught.value.retry_after <= 120


@respx.mock
async def test_reset_connection_is_transient() -> None:
    respx.post("http://dept.test/api/cases").mock(side_effect=httpx.ReadError("reset by peer"))
    async with httpx.AsyncClient() as client:
        connector = make_connector(RestOptions(base_url="http://dept.test/api"), client)
        with pytest.raises(TransientError, match="ReadError"):
            await connector.submit(make_envelope())


@pytest.mark.parametrize(
    ("auth", "header", "expected"),
    [
        ({"type": "bearer", "token": "tok"}, "authorization", "Bearer tok"),
        ({"type": "api_key", "header": "X-Dept-Key", "key": "k1"}, "x-dept-key", "k1"),
        (
            {"type": "basic", "username": "gw", "password": "pw"},
            "authorization",
            "Basic " + base64.b64encode(b"gw:pw").decode(),
        ),
    ],
)
async def test_auth_headers(
    http: httpx.AsyncClient, auth: dict[str, str], header: str, expected: str
) -> None:
    seen: list[dict[str, str]] = []
    app = FastAPI()

    @app.post("/api/cases")
    async def create(request: Request) -> dict[str, Any]:
        seen.append(dict(request.headers))
        return {"case": {"id": "C-1", "status": "0"}}

    async with serve_asgi(app) as base:
        options = RestOptions.model_validate({"base_url": f"{base}/api", "auth": auth})
        connector = make_connector(options, http)
        receipt = await connector.submit(make_envelope())
    assert receipt.case_id == "C-1"
    assert seen[0][header] == expected
    assert seen[0]["idempotency-key"] == "app-1:v1"


async def test_bearer_auth_against_the_simulator(http: httpx.AsyncClient) -> None:
    async with running_department(auth_token="s3cret") as (base, state):
        anonymous = make_connector(rest_options(base), http)
        with pytest.raises(PermanentError, match="HTTP 401"):
            await anonymous.submit(make_envelope())
        authed = make_connector(
            rest_options(base, auth={"type": "bearer", "token": "s3cret"}), http
        )
        receipt = await authed.submit(make_envelope())
        assert (await authed.poll(receipt)) is not None
    assert state.stats()["cases"] == 1


async def test_health(http: httpx.AsyncClient) -> None:
    async with running_department() as (base, state):
        connector = make_connector(rest_options(base), http)
        ok = await connector.health()
        state.mode = "fail503"
        down = await connector.health()
    assert ok.ok is True
    assert down.ok is False and "503" in down.detail


def test_options_reject_unknown_keys() -> None:
    with pytest.raises(ValidationError, match="timeout_secs"):
        RestOptions.model_validate({"base_url": "http://x", "timeout_secs": 3})
    with pytest.raises(ValidationError, match="methd"):
        RestOptions.model_validate({"base_url": "http://x", "submit": {"methd": "POST"}})
    with pytest.raises(ValidationError, match="tokn"):
        RestOptions.model_validate(
            {"base_url": "http://x", "auth": {"type": "bearer", "tokn": "t"}}
        )


def test_options_check_envelope_paths_and_values() -> None:
    with pytest.raises(ValidationError, match=r"applicant\.idnumber"):
        RestOptions.model_validate(
            {"base_url": "http://x", "submit": {"body": {"a": "applicant.idnumber"}}}
        )
    with pytest.raises(ValidationError, match="matter"):
        RestOptions.model_validate({"base_url": "http://x", "submit": {"body": {"a": "matter"}}})
    with pytest.raises(ValidationError, match="4xx"):
        RestOptions.model_validate({"base_url": "http://x", "reject_statuses": [500]})
    with pytest.raises(ValidationError, match="http"):
        RestOptions.model_validate({"base_url": "ftp://x"})
    ok = RestOptions.model_validate(
        {"base_url": "http://x/", "submit": {"body": {"a": "form.any.depth"}}, "list": {}}
    )
    assert ok.base_url == "http://x" and ok.cases is not None


async def test_missing_form_field_is_permanent_and_named(http: httpx.AsyncClient) -> None:
    async with running_department() as (base, state):
        options = rest_options(base, submit={"body": {"area": "form.shop.size"}})
        with pytest.raises(PermanentError, match=r"form\.shop\.size"):
            await make_connector(options, http).submit(make_envelope())
    assert state.stats()["submissions"] == 0


async def test_error_messages_never_contain_the_id_number(http: httpx.AsyncClient) -> None:
    echo = FastAPI()

    @echo.post("/api/cases")
    async def create(request: Request) -> Any:
        body = await request.body()  # a careless department echoes the body back in its error
        code = int(request.headers["x-want"])
        return JSONResponse({"error": {"message": body.decode()}}, status_code=code)

    messages: list[str] = []
    async with serve_asgi(echo) as base:
        for status in (422, 400, 503):
            options = RestOptions.model_validate(
                {
                    "base_url": f"{base}/api",
                    "headers": {"X-Want": str(status)},
                    "submit": {"body": MAPPED_BODY},
                }
            )
            connector = make_connector(options, http)
            with pytest.raises((DepartmentRejected, PermanentError, TransientError)) as caught:
                await connector.submit(make_envelope())
            messages.append(str(caught.value))
    assert len(messages) == 3
    assert "HTTP 400" in messages[1] and "HTTP 503" in messages[2]
    for message in messages:
        assert ID_NUMBER not in message
    assert ID_NUMBER[:2] in messages[0]  # the echoed reason survives, masked


def test_connector_class_contract() -> None:
    assert RestConnector.kind == "rest"
    assert RestConnector.Options is RestOptions


def test_example_department_options_validate() -> None:
    env = {"AMR_API_TOKEN": "t", "AMR_CALLBACK_SECRET": "s", "HRSS_API_KEY": "k"}
    config = load_config(Path(__file__).parent.parent / "config" / "gateway.toml", env=env)
    rest = [d for d in config.departments.values() if d.connector == "rest"]
    assert rest
    for department in rest:
        options = RestOptions.model_validate(department.options)
        assert options.poll is not None, department.code
        assert options.submit.body, department.code


async def test_withdraw_before_and_after_the_decision() -> None:
    department = running_department(decision_delay_seconds=3600)
    async with department as (url, state), httpx.AsyncClient() as http:
        options = rest_options(url, withdraw={"path": "/cases/{case_id}/withdraw"})
        connector = make_connector(options, http)
        receipt = await connector.submit(make_envelope("w-1"))
        await connector.withdraw(receipt)
        await connector.withdraw(receipt)  # a second call for a withdrawn case succeeds
        update = await connector.poll(receipt)
        assert update is not None and update.status == "8"
        state.force_status(receipt.case_id, "9")
        with pytest.raises(DepartmentRejected, match="decided"):
            await connector.withdraw(receipt)
        with pytest.raises(NotImplementedError):
            await make_connector(rest_options(url), http).withdraw(receipt)
