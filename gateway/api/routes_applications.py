"""Front-desk endpoints: matters, materials, applications."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, UploadFile
from pydantic import BaseModel, ValidationError
from sqlalchemy import insert

from gateway import audit, documents, intake, metrics
from gateway.api.auth import (
    ClientDep,
    KeyRing,
    RuntimeDep,
    admit,
    authenticate,
    bearer_key,
    no_key,
)
from gateway.api.paging import Page, PageDep
from gateway.api.problems import KEY_FIRST, Problem
from gateway.api.quotas import check_upload_quota
from gateway.api.views import ApplicationView, application_view
from gateway.clock import new_id, now
from gateway.config.models import Matter
from gateway.errors import FieldError, unknown_application
from gateway.pickup import may_see
from gateway.runtime import Runtime
from gateway.states import State
from gateway.store import cases
from gateway.store.clients import Client, hash_key
from gateway.store.tables import materials

router = APIRouter(prefix="/v1")


class MatterPage(Page[Matter]):
    pass


@router.get("/matters", response_model=MatterPage, tags=["matters"])
async def list_matters(runtime: RuntimeDep, _client: ClientDep, paging: PageDep) -> MatterPage:
    """The matter catalogue in code order, with each matter's form schema."""
    cut = paging.slice("matters", runtime.config.catalog.all(), lambda m: [m.code])
    return MatterPage(items=cut.items, next_cursor=cut.next_cursor)


@router.get("/matters/{code}", response_model=Matter, tags=["matters"])
async def get_matter(code: str, runtime: RuntimeDep, _client: ClientDep) -> Matter:
    matter = runtime.config.catalog.get(code)
    if matter is None:
        raise Problem(
            404,
            "Unknown matter",
            f"no matter with code '{code}' in the catalog",
            field="code",
            params={"matter": code},
        )
    return matter


class MaterialOut(BaseModel):
    id: str
    sha256: str
    filename: str
    content_type: str
    size: int


@router.post("/materials", status_code=201, response_model=MaterialOut, tags=["materials"])
async def upload_material(
    file: UploadFile, request: Request, runtime: RuntimeDep, client: ClientDep
) -> MaterialOut:
    api = runtime.config.gateway.api
    request.app.state.rate_limiter.check(client, "uploads")
    content_type = (file.content_type or "").split(";")[0].strip().lower()
    if content_type not in api.material_types:
        raise Problem(
            415,
            "Unsupported material type",
            f"'{content_type or 'unknown'}' is not accepted; send one of "
            f"{', '.join(api.material_types)}",
            field="file",
            params={"type": content_type or "unknown", "allowed": ", ".join(api.material_types)},
        )
    data = await file.read(api.material_max_bytes + 1)
    if len(data) > api.material_max_bytes:
        raise Problem(
            413,
            "Payload too large",
            f"the file is larger than {api.material_max_bytes} bytes",
            field="file",
        )
    if not data:
        raise Problem(422, "Empty file", "the uploaded file is empty", field="file")
    async with runtime.engine.connect() as conn:
        await check_upload_quota(conn, client, len(data), api.quotas)
    sha = await runtime.blobs.put(data)
    out = MaterialOut(
        id=new_id("m"),
        sha256=sha,
        filename=_safe_name(file.filename),
        content_type=content_type,
        size=len(data),
    )
    async with runtime.engine.begin() as conn:
        await conn.execute(
            insert(materials).values(
                **out.model_dump(), client_id=client.id, centre=client.centre, created_at=now()
            )
        )
    return out


def _safe_name(name: str | None) -> str:
    # a display name only: never used as a path
    base = (name or "upload").replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(ch for ch in base if ch.isprintable())[:200] or "upload"


_IDEMPOTENCY_HEADER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": True,
    "description": "unique per application (a UUID works); resending with it is safe",
    "schema": {"type": "string", "maxLength": 200},
}


async def intake_shortcut(request: Request, raw: bytes) -> Response | None:
    """``POST /v1/applications`` with ``Content-Type: application/json``, the hottest
    endpoint, as :class:`gateway.api.front.Front` hands it over (before Starlette's routing):
    the body is validated by pydantic straight from its bytes (``model_validate_json``) and
    handed to the endpoint, without FastAPI's parse (``json.loads``, then ``validate_python``)
    and its dependency solving. A body pydantic refuses (or none) is left to FastAPI (None),
    so every refusal is answered exactly as before; the route below is declared as usual, so
    the OpenAPI document is unchanged."""
    if not raw:
        return None
    try:
        body = intake.ApplicationIn.model_validate_json(raw)
    except ValidationError:
        return None  # FastAPI answers it, as always
    return await submit_application(body, request)


async def submit_application(body: intake.ApplicationIn, request: Request) -> Response:
    # one way for every request: the key, then the quota, then the Idempotency-Key (judge),
    # then what intake refuses. A key kept in the database is looked up in the transaction
    # that stores the application (one look-up per batch); a config key is judged here
    runtime: Runtime = request.app.state.runtime
    key = bearer_key(request)
    if key is None:
        raise no_key()
    idempotency_key = request.headers.get("idempotency-key")
    limiter = request.app.state.rate_limiter

    def judge(found: Client | None) -> Client:
        client = admit(request, found)
        limiter.check(client, "intake")
        _check_idempotency_key(idempotency_key)
        return client

    keyring: KeyRing = request.app.state.keyring
    check = intake.KeyCheck(hash_key(key), judge)
    static = keyring.static.get(check.digest or "")
    if static is not None:
        check.digest, check.outcome = None, judge(static)  # refused here, or the client
    checked = intake.check_body(runtime, body)
    return await _accepted(
        intake.submit_keyed(runtime, check, idempotency_key or "", body, checked), check
    )


router.add_api_route(
    "/applications",
    submit_application,
    methods=["POST"],
    status_code=201,
    response_model=intake.ApplicationAccepted,
    tags=["applications"],
    # the key and the Idempotency-Key are read from the request directly (the hottest
    # endpoint: no dependency to solve); both are documented here instead
    openapi_extra={"parameters": [_IDEMPOTENCY_HEADER], "security": [{"HTTPBearer": []}]},
)
# a body FastAPI refuses (422) is answered after the key's checks, as before the body
KEY_FIRST[submit_application] = authenticate


def _check_idempotency_key(idempotency_key: str | None) -> None:
    if idempotency_key is not None and len(idempotency_key) > intake.IDEMPOTENCY_KEY_LENGTH:
        raise Problem(
            400,
            "Bad Idempotency-Key",
            f"the Idempotency-Key is longer than {intake.IDEMPOTENCY_KEY_LENGTH} characters",
            field="Idempotency-Key",
        )
    if idempotency_key and not idempotency_key.isprintable():
        raise Problem(
            400,
            "Bad Idempotency-Key",
            "the Idempotency-Key must be printable text",
            field="Idempotency-Key",
        )
    if not idempotency_key:
        raise Problem(
            400,
            "Idempotency-Key required",
            "send a unique Idempotency-Key header per application (a UUID works); "
            "resending with the same key is then safe",
            field="Idempotency-Key",
        )


async def _accepted(storing: Awaitable[intake.IntakeResult], check: intake.KeyCheck) -> Response:
    try:
        result = await storing
    except intake.IntakeProblem:
        if isinstance(check.outcome, Client):  # not the key's own refusal
            metrics.child(metrics.INTAKE, "rejected").inc()
        raise
    metrics.child(metrics.INTAKE, "replayed" if result.replayed else "accepted").inc()
    # serialised here, once: the declared response_model still documents it in OpenAPI
    return Response(
        result.accepted.model_dump_json(),
        status_code=201,
        media_type="application/json",
        headers={"Idempotent-Replayed": "true"} if result.replayed else None,
    )


@router.get("/applications/{app_id}", response_model=ApplicationView, tags=["applications"])
async def get_application(app_id: str, runtime: RuntimeDep, client: ClientDep) -> ApplicationView:
    async with runtime.engine.connect() as conn:
        row = await cases.get_application(conn, app_id)
        if row is None or not may_see(client, row):
            raise unknown_application(app_id)
        history = await cases.history(conn, app_id)
        docs = await documents.for_application(conn, app_id)
    await audit.api_read(runtime, client, "GET /v1/applications/{id}", [app_id])
    return application_view(row, history, docs, ops=client.ops)


class ApplicationPage(Page[ApplicationView]):
    pass


@router.get("/applications", response_model=ApplicationPage, tags=["applications"])
async def list_applications(
    runtime: RuntimeDep,
    client: ClientDep,
    paging: PageDep,
    status: Annotated[State | None, Query()] = None,
    centre: Annotated[str | None, Query(max_length=32)] = None,
    department: Annotated[str | None, Query(max_length=32)] = None,
    updated_since: Annotated[dt.datetime | None, Query()] = None,
    receipt_number: Annotated[
        str | None,
        Query(max_length=48, description="exact receipt number, as printed on the receipt"),
    ] = None,
) -> ApplicationPage:
    """Applications in creation order (a centre key: its own centre's). Filters combine; a
    receipt number finds its one case."""
    if not client.ops:
        if centre and centre != client.centre:
            raise Problem(
                403,
                "Other centre",
                "a centre key lists only its own centre's applications",
                field="centre",
            )
        centre = client.centre
    if updated_since and updated_since.tzinfo is None:
        raise Problem(
            422,
            "Invalid request",
            "updated_since needs a time zone (e.g. +08:00)",
            code="invalid_request",
            params={"fields": "updated_since"},
            errors=[FieldError("updated_since", "bad_datetime")],
        )
    if updated_since:
        try:  # the store keeps UTC: year 1 at +01:00 is before the first UTC instant
            updated_since = updated_since.astimezone(dt.UTC)
        except OverflowError:
            raise Problem(
                422,
                "Invalid request",
                "updated_since is out of range once converted to UTC",
                code="invalid_request",
                params={"fields": "updated_since"},
                errors=[FieldError("updated_since", "bad_datetime")],
            ) from None
    start = paging.key("applications", 1)
    async with runtime.engine.connect() as conn:
        rows = await cases.list_applications(
            conn,
            status=status.value if status else None,
            centre=centre,
            department=department,
            updated_since=updated_since,
            receipt_number=receipt_number,
            after_id=start[0] if start else None,
            limit=paging.limit + 1,
        )
    cut = paging.page("applications", rows, lambda r: [r.id])
    await audit.api_read(runtime, client, "GET /v1/applications", [r.id for r in cut.items])
    return ApplicationPage(
        items=[application_view(r, ops=client.ops) for r in cut.items],
        next_cursor=cut.next_cursor,
    )
