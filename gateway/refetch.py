"""Results for cases decided without their documents: listed, warned about, fetched again.

A case the department reports ``approved`` with no document cannot be handed out; it stays
``approved`` (the pickup step needs a document). That is never silent: each such report logs a
WARNING and counts ``gateway_documents_missing_total``; ``GET /v1/ops/undocumented`` and
``gateway refetch --list`` show the cases. The daemon's ``refetch`` task asks the department again
for every such case (``[gateway.schedule] refetch_seconds``), and an operator can do it now for
named cases or all of them (``POST /v1/ops/refetch``, ``gateway refetch``). A re-fetch polls the
department through its link and applies the answer like any poll: documents that arrive take
the case on to ``ready_for_pickup``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from sqlalchemy import Row

from gateway import documents
from gateway.connector import Receipt
from gateway.errors import ConnectorError
from gateway.events import Source
from gateway.metrics import REFETCHES
from gateway.runtime import Runtime
from gateway.states import State
from gateway.updates import apply_case_update

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
    async with runtime.engine.connect() as conn:
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
    changes = await apply_case_update(
        runtime, row.id, update, source=source, actor=actor, version=row.version
    )
    ready = any(c.to_status is State.READY_FOR_PICKUP for c in changes)
    status = changes[-1].to_status.value if changes else row.status
    if ready:
        log.info("documents collected on re-fetch", department=code, application=row.id)
        return Refetched(row.id, code, "collected", status=status)
    return Refetched(row.id, code, "still_missing", "the answer had no document", status)


async def sweep(runtime: Runtime, limit: int = 200) -> dict[str, Any]:
    """The daemon's task: re-fetch every waiting case (oldest first, ``limit`` per tick)."""
    results = await refetch(runtime, actor="daemon/refetch", source=Source.POLL, limit=limit)
    counts: dict[str, int] = {}
    for r in results:
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
    return counts


__all__ = ["Refetched", "refetch", "sweep", "waiting"]
