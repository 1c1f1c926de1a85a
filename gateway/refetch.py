"""Results for cases decided without their documents: listed, warned about, fetched again.

A case the department reports ``approved`` with no document cannot be handed out; it stays
``approved`` (the pickup step needs a document). That is never silent: each such report logs a
WARNING and counts ``gateway_documents_missing_total``; ``GET /v1/ops/undocumented`` and
``gateway refetch --list`` show the cases. The daemon's ``refetch`` task asks the department again
for every such case (``[gateway.schedule] refetch_seconds``; every waiting case each tick, a page
at a time), and an operator can do it now for named cases or all of them (``POST /v1/ops/refetch``,
``gateway refetch``). A re-fetch polls the department through its link and applies the answer
like any poll: documents that arrive take the case on to ``ready_for_pickup``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from sqlalchemy import Row

from gateway import documents
from gateway.connector import CaseUpdate, Receipt
from gateway.errors import ConnectorError
from gateway.events import Source, StatusChange
from gateway.metrics import REFETCHES
from gateway.runtime import Runtime
from gateway.states import State
from gateway.updates import apply_case_update, apply_case_updates

log = structlog.get_logger("gateway.refetch")

Outcome = Literal["collected", "still_missing", "not_polled", "failed", "not_waiting"]


@dataclass(frozen=True)
class Refetched:
    """What one re-fetch did."""

    application_id: str
    department: str
    outcome: Outcome
    detail: str = ""
    status: str | None = None


async def waiting(
    runtime: Runtime,
    *,
    department: str | None = None,
    app_ids: Sequence[str] | None = None,
    limit: int = 500,
    after: Sequence[Any] | None = None,
) -> Sequence[Row[Any]]:
    """Approved cases without documents (oldest first; ``after``: (updated_at, id))."""
    async with runtime.reader.connect() as conn:
        return await documents.undocumented(
            conn, department=department, app_ids=app_ids, limit=limit, after=after
        )


async def refetch(
    runtime: Runtime,
    app_ids: Sequence[str] | None = None,
    *,
    actor: str,
    source: Source = Source.OPERATOR,
    limit: int = 500,
) -> list[Refetched]:
    """Ask the departments again for the results of the named cases (None: every approved case
    without documents, up to ``limit``). Named cases that are not waiting are reported so."""
    rows = await waiting(runtime, app_ids=app_ids, limit=limit)
    out: list[Refetched] = []
    found = {row.id for row in rows}
    for app_id in app_ids or ():
        if app_id not in found:
            out.append(
                Refetched(app_id, "", "not_waiting", "not an approved case without documents")
            )
    for row in rows:
        result = await _one(runtime, row, actor=actor, source=source)
        REFETCHES.labels(result.department, result.outcome).inc()
        out.append(result)
    return out


async def _one(runtime: Runtime, row: Row[Any], *, actor: str, source: Source) -> Refetched:
    asked = await _ask(runtime, row)
    if isinstance(asked, Refetched):
        return asked
    changes = await apply_case_update(
        runtime, row.id, asked, source=source, actor=actor, version=row.version
    )
    return _outcome(row, changes)


async def _ask(runtime: Runtime, row: Row[Any]) -> CaseUpdate | Refetched:
    """The department's answer about a waiting case, or what became of asking."""
    code = row.department
    link = runtime.link(code)
    if link is None or not row.department_case_id:
        why = runtime.unavailable.get(code, "no department case id")
        return Refetched(row.id, code, "not_polled", why)
    try:
        update = await link.poll(Receipt(case_id=row.department_case_id))
    except ConnectorError as exc:
        log.warning("re-fetch failed", department=code, application=row.id, error=str(exc))
        return Refetched(row.id, code, "failed", str(exc)[:300])
    if update is None:
        return Refetched(row.id, code, "not_polled", "the department cannot be polled")
    return update


def _outcome(row: Row[Any], changes: list[StatusChange]) -> Refetched:
    code = row.department
    ready = any(c.to_status is State.READY_FOR_PICKUP for c in changes)
    status = changes[-1].to_status.value if changes else row.status
    if ready:
        log.info("documents collected on re-fetch", department=code, application=row.id)
        return Refetched(row.id, code, "collected", status=status)
    return Refetched(row.id, code, "still_missing", "the answer had no document", status)


async def sweep(
    runtime: Runtime, page: int = 200, budget_seconds: float | None = None
) -> dict[str, Any]:
    """The daemon's task: re-fetch every waiting case, oldest first, ``page`` cases at a time,
    until none is left or the tick's time is spent (``budget_seconds``; default 0.8 of
    ``refetch_seconds``, so the next tick is not overlapped). A page's polls run together, as
    many per department at once as its ``concurrency``; a department whose poll fails is not
    asked again this tick (the link already warned once that it is down).

    Not one page per tick: a department that decides in its receipt (no documents yet) leaves
    every such case here, and at 200 a tick 4,800 cases of a city day waited up to two hours
    for their certificates."""
    if budget_seconds is None:
        budget_seconds = 0.8 * runtime.config.gateway.schedule.refetch_seconds
    deadline = time.monotonic() + budget_seconds
    counts: dict[str, int] = {}
    failing: set[str] = set()
    after: tuple[Any, ...] | None = None
    while True:
        rows = await waiting(runtime, limit=page, after=after)
        if not rows:
            break
        after = (rows[-1].updated_at, rows[-1].id)
        for result in await _page(runtime, [r for r in rows if r.department not in failing]):
            REFETCHES.labels(result.department, result.outcome).inc()
            counts[result.outcome] = counts.get(result.outcome, 0) + 1
            if result.outcome == "failed":
                failing.add(result.department)
        if len(rows) < page or time.monotonic() >= deadline:
            break
    return counts


async def _page(runtime: Runtime, rows: Sequence[Row[Any]]) -> list[Refetched]:
    """One page's re-fetches: the polls together, each department's within its concurrency
    cap, then the answers applied in one transaction (as a page of a change feed is), not one
    each: a city day's thousands of receipts that decided without documents were a
    transaction apiece, each taking SQLite's write lock from the API's intake."""
    caps: dict[str, asyncio.Semaphore] = {}

    async def ask(row: Row[Any]) -> CaseUpdate | Refetched:
        link = runtime.link(row.department)
        cap = link.dept.concurrency if link is not None else 1
        async with caps.setdefault(row.department, asyncio.Semaphore(cap)):
            return await _ask(runtime, row)

    asked = list(await asyncio.gather(*(ask(r) for r in rows)))
    answered = [(row, a) for row, a in zip(rows, asked, strict=True) if isinstance(a, CaseUpdate)]
    applied = iter(
        await apply_case_updates(
            runtime,
            [(row.id, update, row.version) for row, update in answered],
            source=Source.POLL,
            actor="daemon/refetch",
        )
        if answered
        else []
    )
    return [
        a if isinstance(a, Refetched) else _outcome(row, next(applied))
        for row, a in zip(rows, asked, strict=True)
    ]


__all__ = ["Refetched", "refetch", "sweep", "waiting"]
