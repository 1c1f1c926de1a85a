"""The status-subscription outbox: every event written for a case becomes a pending delivery
for each subscription that follows the case, in the same transaction as the event (so a
committed event is never missed, and a rolled-back one never sent).

A subscription follows a case when its centre received the case or hands it out, and, for a
key-scoped subscription, when its key submitted the case.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    FromClause,
    Insert,
    Select,
    and_,
    bindparam,
    insert,
    literal,
    literal_column,
    or_,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.clock import now
from gateway.store import driver
from gateway.store.lists import OneOf
from gateway.store.tables import (
    UTCDateTime,
    applications,
    events,
    handovers,
    webhook_deliveries,
    webhook_subscriptions,
)

PENDING, LEASED, DELIVERED = "pending", "leased", "delivered"

COLUMNS = [
    "subscription_id",
    "event_id",
    "application_id",
    "state",
    "attempts",
    "next_attempt_at",
    "created_at",
]


def followers(
    *conds: ColumnElement[bool],
    stamp: ColumnElement[Any] | None = None,
    written: FromClause = events,
) -> Select[Any]:
    """SELECT of (subscription, event) pairs to deliver for the events matching ``conds``, as
    rows of a new pending delivery (columns in :data:`COLUMNS` order); ``stamp`` is their
    creation time (now, unless a parameter of a prebuilt statement). ``written``: where the
    events are read, the ``events`` table or rows of it with ``id`` and ``application_id``
    (PostgreSQL's one-statement write reads those its INSERT returns).

    The one definition of who follows a case: :func:`fan_out`, the store's batch write and
    an operator's replay all select through it."""
    s, a, h = webhook_subscriptions, applications, handovers
    if stamp is None:
        stamp = literal(now(), UTCDateTime())
    return (
        select(
            s.c.id,
            written.c.id,
            written.c.application_id,
            # constants written into the SQL: no parameter to bind on every write
            literal_column(f"'{PENDING}'"),
            literal_column("0"),
            stamp,
            stamp,
        )
        .select_from(written)
        .join(a, a.c.id == written.c.application_id)
        .outerjoin(h, h.c.application_id == a.c.id)
        .join(
            s,
            and_(
                s.c.disabled_at.is_(None),
                or_(s.c.centre == a.c.centre, s.c.centre == h.c.centre),
                or_(s.c.client_id.is_(None), s.c.client_id == a.c.client_id),
            ),
        )
        .where(*conds)
    )


async def fan_out(conn: AsyncConnection, app_ids: Sequence[str], at: dt.datetime) -> None:
    """Queue the events just written at ``at`` for these cases (inside the caller's
    transaction; one statement, nothing when no subscription follows them)."""
    params = {"_apps": list(app_ids), "_at": at, "_stamp": now()}
    await _fan_out_statement().run(conn, params)


@functools.cache
def _fan_out_statement() -> driver.Query:
    # prebuilt: every status change runs it, and building the join each time cost more CPU
    # than SQLite's answer (usually: no subscription follows the case); on SQLite sent
    # through the driver (gateway.store.driver), the list as one JSON array
    def build(one_of: OneOf) -> Insert:
        q = followers(
            one_of(events.c.application_id, "_apps"),
            events.c.at == bindparam("_at", type_=UTCDateTime()),
            stamp=bindparam("_stamp", type_=UTCDateTime()),
        )
        return insert(webhook_deliveries).from_select(COLUMNS, q)

    return driver.Query(build)
