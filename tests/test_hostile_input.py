"""Hostile input at intake and in queries (issue 12, items 2 and 8): a poison application is
refused with a 422 naming the field, and a poison value already stored cannot break any view."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from gateway.config.loader import Config
from gateway.runtime import Runtime
from gateway.store.tables import applications
from gateway.text import MAX_DEPTH
from tests.conftest import application
from tests.handout_fixtures import quiet_runtime, submit


@pytest.fixture
async def runtime(example_config: Config) -> AsyncIterator[Runtime]:
    async with quiet_runtime(example_config) as rt:
        yield rt


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": value}
    return value


async def post_raw(api: httpx.AsyncClient, headers: dict[str, str], raw: str) -> httpx.Response:
    """Send JSON text as is (json.dumps would escape a lone surrogate the same way, but this
    keeps the attack visible)."""
    return await api.post(
        "/v1/applications",
        content=raw.encode(),
        headers={
            **headers,
            "Idempotency-Key": str(uuid.uuid4()),
            "content-type": "application/json",
        },
    )


def field_of(resp: httpx.Response) -> str:
    body = resp.json()
    assert resp.headers["content-type"] == "application/problem+json", resp.text
    field: str = body["errors"][0]["field"]
    return field


async def test_form_nested_deeper_than_the_limit_is_refused(
    api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    for depth in (MAX_DEPTH + 1, 300):
        resp = await post_raw(api, centre_headers, json.dumps(application(form=nested(depth))))
        assert resp.status_code == 422, resp.text
        assert field_of(resp) == "form"
        assert f"deeper than {MAX_DEPTH}" in resp.json()["detail"]
    ok = await post_raw(api, centre_headers, json.dumps(application(form=nested(MAX_DEPTH))))
    assert ok.status_code == 201, ok.text


@pytest.mark.parametrize(
    ("where", "field"),
    [
        ("form-value", "form"),
        ("form-key", "form"),
        ("clerk", "clerk"),
        ("window", "window"),
        ("name", "applicant.name"),
        ("material", "materials[0]"),
    ],
)
async def test_lone_surrogates_are_refused_naming_the_field(
    api: httpx.AsyncClient, centre_headers: dict[str, str], where: str, field: str
) -> None:
    body = application()
    lone = "\ud800"
    match where:
        case "form-value":
            body["form"] = {"a": lone}
        case "form-key":
            body["form"] = {lone: 1}
        case "name":
            body["applicant"]["name"] = lone
        case "material":
            body["materials"] = [lone]
        case _:
            body[where] = lone
    resp = await post_raw(api, centre_headers, json.dumps(body))  # ascii: "\\ud800" on the wire
    assert "\\ud800" in resp.request.content.decode()
    assert resp.status_code == 422, resp.text
    assert field_of(resp) == field
    detail = resp.json()["detail"]
    assert "surrogate" in detail or "unicode" in detail, detail


async def test_unknown_key_that_is_a_lone_surrogate_gets_a_problem(
    api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    resp = await post_raw(api, centre_headers, json.dumps({**application(), "\ud800": 1}))
    assert resp.status_code == 422
    assert resp.headers["content-type"] == "application/problem+json"


async def test_json_nested_past_the_parser_is_a_client_error(
    api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    resp = await post_raw(api, centre_headers, "[" * 200_000 + "]" * 200_000)
    assert 400 <= resp.status_code < 500, resp.text


async def test_a_poison_value_already_stored_breaks_no_view(
    api: httpx.AsyncClient,
    runtime: Runtime,
    centre_headers: dict[str, str],
    ops_headers: dict[str, str],
) -> None:
    """Values stored before intake checked them (or written by a plugin) still render: every
    page that shows the case answers 200, with the damage visible but harmless."""
    app = await submit(api, centre_headers)
    # PostgreSQL's jsonb refuses lone surrogates itself; SQLite's JSON text keeps them
    lone = "\ud800" if runtime.engine.dialect.name == "sqlite" else "?"
    poison = {"deep": nested(300), "lone": lone, "\udfff" if lone != "?" else "k": "key"}
    async with runtime.engine.begin() as conn:
        await conn.execute(
            update(applications)
            .where(applications.c.id == app["id"])
            .values(
                form=poison,
                applicant={"name": lone, "id_number": 110101199003074514, "phone": None},
                materials={"not": "a list"},
                status="failed",
            )
        )
    one = await api.get(f"/v1/applications/{app['id']}", headers=centre_headers)
    assert one.status_code == 200, one.text
    shown = one.json()
    assert shown["form"]["lone"] == ("\ufffd" if lone != "?" else "?")
    assert shown["applicant"]["id_number"] == "1101**********4514"
    depth, value = 0, shown["form"]["deep"]
    while isinstance(value, dict):
        value, depth = value["a"], depth + 1
    assert value == "…" and depth < MAX_DEPTH
    page = await api.get("/v1/applications", headers=centre_headers)
    assert page.status_code == 200 and [i["id"] for i in page.json()["items"]] == [app["id"]]
    failures = await api.get("/v1/ops/failures", headers=ops_headers)
    assert failures.status_code == 200 and failures.json()["items"][0]["id"] == app["id"]


@pytest.mark.parametrize(
    "since", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"], ids=["min", "max"]
)
async def test_updated_since_out_of_range_is_a_422(
    api: httpx.AsyncClient, centre_headers: dict[str, str], since: str
) -> None:
    resp = await api.get(
        "/v1/applications", params={"updated_since": since}, headers=centre_headers
    )
    assert resp.status_code == 422, resp.text
    assert field_of(resp) == "updated_since"
