"""One window out: what is ready at a centre, result downloads, collecting and mailing."""

from __future__ import annotations

import datetime as dt
import urllib.parse
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field

from gateway import audit, documents, pickup
from gateway.api import messages
from gateway.api.auth import ClientDep, RuntimeDep
from gateway.api.exposure import document_media_type, safe_link
from gateway.api.messages import Language
from gateway.api.paging import Page, PageDep
from gateway.api.problems import Problem, language
from gateway.api.views import DocumentView, document_view, masked_applicant
from gateway.blobs import BlobCorrupted
from gateway.errors import unknown_application
from gateway.pii import scrub
from gateway.store import cases
from gateway.text import shown
from gateway.updates import announce

router = APIRouter(prefix="/v1")


class BringItem(BaseModel):
    code: str = Field(description="stable: id_document, proxy_authorisation, ...")
    text: str = Field(description="in the language of the request (Accept-Language)")


class PickupItem(BaseModel):
    """A result ready to be handed out: what was decided, what is handed over, and what the
    citizen must bring."""

    id: str
    receipt_number: str
    matter_code: str
    matter_name: str
    applicant: dict[str, Any]
    centre: str
    method: str
    address: str | None
    ready_at: dt.datetime | None
    decision: Literal["approved", "rejected", "not_accepted"] | None = Field(
        description="the department's decision; a refusal is handed out as its decision"
    )
    decided_at: dt.datetime | None
    opinion: str | None = Field(
        description="the department's opinion (ID and phone numbers in it masked)"
    )
    notice: str | None = Field(
        description="what the clerk hands over when it is not an approval, or that it is mailed"
    )
    documents: list[DocumentView] = Field(description="result documents, with their sizes")
    bring: list[BringItem] = Field(description="what the citizen brings (empty when mailed)")


class PickupPage(Page[PickupItem]):
    pass


@router.get("/pickups", response_model=PickupPage, tags=["pickup"])
async def list_pickups(
    request: Request,
    runtime: RuntimeDep,
    client: ClientDep,
    paging: PageDep,
    centre: Annotated[str | None, Query(max_length=32)] = None,
) -> PickupPage:
    """Results ready to be handed out (collected or mailed) at a centre, oldest first."""
    if not client.ops:
        if centre and centre != client.centre:
            raise Problem(
                403,
                "Other centre",
                "a centre key lists only the results handed out at its own centre",
                field="centre",
            )
        centre = client.centre
    start = paging.key("pickups", 2)
    async with runtime.engine.connect() as conn:
        found = await pickup.ready_at(conn, centre, paging.limit + 1, after=start)
        cut = paging.page("pickups", found, lambda r: [r.h_ready_at, r.id])
        rows = cut.items
        docs = await documents.for_applications(conn, [r.id for r in rows])
        decided = await cases.decisions(conn, [r.id for r in rows])
    await audit.api_read(runtime, client, "GET /v1/pickups", [r.id for r in rows])
    lang = language(request)
    items = [_item(r, docs.get(r.id, []), decided.get(r.id), lang) for r in map(shown, rows)]
    return PickupPage(items=items, next_cursor=cut.next_cursor)


def _bring(r: Any, lang: Language) -> list[BringItem]:
    if r.h_method == "mail":
        return []
    codes = ["id_document", "proxy_authorisation"]
    if (r.applicant or {}).get("kind") == "organization":
        codes.append("company_authorisation")
    return [BringItem(code=c, text=messages.pick(messages.BRING[c], lang)) for c in codes]


def _item(r: Any, docs: list[Any], decision: Any, lang: Language) -> PickupItem:
    verdict = decision.to_status if decision is not None else None
    opinion = (decision.detail or {}).get("opinion") if decision is not None else None
    notice = messages.NOTICES.get("mail" if r.h_method == "mail" else str(verdict))
    return PickupItem(
        id=r.id,
        receipt_number=r.receipt_number,
        matter_code=r.matter_code,
        matter_name=r.matter_name,
        applicant=masked_applicant(r.applicant),
        centre=r.h_centre,
        method=r.h_method,
        address=(r.delivery or {}).get("address") if r.h_method == "mail" else None,
        ready_at=r.h_ready_at,
        decision=verdict if verdict in ("approved", "rejected", "not_accepted") else None,
        decided_at=decision.at if decision is not None else None,
        opinion=scrub(str(opinion)) if opinion else None,
        notice=messages.pick(notice, lang).replace("{id}", r.id) if notice else None,
        documents=[document_view(d) for d in docs],
        bring=_bring(r, lang),
    )


@router.get(
    "/applications/{app_id}/documents/{doc_id}",
    tags=["pickup"],
    response_class=Response,
    responses={
        200: {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
            "description": "the document's bytes; Content-Type is the document's own "
            "(application/pdf, image/png, ...), X-Content-SHA256 its hash",
        }
    },
)
async def download(app_id: str, doc_id: str, runtime: RuntimeDep, client: ClientDep) -> Response:
    """A result document's bytes, checked against their sha256 before they are sent."""
    async with runtime.engine.connect() as conn:
        app = await cases.get_application(conn, app_id)
        if app is None or not pickup.may_see(client, app):
            raise unknown_application(app_id)
        doc = await documents.get(conn, app_id, doc_id)
    if doc is None:
        raise Problem(
            404,
            "Unknown document",
            f"application {app_id} has no document '{doc_id}'",
            field="doc_id",
            params={"id": app_id, "doc_id": doc_id},
        )
    if doc.sha256 is None:
        raise Problem(
            409,
            "Document held by the department",
            "the department only linked this document; fetch it from its url",
            field="doc_id",
            url=safe_link(doc.url),
        )
    await audit.api_read(runtime, client, "GET /v1/applications/{id}/documents", [app_id])
    try:
        data = await runtime.blobs.get(doc.sha256)
    except (BlobCorrupted, FileNotFoundError) as exc:
        raise Problem(
            500,
            "Stored document damaged",
            "the stored copy of this document is missing or does not match its hash; do not "
            "hand it out. Ops must restore it from backup.",
            field="doc_id",
        ) from exc
    quoted = urllib.parse.quote(doc.name, safe="")
    return Response(
        content=data,
        media_type=document_media_type(doc.content_type),
        headers={
            "Content-Disposition": f"attachment; filename*=UTF-8''{quoted}",
            "ETag": f'"{doc.sha256}"',
            "X-Content-SHA256": doc.sha256,
        },
    )


@router.post("/applications/{app_id}/collect", response_model=pickup.HandoverOut, tags=["pickup"])
async def collect(
    app_id: str, body: pickup.CollectIn, runtime: RuntimeDep, client: ClientDep, response: Response
) -> pickup.HandoverOut:
    """Hand the result to the applicant: their ID number or pickup code must match."""
    handed = await pickup.collect(runtime, client, app_id, body)
    announce(runtime, handed.changes)
    if handed.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return handed.record


@router.post("/applications/{app_id}/mail", response_model=pickup.HandoverOut, tags=["pickup"])
async def mail(
    app_id: str, body: pickup.MailIn, runtime: RuntimeDep, client: ClientDep, response: Response
) -> pickup.HandoverOut:
    """Mail the result through a delivery method (``GET /v1/delivery-methods``)."""
    handed = await pickup.mail(runtime, client, app_id, body)
    announce(runtime, handed.changes)
    if handed.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return handed.record


class DeliveryMethodOut(BaseModel):
    name: str
    description: str


class DeliveryMethodPage(Page[DeliveryMethodOut]):
    pass


@router.get("/delivery-methods", response_model=DeliveryMethodPage, tags=["pickup"])
async def delivery_methods(
    runtime: RuntimeDep, _client: ClientDep, paging: PageDep
) -> DeliveryMethodPage:
    """How results can be mailed (``method`` of ``POST .../mail``): the installed plugins'."""
    methods = [
        DeliveryMethodOut(name=name, description=getattr(m, "description", ""))
        for name, m in runtime.plugins.delivery_methods().items()
    ]
    cut = paging.slice("delivery-methods", methods, lambda m: [m.name])
    return DeliveryMethodPage(items=cut.items, next_cursor=cut.next_cursor)
