"""Ops endpoints for approved cases without documents (ops key required).

``GET /v1/ops/undocumented`` lists them; ``POST /v1/ops/refetch`` asks their departments again,
for the named cases (``{"applications": [...]}``) or all of them (``{"all": true}``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway import refetch
from gateway.api.auth import OpsDep, RuntimeDep
from gateway.api.paging import Page, PageDep

router = APIRouter(prefix="/v1/ops", tags=["ops"])


class Undocumented(BaseModel):
    id: str
    receipt_number: str
    department: str
    department_case_id: str | None
    decided_at: dt.datetime


class RefetchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    applications: list[str] = Field(default_factory=list, max_length=500)
    all: bool = False

    @model_validator(mode="after")
    def _one_of(self) -> RefetchRequest:
        if bool(self.applications) == self.all:
            raise ValueError('give "applications" (a list of ids) or "all": true, not both')
        return self


class RefetchResult(BaseModel):
    application_id: str
    department: str
    outcome: str
    detail: str
    status: str | None


class UndocumentedPage(Page[Undocumented]):
    pass


@router.get("/undocumented", response_model=UndocumentedPage)
async def undocumented(
    runtime: RuntimeDep,
    _ops: OpsDep,
    paging: PageDep,
    department: str | None = Query(default=None, max_length=32),
) -> UndocumentedPage:
    """Approved cases still without their documents, oldest decision first."""
    rows = await refetch.waiting(
        runtime,
        department=department,
        limit=paging.limit + 1,
        after=paging.key("undocumented", 2),
    )
    cut = paging.page("undocumented", rows, lambda r: [r.updated_at, r.id])
    return UndocumentedPage(
        items=[
            Undocumented(
                id=r.id,
                receipt_number=r.receipt_number,
                department=r.department,
                department_case_id=r.department_case_id,
                decided_at=r.updated_at,
            )
            for r in cut.items
        ],
        next_cursor=cut.next_cursor,
    )


@router.post("/refetch", response_model=list[RefetchResult])
async def refetch_results(
    body: RefetchRequest, runtime: RuntimeDep, ops: OpsDep
) -> list[dict[str, Any]]:
    results = await refetch.refetch(
        runtime, None if body.all else body.applications, actor=f"ops/{ops.name}"
    )
    return [r.__dict__ for r in results]
