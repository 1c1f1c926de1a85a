"""Change-feed watermarks: how far each department's feed has been applied, kept durably so a
restarted daemon resumes where the last committed sync ended (never further)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.clock import now
from gateway.store.tables import sync_watermarks


@dataclass(frozen=True)
class Watermark:
    department: str
    #: every change before it (less the overlap) has been applied
    watermark: dt.datetime
    #: changes applied by feed syncs since the watermark row was made
    applied: int
    synced_at: dt.datetime
    #: a numbered feed: the last change number applied (None: a feed by time)
    sequence: int | None = None


async def get(conn: AsyncConnection, department: str) -> Watermark | None:
    q = select(sync_watermarks).where(sync_watermarks.c.department == department)
    row = (await conn.execute(q)).first()
    if row is None:
        return None
    return _watermark(row)


async def every(conn: AsyncConnection) -> list[Watermark]:
    rows = await conn.execute(select(sync_watermarks).order_by(sync_watermarks.c.department))
    return [_watermark(r) for r in rows]


def _watermark(row: Any) -> Watermark:
    return Watermark(row.department, row.watermark, row.applied, row.synced_at, row.sequence)


async def advance(
    conn: AsyncConnection,
    department: str,
    watermark: dt.datetime,
    applied: int,
    sequence: int | None = None,
) -> None:
    """Move the department's watermark to ``watermark`` (and, for a numbered feed, its last
    applied change number to ``sequence``), never backwards: two daemons whose syncs
    overlapped keep the later one; add ``applied`` to its count."""
    t = sync_watermarks
    current = await get(conn, department)
    if current is None:
        await conn.execute(
            t.insert().values(
                department=department,
                watermark=watermark,
                applied=applied,
                synced_at=now(),
                sequence=sequence,
            )
        )
        return
    values: dict[str, Any] = {
        "watermark": max(watermark, current.watermark),
        "applied": t.c.applied + applied,
        "synced_at": now(),
    }
    if sequence is not None:
        values["sequence"] = max(sequence, current.sequence or 0)
    await conn.execute(update(t).where(t.c.department == department).values(values))


__all__ = ["Watermark", "advance", "every", "get"]
