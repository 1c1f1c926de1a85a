"""Housekeeping: archive, never delete.

* idempotency records older than ``archive_after_days`` move to ``idempotency_records_archive``
  (a front desk retrying a request after that long gets a new application; nothing else reads
  them);
* callback replay records older than a day move to ``callback_events_archive`` (a callback that
  old is refused by its timestamp before the replay check);
* finished ``task_leases`` rows older than ``lease_retention_days`` are dropped: they coordinate
  daemons and record task runs, they are not records of any case.

* uploads no application or supplement refers to expire after ``[gateway.api.quotas]
  unused_upload_hours``: their rows are deleted and their files too, unless another record
  still refers to the same content or it was uploaded again meanwhile (they are no record of
  any case; kept, they would let a key fill the disk with files nobody uses).

Each step moves at most ``BATCH`` rows per run, so a first run on an old database stays short.
Applications, events, reconciliation runs and discrepancies are never touched.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from sqlalchemy import Table, and_, delete, insert, literal, select, tuple_

from gateway.clock import now
from gateway.runtime import Runtime
from gateway.store.tables import (
    callback_events,
    callback_events_archive,
    idempotency_records,
    idempotency_records_archive,
    materials,
    result_documents,
    task_leases,
)

BATCH = 5000
CALLBACK_RETENTION = dt.timedelta(days=1)


async def _move(runtime: Runtime, src: Table, dst: Table, stamp: str, before: dt.datetime) -> int:
    keys = [c for c in src.primary_key.columns]
    t = now()
    async with runtime.engine.begin() as conn:
        rows = (
            await conn.execute(
                select(*keys)
                .where(src.c[stamp] < before)
                .order_by(*keys)
                .limit(BATCH)
                .with_for_update(skip_locked=True)
            )
        ).all()
        if not rows:
            return 0
        chosen = tuple_(*keys).in_([tuple(r) for r in rows])
        cols = [c.name for c in src.columns]
        await conn.execute(
            insert(dst).from_select(
                [*cols, "archived_at"],
                select(*src.columns, literal(t, dst.c.archived_at.type)).where(chosen),
            )
        )
        await conn.execute(delete(src).where(chosen))
    return len(rows)


async def expire_uploads(runtime: Runtime, before: dt.datetime) -> int:
    """Delete uploads made before ``before`` that nothing refers to; returns how many."""
    async with runtime.engine.begin() as conn:
        rows = (
            await conn.execute(
                select(materials.c.id, materials.c.sha256)
                .where(materials.c.used_at.is_(None), materials.c.created_at < before)
                .limit(BATCH)
            )
        ).all()
        if not rows:
            return 0
        await conn.execute(delete(materials).where(materials.c.id.in_([r.id for r in rows])))
        shas = {r.sha256 for r in rows}
        kept = set(
            (
                await conn.execute(
                    select(materials.c.sha256)
                    .where(materials.c.sha256.in_(shas))
                    .union(
                        select(result_documents.c.sha256).where(result_documents.c.sha256.in_(shas))
                    )
                )
            ).scalars()
        )
    for sha in shas - kept:
        await asyncio.to_thread(runtime.blobs.remove_if_older, sha, before.timestamp())
    return len(rows)


async def run(runtime: Runtime) -> dict[str, Any]:
    sched = runtime.config.gateway.schedule
    t = now()
    moved_keys = await _move(
        runtime,
        idempotency_records,
        idempotency_records_archive,
        "created_at",
        t - dt.timedelta(days=sched.archive_after_days),
    )
    moved_callbacks = await _move(
        runtime, callback_events, callback_events_archive, "received_at", t - CALLBACK_RETENTION
    )
    async with runtime.engine.begin() as conn:
        dropped = (
            await conn.execute(
                delete(task_leases).where(
                    and_(
                        task_leases.c.finished_at.is_not(None),
                        task_leases.c.tick < t - dt.timedelta(days=sched.lease_retention_days),
                    )
                )
            )
        ).rowcount
    expired = await expire_uploads(
        runtime, t - dt.timedelta(hours=runtime.config.gateway.api.quotas.unused_upload_hours)
    )
    return {
        "uploads_expired": expired,
        "idempotency_archived": moved_keys,
        "callbacks_archived": moved_callbacks,
        "leases_dropped": int(dropped or 0),
    }
