"""Shared helpers for the REST simulator and connector tests (a plain module, not a conftest)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from gateway_rest.connector import RestConnector
from gateway_rest.options import RestOptions

from gateway.connector import Applicant, ConnectorContext, Envelope, MaterialRef
from gateway.simulators.rest_department import (
    RestDepartmentState,
    RestSimulatorSettings,
    create_rest_department,
)
from gateway.simulators.server import serve_asgi

ID_NUMBER = "110101199003074514"


def make_envelope(key: str = "app-1:v1", **changes: Any) -> Envelope:
    data: dict[str, Any] = {
        "application_id": "app-1",
        "idempotency_key": key,
        "version": 1,
        "department": "amr",
        "matter_code": "XK00123000",
        "matter_name": "食品经营许可",
        "region": "310101",
        "receipt_number": "C01-20260301-0001",
        "centre": "C01",
        "applicant": Applicant(name="张三", id_number=ID_NUMBER, phone="13800138000"),
        "form": {"shop": {"name": "小店", "area": 42}},
        "materials": [],
        "submitted_at": dt.datetime(2026, 3, 1, 9, 30, tzinfo=dt.UTC),
    }
    data.update(changes)
    return Envelope(**data)


MAPPED_BODY = {
    "applicant.name": "applicant.name",
    "applicant.idNo": "applicant.id_number",
    "item.code": "matter_code",
    "item.region": "region",
    "form": "form",
    "version": "version",
    "ref": "receipt_number",
}


def rest_options(base_url: str, **extra: Any) -> RestOptions:
    data: dict[str, Any] = {
        "base_url": f"{base_url}/api/v1",
        "timeout_seconds": 30,  # generous: only the timeout tests want a short one
        "submit": {"body": MAPPED_BODY, "constants": {"channel": "onewindow"}},
        "poll": {},
        "list": {"page_size": 2},
    }
    data.update(extra)
    return RestOptions.model_validate(data)


async def _no_material(material: MaterialRef) -> bytes:
    raise AssertionError(f"unexpected material read {material.id}")


def make_connector(
    options: RestOptions,
    http: httpx.AsyncClient,
    *,
    read_material: Callable[[MaterialRef], Any] = _no_material,
    map_payload: Callable[[Envelope], dict[str, Any] | None] | None = None,
) -> RestConnector:
    context = ConnectorContext(
        department="amr",
        options=options,
        http=http,
        read_material=read_material,
        map_payload=map_payload,
    )
    return RestConnector(context)


@asynccontextmanager
async def running_department(
    **settings: Any,
) -> AsyncIterator[tuple[str, RestDepartmentState]]:
    app, state = create_rest_department(RestSimulatorSettings(**settings))
    async with serve_asgi(app) as base_url:
        yield base_url, state


@asynccontextmanager
async def department_client(
    **settings: Any,
) -> AsyncIterator[tuple[str, RestDepartmentState, httpx.AsyncClient]]:
    """A running simulated department and a client to call it with."""
    async with running_department(**settings) as (base_url, state), httpx.AsyncClient() as client:
        yield base_url, state, client
