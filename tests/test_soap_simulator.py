"""The simulated SOAP department on its own: its WSDL, raw SOAP envelopes, dedupe, the clock,
the control endpoint and its registration for `gateway simulate` and the demo."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any
from xml.sax.saxutils import escape

import httpx
import pytest
from lxml import etree
from pydantic import ValidationError

from gateway.simulators import SIMULATORS
from gateway.simulators.server import serve_asgi
from gateway.simulators.soap_department import (
    NAMESPACE,
    SoapDepartmentState,
    SoapSimulatorSettings,
    create_soap_department,
)
from gateway.simulators.soap_plain import SUBMIT_FIELDS

SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)


def submit_envelope(key: str | None, header_key: str | None = None) -> bytes:
    header = (
        f"<soap:Header><h:IdempotencyKey xmlns:h='urn:x'>{header_key}</h:IdempotencyKey>"
        "</soap:Header>"
        if header_key
        else ""
    )
    field = f"<t:IdempotencyKey>{key}</t:IdempotencyKey>" if key else ""
    return (
        f"<soap:Envelope xmlns:soap='{SOAP_ENV}' xmlns:t='{NAMESPACE}'>{header}<soap:Body>"
        f"<t:SubmitApplication><t:Request>{field}<t:Version>1</t:Version></t:Request>"
        "</t:SubmitApplication></soap:Body></soap:Envelope>"
    ).encode()


def query_envelope(case_id: str) -> bytes:
    return (
        f"<soap:Envelope xmlns:soap='{SOAP_ENV}' xmlns:t='{NAMESPACE}'><soap:Body>"
        f"<t:QueryStatus><t:CaseId>{case_id}</t:CaseId></t:QueryStatus>"
        "</soap:Body></soap:Envelope>"
    ).encode()


def text(xml: bytes, name: str) -> str | None:
    return etree.fromstring(xml).findtext(f".//{{{NAMESPACE}}}{name}")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> dt.datetime:
        return self.now


Sim = tuple[httpx.AsyncClient, Clock, SoapDepartmentState]


@contextlib.asynccontextmanager
async def simulator(settings: SoapSimulatorSettings) -> AsyncIterator[Sim]:
    """The simulated department on loopback, its clock at :data:`T0`, and a client for it."""
    clock = Clock()
    app, state = create_soap_department(settings, clock=clock)
    async with serve_asgi(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as client:
        yield client, clock, state


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    settings = SoapSimulatorSettings(decision_delay_seconds=10, mix={"approve": 1.0})
    async with simulator(settings) as s:
        yield s


async def post(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await client.post("/soap", content=body, headers={"Content-Type": "text/xml"})


async def submitted(client: httpx.AsyncClient, key: str) -> str:
    """The department's case id for a new submission."""
    case_id = text((await post(client, submit_envelope(key))).content, "CaseId")
    assert case_id is not None
    return case_id


async def answers_at(sim: Sim, case_id: str, seconds: tuple[int, ...]) -> list[bytes]:
    """The department's answers to QueryStatus at each of these seconds after :data:`T0`."""
    client, clock, _state = sim
    answers = []
    for s in seconds:
        clock.now = T0 + dt.timedelta(seconds=s)
        answers.append((await post(client, query_envelope(case_id))).content)
    return answers


async def test_wsdl_is_served_with_the_requested_address(sim: Sim) -> None:
    client, _clock, state = sim
    response = await client.get("/soap?wsdl")
    assert response.status_code == 200 and b"SubmitApplication" in response.content
    root = etree.fromstring(response.content)
    [address] = root.iterfind(".//{http://schemas.xmlsoap.org/wsdl/soap/}address")
    assert address.get("location") == str(client.base_url).rstrip("/") + "/soap"
    assert state.stats()["wsdl_requests"] == 1


async def test_submit_dedupes_on_the_idempotency_key(sim: Sim) -> None:
    client, _clock, state = sim
    first = await post(client, submit_envelope("k-1"))
    again = await post(client, submit_envelope("k-1"))
    other = await post(client, submit_envelope("k-2"))
    assert first.status_code == again.status_code == 200
    assert text(first.content, "CaseId") == text(again.content, "CaseId") == "NRP-2026-000001"
    assert text(other.content, "CaseId") == "NRP-2026-000002"
    assert state.stats() == {
        "submissions": 3,
        "cases": 2,
        "duplicates": 1,
        "requests": 3,
        "wsdl_requests": 0,
    }


async def test_the_key_may_come_in_a_soap_header(sim: Sim) -> None:
    client, _clock, state = sim
    response = await post(client, submit_envelope(None, header_key="hk-1"))
    assert text(response.content, "IdempotencyKey") == "hk-1"
    assert state.header_keys == ["hk-1"] and set(state.by_key) == {"hk-1"}


async def test_a_submit_without_key_is_a_client_fault(sim: Sim) -> None:
    client, _clock, state = sim
    response = await post(client, submit_envelope(None))
    assert response.status_code == 500
    assert b"Client.MissingKey" in response.content and state.stats()["cases"] == 0


async def test_decisions_follow_the_clock(sim: Sim) -> None:
    case_id = await submitted(sim[0], "k-1")
    answers = await answers_at(sim, case_id, (0, 5, 8, 10))
    assert [text(a, "Status") for a in answers] == ["0", "1", "5", "9"]
    assert text(answers[-1], "Content") is not None  # the certificate, base64


async def test_not_accepted_cases_are_refused_at_acceptance() -> None:
    settings = SoapSimulatorSettings(decision_delay_seconds=10, mix={"not_accept": 1.0})
    async with simulator(settings) as sim:
        answers = await answers_at(sim, await submitted(sim[0], "k"), (0, 5, 8, 10))
    assert [text(a, "Status") for a in answers] == ["0", "0", "0", "2"]


async def test_a_forced_status_wins_over_a_not_accepted_draw() -> None:
    """Tests and drift helpers force a status; a case drawn 'not accepted' kept answering '0'
    (the change-feed test failed whenever its random keys drew that outcome)."""
    settings = SoapSimulatorSettings(decision_delay_seconds=3600, mix={"not_accept": 1.0})
    async with simulator(settings) as (client, clock, state):
        case_id = await submitted(client, "k")
        clock.now = T0 + dt.timedelta(seconds=5)
        with state.lock:
            state.cases[case_id].forced = ("9", clock.now)
        answer = (await post(client, query_envelope(case_id))).content
    assert text(answer, "Status") == "9"


async def test_unknown_case_is_a_client_fault(sim: Sim) -> None:
    client, _clock, _state = sim
    response = await post(client, query_envelope("NOPE"))
    assert response.status_code == 500 and b"Client.NotFound" in response.content


async def test_control_endpoint_sets_fault_modes(sim: Sim) -> None:
    client, _clock, state = sim
    assert (await client.post("/_control", json={"mode": "reject"})).json() == {"mode": "reject"}
    response = await post(client, submit_envelope("k-1"))
    assert response.status_code == 500 and b"Client.Rejected" in response.content
    await client.post("/_control", json={"mode": "html", "html_status": 503})
    page = await post(client, submit_envelope("k-1"))
    assert page.status_code == 503 and page.headers["content-type"].startswith("text/html")
    assert (await client.post("/_control", json={"mode": "nope"})).status_code == 422
    await client.post("/_control", json={"mode": "ok"})
    assert (await post(client, submit_envelope("k-1"))).status_code == 200
    assert state.stats()["cases"] == 1
    assert (await client.get("/_stats")).json()["cases"] == 1


async def test_hostile_payload_modes_are_what_they_claim(sim: Sim) -> None:
    client, _clock, state = sim
    state.mode = "billion_laughs"
    assert b"<!ENTITY lol9" in (await post(client, submit_envelope("k"))).content
    state.mode = "xxe"
    assert b'SYSTEM "file:///etc/passwd"' in (await post(client, submit_envelope("k"))).content
    state.mode, state.huge_bytes = "huge", 200_000
    huge = await post(client, submit_envelope("k"))
    assert len(huge.content) == 200_000 and etree.fromstring(huge.content) is not None


def test_settings_forbid_unknown_keys_and_bad_mixes() -> None:
    with pytest.raises(ValidationError, match="extra"):
        SoapSimulatorSettings.model_validate({"kind": "soap", "decision_delay": 1})
    with pytest.raises(ValidationError, match="unknown outcomes"):
        SoapSimulatorSettings(mix={"maybe": 1.0})


def test_registered_for_simulate_and_the_demo() -> None:
    factory = SIMULATORS["soap"]
    settings, app, state = factory.build({"kind": "soap", "port": 0, "seed": 9})
    assert isinstance(settings, SoapSimulatorSettings) and settings.seed == 9
    assert callable(app) and state.settings is settings


def test_the_simulator_does_not_collect_garbage_after_every_second_call() -> None:
    # spyne's default (a full gc.collect() after a call, once a second) was a third of the
    # simulator process's time in the city day
    import math

    from spyne import const

    import gateway.simulators.soap_department  # noqa: F401  (sets it on import)

    assert math.inf == const.MIN_GC_INTERVAL


def full_submit(key: str, version: str = "1", order: tuple[str, ...] = SUBMIT_FIELDS) -> bytes:
    """A submission with every field, as zeep writes it (prefix ns0, schema order)."""
    values = {
        "IdempotencyKey": key,
        "ReceiptNumber": "C01-20260302-0001",
        "MatterCode": "XK00301000",
        "Region": "",
        "ApplicantName": "张三 & <李四>\r\n",
        "ApplicantIdNo": "110101199003074514",
        "Version": version,
        "FormJson": '{"note": "city day 1"}',
    }
    fields = "".join(
        f"<ns0:{name}>{escape(values[name])}</ns0:{name}>" for name in order if name in values
    )
    return (
        f"<?xml version='1.0' encoding='utf-8'?>\n<soap-env:Envelope xmlns:soap-env='{SOAP_ENV}'>"
        f"<soap-env:Body><ns0:SubmitApplication xmlns:ns0='{NAMESPACE}'><ns0:Request>{fields}"
        "</ns0:Request></ns0:SubmitApplication></soap-env:Body></soap-env:Envelope>"
    ).encode()


@contextlib.asynccontextmanager
async def counted(settings: SoapSimulatorSettings) -> AsyncIterator[tuple[Sim, Any, list[int]]]:
    """The simulator, its app, and how many calls reached spyne."""
    clock = Clock()
    app, state = create_soap_department(settings, clock=clock)
    spyne_calls = [0]
    wsgi = app.wsgi

    async def through_spyne(scope: Any, receive: Any, send: Any) -> None:
        spyne_calls[0] += 1
        await wsgi(scope, receive, send)

    app.wsgi = through_spyne
    async with serve_asgi(app) as url, httpx.AsyncClient(base_url=url, timeout=60) as client:
        yield (client, clock, state), app, spyne_calls


@pytest.mark.parametrize("outcome", ["approve", "reject", "supplement", "not_accept"])
async def test_plain_calls_are_answered_without_spyne_as_spyne_answers_them(outcome: str) -> None:
    for delay in (0, 10):
        settings = SoapSimulatorSettings(decision_delay_seconds=delay, mix={outcome: 1.0})
        async with counted(settings) as ((client, clock, state), app, spyne_calls):
            for n, micro in enumerate((0, 123456)):
                clock.now = T0.replace(microsecond=micro)
                key = f"ow-a{n}&<b>-v{n + 1}"
                app.plain, calls = True, spyne_calls[0]
                plain = await post(client, full_submit(key, version=f"{n + 1}"))
                assert spyne_calls[0] == calls  # answered without spyne
                app.plain = False  # the same submission again: spyne answers (same case)
                by_spyne = await post(client, full_submit(key, version=f"{n + 1}"))
                assert spyne_calls[0] == calls + 1
                assert (plain.status_code, plain.content) == (
                    by_spyne.status_code,
                    by_spyne.content,
                )
                assert plain.headers["content-type"] == by_spyne.headers["content-type"]
                case_id = text(plain.content, "CaseId")
                assert case_id is not None
                assert state.cases[case_id].body["Version"] == n + 1
                for seconds in (0, 4, 6, 8, 11):
                    clock.now = T0 + dt.timedelta(seconds=seconds, microseconds=micro)
                    app.plain = True
                    plain = await post(client, query_envelope(case_id))
                    app.plain = False
                    assert plain.content == (await post(client, query_envelope(case_id))).content


async def test_calls_of_any_other_shape_go_to_spyne() -> None:
    settings = SoapSimulatorSettings(decision_delay_seconds=0, mix={"approve": 1.0})
    async with counted(settings) as ((client, _clock, _state), _app, spyne_calls):
        order = tuple(reversed(SUBMIT_FIELDS))
        others = [
            submit_envelope("k1", header_key="h1"),  # a SOAP header
            submit_envelope(None),  # no key: spyne's fault
            full_submit("k2", version="x"),  # not an integer
            full_submit("k3", order=order),  # out of schema order
            query_envelope("NRP-404"),  # no such case: spyne's fault
            query_envelope("<x/>").replace(b"&lt;x/&gt;", b"<t:x/>"),
        ]
        for n, body in enumerate(others, start=1):
            await post(client, body)
            assert spyne_calls[0] == n, body
        await post(client, full_submit("k4"))
        assert spyne_calls[0] == len(others)
