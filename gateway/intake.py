"""Accepting applications: validate, route, and store application + dispatch job in ONE
transaction, so a 201 always means the case is durable and will be dispatched."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from jsonschema import Draft202012Validator
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.clock import new_id, now
from gateway.config.catalog import RouteError
from gateway.config.models import REGION_CODE, Matter
from gateway.connector import Applicant
from gateway.events import Source
from gateway.runtime import Runtime
from gateway.states import State
from gateway.store import jobs
from gateway.store.clients import Client
from gateway.store.tables import (
    applications,
    events,
    idempotency_records,
    materials,
    receipt_counters,
)
from gateway.text import CleanJson, CleanStr
from gateway.workdays import add_workdays

CHINA = dt.timezone(dt.timedelta(hours=8))


class Delivery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["pickup", "mail"] = "pickup"
    centre: CleanStr | None = Field(
        default=None, description="pickup centre; default: receiving one"
    )
    address: CleanStr | None = Field(default=None, max_length=500)
    recipient: CleanStr | None = Field(default=None, max_length=100)

    @model_validator(mode="after")
    def _mail_needs_address(self) -> Delivery:
        if self.method == "mail" and not self.address:
            raise ValueError("delivery.address is required when delivery.method is 'mail'")
        return self


class ApplicationIn(BaseModel):
    """What the front desk submits."""

    model_config = ConfigDict(extra="forbid")

    matter_code: str = Field(max_length=16, examples=["XK00123000"])
    region: str = Field(pattern=REGION_CODE, examples=["339901"])
    applicant: Applicant
    form: CleanJson = Field(default_factory=dict)
    materials: list[str] = Field(
        default_factory=list, max_length=50, description="material ids from POST /v1/materials"
    )
    delivery: Delivery = Field(default_factory=Delivery)
    window: CleanStr | None = Field(default=None, max_length=32)
    clerk: CleanStr | None = Field(default=None, max_length=64)


class ApplicationAccepted(BaseModel):
    id: str
    receipt_number: str
    status: State
    department: str
    promised_by: dt.date | None
    pickup_code: str | None = Field(
        default=None,
        description="give it to the applicant: with it (or their ID document) the result is "
        "collected",
    )


class IntakeProblem(Exception):
    """A request the front desk must fix; ``field`` names what is wrong."""

    def __init__(self, status: int, title: str, detail: str, field: str | None = None) -> None:
        self.status, self.title, self.detail, self.field = status, title, detail, field
        super().__init__(detail)


@dataclass(frozen=True)
class IntakeResult:
    accepted: ApplicationAccepted
    replayed: bool


def request_hash(body: ApplicationIn) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _route(runtime: Runtime, body: ApplicationIn) -> Matter:
    try:
        matter = runtime.config.catalog.route(body.matter_code, body.region)
    except RouteError as exc:
        raise IntakeProblem(422, "Cannot route application", exc.message, exc.field) from exc
    dept = runtime.config.departments.get(matter.department)
    if dept is None or not dept.enabled:
        raise IntakeProblem(
            422,
            "Matter not available",
            f"matter {matter.code} is handled by department '{matter.department}', which is not "
            "accepting applications through the gateway yet",
            "matter_code",
        )
    return matter


def _validate_form(runtime: Runtime, body: ApplicationIn, matter: Matter) -> None:
    problems: list[str] = []
    if matter.form_schema:
        problems.extend(_schema_problems(body.form, matter.form_schema))
    problems.extend(runtime.plugins.validate_application(body.form, matter, body.region))
    if problems:
        raise IntakeProblem(422, "Form is incomplete", "; ".join(problems), "form")


def _schema_problems(form: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    validator = _validator(json.dumps(schema, sort_keys=True))
    out = []
    for error in sorted(validator.iter_errors(form), key=lambda e: list(e.absolute_path)):
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        out.append(f"form{path}: {error.message}")
    return out


@functools.lru_cache(maxsize=256)
def _validator(schema_json: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads(schema_json))


async def _next_receipt(conn: AsyncConnection, centre: str, at: dt.datetime) -> str:
    day = at.astimezone(CHINA).strftime("%Y%m%d")
    ins = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    upsert = (
        ins(receipt_counters)
        .values(centre=centre, day=day, last=1)
        .on_conflict_do_update(
            index_elements=["centre", "day"], set_={"last": receipt_counters.c.last + 1}
        )
        .returning(receipt_counters.c.last)
    )
    seq = (await conn.execute(upsert)).scalar_one()
    return f"{centre}-{day}-{seq:05d}"


async def _replay(
    conn: AsyncConnection, client: Client, key: str, digest: str
) -> IntakeResult | None:
    q = select(idempotency_records).where(
        idempotency_records.c.client_id == client.id, idempotency_records.c.key == key
    )
    rec = (await conn.execute(q)).first()
    if rec is None:
        return None
    if rec.request_hash != digest:
        raise IntakeProblem(
            409,
            "Idempotency-Key reused",
            "this Idempotency-Key was already used for a different application; use a new key "
            "for a new application",
            "Idempotency-Key",
        )
    return IntakeResult(ApplicationAccepted.model_validate(rec.response), replayed=True)


async def submit(runtime: Runtime, client: Client, key: str, body: ApplicationIn) -> IntakeResult:
    """Accept one application (idempotent on ``(client, key)``)."""
    if client.centre is None:
        raise IntakeProblem(403, "Not a centre key", "only a centre's key can submit applications")
    digest = request_hash(body)
    try:
        matter = _route(runtime, body)
        _validate_form(runtime, body, matter)
    except IntakeProblem:
        # config may have changed since this key was first accepted: its answer still stands
        async with runtime.engine.begin() as conn:
            replay = await _replay(conn, client, key, digest)
        if replay:
            return replay
        raise
    for attempt in range(2):
        try:
            async with runtime.engine.begin() as conn:
                replay = await _replay(conn, client, key, digest)
                if replay:
                    return replay
                result = await _store(conn, runtime, client, key, digest, body, matter)
            runtime.wakeup.set()
            return result
        except IntegrityError:
            # a concurrent request with the same key won the race: answer as it did
            if attempt:
                raise
    raise AssertionError("unreachable")


async def _store(
    conn: AsyncConnection,
    runtime: Runtime,
    client: Client,
    key: str,
    digest: str,
    body: ApplicationIn,
    matter: Matter,
) -> IntakeResult:
    assert client.centre is not None
    centres = {c.code for c in runtime.config.gateway.centres}
    delivery = body.delivery
    if delivery.method == "pickup":
        pickup = delivery.centre or client.centre
        if pickup not in centres:
            raise IntakeProblem(422, "Unknown centre", f"no centre '{pickup}'", "delivery.centre")
        if pickup != client.centre and not matter.pickup_anywhere:
            raise IntakeProblem(
                422,
                "Pickup centre not allowed",
                f"matter {matter.code} must be collected where it was handed in",
                "delivery.centre",
            )
        delivery = delivery.model_copy(update={"centre": pickup})
    refs = await resolve_materials(conn, client, body.materials)
    at = now()
    app_id = new_id("a")
    receipt = await _next_receipt(conn, client.centre, at)
    promised_by, _covered = add_workdays(at.astimezone(CHINA).date(), matter.promised_days)
    await conn.execute(
        insert(applications).values(
            id=app_id,
            receipt_number=receipt,
            client_id=client.id,
            centre=client.centre,
            window=body.window,
            clerk=body.clerk,
            matter_code=matter.code,
            matter_name=matter.name,
            region=body.region,
            department=matter.department,
            status=State.RECEIVED.value,
            version=1,
            applicant=body.applicant.model_dump(mode="json"),
            form=body.form,
            materials=refs,
            delivery=delivery.model_dump(mode="json"),
            idempotency_key=key,
            promised_by=promised_by,
            created_at=at,
            updated_at=at,
        )
    )
    await conn.execute(
        insert(events).values(
            application_id=app_id,
            version=1,
            at=at,
            source=Source.API.value,
            actor=f"{client.centre}/{body.clerk or client.name}",
            from_status=None,
            to_status=State.RECEIVED.value,
            detail={"receipt_number": receipt},
        )
    )
    await jobs.enqueue(conn, app_id, 1, matter.department, at=at)
    from gateway.pickup import record_at_intake  # pickup builds on intake's problems

    code = await record_at_intake(conn, app_id, delivery.model_dump(mode="json"), client.centre)
    accepted = ApplicationAccepted(
        id=app_id,
        receipt_number=receipt,
        status=State.RECEIVED,
        department=matter.department,
        promised_by=promised_by,
        pickup_code=code,
    )
    await conn.execute(
        insert(idempotency_records).values(
            client_id=client.id,
            key=key,
            request_hash=digest,
            status_code=201,
            response=accepted.model_dump(mode="json"),
            created_at=at,
        )
    )
    return IntakeResult(accepted, replayed=False)


async def resolve_materials(
    conn: AsyncConnection, client: Client, ids: list[str], field: str = "materials"
) -> list[dict[str, Any]]:
    """Material references for ids this client's centre uploaded (IntakeProblem naming the
    first unknown one)."""
    if not ids:
        return []
    rows = {r.id: r for r in (await conn.execute(select(materials).where(materials.c.id.in_(ids))))}
    out = []
    for i, mid in enumerate(ids):
        row = rows.get(mid)
        if row is None or (row.centre != client.centre and not client.ops):
            raise IntakeProblem(
                422,
                "Unknown material",
                f"no material '{mid}' uploaded by this "
                "centre; upload it with POST /v1/materials first",
                f"{field}[{i}]",
            )
        out.append(
            {
                "id": row.id,
                "sha256": row.sha256,
                "filename": row.filename,
                "content_type": row.content_type,
                "size": row.size,
            }
        )
    return out
