"""One window out: a decided case whose documents are in becomes ``ready_for_pickup`` at the
centre that hands it out, then is ``collected`` (applicant's ID number or pickup code checked) or
``mailed`` (through a delivery method). Both are idempotent and record who handed it out.

The handing-out centre is the pickup centre chosen at intake (any centre of the city where the
matter allows it), or for mail the centre that received the application.
"""

from __future__ import annotations

import datetime as dt
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from sqlalchemy import Row, and_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import documents, verification
from gateway.clock import now
from gateway.delivery import DeliveryRefused, Parcel, Shipment
from gateway.errors import IntakeProblem, unknown_application
from gateway.events import Source, StatusChange
from gateway.handover import MAX_CODE_FAILURES, handover_row
from gateway.notifications import with_contact
from gateway.runtime import Runtime
from gateway.states import State
from gateway.store import cases, paging
from gateway.store.clients import Client
from gateway.store.tables import applications, handovers
from gateway.text import CleanStr, shown

log = structlog.get_logger("gateway.pickup")

# -- listing -----------------------------------------------------------------------------------


async def ready_at(
    conn: AsyncConnection,
    centre: str | None,
    limit: int = 500,
    *,
    after: Sequence[Any] | None = None,
) -> Sequence[Row[Any]]:
    """Applications ready to be handed out at ``centre`` (every centre: None), oldest first,
    with the handover's ``h_centre``, ``h_method`` and ``h_ready_at``; ``after`` is the
    (ready_at, id) the page starts after."""
    conds = [applications.c.status == State.READY_FOR_PICKUP.value]
    if centre is not None:
        conds.append(handovers.c.centre == centre)
    start = paging.after([handovers.c.ready_at, applications.c.id], after)
    if start is not None:
        conds.append(start)
    q = (
        select(
            applications,
            handovers.c.centre.label("h_centre"),
            handovers.c.method.label("h_method"),
            handovers.c.ready_at.label("h_ready_at"),
        )
        .join(handovers, handovers.c.application_id == applications.c.id)
        .where(and_(*conds))
        .order_by(handovers.c.ready_at, applications.c.id)
        .limit(limit)
    )
    return (await conn.execute(q)).all()


# -- collecting and mailing --------------------------------------------------------------------


class CollectIn(BaseModel):
    """How the applicant proves who they are, and who hands the result out."""

    model_config = ConfigDict(extra="forbid")

    id_number: SecretStr | None = Field(default=None, max_length=64)
    pickup_code: SecretStr | None = Field(default=None, max_length=16)
    clerk: CleanStr = Field(min_length=1, max_length=64)
    window: CleanStr | None = Field(default=None, max_length=32)
    collected_by: CleanStr | None = Field(
        default=None, max_length=100, description="name of whoever takes it, if not the applicant"
    )


class MailIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: CleanStr = Field(default="manual", max_length=32)
    tracking_number: CleanStr | None = Field(default=None, min_length=1, max_length=64)
    carrier: CleanStr | None = Field(default=None, max_length=64)
    address: CleanStr | None = Field(
        default=None, max_length=500, description="default: the address given at intake"
    )
    recipient: CleanStr | None = Field(default=None, max_length=100)
    clerk: CleanStr = Field(min_length=1, max_length=64)
    window: CleanStr | None = Field(default=None, max_length=32)


class HandoverOut(BaseModel):
    """The record of a result handed out (no ID number: it is checked, never echoed)."""

    application_id: str
    receipt_number: str
    status: State
    outcome: Literal["collected", "mailed"]
    centre: str
    handed_out_at: dt.datetime
    handed_out_by: str
    window: str | None
    verified_with: str | None
    collected_by: str | None
    delivery_method: str | None
    carrier: str | None
    tracking_number: str | None


def handover_out(app: Any, h: Any) -> HandoverOut:
    app, h = shown(app), shown(h)
    return HandoverOut(
        application_id=app.id,
        receipt_number=app.receipt_number,
        status=State(app.status),
        outcome=h.outcome,
        centre=h.centre,
        handed_out_at=h.handed_out_at,
        handed_out_by=h.handed_out_by,
        window=h.window,
        verified_with=h.verified_with,
        collected_by=h.recipient if h.outcome == "collected" else None,
        delivery_method=h.delivery_method,
        carrier=h.carrier,
        tracking_number=h.tracking_number,
    )


def _not_found(app_id: str) -> IntakeProblem:
    return unknown_application(app_id)


def may_see(client: Client, app: Any) -> bool:
    """A centre sees the cases it received and those handed out at it; ops see all."""
    if client.ops:
        return True
    if client.centre is None:  # a key scoped to nothing sees nothing
        return False
    return client.centre in (app.centre, (app.delivery or {}).get("centre"))


def check_may_change(client: Client, app: Any) -> None:
    """Only the centre that took the application (or ops) may change it: withdraw, supplement,
    mail. A pickup centre elsewhere sees the case and hands it out, nothing more."""
    if not may_see(client, app):
        raise _not_found(app.id)
    if not client.ops and client.centre != app.centre:
        raise IntakeProblem(
            403,
            "Not the receiving centre",
            f"application {app.id} was taken at centre {app.centre}; only that centre may "
            "change it (this centre may hand it out)",
            "id",
            params={"id": app.id, "centre": app.centre},
        )


def _check_hands_out(client: Client, app: Any, h: Any) -> None:
    if not may_see(client, app):
        raise _not_found(app.id)
    if not client.ops and client.centre != h.centre:
        raise IntakeProblem(
            403,
            "Handed out elsewhere",
            f"application {app.id} is handed out at centre {h.centre}, not at this centre",
            "id",
            params={"id": app.id, "centre": h.centre},
        )


def _same(given: str, stored: str | None) -> bool:
    if not stored:
        return False
    # surrogatepass: a lone surrogate typed in is a mismatch, not an encoding crash
    a = given.strip().upper().encode("utf-8", "surrogatepass")
    b = stored.strip().upper().encode("utf-8", "surrogatepass")
    return hmac.compare_digest(a, b)


@dataclass(frozen=True)
class Handed:
    record: HandoverOut
    changes: list[StatusChange]
    replayed: bool


async def _handed_out(conn: AsyncConnection, change: StatusChange, **record: Any) -> Handed:
    """Record on the case's handover row how its result left (``record``: outcome, when, by
    whom, ...) in the transaction of ``change``, and answer with the handover as it is now."""
    app_id = change.application_id
    await conn.execute(
        update(handovers).where(handovers.c.application_id == app_id).values(**record)
    )
    app = await cases.get_application(conn, app_id)
    assert app is not None
    h = await handover_row(conn, app)
    return Handed(handover_out(app, h), [with_contact(change, app.applicant)], replayed=False)


async def collect(runtime: Runtime, client: Client, app_id: str, body: CollectIn) -> Handed:
    """Hand a ready result to the applicant (or a repeat of the same request: same answer)."""
    if (body.id_number is None) == (body.pickup_code is None):
        raise IntakeProblem(
            422,
            "Identity check needed",
            "send exactly one of id_number (the applicant's ID document) or pickup_code "
            "(the code issued at intake)",
            "id_number",
        )
    failed: str | None = None
    at = now()
    async with runtime.engine.begin() as conn:
        app = await cases.lock_application(conn, app_id)
        if app is None:
            raise _not_found(app_id)
        h = await handover_row(conn, app)
        _check_hands_out(client, app, h)
        if app.status == State.MAILED.value:
            raise IntakeProblem(
                409,
                "Already mailed",
                f"application {app_id} was mailed",
                "id",
                params={"id": app_id},
            )
        if app.status not in (State.READY_FOR_PICKUP.value, State.COLLECTED.value):
            raise IntakeProblem(
                409,
                "Not ready for pickup",
                f"application {app_id} is {app.status}; results can be handed out once the "
                "case is ready_for_pickup",
                "id",
                params={"id": app_id, "status": app.status},
            )
        how = "id_number" if body.id_number is not None else "pickup_code"
        if app.status == State.COLLECTED.value and h.verified_with != how:
            # a repeat is answered only for the same kind of check: no comparison, no oracle
            raise IntakeProblem(
                409,
                "Already collected",
                f"application {app_id} was collected already",
                "id",
                params={"id": app_id},
            )
        try:
            await verification.check_allowed(conn, client, app_id, how, at)
        except verification.TooManyFailures as exc:
            raise IntakeProblem(
                429,
                "Too many failed checks",
                exc.detail,
                how,
                headers={"Retry-After": str(exc.retry_after)},
            ) from exc
        if body.id_number is not None:
            ok = _same(body.id_number.get_secret_value(), (app.applicant or {}).get("id_number"))
        else:
            assert body.pickup_code is not None
            locked = h.code_failures >= MAX_CODE_FAILURES
            ok = not locked and _same(body.pickup_code.get_secret_value(), h.pickup_code)
            if not ok and not locked:
                await conn.execute(
                    update(handovers)
                    .where(handovers.c.application_id == app_id)
                    .values(code_failures=handovers.c.code_failures + 1)
                )
            if locked:
                failed = (
                    "the pickup code was entered wrongly too often and no longer works; "
                    "check the applicant's ID document instead"
                )
        if not ok:
            await verification.record_failure(conn, client, app_id, how, at)
            failed = failed or (
                f"the {how.replace('_', ' ')} does not match this application; nothing was "
                "handed out"
            )
        elif app.status == State.COLLECTED.value:
            return Handed(handover_out(app, h), [], replayed=True)
        else:
            result = await cases.change_status(
                conn,
                app,
                State.COLLECTED,
                source=Source.API,
                actor=f"{client.centre or 'ops'}/{body.clerk}",
                detail={"verified_with": how, "window": body.window},
            )
            assert result.change is not None
            return await _handed_out(
                conn,
                result.change,
                outcome="collected",
                handed_out_at=at,
                handed_out_by=f"{client.centre or 'ops'}/{body.clerk}",
                window=body.window,
                verified_with=how,
                recipient=body.collected_by,
            )
    # the failure is committed above; only then is the request refused
    assert failed is not None
    log.info("pickup identity check failed", application=app_id, check=how)
    raise IntakeProblem(403, "Identity not confirmed", failed, how)


async def mail(runtime: Runtime, client: Client, app_id: str, body: MailIn) -> Handed:
    """Mail a ready result through a delivery method; repeating the request is safe."""
    methods = runtime.plugins.delivery_methods()
    async with runtime.engine.begin() as conn:
        app = await cases.get_application(conn, app_id)
        if app is None:
            raise _not_found(app_id)
        h = await handover_row(conn, app)
        check_may_change(client, app)
        if app.status == State.MAILED.value:
            return Handed(handover_out(app, h), [], replayed=True)
        if app.status != State.READY_FOR_PICKUP.value:
            raise IntakeProblem(
                409,
                "Not ready for mailing",
                f"application {app_id} is {app.status}; results can be mailed once the case "
                "is ready_for_pickup",
                "id",
                params={"id": app_id, "status": app.status},
            )
        docs = await documents.for_application(conn, app_id)
    method = methods.get(body.method)
    if method is None:
        raise IntakeProblem(
            422,
            "Unknown delivery method",
            f"no delivery method '{body.method}'; installed: {', '.join(sorted(methods))}",
            "method",
            params={"method": body.method, "installed": ", ".join(sorted(methods))},
        )
    delivery = app.delivery or {}
    address = body.address or delivery.get("address")
    if not address:
        raise IntakeProblem(
            422, "Address needed", "no address was given at intake: send address", "address"
        )
    parcel = Parcel(
        application_id=app.id,
        receipt_number=app.receipt_number,
        centre=h.centre,
        recipient=body.recipient or delivery.get("recipient") or app.applicant.get("name", ""),
        address=address,
        documents=[d.name for d in docs],
        carrier=body.carrier,
        tracking_number=body.tracking_number,
    )
    try:
        shipment = Shipment.model_validate(await method.ship(parcel))
    except DeliveryRefused as exc:
        raise IntakeProblem(
            422, "Cannot mail", str(exc), exc.field, params={"reason": str(exc)}
        ) from exc
    except Exception as exc:
        log.exception("delivery method failed", method=body.method, application=app_id)
        raise IntakeProblem(
            502,
            "Delivery method failed",
            f"delivery method '{body.method}' failed ({type(exc).__name__}); nothing was "
            "recorded, try again or use another method",
            "method",
            params={"method": body.method},
        ) from exc
    actor = f"{client.centre or 'ops'}/{body.clerk}"
    async with runtime.engine.begin() as conn:
        app = await cases.lock_application(conn, app_id)
        assert app is not None
        if app.status == State.MAILED.value:  # a concurrent repeat got there first
            h = await handover_row(conn, app)
            return Handed(handover_out(app, h), [], replayed=True)
        result = await cases.change_status(
            conn,
            app,
            State.MAILED,
            source=Source.API,
            actor=actor,
            detail={
                "method": body.method,
                "carrier": shipment.carrier,
                "tracking_number": shipment.tracking_number,
            },
        )
        if result.change is None:
            raise IntakeProblem(
                409,
                "Not ready for mailing",
                f"application {app_id} is {app.status}",
                "id",
                params={"id": app_id, "status": app.status},
            )
        return await _handed_out(
            conn,
            result.change,
            outcome="mailed",
            handed_out_at=result.change.at,
            handed_out_by=actor,
            window=body.window,
            delivery_method=body.method,
            carrier=shipment.carrier,
            tracking_number=shipment.tracking_number,
            address=address,
            recipient=parcel.recipient,
        )
