"""Ops endpoints for reconciliation runs and deadlines (ops key required)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from gateway import deadlines, reconcile
from gateway.api.auth import OpsDep, RuntimeDep
from gateway.api.paging import Page, PageDep
from gateway.api.problems import Problem

router = APIRouter(prefix="/v1/ops", tags=["ops"])


class ReconcileRun(BaseModel):
    id: str
    department: str
    since: dt.datetime
    until: dt.datetime
    trigger: str
    state: str
    counts: dict[str, int]
    error: str | None
    started_at: dt.datetime
    finished_at: dt.datetime | None


class Discrepancy(BaseModel):
    kind: str
    action: str
    application_id: str | None
    department_case_id: str | None
    idempotency_key: str | None
    gateway_status: str | None
    department_status: str | None
    detail: dict[str, Any]
    at: dt.datetime


class ReconcileRunDetail(ReconcileRun):
    """A run with one page of its discrepancies (``?cursor=`` pages on, like every list)."""

    discrepancies: list[Discrepancy]
    next_cursor: str | None


class ReconcileRunPage(Page[ReconcileRun]):
    pass


def _run(row: Any) -> dict[str, Any]:
    return {k: getattr(row, k) for k in ReconcileRun.model_fields}


@router.get("/reconciliations", response_model=ReconcileRunPage)
async def reconciliations(
    runtime: RuntimeDep,
    _ops: OpsDep,
    paging: PageDep,
    department: str | None = None,
) -> ReconcileRunPage:
    """Reconciliation runs, newest first."""
    rows = await reconcile.list_runs(
        runtime,
        department=department,
        limit=paging.limit + 1,
        after=paging.key("reconciliations", 2),
    )
    cut = paging.page("reconciliations", rows, lambda r: [r.started_at, r.id])
    return ReconcileRunPage(
        items=[ReconcileRun.model_validate(_run(r)) for r in cut.items],
        next_cursor=cut.next_cursor,
    )


@router.get("/reconciliations/{run_id}", response_model=ReconcileRunDetail)
async def reconciliation(
    run_id: str, runtime: RuntimeDep, _ops: OpsDep, paging: PageDep
) -> ReconcileRunDetail:
    start = paging.key("discrepancies", 1)
    run, found = await reconcile.get_run(
        runtime, run_id, limit=paging.limit + 1, after=start[0] if start else None
    )
    if run is None:
        raise Problem(
            404,
            "No such reconciliation run",
            f"no run '{run_id}'",
            field="id",
            params={"id": run_id},
        )
    cut = paging.page("discrepancies", found, lambda d: [d.id])
    items = [
        Discrepancy.model_validate({k: getattr(d, k) for k in Discrepancy.model_fields})
        for d in cut.items
    ]
    return ReconcileRunDetail.model_validate(
        {**_run(run), "discrepancies": items, "next_cursor": cut.next_cursor}
    )


class DeadlineView(BaseModel):
    application_id: str
    receipt_number: str
    department: str
    matter_code: str
    centre: str
    status: str
    promised_by: dt.date
    paused_days: int
    paused: bool
    due_by: dt.date
    days_left: int


class DeadlineLists(BaseModel):
    on: dt.date
    within_days: int
    overdue: list[DeadlineView]
    due_soon: list[DeadlineView]


@router.get("/deadlines", response_model=DeadlineLists)
async def deadline_lists(
    runtime: RuntimeDep,
    _ops: OpsDep,
    department: str | None = None,
    within_days: int = Query(default=3, ge=0, le=60),
) -> DeadlineLists:
    if department and department not in runtime.config.departments:
        raise Problem(
            404,
            "Unknown department",
            f"no department '{department}'",
            field="department",
            params={"department": department},
        )
    on = deadlines.today()
    overdue, soon = await deadlines.listing(
        runtime, department=department, within_days=within_days, on=on
    )
    return DeadlineLists(
        on=on,
        within_days=within_days,
        overdue=[DeadlineView.model_validate(vars(d)) for d in overdue],
        due_soon=[DeadlineView.model_validate(vars(d)) for d in soon],
    )
