"""``POST /v1/callbacks/{department}``: signed pushes from department systems."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from gateway import callbacks
from gateway.api.auth import RuntimeDep
from gateway.api.problems import Problem

router = APIRouter(prefix="/v1")


@router.post("/callbacks/{department}", tags=["callbacks"])
async def callback(department: str, request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    body = await request.body()
    headers = {k.lower(): v for k, v in request.headers.items()}
    try:
        result = await callbacks.receive(runtime, department, headers, body)
    except callbacks.CallbackRejected as exc:
        raise Problem(exc.status, exc.title, exc.detail) from exc
    return {"status": result.status, "application_id": result.application_id}
