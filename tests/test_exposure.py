"""Exposure (issue 12 item 11): the API description and metrics are configurable (off or
behind a key), every answer carries security headers, documents are attachments with a safe
content type, no javascript: link is passed on, and a centre sees no department address in
last_error."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from gateway.api.app import create_app
from gateway.config.loader import Config
from gateway.connector import CaseUpdate, ResultDocument
from gateway.events import Source
from gateway.runtime import Runtime
from gateway.store.tables import applications
from gateway.updates import apply_case_update
from tests.handout_fixtures import quiet_runtime, submit


@pytest.fixture
async def runtime(example_config: Config) -> AsyncIterator[Runtime]:
    async with quiet_runtime(example_config) as rt:
        yield rt


def with_api(runtime: Runtime, **settings: Any) -> httpx.AsyncClient:
    gateway = runtime.config.gateway
    api = gateway.api.model_copy(update=settings)
    runtime.config = dataclasses.replace(
        runtime.config, gateway=gateway.model_copy(update={"api": api})
    )
    transport = httpx.ASGITransport(app=create_app(runtime))
    return httpx.AsyncClient(transport=transport, base_url="http://gateway.test")


async def test_description_and_metrics_are_public_by_default_and_can_be_closed(
    runtime: Runtime, centre_headers: dict[str, str], ops_headers: dict[str, str]
) -> None:
    async with with_api(runtime) as api:
        for path in ("/openapi.json", "/docs", "/redoc", "/metrics"):
            assert (await api.get(path)).status_code == 200, path
    async with with_api(runtime, openapi="key", metrics="ops") as api:
        for path in ("/openapi.json", "/docs", "/redoc", "/metrics"):
            assert (await api.get(path)).status_code == 401, path
        for path in ("/openapi.json", "/docs", "/redoc"):
            assert (await api.get(path, headers=centre_headers)).status_code == 200, path
        assert (await api.get("/openapi.json", headers=centre_headers)).json()["paths"]
        assert (await api.get("/metrics", headers=centre_headers)).status_code == 403
        assert (await api.get("/metrics", headers=ops_headers)).status_code == 200
    async with with_api(runtime, openapi="off", metrics="off") as api:
        for path in ("/openapi.json", "/docs", "/redoc", "/metrics"):
            resp = await api.get(path, headers=ops_headers)
            assert resp.status_code == 404, path
            assert resp.headers["content-type"] == "application/problem+json"


async def test_every_answer_carries_security_headers(
    runtime: Runtime, centre_headers: dict[str, str]
) -> None:
    async with with_api(runtime) as api:
        for resp in (
            await api.get("/v1/applications", headers=centre_headers),
            await api.get("/v1/applications"),  # a 401 too
            await api.get("/healthz"),
        ):
            assert resp.headers["x-content-type-options"] == "nosniff"
            assert resp.headers["x-frame-options"] == "DENY"
            assert resp.headers["cache-control"] == "no-store"
            assert "default-src 'none'" in resp.headers["content-security-policy"]
        docs = await api.get("/docs")
        assert "content-security-policy" not in docs.headers  # the page loads its scripts


async def decided_with(runtime: Runtime, app_id: str, docs: list[ResultDocument]) -> None:
    await apply_case_update(
        runtime,
        app_id,
        CaseUpdate(case_id="AMR-1", status="9", detail="准予许可", documents=docs),
        source=Source.POLL,
        actor="poll/amr",
    )


async def test_documents_are_attachments_of_a_safe_type_and_links_only_http(
    runtime: Runtime, api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    app = await submit(api, centre_headers)
    await decided_with(
        runtime,
        app["id"],
        [
            ResultDocument(
                name="licence.html",
                content_type="text/html",
                content=b"<script>alert(document.cookie)</script>",
            ),
            ResultDocument(name="evil", content_type="application/pdf", url="javascript:alert(1)"),
            ResultDocument(name="ok", content_type="application/pdf", url="https://dept.example/x"),
        ],
    )
    case = (await api.get(f"/v1/applications/{app['id']}", headers=centre_headers)).json()
    by_name = {d["name"]: d for d in case["documents"]}
    assert by_name["evil"]["url"] is None and by_name["ok"]["url"] == "https://dept.example/x"
    html = await api.get(by_name["licence.html"]["download"], headers=centre_headers)
    assert html.status_code == 200
    assert html.headers["content-type"] == "application/octet-stream"
    assert html.headers["content-disposition"].startswith("attachment;")
    assert html.headers["x-content-type-options"] == "nosniff"
    evil = await api.get(
        f"/v1/applications/{app['id']}/documents/{by_name['evil']['id']}", headers=centre_headers
    )
    assert evil.status_code == 409 and "javascript" not in evil.text


async def test_a_centre_sees_no_department_address_in_last_error(
    runtime: Runtime,
    api: httpx.AsyncClient,
    centre_headers: dict[str, str],
    ops_headers: dict[str, str],
) -> None:
    app = await submit(api, centre_headers)
    error = (
        "gave up after 8 attempts: amr: POST http://10.20.30.40:8080/internal/cases: "
        "connection failed (ConnectError) at 10.20.30.40:8080"
    )
    async with runtime.engine.begin() as conn:  # as the dispatcher records it
        await conn.execute(
            update(applications)
            .where(applications.c.id == app["id"])
            .values(status="failed", last_error=error)
        )
    seen = (await api.get(f"/v1/applications/{app['id']}", headers=centre_headers)).json()
    assert "10.20.30.40" not in seen["last_error"] and "internal" not in seen["last_error"]
    assert seen["last_error"].startswith("gave up after 8 attempts: amr: POST ")
    listed = (await api.get("/v1/applications", headers=centre_headers)).json()["items"]
    assert "10.20.30.40" not in listed[0]["last_error"]
    ops = (await api.get(f"/v1/applications/{app['id']}", headers=ops_headers)).json()
    assert ops["last_error"] == error
