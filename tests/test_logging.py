"""Logging policy: formats and stable JSON fields, PII masked everywhere, WARNING with the reason
for what ops must see (department down/up, case failed, result quarantined), DEBUG for ticks,
the access log, and a W3C traceparent on every outbound call."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from gateway import logs, reachability, tracing
from gateway.api.app import create_app
from gateway.connector import CaseUpdate
from gateway.daemon import Task, run_leased
from gateway.errors import TransientError
from gateway.events import Source, StatusChange
from gateway.http import make_client
from gateway.results import pull_department
from gateway.runtime import Runtime
from gateway.simulators.server import serve_asgi
from gateway.states import State
from gateway.updates import announce
from tests.conftest import application

ROOT = Path(__file__).resolve().parent.parent
ID_NUMBER = "110101199003074514"
PHONE = "13800138000"
APP_ID = "a018f2c3d4e5f60718293a4b5"  # the shape of gateway.clock.new_id("a")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    yield
    logs.configure("INFO", fmt="console")  # what Runtime's ensure_configured gives


def test_json_lines_have_the_stable_fields_and_no_pii(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    logs.configure("INFO", fmt="json")
    structlog.get_logger("gateway.test").warning(
        "case failed", application="a1", reason=f"applicant {ID_NUMBER} phone {PHONE}"
    )
    logging.getLogger("uvicorn.error").warning("a library says %s", PHONE)
    structlog.get_logger("gateway.test").debug("not at INFO")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert len(lines) == 2
    for line in lines:
        assert list(line)[: len(logs.JSON_FIELDS)] == list(logs.JSON_FIELDS)
        dt.datetime.fromisoformat(line["ts"])
    assert lines[0]["level"] == "warning" and lines[0]["logger"] == "gateway.test"
    assert lines[0]["application"] == "a1"
    assert ID_NUMBER not in lines[0]["reason"] and PHONE not in lines[0]["reason"]
    assert lines[1]["logger"] == "uvicorn.error" and PHONE not in lines[1]["event"]


def test_format_and_level_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    monkeypatch.setenv(logs.FORMAT_ENV, "json")
    monkeypatch.setenv(logs.LEVEL_ENV, "debug")
    logs.configure()
    structlog.get_logger("gateway.test").debug("tick")
    assert json.loads(capsys.readouterr().err)["level"] == "debug"
    monkeypatch.setenv(logs.FORMAT_ENV, "xml")
    with pytest.raises(logs.LogSettingError, match="'xml' does not exist"):
        logs.configure()


def test_cli_refuses_an_unknown_log_format() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "--log-format", "yaml", "plugins"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "log format 'yaml' does not exist" in result.stderr


def _change(to: State, **detail: Any) -> StatusChange:
    return StatusChange(
        application_id=APP_ID,
        receipt_number="C01-20261201-0001",
        department="amr",
        matter_code="GG00301000",
        centre="C01",
        version=1,
        from_status=State.DISPATCHING,
        to_status=to,
        source=Source.DISPATCH,
        actor="test",
        at=dt.datetime.now(dt.UTC),
        detail=detail,
    )


class _NoHooks:
    class plugins:
        @staticmethod
        def status_changed(*_args: Any) -> None:
            return None


def test_a_failed_case_is_a_warning_with_its_reason() -> None:
    with capture_logs() as logged:
        announce(_NoHooks(), [_change(State.FAILED, reason="gave up after 8 attempts: 503")])  # type: ignore[arg-type]
    warnings = [e for e in logged if e["log_level"] == "warning"]
    assert warnings == [
        {
            "event": "case failed",
            "log_level": "warning",
            "application": APP_ID,
            "receipt": "C01-20261201-0001",
            "department": "amr",
            "reason": "gave up after 8 attempts: 503",
        }
    ]


def test_department_down_and_back_up_are_one_warning_each() -> None:
    reachability.reset()
    with capture_logs() as logged:
        reachability.succeeded("nrp", "poll")
        for _ in range(reachability.DOWN_AFTER + 5):
            reachability.failed("nrp", "poll", "ConnectError: connection refused")
        assert REGISTRY.get_sample_value("gateway_department_up", {"department": "nrp"}) == 0
        reachability.succeeded("nrp", "poll")
        reachability.succeeded("nrp", "submit")
    warnings = [e for e in logged if e["log_level"] == "warning"]
    assert [e["event"] for e in warnings] == ["department down", "department back up"]
    assert warnings[0]["reason"] == "ConnectError: connection refused"
    assert warnings[0]["failures"] == reachability.DOWN_AFTER
    assert REGISTRY.get_sample_value("gateway_department_up", {"department": "nrp"}) == 1
    reachability.reset()


async def test_ticks_log_at_debug(runtime: Runtime, restore_logging: None) -> None:
    from apscheduler.triggers.interval import IntervalTrigger

    logs.configure("DEBUG")  # debug lines are dropped before capture at INFO

    async def work() -> dict[str, Any]:
        return {"ok": True}

    task = Task("probe", IntervalTrigger(seconds=60), work, leased=True)
    with capture_logs() as logged:
        await run_leased(runtime, task, "me", dt.datetime(2026, 12, 1, tzinfo=dt.UTC))
    won = [e for e in logged if e["event"] == "tick won"]
    assert len(won) == 1 and won[0]["log_level"] == "debug"
    assert not [e for e in logged if e["log_level"] in ("info", "warning")]


async def test_access_log_masks_pii(
    runtime: Runtime, centre_headers: dict[str, str], restore_logging: None
) -> None:
    logs.configure("DEBUG")
    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as api:
        with capture_logs() as logged:
            created = await api.post(
                "/v1/applications",
                json=application(),
                headers={**centre_headers, "Idempotency-Key": "log-1"},
            )
            await api.get(
                f"/v1/pickups?centre=C01&id_number={ID_NUMBER}",
                headers={
                    **centre_headers,
                    "traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01",
                },
            )
            await api.get("/healthz")
    assert created.status_code == 201
    access = [e for e in logged if e["event"] == "request"]
    assert [(e["method"], e["status"], e["log_level"]) for e in access] == [
        ("POST", 201, "info"),
        ("GET", 200, "info"),
        ("GET", 200, "debug"),
    ]
    assert access[0]["path"] == "/v1/applications" and access[0]["ms"] >= 0
    assert ID_NUMBER not in access[1]["path"] and "id_number=1101" in access[1]["path"]
    assert access[1]["traceparent"].startswith("00-abab")


@pytest.mark.parametrize("fmt", logs.FORMATS)
def test_a_line_written_directly_is_the_line_structlog_writes(
    fmt: str, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    """``logs.info_line`` (the access log's way) writes, byte for byte but the time stamp, the
    line ``structlog.get_logger(name).info(...)`` writes: fields in order, PII masked, the
    context's variables merged; and writes nothing (the caller logs the usual way) once the
    set-up is not ``configure``'s."""
    logs.configure("INFO", fmt=fmt)
    access = logging.getLogger("gateway.access")
    fields: dict[str, Any] = {
        "method": "GET",
        "path": f"/v1/pickups?id_number={ID_NUMBER}&q='\"王 x",
        "status": 201,
        "ms": 1.5,
        "client": "127.0.0.1",
        "traceparent": "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01",
    }
    structlog.contextvars.bind_contextvars(request_id="r1", phone=PHONE)
    try:
        assert logs.info_line(access, "request", dict(fields))
        structlog.get_logger("gateway.access").info("request", **fields)
    finally:
        structlog.contextvars.clear_contextvars()
    direct, usual = capsys.readouterr().err.splitlines()
    stamp = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
    assert stamp.search(direct) and stamp.sub("T", direct) == stamp.sub("T", usual)
    assert ID_NUMBER not in direct and PHONE not in direct and "request_id" in direct
    with capture_logs():
        assert not logs.info_line(access, "request", dict(fields))
    other = logging.StreamHandler(sys.stdout)
    logging.getLogger("gateway").addHandler(other)
    try:
        assert not logs.info_line(access, "request", dict(fields))
    finally:
        logging.getLogger("gateway").removeHandler(other)
    logs.configure("WARNING", fmt=fmt)  # structlog would drop an INFO record
    assert not logs.info_line(access, "request", dict(fields))
    assert capsys.readouterr().err == ""


async def test_the_access_log_line_is_written_directly(
    runtime: Runtime,
    centre_headers: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
) -> None:
    logs.configure("INFO", fmt="json")
    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as api:
        created = await api.post(
            f"/v1/applications?note={ID_NUMBER}",
            json=application(),
            headers={**centre_headers, "Idempotency-Key": "log-2"},
        )
    assert created.status_code == 201
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if "gateway.access" in x]
    assert [(x["method"], x["status"], x["level"]) for x in lines] == [("POST", 201, "info")]
    assert ID_NUMBER not in lines[0]["path"] and lines[0]["path"].startswith("/v1/applications?")


def test_trace_id_of_a_case_is_stable_and_names_the_application() -> None:
    trace = tracing.trace_id_for(APP_ID)
    assert re.fullmatch(r"[0-9a-f]{32}", trace) and trace.startswith(APP_ID[1:])
    assert trace == tracing.trace_id_for(APP_ID)
    assert re.fullmatch(r"[0-9a-f]{32}", tracing.trace_id_for("not-hex"))


async def test_every_outbound_call_carries_a_traceparent(
    capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    logs.configure("DEBUG", fmt="json")
    seen: list[str | None] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        seen.append(dict(scope["headers"]).get(b"traceparent", b"").decode() or None)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    pattern = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-01")
    async with serve_asgi(app, lifespan="off") as url:
        client = make_client()
        try:
            with tracing.case(APP_ID) as trace_id:
                await client.get(url + "/one")
                await client.post(url + "/two", content=b"x")
            await client.get(url + "/outside")
            await client.get(
                url + "/kept", headers={"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
            )
        finally:
            await client.aclose()
    matches = [pattern.fullmatch(h or "") for h in seen]
    assert all(matches), seen
    ids = [m.group(1) for m in matches if m]
    assert ids[0] == ids[1] == trace_id and ids[2] != trace_id
    assert matches[0].group(2) != matches[1].group(2)  # type: ignore[union-attr]  # a span per call
    assert ids[3] == "1" * 32
    logged = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    calls = [e for e in logged if e["event"] == "outbound call"]
    assert [e["level"] for e in calls] == ["debug"] * 4
    assert calls[0]["traceparent"] == seen[0] and calls[0]["trace_id"] == trace_id


class _Drop:
    """A result channel: the department's files, as a connector's pull_updates sees them."""

    def __init__(self, updates: list[CaseUpdate] | Exception) -> None:
        self.updates = updates
        self.acked: list[tuple[str, str]] = []

    async def pull_updates(self, limit: int) -> list[CaseUpdate]:
        if isinstance(self.updates, Exception):
            raise self.updates
        return self.updates

    async def ack_update(self, upd: CaseUpdate, outcome: str, reason: str | None = None) -> None:
        self.acked.append((upd.case_id, outcome))


async def test_a_quarantined_result_and_an_unreachable_drop_are_warnings(
    runtime: Runtime,
) -> None:
    reachability.reset()
    stray = CaseUpdate(case_id="NOPE-1", status="approved")
    drop = _Drop([stray])
    # the department's side of the channel, behind the department's real link
    real = runtime.connectors["nrp"]
    runtime.connectors["nrp"] = drop  # type: ignore[assignment]
    try:
        with capture_logs() as logged:
            await pull_department(runtime, "nrp")
            runtime.connectors["nrp"] = _Drop(TransientError("sftp: refused"))  # type: ignore[assignment]
            for _ in range(reachability.DOWN_AFTER):
                with pytest.raises(TransientError):
                    await pull_department(runtime, "nrp")
    finally:
        runtime.connectors["nrp"] = real
    assert drop.acked == [("NOPE-1", "unmatched")]
    warnings = [e for e in logged if e["log_level"] == "warning"]
    assert [e["event"] for e in warnings][:2] == ["result quarantined", "department down"]
    assert warnings[0]["case"] == "NOPE-1" and "no case" in warnings[0]["reason"]
    assert warnings[1]["via"] == "pull_updates" and "sftp: refused" in warnings[1]["reason"]
    reachability.reset()
