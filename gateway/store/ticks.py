"""The daemon's tick rows (``task_leases``) as others read them: who holds a task.

A leased task's tick is one row, renewed while it runs (:mod:`gateway.daemon`). A tick that
started more than one interval ago and still holds its lease keeps the task's later ticks
waiting; ops see who holds it (host, pid, until when) in the department's health.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.clock import now
from gateway.store.tables import task_leases

__all__ = ["TickHolder", "held_since"]


@dataclass(frozen=True)
class TickHolder:
    """An unfinished tick of ``task`` whose lease has not run out."""

    task: str
    tick: dt.datetime
    owner: str  # host:pid:suffix, as a daemon names itself
    started_at: dt.datetime
    expires_at: dt.datetime

    @property
    def host(self) -> str:
        return self.owner.partition(":")[0]

    @property
    def pid(self) -> str:
        return self.owner.split(":")[1] if self.owner.count(":") >= 1 else "?"

    def describe(self) -> str:
        return (
            f"held by {self.host} pid {self.pid} since {_hms(self.started_at)}, "
            f"lease until {_hms(self.expires_at)}"
        )


def _hms(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%H:%M:%S UTC")


async def held_since(
    conn: AsyncConnection, tasks: Sequence[str], started_before: dt.datetime
) -> dict[str, TickHolder]:
    """For each of ``tasks`` held by a tick that started before ``started_before`` and still
    holds its lease: the holder (the latest such tick)."""
    if not tasks:
        return {}
    t = task_leases.c
    q = (
        select(t.task, t.tick, t.owner, t.started_at, t.expires_at)
        .where(
            and_(
                t.task.in_(list(tasks)),
                t.finished_at.is_(None),
                t.expires_at > now(),
                t.started_at < started_before,
            )
        )
        .order_by(t.tick)
    )
    return {r.task: TickHolder(*r) for r in (await conn.execute(q)).all()}
