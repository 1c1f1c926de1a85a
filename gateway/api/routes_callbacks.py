"""``POST /v1/callbacks/{department}``: signed pushes from department systems."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from gateway import callbacks
from gateway.api.auth import RuntimeDep
from gateway.api.problems import Problem
from gateway.metrics import CALLBACKS

router = APIRouter(prefix="/v1")


@router.post("/callbacks/{department}", tags=["callbacks"])
async def callback(department: str, request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    body = await request.body()
    headers = {k.lower(): v for k, v in request.headers.items()}
    # a label per configured department only: the path is the caller's, and unbounded
    label = department if department in runtime.config.departments else "unknown"
    try:
        result = await callbacks.receive(runtime, department, headers, body)
    except callbacks.CallbackRejected as exc:
        CALLBACKS.labels(label, f"refused_{exc.status}").inc()
        raise Problem(exc.status, exc.title, exc.detail) from exc
    CALLBACKS.labels(label, result.status).inc()
    return {"status": result.status, "application_id": result.application_id}
