"""Withdrawal (撤回) of an application before the department decides.

If the case never left the gateway, it is simply withdrawn (its dispatch job is then superseded).
If the department holds it, the connector's optional ``withdraw`` is asked first: a refusal
leaves the case as it is; a confirmation withdraws it. Where the connector cannot withdraw, or
the department could not be reached, or a delivery may be in flight, the gateway still records
the applicant's withdrawal and flags it for ops (``GET /v1/ops/withdrawals``) to settle with
the department by hand; later news about the case is then stale and changes nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.clock import now
from gateway.connector import Connector, Receipt
from gateway.errors import DepartmentRejected
from gateway.events import Source, StatusChange
from gateway.intake import IntakeProblem
from gateway.notifications import with_contact
from gateway.pickup import may_see
from gateway.pii import scrub
from gateway.runtime import Runtime
from gateway.states import FORWARD, State
from gateway.store import cases, jobs
from gateway.store.clients import Client
from gateway.store.tables import withdrawals

log = structlog.get_logger("gateway.withdrawals")

#: States from which the applicant may still withdraw (the state machine's own edges).
WITHDRAWABLE = frozenset(s for s, nxt in FORWARD.items() if State.WITHDRAWN in nxt)


class WithdrawIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=500)
    clerk: str | None = Field(default=None, max_length=64)


class WithdrawalOut(BaseModel):
    id: str
    status: State
    outcome: str = Field(
        description="not_sent | withdrawn (department confirmed) | unsupported | error | unknown"
    )
    needs_ops: bool
    detail: str | None
    requested_at: dt.datetime
    actor: str
    resolved_at: dt.datetime | None = None
    resolved_by: str | None = None


@dataclass(frozen=True)
class Withdrawn:
    record: WithdrawalOut
    changes: list[StatusChange]
    replayed: bool


def supports_withdraw(connector: Connector | None) -> bool:
    return connector is not None and type(connector).withdraw is not Connector.withdraw


def _out(row: Any, status: str) -> WithdrawalOut:
    return WithdrawalOut(
        id=row.application_id,
        status=State(status),
        outcome=row.outcome,
        needs_ops=row.needs_ops,
        detail=row.detail,
        requested_at=row.requested_at,
        actor=row.actor,
        resolved_at=row.resolved_at,
        resolved_by=row.resolved_by,
    )


async def _record(conn: AsyncConnection, app_id: str) -> Any:
    q = select(withdrawals).where(withdrawals.c.application_id == app_id)
    return (await conn.execute(q)).first()


async def _at_department(conn: AsyncConnection, app: Any) -> bool:
    """Whether the department may hold the case (a delivery was tried or confirmed)."""
    if app.department_case_id is not None or app.status not in (
        State.RECEIVED.value,
        State.DISPATCHING.value,
    ):
        return True
    job = await jobs.job_for(conn, app.id, app.version)
    return job is not None and (job.attempts > 0 or job.state == jobs.LEASED)


async def withdraw(runtime: Runtime, client: Client, app_id: str, body: WithdrawIn) -> Withdrawn:
    actor = f"{client.centre or 'ops'}/{body.clerk or client.name}"
    async with runtime.engine.connect() as conn:
        app = await cases.get_application(conn, app_id)
        if app is None or not may_see(client, app):
            raise IntakeProblem(
                404, "Unknown application", f"no application '{app_id}' visible to this key", "id"
            )
        if app.status == State.WITHDRAWN.value and (row := await _record(conn, app_id)):
            return Withdrawn(_out(row, app.status), [], replayed=True)
        _check_withdrawable(app)
        at_department = await _at_department(conn, app)

    outcome, detail = "not_sent", None
    if at_department:
        outcome, detail = await _ask_department(runtime, app)

    async with runtime.engine.begin() as conn:
        locked = await cases.lock_application(conn, app_id)
        assert locked is not None
        if locked.status == State.WITHDRAWN.value and (row := await _record(conn, app_id)):
            return Withdrawn(_out(row, locked.status), [], replayed=True)
        _check_withdrawable(locked)
        result = await cases.change_status(
            conn,
            locked,
            State.WITHDRAWN,
            source=Source.API,
            actor=actor,
            detail={"reason": body.reason, "department": outcome},
        )
        assert result.change is not None
        needs_ops = outcome not in ("not_sent", "withdrawn")
        await conn.execute(
            insert(withdrawals).values(
                application_id=app_id,
                requested_at=result.change.at,
                actor=actor,
                reason=body.reason,
                from_status=locked.status,
                outcome=outcome,
                detail=detail,
                needs_ops=needs_ops,
            )
        )
        row = await _record(conn, app_id)
        change = with_contact(result.change, locked.applicant)
    if needs_ops:
        log.warning(
            "withdrawal needs ops", application=app_id, department=app.department, outcome=outcome
        )
    return Withdrawn(_out(row, State.WITHDRAWN.value), [change], replayed=False)


def _check_withdrawable(app: Any) -> None:
    if State(app.status) not in WITHDRAWABLE:
        raise IntakeProblem(
            409,
            "Cannot withdraw",
            f"application {app.id} is {app.status}; only a case not yet decided can be withdrawn",
            "id",
        )


async def _ask_department(runtime: Runtime, app: Any) -> tuple[str, str | None]:
    """(outcome, detail) of asking the department to withdraw; raises if it refuses."""
    connector = runtime.connectors.get(app.department)
    if app.department_case_id is None:
        return "unknown", "a delivery may be in flight and the department's case id is not known"
    if not supports_withdraw(connector):
        return "unsupported", f"the {app.department} connector cannot withdraw cases"
    assert connector is not None
    dept = runtime.config.departments[app.department]
    try:
        async with asyncio.timeout(dept.timeout_seconds):
            await connector.withdraw(Receipt(case_id=app.department_case_id))
    except NotImplementedError as exc:  # e.g. a REST department without [options.withdraw]
        return "unsupported", str(exc)
    except DepartmentRejected as exc:
        raise IntakeProblem(
            409,
            "Department refused the withdrawal",
            f"department {app.department} refused: {scrub(exc.reason)}",
            "id",
        ) from exc
    except Exception as exc:  # a plugin's failure must not lose the applicant's request
        log.warning(
            "withdraw call failed",
            department=app.department,
            application=app.id,
            error=f"{type(exc).__name__}: {exc}",
        )
        return "error", scrub(f"{type(exc).__name__}: {exc}")[:500]
    return "withdrawn", None


async def flagged(runtime: Runtime, *, include_resolved: bool = False) -> list[WithdrawalOut]:
    q = select(withdrawals).where(withdrawals.c.needs_ops.is_(True))
    if not include_resolved:
        q = q.where(withdrawals.c.resolved_at.is_(None))
    async with runtime.engine.connect() as conn:
        rows = (await conn.execute(q.order_by(withdrawals.c.requested_at))).all()
    return [_out(r, State.WITHDRAWN.value) for r in rows]


async def resolve(runtime: Runtime, app_id: str, actor: str) -> WithdrawalOut:
    """Ops settled a flagged withdrawal with the department."""
    async with runtime.engine.begin() as conn:
        row = await _record(conn, app_id)
        if row is None or not row.needs_ops:
            raise IntakeProblem(
                404, "No flagged withdrawal", f"no withdrawal of '{app_id}' needs ops", "id"
            )
        if row.resolved_at is None:
            await conn.execute(
                update(withdrawals)
                .where(withdrawals.c.application_id == app_id)
                .values(resolved_at=now(), resolved_by=actor)
            )
            row = await _record(conn, app_id)
    return _out(row, State.WITHDRAWN.value)
