"""Ops endpoints (ops key required) and probes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import text

from gateway import audit, collector, deadlines, operations
from gateway.api.auth import OpsDep, RuntimeDep
from gateway.api.exposure import metrics_allowed
from gateway.api.paging import Page, PageDep
from gateway.api.problems import Problem
from gateway.api.views import ApplicationView, application_view
from gateway.store import jobs

router = APIRouter()


class DepartmentStatus(operations.DepartmentHealth):
    queue: dict[str, int]
    overdue: int = 0


class DepartmentPage(Page[DepartmentStatus]):
    pass


@router.get("/v1/ops/departments", response_model=DepartmentPage, tags=["ops"])
async def departments(runtime: RuntimeDep, _ops: OpsDep, paging: PageDep) -> DepartmentPage:
    # health is asked only of the departments on this page
    cut = paging.slice("departments", sorted(runtime.config.departments), lambda c: [c])
    async with runtime.engine.connect() as conn:
        depth = await jobs.depth(conn)
    overdue = await deadlines.overdue_counts(runtime)
    out = [
        DepartmentStatus(
            **h.model_dump(), queue=depth.get(h.code, {}), overdue=overdue.get(h.code, 0)
        )
        for h in await operations.department_health(runtime, cut.items)
    ]
    return DepartmentPage(items=out, next_cursor=cut.next_cursor)


class FailurePage(Page[ApplicationView]):
    pass


@router.get("/v1/ops/failures", response_model=FailurePage, tags=["ops"])
async def failures(runtime: RuntimeDep, ops: OpsDep, paging: PageDep) -> FailurePage:
    """Failed cases (dead letters), most recently failed first."""
    start = paging.key("failures", 2)
    rows = await operations.failures(runtime, paging.limit + 1, after=start)
    cut = paging.page("failures", rows, lambda r: [r.updated_at, r.id])
    await audit.api_read(runtime, ops, "GET /v1/ops/failures", [r.id for r in cut.items])
    return FailurePage(
        items=[application_view(r, ops=True) for r in cut.items], next_cursor=cut.next_cursor
    )


@router.post("/v1/ops/applications/{app_id}/retry", tags=["ops"])
async def retry(app_id: str, runtime: RuntimeDep, ops: OpsDep) -> dict[str, Any]:
    try:
        change = await operations.replay(runtime, app_id, actor=f"ops/{ops.name}")
    except operations.NotReplayable as exc:
        raise Problem(409, "Not replayable", str(exc), field="id", params={"id": app_id}) from exc
    return {"id": app_id, "status": change.to_status}


class CheckAnswer(BaseModel):
    id: str
    #: the case is due for a poll from this time: the department's next poll round asks
    due_at: str


@router.post(
    "/v1/ops/applications/{app_id}/check",
    tags=["ops"],
    status_code=202,
    response_model=CheckAnswer,
)
async def check(app_id: str, runtime: RuntimeDep, _ops: OpsDep) -> CheckAnswer:
    """Ask the department about a case at once (its next poll round), instead of waiting for
    its adaptive poll interval or the change feed."""
    at = await operations.check_now(runtime, app_id)
    if at is None:
        raise Problem(
            409,
            "Not at department",
            f"application {app_id} is not held by its department",
            field="id",
            params={"id": app_id},
        )
    return CheckAnswer(id=app_id, due_at=at.isoformat())


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


@router.get(
    "/metrics",
    tags=["probes"],
    dependencies=[Depends(metrics_allowed)],
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus metrics"}},
)
async def metrics(runtime: RuntimeDep) -> Response:
    await collector.collect_or_log(runtime)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
