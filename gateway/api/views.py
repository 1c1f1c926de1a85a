"""How stored rows are shown through the API (PII masked, any stored value renderable)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from gateway.api.exposure import centre_safe, safe_link
from gateway.pii import mask_id, mask_phone
from gateway.states import State
from gateway.text import readable, shown


class EventView(BaseModel):
    id: int = Field(description="the event id (X-Event-Id of status subscriptions)")
    at: dt.datetime
    version: int
    source: str
    actor: str
    from_status: State | None
    to_status: State
    detail: dict[str, Any]


class DocumentView(BaseModel):
    """A result document; download it from ``download`` (a link-only document has ``url``)."""

    id: str
    name: str
    content_type: str
    sha256: str | None
    size: int | None
    version: int
    url: str | None
    download: str | None


def document_view(row: Any) -> DocumentView:
    row = shown(row)
    return DocumentView(
        id=row.id,
        name=row.name,
        content_type=row.content_type,
        sha256=row.sha256,
        size=row.size,
        version=row.version,
        url=safe_link(row.url),
        download=f"/v1/applications/{row.application_id}/documents/{row.id}"
        if row.sha256
        else None,
    )


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
    promised_by_final: bool = Field(
        description="false while promised_by is an estimate the holiday calendar does not cover yet"
    )
    last_error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    supplement_items: list[str] = Field(
        default_factory=list,
        description="while supplement_required: the materials the department asks for",
    )
    documents: list[DocumentView] | None = None
    history: list[EventView] | None = None


def masked_applicant(applicant: dict[str, Any]) -> dict[str, Any]:
    out = dict(readable(applicant) if isinstance(applicant, dict) else {})
    for key, mask in (("id_number", mask_id), ("phone", mask_phone)):
        value = out.get(key)
        out[key] = None if value is None else mask(str(value))
    return out


def _as_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    return {} if value is None else {"value": value}


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    return [] if value is None else [value]


def supplement_items(row: Any, history: Sequence[Any]) -> list[str]:
    """What the department asked for, while the case waits on the applicant."""
    if row.status != State.SUPPLEMENT_REQUIRED.value:
        return []
    for e in reversed(history):
        if e.to_status == State.SUPPLEMENT_REQUIRED.value and e.from_status != e.to_status:
            return [str(i) for i in _as_list(_as_dict(e.detail).get("supplement_items"))]
    return []


def application_view(
    row: Any,
    history: Sequence[Any] | None = None,
    docs: Sequence[Any] | None = None,
    *,
    ops: bool = False,
) -> ApplicationView:
    row = shown(row)
    history = None if history is None else [shown(e) for e in history]
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
        form=_as_dict(row.form),
        materials=[m if isinstance(m, dict) else {"value": m} for m in _as_list(row.materials)],
        delivery=_as_dict(row.delivery),
        promised_by=row.promised_by,
        promised_by_final=bool(row.promised_final),
        # a centre sees no department addresses; ops see the whole error
        last_error=row.last_error if ops else centre_safe(row.last_error),
        created_at=row.created_at,
        updated_at=row.updated_at,
        supplement_items=supplement_items(row, history or []),
        documents=None if docs is None else [document_view(d) for d in docs],
        history=None
        if history is None
        else [
            EventView(
                id=e.id,
                at=e.at,
                version=e.version,
                source=e.source,
                actor=e.actor,
                from_status=e.from_status,
                to_status=e.to_status,
                detail=_as_dict(e.detail),
            )
            for e in history
        ],
    )
