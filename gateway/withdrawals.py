"""Withdrawal (撤回) of an application before the department decides.

The API only records the request, in one transaction with the checks (DESIGN section 3: the API
never calls a connector). If the case never left the gateway it is withdrawn there and then
(``not_sent``; its dispatch job is then superseded). If the department may hold it, the request
is stored ``pending`` and the daemon's ``withdrawals`` task asks the department through the
connector's optional ``withdraw``, with leases as for dispatch jobs (several daemons never ask
twice for one request) and retry state in the row:

    pending  --department confirms------------------->  withdrawn    (case withdrawn)
             --department refuses (DepartmentRejected)->  refused      (case goes on)
             --a decision arrived first---------------->  too_late     (case goes on)
             --connector cannot withdraw--------------->  unsupported  (case withdrawn, ops)
             --department case id not known----------->  unknown      (case withdrawn, ops)
             --unreachable after the retry budget,
               or a permanent error------------------->  error        (case withdrawn, ops)

Where the department could not be told, the applicant's withdrawal still stands and ops settle
it by hand (``GET /v1/ops/withdrawals``); later news about the case is then stale.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Row, and_, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import tracing
from gateway.clock import now
from gateway.config.models import DepartmentConfig
from gateway.connector import Connector, Receipt
from gateway.departments import DepartmentLink, backoff
from gateway.errors import (
    DepartmentRejected,
    InfrastructureError,
    IntakeProblem,
    PermanentError,
    TransientError,
    unknown_application,
)
from gateway.events import Source, StatusChange
from gateway.notifications import with_contact
from gateway.pickup import check_may_change, may_see
from gateway.pii import scrub
from gateway.runtime import Runtime
from gateway.states import FORWARD, State
from gateway.store import cases, jobs, leases, paging
from gateway.store.clients import Client
from gateway.store.tables import applications, withdrawals
from gateway.text import CleanStr, shown
from gateway.updates import announce

log = structlog.get_logger("gateway.withdrawals")

#: States from which the applicant may still withdraw (the state machine's own edges).
WITHDRAWABLE = frozenset(s for s, nxt in FORWARD.items() if State.WITHDRAWN in nxt)

PENDING = "pending"


class WithdrawIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: CleanStr | None = Field(default=None, max_length=500)
    clerk: CleanStr | None = Field(default=None, max_length=64)


class WithdrawalOut(BaseModel):
    id: str
    status: State = Field(description="the case's status now")
    outcome: str = Field(
        description=(
            "pending (the gateway is asking the department) | not_sent (withdrawn before it "
            "reached the department) | withdrawn (the department confirmed) | refused (the "
            "department said no; the case goes on) | too_late (the department decided first) | "
            "unsupported | unknown | error (withdrawn here; the department could not be told, "
            "needs_ops)"
        )
    )
    needs_ops: bool
    detail: str | None
    requested_at: dt.datetime
    actor: str
    settled_at: dt.datetime | None = None
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
    row = shown(row)
    return WithdrawalOut(
        id=row.application_id,
        status=State(status),
        outcome=row.outcome,
        needs_ops=row.needs_ops,
        detail=row.detail,
        requested_at=row.requested_at,
        actor=row.actor,
        settled_at=row.settled_at,
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


def _not_found(app_id: str) -> IntakeProblem:
    return unknown_application(app_id)


# -- the front desk's side ----------------------------------------------------------------------


async def withdraw(runtime: Runtime, client: Client, app_id: str, body: WithdrawIn) -> Withdrawn:
    """Record the applicant's withdrawal: done at once if the case never reached the department,
    else ``pending`` for the daemon. A repeated request answers with the record as it stands."""
    actor = f"{client.centre or 'ops'}/{body.clerk or client.name}"
    changes: list[StatusChange] = []
    async with runtime.engine.begin() as conn:
        app = await cases.lock_application(conn, app_id)
        if app is None or not may_see(client, app):
            raise _not_found(app_id)
        check_may_change(client, app)
        if (row := await _record(conn, app_id)) is not None:
            return Withdrawn(_out(row, app.status), [], replayed=True)
        _check_withdrawable(app)
        at = now()
        values: dict[str, Any] = {
            "application_id": app_id,
            "requested_at": at,
            "actor": actor,
            "reason": body.reason,
            "from_status": app.status,
            "needs_ops": False,
            "attempts": 0,
        }
        status = app.status
        if await _at_department(conn, app):
            values |= {"outcome": PENDING, "next_attempt_at": at}
        else:
            result = await cases.change_status(
                conn,
                app,
                State.WITHDRAWN,
                source=Source.API,
                actor=actor,
                detail={"reason": body.reason, "department": "not_sent"},
            )
            assert result.change is not None
            changes.append(with_contact(result.change, app.applicant))
            values |= {"outcome": "not_sent", "settled_at": at}
            status = State.WITHDRAWN.value
        await conn.execute(insert(withdrawals).values(**values))
        row = await _record(conn, app_id)
    return Withdrawn(_out(row, status), changes, replayed=False)


def _check_withdrawable(app: Any) -> None:
    if State(app.status) not in WITHDRAWABLE:
        raise IntakeProblem(
            409,
            "Cannot withdraw",
            f"application {app.id} is {app.status}; only a case not yet decided can be withdrawn",
            "id",
            params={"id": app.id, "status": app.status},
        )


async def get(runtime: Runtime, client: Client, app_id: str) -> WithdrawalOut:
    """The withdrawal of one application, as it stands."""
    async with runtime.engine.connect() as conn:
        app = await cases.get_application(conn, app_id)
        if app is None or not may_see(client, app):
            raise _not_found(app_id)
        row = await _record(conn, app_id)
    if row is None:
        raise IntakeProblem(
            404,
            "No withdrawal",
            f"application {app_id} has no withdrawal request",
            "id",
            params={"id": app_id},
        )
    return _out(row, app.status)


# -- ops ----------------------------------------------------------------------------------------


async def flagged(
    runtime: Runtime,
    *,
    include_resolved: bool = False,
    limit: int = 500,
    after: Sequence[Any] | None = None,
) -> list[tuple[WithdrawalOut, list[Any]]]:
    """Withdrawals that need ops, oldest first, each with its sort key (requested_at, id);
    ``after`` is the key a page starts after."""
    q = (
        select(withdrawals, applications.c.status)
        .join(applications, applications.c.id == withdrawals.c.application_id)
        .where(withdrawals.c.needs_ops.is_(True))
    )
    if not include_resolved:
        q = q.where(withdrawals.c.resolved_at.is_(None))
    start = paging.after([withdrawals.c.requested_at, withdrawals.c.application_id], after)
    if start is not None:
        q = q.where(start)
    q = q.order_by(withdrawals.c.requested_at, withdrawals.c.application_id).limit(limit)
    async with runtime.engine.connect() as conn:
        rows = (await conn.execute(q)).all()
    return [(_out(r, r.status), [r.requested_at, r.application_id]) for r in rows]


async def resolve(runtime: Runtime, app_id: str, actor: str) -> WithdrawalOut:
    """Ops settled a flagged withdrawal with the department."""
    async with runtime.engine.begin() as conn:
        row = await _record(conn, app_id)
        if row is None or not row.needs_ops:
            raise IntakeProblem(
                404,
                "No flagged withdrawal",
                f"no withdrawal of '{app_id}' needs ops",
                "id",
                params={"id": app_id},
            )
        if row.resolved_at is None:
            await conn.execute(
                update(withdrawals)
                .where(withdrawals.c.application_id == app_id)
                .values(resolved_at=now(), resolved_by=actor)
            )
            row = await _record(conn, app_id)
        app = await cases.get_application(conn, app_id)
        assert app is not None
    return _out(row, app.status)


# -- the daemon's side: asking the department ----------------------------------------------------


@dataclass(frozen=True)
class _Settle:
    """A final outcome; ``withdraw``: the case is withdrawn with it."""

    outcome: str
    detail: str | None
    withdraw: bool
    needs_ops: bool = False


@dataclass(frozen=True)
class _Settled:
    outcome: str  # as recorded (a decision that came in meanwhile makes it too_late)
    changes: list[StatusChange]


@dataclass(frozen=True)
class _Retry:
    error: str
    retry_after: float | None = None
    final: bool = False  # retrying cannot help (a permanent error)


#: withdrawal requests as leased work: due at ``next_attempt_at``, held by ``lease_owner``
LEASED = leases.Leased(
    withdrawals,
    withdrawals.c.application_id,
    withdrawals.c.next_attempt_at,
    withdrawals.c.lease_owner,
)


async def claim(
    runtime: Runtime, owner: str, department: str, limit: int, lease_seconds: float
) -> list[Row[Any]]:
    """Lease up to ``limit`` due pending withdrawals of one department (and those whose lease
    ran out)."""
    of_department = select(applications.c.id).where(applications.c.department == department)
    async with runtime.engine.begin() as conn:
        return await leases.claim(
            conn,
            LEASED,
            and_(
                withdrawals.c.outcome == PENDING,
                withdrawals.c.application_id.in_(of_department.scalar_subquery()),
            ),
            owner=owner,
            limit=limit,
            lease_seconds=lease_seconds,
        )


async def due_departments(runtime: Runtime) -> list[str]:
    """The departments with a pending withdrawal request due now (or whose lease ran out),
    in code order; one read, no row locks and no write."""
    q = (
        select(applications.c.department)
        .join(withdrawals, withdrawals.c.application_id == applications.c.id)
        .where(
            withdrawals.c.outcome == PENDING,
            or_(withdrawals.c.next_attempt_at.is_(None), withdrawals.c.next_attempt_at <= now()),
        )
        .distinct()
    )
    async with runtime.reader.connect() as conn:
        found = {r[0] for r in (await conn.execute(q)).all()}
    return sorted(code for code in found if code in runtime.config.departments)


async def sweep(
    runtime: Runtime, owner: str, *, rng: random.Random | None = None
) -> dict[str, Any] | None:
    """One round of the daemon's ``withdrawals`` task: ask the departments about the pending
    withdrawals this owner claims. Returns counts of what happened, or None if nothing was due.

    Per department: slots first (from its link), then as many requests as slots; a department
    without an active connector needs none (its requests settle without asking)."""
    settings = runtime.config.gateway.dispatch
    rng = rng or random.Random()
    counts: dict[str, int] = {}
    work: list[tuple[Row[Any], DepartmentLink | None]] = []
    # one read says which departments have a request due: the round runs every sweep
    # interval, and a claim per department took its free slots (from dispatch) and a write
    # transaction each, four a round in the example city, nearly always for nothing
    for code in await due_departments(runtime):
        link = runtime.link(code)
        slots = link.reserve(settings.batch_size) if link else settings.batch_size
        if slots <= 0:
            continue
        lease = link.lease_seconds(settings.lease_seconds) if link else settings.lease_seconds
        try:
            rows = await claim(runtime, owner, code, slots, lease)
        except BaseException:
            if link:
                link.unreserve(slots)
            raise
        if link:
            link.unreserve(slots - len(rows))
        work += [(row, link) for row in rows]
    if not work:
        return None

    async def one(row: Row[Any], link: DepartmentLink | None) -> None:
        slot = [link is not None]  # this request's reserved slot, until used or given back
        try:
            outcome = await _handle(runtime, row, owner, link, slot, rng)
        except InfrastructureError:  # logged once per outage; the lease runs out, a round retries
            outcome = "infrastructure"
        except Exception:  # a bug: the lease runs out, another round retries
            log.exception("withdrawal round crashed", application=row.application_id)
            outcome = "crashed"
        finally:
            if slot[0] and link is not None:
                link.unreserve(1)
        counts[outcome] = counts.get(outcome, 0) + 1

    await asyncio.gather(*(one(row, link) for row, link in work))
    return counts


async def _handle(
    runtime: Runtime,
    row: Row[Any],
    owner: str,
    link: DepartmentLink | None,
    slot: list[bool],
    rng: random.Random,
) -> str:
    settled: _Settled | None = None
    async with runtime.engine.begin() as conn:
        app = await cases.lock_application(conn, row.application_id)
        assert app is not None  # withdrawals.application_id is a foreign key
        decided = await _without_asking(runtime, conn, app)
        if isinstance(decided, _Settle):
            settled = await _settle(conn, app, row, owner, decided, attempts=row.attempts)
    dept = runtime.config.departments[app.department]
    if isinstance(decided, _Settle):
        return _announced(runtime, settled)
    if decided is not None:
        return await _retry(runtime, row, owner, decided, dept, rng)
    assert link is not None  # _without_asking settles requests of departments without one
    slot[0] = False  # the link gives the slot back when the call ends
    answer = await _ask(link, app)
    if isinstance(answer, _Retry):
        return await _retry(runtime, row, owner, answer, dept, rng)
    async with runtime.engine.begin() as conn:
        app = await cases.lock_application(conn, row.application_id)
        settled = await _settle(conn, app, row, owner, answer, attempts=row.attempts + 1)
    return _announced(runtime, settled)


def _announced(runtime: Runtime, settled: _Settled | None) -> str:
    """After commit: tell the hooks; the outcome recorded (or that the lease was lost)."""
    if settled is None:
        return "lease_lost"
    announce(runtime, settled.changes)
    return settled.outcome


async def _without_asking(
    runtime: Runtime, conn: AsyncConnection, app: Any
) -> _Settle | _Retry | None:
    """What can be settled without the department (None: ask it)."""
    status = State(app.status)
    if status == State.WITHDRAWN:
        return _Settle("withdrawn", "the department reported the case withdrawn", withdraw=False)
    if status not in WITHDRAWABLE:
        return _Settle(
            "too_late", f"the department decided first; the case is {status}", withdraw=False
        )
    if not await _at_department(conn, app):  # a delivery in flight was handed back unsent
        return _Settle("not_sent", None, withdraw=True)
    if app.department_case_id is None:
        job = await jobs.job_for(conn, app.id, app.version)
        if job is not None and job.state == jobs.LEASED:
            # a delivery is in flight: its receipt brings the case id
            return _Retry("a delivery is in flight; waiting for the department's case id")
        return _Settle(
            "unknown",
            "a delivery may have reached the department but its case id is not known",
            withdraw=True,
            needs_ops=True,
        )
    if not supports_withdraw(runtime.connectors.get(app.department)):
        return _Settle(
            "unsupported",
            f"the {app.department} connector cannot withdraw cases",
            withdraw=True,
            needs_ops=True,
        )
    return None


async def _ask(link: DepartmentLink, app: Any) -> _Settle | _Retry:
    try:
        with tracing.case(app.id):
            await link.withdraw(Receipt(case_id=app.department_case_id), reserved=True)
    except NotImplementedError as exc:  # e.g. a REST department without [options.withdraw]
        return _Settle("unsupported", str(exc)[:500], withdraw=True, needs_ops=True)
    except DepartmentRejected as exc:
        return _Settle("refused", scrub(exc.reason)[:500], withdraw=False)
    except PermanentError as exc:
        return _Retry(scrub(f"permanent: {exc}")[:400], final=True)
    except TransientError as exc:
        return _Retry(scrub(f"{type(exc).__name__}: {exc}")[:400], exc.retry_after)
    return _Settle("withdrawn", "the department confirmed the withdrawal", withdraw=True)


def _fence(app_id: str, owner: str) -> Any:
    return and_(LEASED.fence(app_id, owner), withdrawals.c.outcome == PENDING)


async def _retry(
    runtime: Runtime,
    row: Row[Any],
    owner: str,
    retry: _Retry,
    dept: DepartmentConfig,
    rng: random.Random,
) -> str:
    attempts = row.attempts + 1
    if retry.final or attempts >= dept.retry.max_attempts:
        reason = retry.error if retry.final else f"gave up after {attempts} attempts: {retry.error}"
        settle = _Settle("error", reason, withdraw=True, needs_ops=True)
        async with runtime.engine.begin() as conn:
            app = await cases.lock_application(conn, row.application_id)
            settled = await _settle(conn, app, row, owner, settle, attempts=attempts)
        return _announced(runtime, settled)
    delay = backoff(dept.retry, attempts, retry.retry_after, rng)
    async with runtime.engine.begin() as conn:
        kept = await conn.execute(
            update(withdrawals)
            .where(_fence(row.application_id, owner))
            .values(
                attempts=attempts,
                next_attempt_at=now() + dt.timedelta(seconds=delay),
                lease_owner=None,
                detail=f"retrying (attempt {attempts}): {retry.error}",
            )
        )
    if not kept.rowcount:
        return "lease_lost"
    log.info(
        "withdrawal will be retried",
        application=row.application_id,
        department=dept.code,
        attempt=attempts,
        in_seconds=round(delay, 2),
        error=retry.error,
    )
    return "retrying"


async def _settle(
    conn: AsyncConnection,
    app: Any,
    row: Row[Any],
    owner: str,
    settle: _Settle,
    *,
    attempts: int,
) -> _Settled | None:
    """Record the final outcome on the locked case, if this owner still holds the lease
    (None: it lost the lease; nothing is recorded)."""
    outcome, detail, needs_ops = settle.outcome, settle.detail, settle.needs_ops
    status = State(app.status)
    changes: list[StatusChange] = []
    if settle.withdraw and status in WITHDRAWABLE:
        result = await cases.change_status(
            conn,
            app,
            State.WITHDRAWN,
            source=Source.DISPATCH,
            actor=owner[:100],
            detail={
                "reason": row.reason,
                "requested_by": row.actor,
                "department": outcome,
                "note": detail,
            },
        )
        assert result.change is not None
        changes.append(with_contact(result.change, app.applicant))
    elif settle.withdraw and status != State.WITHDRAWN:
        # a decision arrived while the department was being asked: it stands
        late = f"the case was {status} before the withdrawal could be recorded"
        if outcome == "withdrawn":  # ... yet the department says it withdrew the case
            needs_ops, late = True, f"{late}, though the department confirmed the withdrawal"
        outcome, detail = "too_late", late
    elif outcome == "refused" and status not in WITHDRAWABLE and status != State.WITHDRAWN:
        outcome = "too_late"
        detail = f"the case is {status}; the department refused: {detail}"
    done = await conn.execute(
        update(withdrawals)
        .where(_fence(row.application_id, owner))
        .values(
            outcome=outcome,
            detail=detail,
            needs_ops=needs_ops,
            settled_at=now(),
            lease_owner=None,
            next_attempt_at=None,
            attempts=attempts,
        )
    )
    if not done.rowcount:  # the lease ran out and another daemon holds the request now
        await conn.rollback()
        return None
    level = log.warning if needs_ops else log.info
    level("withdrawal settled", application=row.application_id, outcome=outcome, ops=needs_ops)
    return _Settled(outcome, changes)
