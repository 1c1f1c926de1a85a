"""Pulled updates (result files and the like): match each to its case, apply it, then ack it.

Both the pull and the acks go through the department's link (cap, deadline, breaker): a
batch's acks are one ``ack_updates`` call where the connector settles many at once, else one
``ack_update`` call each.

Matching uses the gateway's idempotency key when the department echoes it (it names the
application and version), else the department's case id. Apply-then-ack means a crash in
between re-applies the update on the next round, which the state machine turns into a no-op.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.connector import Ack, CaseUpdate
from gateway.events import Source
from gateway.runtime import Runtime
from gateway.store.tables import applications
from gateway.updates import apply_case_updates

log = structlog.get_logger("gateway.results")


def parse_idempotency_key(key: str) -> tuple[str, int] | None:
    """(application id, version) from a key the dispatcher made (``ow-<id>-v<version>``)."""
    if not key.startswith("ow-"):
        return None
    app_id, sep, version = key[3:].rpartition("-v")
    return (app_id, int(version)) if sep and version.isdigit() and app_id.isalnum() else None


async def match(runtime: Runtime, department: str, upd: CaseUpdate) -> tuple[str, int] | None:
    """(application id, version) the update is about, or None (:func:`match_many` of one)."""
    [hit] = await match_many(runtime, department, [upd])
    return (hit.app_id, hit.version) if hit else None


@dataclass(frozen=True)
class Hit:
    """What :func:`match_many` found for one update: the case and the version the update is
    about (as :func:`match`), with the case's status and version as stored when it was read."""

    app_id: str
    version: int
    status: str
    stored_version: int


async def match_many(
    runtime: Runtime, department: str, updates: Sequence[CaseUpdate]
) -> list[Hit | None]:
    """:func:`match` for a batch of updates with one statement; None where nothing matches."""
    if not updates:
        return []
    async with runtime.reader.connect() as conn:
        return await match_in(conn, department, updates)


async def match_in(
    conn: AsyncConnection, department: str, updates: Sequence[CaseUpdate]
) -> list[Hit | None]:
    """:func:`match_many` in the caller's transaction."""
    if not updates:
        return []
    keyed: dict[int, tuple[str, int]] = {}
    case_ids: set[str] = set()
    for i, upd in enumerate(updates):
        if upd.idempotency_key and (parsed := parse_idempotency_key(upd.idempotency_key)):
            keyed[i] = parsed
        else:
            case_ids.add(upd.case_id)
    wanted = []
    if keyed:
        ids = sorted({p[0] for p in keyed.values()})
        wanted.append(applications.c.id.in_(ids))
    if case_ids:
        wanted.append(applications.c.department_case_id.in_(sorted(case_ids)))
    q = (
        select(
            applications.c.id,
            applications.c.version,
            applications.c.status,
            applications.c.department_case_id,
        )
        .where(applications.c.department == department, or_(*wanted))
        .order_by(applications.c.id)
    )
    rows = (await conn.execute(q)).all()
    by_id = {row.id: row for row in rows}
    by_case: dict[str, Any] = {}
    for row in rows:
        if row.department_case_id is not None:
            by_case.setdefault(row.department_case_id, row)
    out: list[Hit | None] = []
    for i, upd in enumerate(updates):
        if i in keyed:
            app_id, version = keyed[i]
            known = by_id.get(app_id)
            out.append(Hit(app_id, version, known.status, known.version) if known else None)
        else:
            held = by_case.get(upd.case_id)
            out.append(Hit(held.id, held.version, held.status, held.version) if held else None)
    return out


#: pulled updates applied in one transaction
BATCH = 100


async def pull_department(runtime: Runtime, code: str, limit: int = 500) -> int:
    """One round for one department; returns how many updates changed a case. The updates
    are matched a batch (``BATCH``) per statement and applied a batch per transaction; each
    is acked only after its batch committed."""
    link = runtime.link(code)
    if link is None or link.breaker_open():
        return 0  # while the breaker is open the files wait: the next round reads them
    applied = 0
    pulled = await link.pull_updates(limit)
    for start in range(0, len(pulled), BATCH):
        batch = pulled[start : start + BATCH]
        hits = await match_many(runtime, code, batch)
        found: list[tuple[str, CaseUpdate, int | None]] = [
            (hit.app_id, upd, hit.version) for upd, hit in zip(batch, hits, strict=True) if hit
        ]
        done = iter(
            await apply_case_updates(runtime, found, source=Source.POLL, actor=f"results/{code}")
        )
        acks: list[Ack] = []
        for upd, hit in zip(batch, hits, strict=True):
            if hit is None:
                why = "no case with this idempotency key or case id"
                log.warning(
                    "result quarantined",
                    department=code,
                    case=upd.case_id,
                    idempotency_key=upd.idempotency_key,
                    reason=why,
                )
                acks.append(Ack(upd, "unmatched", why))
                continue
            changes = next(done)
            applied += bool(changes)
            acks.append(Ack(upd, "applied" if changes else "duplicate"))
        # after the batch committed; one call for the batch where the connector can
        await link.ack_updates(acks)
    return applied


async def pull_sweep(runtime: Runtime) -> int:
    total = 0
    for code in sorted(runtime.connectors):
        try:
            total += await pull_department(runtime, code)
        except Exception:
            log.exception("result pull failed", department=code)
    return total
