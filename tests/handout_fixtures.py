"""Helpers for the back-half tests (pickup, supplements, withdrawals, notifications): a plain
module, not a conftest. Departments' answers are applied through the one update path."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx

from gateway.config.loader import Config
from gateway.connector import CaseUpdate, ResultDocument
from gateway.events import Source
from gateway.runtime import Runtime
from gateway.updates import apply_case_update
from tests.conftest import application

ID_NUMBER = "110101199003074514"
CERTIFICATE = b"%PDF-1.4\n% licence for tests\n%%EOF\n"


async def submit(api: httpx.AsyncClient, headers: dict[str, str], **changes: Any) -> dict[str, Any]:
    resp = await api.post(
        "/v1/applications",
        json=application(**changes),
        headers={**headers, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def decide(
    runtime: Runtime,
    app_id: str,
    status: str = "9",
    *,
    document: bytes | None = CERTIFICATE,
    supplement_items: list[str] | None = None,
    version: int | None = None,
) -> list[str]:
    """Apply a department's answer (amr status codes: 9 approved, 4 refused, 3 supplement)."""
    docs = (
        [ResultDocument(name="licence.pdf", content_type="application/pdf", content=document)]
        if document is not None
        else []
    )
    changes = await apply_case_update(
        runtime,
        app_id,
        CaseUpdate(
            case_id=f"AMR-{app_id[-6:]}",
            status=status,
            detail="准予许可" if status == "9" else "请补正",
            documents=docs,
            supplement_items=supplement_items or [],
        ),
        source=Source.POLL,
        actor="poll/amr",
        version=version,
    )
    return [c.to_status.value for c in changes]


async def status_of(api: httpx.AsyncClient, headers: dict[str, str], app_id: str) -> str:
    resp = await api.get(f"/v1/applications/{app_id}", headers=headers)
    assert resp.status_code == 200, resp.text
    status: str = resp.json()["status"]
    return status


@contextlib.asynccontextmanager
async def quiet_runtime(config: Config) -> AsyncIterator[Runtime]:
    """A runtime over the example city without its simulated departments: for tests where the
    departments' answers are applied directly (``decide``) and nothing is dispatched."""
    rt = Runtime(config)
    await rt.prepare_database()
    try:
        yield rt
    finally:
        await rt.aclose()
