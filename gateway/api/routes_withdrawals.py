"""Withdrawal: ``POST /v1/applications/{id}/withdraw`` records the request (the daemon asks the
department), ``GET /v1/applications/{id}/withdrawal`` shows how it stands; ops settle flagged
ones."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from gateway import withdrawals
from gateway.api.auth import ClientDep, OpsDep, RuntimeDep
from gateway.api.paging import Page, PageDep
from gateway.updates import announce

router = APIRouter(prefix="/v1")


@router.post(
    "/applications/{app_id}/withdraw",
    response_model=withdrawals.WithdrawalOut,
    tags=["applications"],
    responses={
        202: {
            "model": withdrawals.WithdrawalOut,
            "description": "The department holds the case: the gateway is asking it "
            '(outcome "pending"); follow GET /v1/applications/{id}/withdrawal.',
        }
    },
)
async def withdraw(
    app_id: str,
    runtime: RuntimeDep,
    client: ClientDep,
    response: Response,
    body: withdrawals.WithdrawIn | None = None,
) -> withdrawals.WithdrawalOut:
    """Withdraw an application the department has not decided yet. 200 when settled (a case
    that never reached the department is withdrawn at once), 202 while the gateway asks the
    department. Repeating is safe: it answers with the withdrawal as it stands."""
    done = await withdrawals.withdraw(runtime, client, app_id, body or withdrawals.WithdrawIn())
    announce(runtime, done.changes)
    if done.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    if done.record.outcome == withdrawals.PENDING:
        response.status_code = 202
    return done.record


@router.get(
    "/applications/{app_id}/withdrawal",
    response_model=withdrawals.WithdrawalOut,
    tags=["applications"],
)
async def get_withdrawal(
    app_id: str, runtime: RuntimeDep, client: ClientDep
) -> withdrawals.WithdrawalOut:
    """The application's withdrawal request and its outcome (404 if none was asked for)."""
    return await withdrawals.get(runtime, client, app_id)


class WithdrawalPage(Page[withdrawals.WithdrawalOut]):
    pass


@router.get("/ops/withdrawals", response_model=WithdrawalPage, tags=["ops"])
async def flagged_withdrawals(
    runtime: RuntimeDep,
    _ops: OpsDep,
    paging: PageDep,
    include_resolved: Annotated[bool, Query()] = False,
) -> WithdrawalPage:
    """Withdrawals the gateway could not pass on to the department by itself, oldest first."""
    found = await withdrawals.flagged(
        runtime,
        include_resolved=include_resolved,
        limit=paging.limit + 1,
        after=paging.key("withdrawals", 2),
    )
    cut = paging.page("withdrawals", found, lambda f: f[1])
    return WithdrawalPage(items=[w for w, _key in cut.items], next_cursor=cut.next_cursor)


@router.post(
    "/ops/withdrawals/{app_id}/resolve", response_model=withdrawals.WithdrawalOut, tags=["ops"]
)
async def resolve_withdrawal(
    app_id: str, runtime: RuntimeDep, ops: OpsDep
) -> withdrawals.WithdrawalOut:
    """Mark a flagged withdrawal as settled with the department."""
    return await withdrawals.resolve(runtime, app_id, f"ops/{ops.name}")
