"""Ops endpoints (ops key required) and probes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import text

from gateway import deadlines, operations
from gateway.api.auth import OpsDep, RuntimeDep
from gateway.api.problems import Problem
from gateway.api.views import ApplicationView, application_view
from gateway.store import jobs

router = APIRouter()


class DepartmentStatus(BaseModel):
    code: str
    name: str
    connector: str
    available: bool
    reason: str | None
    healthy: bool | None
    health_detail: str
    breaker_open: bool
    queue: dict[str, int]
    overdue: int = 0


@router.get("/v1/ops/departments", response_model=list[DepartmentStatus], tags=["ops"])
async def departments(runtime: RuntimeDep, _ops: OpsDep) -> list[DepartmentStatus]:
    async with runtime.engine.connect() as conn:
        depth = await jobs.depth(conn)
    overdue = await deadlines.overdue_counts(runtime)
    dispatcher = runtime.dispatcher
    out = []
    for code, dept in sorted(runtime.config.departments.items()):
        connector = runtime.connectors.get(code)
        healthy, detail = None, ""
        if connector is not None:
            try:
                h = await connector.health()
                healthy, detail = h.ok, h.detail
            except Exception as exc:
                healthy, detail = False, f"health check failed: {type(exc).__name__}"
        out.append(
            DepartmentStatus(
                code=code,
                name=dept.name,
                connector=dept.connector,
                available=connector is not None,
                reason=runtime.unavailable.get(code),
                healthy=healthy,
                health_detail=detail,
                breaker_open=bool(dispatcher and dispatcher.breaker_open(code)),
                queue=depth.get(code, {}),
                overdue=overdue.get(code, 0),
            )
        )
    return out


@router.get("/v1/ops/failures", response_model=list[ApplicationView], tags=["ops"])
async def failures(runtime: RuntimeDep, _ops: OpsDep) -> list[ApplicationView]:
    return [application_view(r) for r in await operations.failures(runtime)]


@router.post("/v1/ops/applications/{app_id}/retry", tags=["ops"])
async def retry(app_id: str, runtime: RuntimeDep, ops: OpsDep) -> dict[str, Any]:
    try:
        change = await operations.replay(runtime, app_id, actor=f"ops/{ops.name}")
    except operations.NotReplayable as exc:
        raise Problem(409, "Not replayable", str(exc), field="id") from exc
    return {"id": app_id, "status": change.to_status}


@router.get("/healthz", tags=["probes"])
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", tags=["probes"])
async def readyz(runtime: RuntimeDep, response: Response) -> dict[str, Any]:
    try:
        async with runtime.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    except Exception as exc:
        response.status_code = 503
        return {"status": "database unavailable", "detail": type(exc).__name__}
    return {"status": "ready", "unavailable_departments": runtime.unavailable}


@router.get("/metrics", tags=["probes"])
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
