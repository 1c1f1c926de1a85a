"""Reconciliation: the gateway's cases against each department's own list (see ``engine``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, select

from gateway.reconcile.engine import Kind, RunResult, compare, reconcile_department
from gateway.runtime import Runtime
from gateway.store import paging
from gateway.store.tables import reconcile_discrepancies, reconcile_runs


async def list_runs(
    runtime: Runtime,
    *,
    department: str | None = None,
    limit: int = 50,
    after: Sequence[Any] | None = None,
) -> Sequence[Row[Any]]:
    """Runs, newest first; ``after`` is the (started_at, id) a page starts after."""
    q = (
        select(reconcile_runs)
        .order_by(reconcile_runs.c.started_at.desc(), reconcile_runs.c.id.desc())
        .limit(limit)
    )
    if department:
        q = q.where(reconcile_runs.c.department == department)
    start = paging.after([reconcile_runs.c.started_at, reconcile_runs.c.id], after, descending=True)
    if start is not None:
        q = q.where(start)
    async with runtime.engine.connect() as conn:
        return (await conn.execute(q)).all()


async def get_run(
    runtime: Runtime, run_id: str, *, limit: int = 1000, after: int | None = None
) -> tuple[Row[Any] | None, Sequence[Row[Any]]]:
    """A run and (up to ``limit`` of) its discrepancies, after discrepancy id ``after``."""
    async with runtime.engine.connect() as conn:
        run = (
            await conn.execute(select(reconcile_runs).where(reconcile_runs.c.id == run_id))
        ).first()
        if run is None:
            return None, []
        q = (
            select(reconcile_discrepancies)
            .where(reconcile_discrepancies.c.run_id == run_id)
            .where(reconcile_discrepancies.c.id > (after or 0))
            .order_by(reconcile_discrepancies.c.id)
            .limit(limit)
        )
        return run, (await conn.execute(q)).all()


__all__ = ["Kind", "RunResult", "compare", "get_run", "list_runs", "reconcile_department"]
