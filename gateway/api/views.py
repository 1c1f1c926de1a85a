"""How stored rows are shown through the API (PII masked)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from gateway.pii import mask_id, mask_phone
from gateway.states import State


class EventView(BaseModel):
    at: dt.datetime
    version: int
    source: str
    actor: str
    from_status: State | None
    to_status: State
    detail: dict[str, Any]


class ApplicationView(BaseModel):
    id: str
    receipt_number: str
    status: State
    version: int
    matter_code: str
    matter_name: str
    region: str
    department: str
    department_case_id: str | None
    centre: str
    window: str | None
    applicant: dict[str, Any]
    form: dict[str, Any]
    materials: list[dict[str, Any]]
    delivery: dict[str, Any]
    promised_by: dt.date | None
    last_error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    history: list[EventView] | None = None


def masked_applicant(applicant: dict[str, Any]) -> dict[str, Any]:
    out = dict(applicant)
    out["id_number"] = mask_id(out.get("id_number"))
    out["phone"] = mask_phone(out.get("phone"))
    return out


def application_view(row: Any, history: Sequence[Any] | None = None) -> ApplicationView:
    return ApplicationView(
        id=row.id,
        receipt_number=row.receipt_number,
        status=State(row.status),
        version=row.version,
        matter_code=row.matter_code,
        matter_name=row.matter_name,
        region=row.region,
        department=row.department,
        department_case_id=row.department_case_id,
        centre=row.centre,
        window=row.window,
        applicant=masked_applicant(row.applicant),
        form=row.form,
        materials=row.materials,
        delivery=row.delivery,
        promised_by=row.promised_by,
        last_error=row.last_error,
        created_at=row.created_at,
        updated_at=row.updated_at,
        history=None
        if history is None
        else [
            EventView(
                at=e.at,
                version=e.version,
                source=e.source,
                actor=e.actor,
                from_status=e.from_status,
                to_status=e.to_status,
                detail=e.detail,
            )
            for e in history
        ],
    )
