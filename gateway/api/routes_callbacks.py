"""``POST /v1/callbacks/{department}``: signed pushes from department systems."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gateway import callbacks
from gateway.api.auth import RuntimeDep
from gateway.api.problems import Problem
from gateway.metrics import CALLBACKS
from gateway.runtime import Runtime

router = APIRouter(prefix="/v1")

#: the path's fixed part, for :class:`gateway.api.front.Front`'s shortcut by prefix
PREFIX = "/v1/callbacks/"


@router.post("/callbacks/{department}", tags=["callbacks"])
async def callback(department: str, request: Request, runtime: RuntimeDep) -> dict[str, Any]:
    return await _receive(runtime, department, request, await request.body())


async def callback_shortcut(request: Request, raw: bytes) -> JSONResponse:
    """``POST /v1/callbacks/{department}`` with ``Content-Type: application/json`` (what
    departments send; a city day's amr pushes one per case), as the front middleware hands it
    over before Starlette's routing: the same endpoint without the walk through every route,
    FastAPI's dependency solving and its validation of the returned dict, answered with the
    same bytes (the route above stays declared, so the OpenAPI document is unchanged)."""
    department = request.scope["path"][len(PREFIX) :]
    content = await _receive(request.app.state.runtime, department, request, raw)
    return JSONResponse(content)


async def _receive(
    runtime: Runtime, department: str, request: Request, body: bytes
) -> dict[str, Any]:
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
