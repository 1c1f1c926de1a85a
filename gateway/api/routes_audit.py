"""``GET /v1/ops/audit``: who read personal data, when, through what (an ops key required)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from gateway.api.auth import OpsDep, RuntimeDep
from gateway.api.paging import Page, PageDep
from gateway.store.chain import audit_rows

router = APIRouter(prefix="/v1/ops", tags=["ops"])


class AuditRecord(BaseModel):
    id: int
    at: dt.datetime
    channel: str
    actor: str
    centre: str | None
    action: str
    applications: list[str]


class AuditPage(Page[AuditRecord]):
    pass


@router.get("/audit", response_model=AuditPage)
async def audit_log(
    runtime: RuntimeDep,
    _ops: OpsDep,
    paging: PageDep,
    application: Annotated[str | None, Query(max_length=32)] = None,
) -> AuditPage:
    """The latest reads of personal data, newest first (about one application, if given)."""
    start = paging.key("audit", 1)
    async with runtime.engine.connect() as conn:
        rows = await audit_rows(
            conn,
            application=application,
            limit=paging.limit + 1,
            before=start[0] if start else None,
        )
    cut = paging.page("audit", rows, lambda r: [r.id])
    return AuditPage(
        items=[
            AuditRecord(
                id=r.id,
                at=r.at,
                channel=r.channel,
                actor=r.actor,
                centre=r.centre,
                action=r.action,
                applications=[str(a) for a in r.applications or []],
            )
            for r in cut.items
        ],
        next_cursor=cut.next_cursor,
    )
