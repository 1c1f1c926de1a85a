"""Supplements (补正): the department asked for more material; the front desk hands it in and the
case is re-sent as the next version.

Re-sending takes the state machine's restart edge ``supplement_required -> dispatching`` with
``version + 1`` and a new dispatch job in one transaction, so the department sees the idempotency
key ``ow-<id>-v<n>`` of the same lineage. The ``supplement_required`` and ``dispatching`` events
bound the time the promised-time clock stands still.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import desc, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.clock import now
from gateway.envelopes import idempotency_key
from gateway.errors import unknown_application
from gateway.events import Source, StatusChange
from gateway.intake import IntakeProblem, mark_used, resolve_materials
from gateway.notifications import with_contact
from gateway.pickup import check_may_change, may_see
from gateway.runtime import Runtime
from gateway.states import State
from gateway.store import cases, jobs
from gateway.store.clients import Client
from gateway.store.tables import events, supplements
from gateway.text import CleanStr


class SupplementIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    materials: list[CleanStr] = Field(
        min_length=1, max_length=50, description="material ids from POST /v1/materials"
    )
    note: CleanStr | None = Field(default=None, max_length=1000)
    clerk: CleanStr | None = Field(default=None, max_length=64)


class SupplementAccepted(BaseModel):
    id: str
    status: State
    version: int = Field(description="the version the department receives next")
    idempotency_key: str = Field(description="what the department sees for this version")
    answers: list[str] = Field(description="what the department had asked for")
    materials: list[str]


@dataclass(frozen=True)
class Supplemented:
    accepted: SupplementAccepted
    changes: list[StatusChange]
    replayed: bool


async def asked_for(conn: AsyncConnection, app_id: str) -> list[str]:
    """The department's list from the latest supplement request of the case."""
    q = (
        select(events.c.detail)
        .where(
            events.c.application_id == app_id,
            events.c.to_status == State.SUPPLEMENT_REQUIRED.value,
            # a note on the case while it waits (its promise became final) is no new request
            events.c.from_status.is_distinct_from(events.c.to_status),
        )
        .order_by(desc(events.c.id))
        .limit(1)
    )
    detail = (await conn.execute(q)).scalar()
    return [str(i) for i in (detail or {}).get("supplement_items", [])]


async def submit(runtime: Runtime, client: Client, app_id: str, body: SupplementIn) -> Supplemented:
    """Hand in the materials and re-send the case; repeating the same request is safe."""
    actor = f"{client.centre or 'ops'}/{body.clerk or client.name}"
    async with runtime.engine.begin() as conn:
        app = await cases.lock_application(conn, app_id)
        if app is None or not may_see(client, app):
            raise unknown_application(app_id)
        check_may_change(client, app)
        if app.status != State.SUPPLEMENT_REQUIRED.value:
            done = await _same_as_last(conn, app, body.materials)
            if done is not None:
                return Supplemented(done, [], replayed=True)
            raise IntakeProblem(
                409,
                "No supplement asked for",
                f"application {app_id} is {app.status}; materials can be added only while "
                "it is supplement_required",
                "id",
                params={"id": app_id, "status": app.status},
            )
        refs = await resolve_materials(conn, client, body.materials)
        await mark_used(conn, body.materials, now())
        items = await asked_for(conn, app_id)
        version = app.version + 1
        held = {m["id"] for m in app.materials}
        merged: list[dict[str, Any]] = [*app.materials, *(r for r in refs if r["id"] not in held)]
        result = await cases.change_status(
            conn,
            app,
            State.DISPATCHING,
            source=Source.API,
            actor=actor,
            restart=True,
            detail={"action": "supplement", "answers": items, "materials": body.materials},
            extra={"version": version, "materials": merged, "last_error": None},
        )
        assert result.change is not None
        await jobs.enqueue(conn, app_id, version, app.department)
        await conn.execute(
            insert(supplements).values(
                application_id=app_id,
                version=version,
                items=items,
                materials=body.materials,
                note=body.note,
                actor=actor,
                created_at=now(),
            )
        )
        accepted = SupplementAccepted(
            id=app_id,
            status=State.DISPATCHING,
            version=version,
            idempotency_key=idempotency_key(app_id, version),
            answers=items,
            materials=body.materials,
        )
        change = with_contact(result.change, app.applicant)
    runtime.new_work()
    return Supplemented(accepted, [change], replayed=False)


async def _same_as_last(
    conn: AsyncConnection, app: Any, materials: list[str]
) -> SupplementAccepted | None:
    """The answer to the supplement that started the current version, if it was this one."""
    q = select(supplements).where(
        supplements.c.application_id == app.id, supplements.c.version == app.version
    )
    row = (await conn.execute(q)).first()
    if row is None or list(row.materials) != materials:
        return None
    return SupplementAccepted(
        id=app.id,
        status=State(app.status),
        version=row.version,
        idempotency_key=idempotency_key(app.id, row.version),
        answers=list(row.items),
        materials=list(row.materials),
    )


async def history(conn: AsyncConnection, app_id: str) -> list[dict[str, Any]]:
    q = (
        select(supplements)
        .where(supplements.c.application_id == app_id)
        .order_by(supplements.c.version)
    )
    return [
        {
            "version": r.version,
            "answers": r.items,
            "materials": r.materials,
            "note": r.note,
            "actor": r.actor,
            "at": r.created_at,
        }
        for r in (await conn.execute(q)).all()
    ]
