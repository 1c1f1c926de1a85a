"""Approved cases without documents are never silent (issue 13 item 2): each report of one logs a
WARNING and counts a metric, ops list them, the daemon asks again, and ops re-fetch named cases
or all of them through the API and the CLI."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import REGISTRY
from sqlalchemy import event
from structlog.testing import capture_logs
from typer.testing import CliRunner

from gateway import documents, refetch
from gateway.cli import app as cli
from gateway.config.loader import load_config
from gateway.daemon import Daemon
from gateway.operations import check_now
from gateway.poller import poll_department
from gateway.runtime import Runtime
from gateway.simulators.city import SimulatedCity
from gateway.simulators.rest_department import STATUS_APPROVED, SimCase, certificate
from gateway.testing import case_status, dispatch
from tests.conftest import TEST_SECRETS, application, wait_for
from tests.test_crash_recovery import write_config


def missing_count(department: str, source: str) -> float:
    value = REGISTRY.get_sample_value(
        "gateway_documents_missing_total", {"department": department, "source": source}
    )
    return value or 0.0


async def approved_without_certificate(
    runtime: Runtime, city: SimulatedCity, submit: Callable[[], Awaitable[str]]
) -> tuple[str, SimCase]:
    """A case the amr department reports approved before it issued the certificate."""
    amr = city.states["amr"]
    amr.settings = amr.settings.model_copy(update={"decision_delay_seconds": 3600})
    app_id = await submit()
    await dispatch(runtime)
    [case] = [c for c in amr.cases.values() if c.idempotency_key == f"ow-{app_id}-v1"]
    amr.force_status(case.id, STATUS_APPROVED)  # decided; the certificate comes later
    # due for a poll now, as when ops ask: a config with the example's 30 s poll interval
    # (test_cli_lists_shows_and_fetches_again) would otherwise wait out the adaptive interval,
    # as long as wait_for's timeout, and fail on a busy machine
    assert await check_now(runtime, app_id) is not None

    async def polled_approved() -> bool:
        await poll_department(runtime, "amr")
        return await case_status(runtime, app_id) == "approved"

    await wait_for(polled_approved)
    return app_id, case


async def test_visible_listed_and_fetched_again_by_ops(
    runtime: Runtime,
    city: SimulatedCity,
    api: httpx.AsyncClient,
    centre_headers: dict[str, str],
    ops_headers: dict[str, str],
) -> None:
    async def submit() -> str:
        headers = {**centre_headers, "Idempotency-Key": "undocumented-1"}
        resp = await api.post("/v1/applications", json=application(), headers=headers)
        assert resp.status_code == 201, resp.text
        return str(resp.json()["id"])

    before = missing_count("amr", "poll")
    with capture_logs() as logs:
        app_id, case = await approved_without_certificate(runtime, city, submit)
    warnings = [e for e in logs if e["event"] == "decided without documents"]
    assert warnings and warnings[0]["log_level"] == "warning"
    assert warnings[0]["application"] == app_id and warnings[0]["department"] == "amr"
    assert missing_count("amr", "poll") >= before + 1

    listed = (await api.get("/v1/ops/undocumented", headers=ops_headers)).json()["items"]
    assert [(u["id"], u["department_case_id"]) for u in listed] == [(app_id, case.id)]
    assert (await api.get("/v1/ops/undocumented", headers=centre_headers)).status_code == 403

    # the department has not issued it yet: asked again, still missing, still listed
    out = await api.post("/v1/ops/refetch", json={"applications": [app_id]}, headers=ops_headers)
    assert out.status_code == 200, out.text
    assert [(r["application_id"], r["outcome"]) for r in out.json()] == [(app_id, "still_missing")]

    issued = city.states["amr"].approve(case.id)
    out = await api.post("/v1/ops/refetch", json={"all": True}, headers=ops_headers)
    assert [(r["application_id"], r["outcome"], r["status"]) for r in out.json()] == [
        (app_id, "collected", "ready_for_pickup")
    ]
    async with runtime.engine.connect() as conn:
        [doc] = await documents.for_application(conn, app_id)
    assert await runtime.blobs.get(doc.sha256) == issued == certificate(case.id)
    assert (await api.get("/v1/ops/undocumented", headers=ops_headers)).json()["items"] == []

    # a case that is not waiting is said so; a body naming neither or both is refused
    again = await api.post("/v1/ops/refetch", json={"applications": [app_id]}, headers=ops_headers)
    assert [r["outcome"] for r in again.json()] == ["not_waiting"]
    bad = await api.post(
        "/v1/ops/refetch", json={"applications": [app_id], "all": True}, headers=ops_headers
    )
    assert bad.status_code == 422
    assert bad.headers["content-type"].startswith("application/problem+json")


async def test_daemon_task_fetches_again(
    runtime: Runtime, city: SimulatedCity, api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    async def submit() -> str:
        headers = {**centre_headers, "Idempotency-Key": "undocumented-daemon"}
        resp = await api.post("/v1/applications", json=application(), headers=headers)
        return str(resp.json()["id"])

    app_id, case = await approved_without_certificate(runtime, city, submit)
    daemon = Daemon(runtime)
    assert await daemon.tasks["refetch"].run() == {"still_missing": 1}
    city.states["amr"].approve(case.id)
    assert await daemon.tasks["refetch"].run() == {"collected": 1}
    assert await case_status(runtime, app_id) == "ready_for_pickup"
    assert await daemon.tasks["refetch"].run() == {}


def _cli(config: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, [*args, "--config", str(config)], env=TEST_SECRETS)


async def test_cli_lists_shows_and_fetches_again(
    tmp_path: Path, db_url: str, city: SimulatedCity
) -> None:
    config = write_config(tmp_path / "config", db_url, city.urls)
    runtime = Runtime(load_config(config))
    await runtime.prepare_database()
    try:
        from gateway.testing import submit_application

        async def submit() -> str:
            return await submit_application(runtime, matter_code="GG00301000", region="339900")

        app_id, case = await approved_without_certificate(runtime, city, submit)
    finally:
        await runtime.aclose()

    # the CLI runs its own event loop: in a thread, while this loop serves the simulator
    listed = await asyncio.to_thread(_cli, config, "refetch", "--list", "--json")
    assert listed.exit_code == 0, listed.output
    assert app_id in listed.output and case.id in listed.output
    shown = await asyncio.to_thread(_cli, config, "status", app_id)
    assert "decided without documents" in shown.output
    assert f"gateway refetch {app_id}" in shown.output

    still = await asyncio.to_thread(_cli, config, "refetch", app_id)
    assert still.exit_code == 1 and "still_missing" in still.output
    city.states["amr"].approve(case.id)
    done = await asyncio.to_thread(_cli, config, "refetch", app_id, "--json")
    assert done.exit_code == 0, done.output
    assert '"outcome": "collected"' in done.output
    usage = await asyncio.to_thread(_cli, config, "refetch")
    assert usage.exit_code == 2 and "give case ids, --all, or --list" in usage.output


async def test_daemon_task_fetches_every_waiting_case_a_page_at_a_time(
    runtime: Runtime, city: SimulatedCity, api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    """A tick asks for every waiting case, not one page of them (at 200 a tick, a city day's
    4,800 receipts that decided without documents waited up to two hours), and stops when its
    time is spent."""
    waiting = []
    for i in range(3):

        async def submit(i: int = i) -> str:
            headers = {**centre_headers, "Idempotency-Key": f"undocumented-page-{i}"}
            resp = await api.post("/v1/applications", json=application(), headers=headers)
            return str(resp.json()["id"])

        waiting.append(await approved_without_certificate(runtime, city, submit))
    for _app_id, case in waiting:
        city.states["amr"].approve(case.id)
    assert await refetch.sweep(runtime, page=1, budget_seconds=0) == {"collected": 1}
    assert await refetch.sweep(runtime, page=1) == {"collected": 2}
    assert [await case_status(runtime, a) for a, _c in waiting] == ["ready_for_pickup"] * 3


async def test_a_pages_answers_are_applied_in_one_transaction(
    runtime: Runtime, city: SimulatedCity, api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    """A page's polls run together and their answers are applied together, as a change
    feed's page is: a city day's thousands of waiting cases were a write transaction each."""
    waiting = []
    for i in range(2):

        async def submit(i: int = i) -> str:
            headers = {**centre_headers, "Idempotency-Key": f"undocumented-batch-{i}"}
            resp = await api.post("/v1/applications", json=application(), headers=headers)
            return str(resp.json()["id"])

        waiting.append(await approved_without_certificate(runtime, city, submit))
    city.states["amr"].approve(waiting[0][1].id)  # the other one's certificate is still to come
    begun: list[object] = []
    count = begun.append  # one bound method, so that remove finds it
    event.listen(runtime.engine.sync_engine, "begin", count)
    try:
        found = await refetch.sweep(runtime)
    finally:
        event.remove(runtime.engine.sync_engine, "begin", count)
    assert found == {"collected": 1, "still_missing": 1}
    # one write transaction (and on PostgreSQL the page's read, its reader being the engine)
    assert len(begun) == 1 + (runtime.reader is runtime.engine)
    statuses = [await case_status(runtime, a) for a, _c in waiting]
    assert statuses == ["ready_for_pickup", "approved"]
