"""Status subscriptions: a front-desk system registers a URL and is told of every event of its
cases, instead of polling.

- A centre's key registers a URL (``scope`` ``centre``: every case its centre received or
  hands out; ``key``: only the cases that key submitted) and gets a secret, shown once.
- Every event written for a followed case becomes a pending delivery in the same transaction
  (:mod:`gateway.store.outbox`).
- The daemon claims due deliveries with leases (``FOR UPDATE SKIP LOCKED``, like dispatch jobs)
  and POSTs each event as JSON, signed the way departments sign their callbacks:
  ``X-Timestamp`` (unix seconds), ``X-Signature: sha256=<hex HMAC-SHA256 of
  "{timestamp}." + body>`` under the subscription's secret, and ``X-Event-Id`` (the ``event_id``
  inside the signed body). A 2xx answer acknowledges it; anything else, or no answer, is
  retried with backoff until acknowledged ([gateway.webhooks]).
- Order per case: a delivery is claimed only when every earlier event of the same case for the
  same subscription is delivered, so a receiver sees each case's events in order. Delivery is
  at least once: a receiver dedups by ``X-Event-Id``.
- Replay: re-queues the events of a range (and those from before the subscription existed).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import secrets
import time
from collections.abc import Sequence
from typing import Any, Literal

import httpx
import structlog
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import Row, and_, bindparam, exists, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.callbacks import sign
from gateway.clock import new_id, now
from gateway.config.models import RetryPolicy
from gateway.departments import backoff
from gateway.errors import RequestProblem
from gateway.pii import scrub
from gateway.runtime import Runtime
from gateway.store import outbox, paging
from gateway.store.clients import Client
from gateway.store.outbox import DELIVERED, LEASED, PENDING
from gateway.store.tables import (
    applications,
    events,
    webhook_deliveries,
    webhook_subscriptions,
)

log = structlog.get_logger("gateway.webhooks")
_rng = random.Random()


# -- subscriptions ---------------------------------------------------------------------------------


class SubscriptionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2000, description="http(s) URL the gateway POSTs each event to")
    scope: Literal["centre", "key"] = Field(
        default="centre",
        description="centre: every case of this key's centre; key: the cases this key submitted",
    )

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        parsed = httpx.URL(value) if "://" in value else None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError("must be an absolute http(s) URL")
        if parsed.userinfo:
            # it would be listed back to every key of the centre: sign, do not embed secrets
            raise ValueError("must not carry a user name or password")
        return value


def host_allowed(url: str, allowed: Sequence[str]) -> bool:
    """Whether ``url``'s host is one of ``allowed`` (``*.example`` covers its subdomains);
    an empty list allows any host."""
    if not allowed:
        return True
    host = httpx.URL(url).host.lower()
    for entry in (a.lower() for a in allowed):
        if host == entry or (entry.startswith("*.") and host.endswith(entry[1:])):
            return True
    return False


class DeliveryCounts(BaseModel):
    pending: int = Field(description="waiting to be delivered (including in flight)")
    delivered: int
    oldest_pending_at: dt.datetime | None = Field(
        description="when the oldest waiting one was queued"
    )
    last_error: str | None = Field(description="why the most recent failed attempt failed")
    last_delivered_at: dt.datetime | None


class SubscriptionOut(BaseModel):
    id: str
    url: str
    scope: Literal["centre", "key"]
    centre: str
    created_at: dt.datetime
    created_by: str
    active: bool
    deliveries: DeliveryCounts
    secret: str | None = Field(
        default=None,
        description="signs every delivery (HMAC-SHA256); in the answer to the POST only",
    )


class ReplayIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    from_event: int = Field(ge=1, description="first event id (X-Event-Id) to send again")
    to_event: int = Field(ge=1, description="last event id, inclusive")
    application_id: str | None = Field(default=None, max_length=32, description="one case only")


class ReplayOut(BaseModel):
    queued: int = Field(description="deliveries queued again (or for the first time)")


class DeliveryOut(BaseModel):
    event_id: int
    application_id: str
    state: Literal["pending", "leased", "delivered"]
    attempts: int
    next_attempt_at: dt.datetime | None
    last_error: str | None
    created_at: dt.datetime
    delivered_at: dt.datetime | None


def _unknown(sub_id: str) -> RequestProblem:
    return RequestProblem(
        404,
        "Unknown subscription",
        f"no subscription '{sub_id}' visible to this key",
        "id",
        params={"id": sub_id},
    )


async def subscribe(runtime: Runtime, client: Client, body: SubscriptionIn) -> SubscriptionOut:
    if client.centre is None:
        raise RequestProblem(
            403, "Not a centre key", "only a centre's key can subscribe to its cases"
        )
    settings = runtime.config.gateway.webhooks
    if not host_allowed(body.url, settings.allowed_hosts):
        raise RequestProblem(
            422,
            "Webhook host not allowed",
            f"the gateway may not call {httpx.URL(body.url).host}; allowed: "
            f"{', '.join(settings.allowed_hosts)}",
            "url",
            params={"host": httpx.URL(body.url).host},
        )
    limit = settings.max_subscriptions_per_centre
    async with runtime.engine.begin() as conn:
        active = (
            await conn.execute(
                select(func.count()).where(
                    webhook_subscriptions.c.centre == client.centre,
                    webhook_subscriptions.c.disabled_at.is_(None),
                )
            )
        ).scalar_one()
        if active >= limit:
            raise RequestProblem(
                409,
                "Too many subscriptions",
                f"centre {client.centre} has {active} active subscriptions (the limit is "
                f"{limit}); delete one first",
                params={"centre": client.centre, "limit": limit},
            )
        row = {
            "id": new_id("w"),
            "centre": client.centre,
            "client_id": client.id if body.scope == "key" else None,
            "url": body.url,
            "secret": secrets.token_hex(32),
            "created_by": f"{client.centre}/{client.name}",
            "created_at": now(),
        }
        await conn.execute(insert(webhook_subscriptions).values(**row))
        out = (await _views(conn, [await _row(conn, str(row["id"]))]))[0]
    return out.model_copy(update={"secret": row["secret"]})


async def _row(conn: AsyncConnection, sub_id: str) -> Row[Any]:
    q = select(webhook_subscriptions).where(webhook_subscriptions.c.id == sub_id)
    found = (await conn.execute(q)).first()
    if found is None:
        raise _unknown(sub_id)
    return found


async def _visible(conn: AsyncConnection, client: Client, sub_id: str) -> Row[Any]:
    try:
        row = await _row(conn, sub_id)
    except RequestProblem:
        raise _unknown(sub_id) from None
    if not client.ops and row.centre != client.centre:
        raise _unknown(sub_id)
    return row


async def _views(conn: AsyncConnection, rows: Sequence[Row[Any]]) -> list[SubscriptionOut]:
    ids = [r.id for r in rows]
    d = webhook_deliveries
    counts: dict[tuple[str, str], int] = {}
    oldest: dict[str, dt.datetime] = {}
    last_ok: dict[str, dt.datetime] = {}
    if ids:
        q = (
            select(
                d.c.subscription_id,
                d.c.state,
                func.count(),
                func.min(d.c.created_at),
                func.max(d.c.delivered_at),
            )
            .where(d.c.subscription_id.in_(ids))
            .group_by(d.c.subscription_id, d.c.state)
        )
        for sub, state, n, first, delivered in (await conn.execute(q)).all():
            counts[(sub, state)] = n
            if state != DELIVERED and first is not None:
                oldest[sub] = min(first, oldest.get(sub, first))
            if delivered is not None:
                last_ok[sub] = delivered
    errors: dict[str, str] = {}
    if ids:
        q2 = (
            select(d.c.subscription_id, d.c.last_error)
            .where(
                d.c.subscription_id.in_(ids), d.c.state != DELIVERED, d.c.last_error.is_not(None)
            )
            .order_by(d.c.id)
        )
        errors = {sub: err for sub, err in (await conn.execute(q2)).all()}
    return [
        SubscriptionOut(
            id=r.id,
            url=r.url,
            scope="key" if r.client_id else "centre",
            centre=r.centre,
            created_at=r.created_at,
            created_by=r.created_by,
            active=r.disabled_at is None,
            deliveries=DeliveryCounts(
                pending=counts.get((r.id, PENDING), 0) + counts.get((r.id, LEASED), 0),
                delivered=counts.get((r.id, DELIVERED), 0),
                oldest_pending_at=oldest.get(r.id),
                last_error=errors.get(r.id),
                last_delivered_at=last_ok.get(r.id),
            ),
        )
        for r in rows
    ]


async def subscriptions(
    runtime: Runtime, client: Client, *, limit: int, after: Sequence[Any] | None
) -> list[SubscriptionOut]:
    """Subscriptions this key may see (a centre's; ops: all), oldest first, by (created, id)."""
    s = webhook_subscriptions
    q = select(s).order_by(s.c.created_at, s.c.id).limit(limit)
    if not client.ops:
        q = q.where(s.c.centre == client.centre)
    start = paging.after([s.c.created_at, s.c.id], after)
    if start is not None:
        q = q.where(start)
    async with runtime.engine.connect() as conn:
        return await _views(conn, (await conn.execute(q)).all())


async def get(runtime: Runtime, client: Client, sub_id: str) -> SubscriptionOut:
    async with runtime.engine.connect() as conn:
        return (await _views(conn, [await _visible(conn, client, sub_id)]))[0]


async def disable(runtime: Runtime, client: Client, sub_id: str) -> SubscriptionOut:
    """Stop a subscription: nothing more is queued or sent (its history stays)."""
    async with runtime.engine.begin() as conn:
        row = await _visible(conn, client, sub_id)
        if row.disabled_at is None:
            await conn.execute(
                update(webhook_subscriptions)
                .where(webhook_subscriptions.c.id == sub_id)
                .values(disabled_at=now())
            )
        return (await _views(conn, [await _row(conn, sub_id)]))[0]


async def replay(runtime: Runtime, client: Client, sub_id: str, body: ReplayIn) -> int:
    """Queue the subscription's events ``from_event..to_event`` again (events from before it
    existed too); each case's events still go out in order."""
    if body.from_event > body.to_event:
        raise RequestProblem(
            422,
            "Bad event range",
            "from_event must not be after to_event",
            "from_event",
        )
    d = webhook_deliveries
    async with runtime.engine.begin() as conn:
        row = await _visible(conn, client, sub_id)
        if row.disabled_at is not None:
            raise _unknown(sub_id)
        in_range = [
            d.c.subscription_id == sub_id,
            d.c.event_id.between(body.from_event, body.to_event),
        ]
        if body.application_id:
            in_range.append(d.c.application_id == body.application_id)
        again = await conn.execute(
            update(d)
            .where(*in_range)
            .values(state=PENDING, attempts=0, next_attempt_at=now(), lease_owner=None)
        )
        conds = [
            webhook_subscriptions.c.id == sub_id,
            events.c.id.between(body.from_event, body.to_event),
            ~exists().where(d.c.subscription_id == sub_id, d.c.event_id == events.c.id),
        ]
        if body.application_id:
            conds.append(events.c.application_id == body.application_id)
        new = await conn.execute(insert(d).from_select(outbox.COLUMNS, outbox.followers(*conds)))
    return int(again.rowcount or 0) + int(new.rowcount or 0)


async def deliveries(
    runtime: Runtime,
    client: Client,
    sub_id: str,
    *,
    state: str | None,
    limit: int,
    after: int | None,
) -> list[DeliveryOut]:
    """A subscription's deliveries in event order (``after``: the event id a page starts
    after)."""
    d = webhook_deliveries
    async with runtime.engine.connect() as conn:
        await _visible(conn, client, sub_id)
        q = select(d).where(d.c.subscription_id == sub_id, d.c.event_id > (after or 0))
        if state == PENDING:
            q = q.where(d.c.state.in_((PENDING, LEASED)))
        elif state is not None:
            q = q.where(d.c.state == state)
        rows = (await conn.execute(q.order_by(d.c.event_id).limit(limit))).all()
    return [
        DeliveryOut(
            event_id=r.event_id,
            application_id=r.application_id,
            state=r.state,
            attempts=r.attempts,
            next_attempt_at=None if r.state == DELIVERED else r.next_attempt_at,
            last_error=r.last_error,
            created_at=r.created_at,
            delivered_at=r.delivered_at,
        )
        for r in rows
    ]


# -- delivering (the daemon) -----------------------------------------------------------------------


async def claim(
    conn: AsyncConnection, owner: str, limit: int, lease_seconds: float
) -> Sequence[Row[Any]]:
    """Lease up to ``limit`` due deliveries, each the first undelivered event of its case for
    its subscription (a later one waits for it)."""
    d = webhook_deliveries
    earlier = d.alias("earlier")
    t = now()
    due = (
        select(d.c.id)
        .where(
            and_(
                d.c.state.in_((PENDING, LEASED)),
                d.c.next_attempt_at <= t,
                d.c.subscription_id.in_(
                    select(webhook_subscriptions.c.id).where(
                        webhook_subscriptions.c.disabled_at.is_(None)
                    )
                ),
                ~exists().where(
                    earlier.c.subscription_id == d.c.subscription_id,
                    earlier.c.application_id == d.c.application_id,
                    earlier.c.event_id < d.c.event_id,
                    earlier.c.state != DELIVERED,
                ),
            )
        )
        .order_by(d.c.next_attempt_at, d.c.event_id)
        .limit(limit)
        .with_for_update(skip_locked=True, of=d)
    )
    q = (
        update(d)
        .where(d.c.id.in_(due.scalar_subquery()))
        .values(
            state=LEASED,
            lease_owner=owner,
            next_attempt_at=t + dt.timedelta(seconds=lease_seconds),
        )
        .returning(d)
    )
    rows: Sequence[Row[Any]] = (await conn.execute(q)).all()
    return rows


def _scrubbed(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrubbed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrubbed(v) for v in value]
    return value


def event_body(event: Any, app: Any) -> bytes:
    """What is POSTed for one event (no applicant PII; ID and phone numbers masked)."""
    body = {
        "event_id": event.id,
        "application_id": event.application_id,
        "receipt_number": app.receipt_number,
        "centre": app.centre,
        "matter_code": app.matter_code,
        "version": event.version,
        "at": event.at.isoformat(),
        "source": event.source,
        "from_status": event.from_status,
        "to_status": event.to_status,
        "status": app.status,
        "promised_by": app.promised_by.isoformat() if app.promised_by else None,
        "promised_by_final": bool(app.promised_final),
        "detail": _scrubbed(event.detail or {}),
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


async def _post(runtime: Runtime, sub: Any, delivery: Any, event: Any, app: Any) -> str | None:
    """Deliver one event; None when acknowledged, else why not."""
    body = event_body(event, app)
    stamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "X-Timestamp": stamp,
        "X-Event-Id": str(delivery.event_id),
        "X-Signature": sign(sub.secret, stamp, body),
        "User-Agent": "onewindow-gateway-webhooks",
    }
    timeout = runtime.config.gateway.webhooks.timeout_seconds
    try:
        resp = await runtime.http.post(sub.url, content=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"[:500]
    if 200 <= resp.status_code < 300:
        return None
    return f"HTTP {resp.status_code}"


_DUE = (
    select(webhook_deliveries.c.id)
    .where(
        webhook_deliveries.c.state.in_((PENDING, LEASED)),
        webhook_deliveries.c.next_attempt_at <= bindparam("_at"),
    )
    .limit(1)
)


async def _any_due(runtime: Runtime) -> bool:
    """Whether any delivery may be due (what :func:`claim` would lease, less its order and
    subscription checks): one read, no lock."""
    async with runtime.reader.connect() as conn:
        return (await conn.execute(_DUE, {"_at": now()})).first() is not None


async def sweep(runtime: Runtime, owner: str) -> dict[str, int] | None:
    """Deliver what is due; keeps going while deliveries succeed (a case's next event becomes
    due as soon as the one before it is delivered)."""
    settings = runtime.config.gateway.webhooks
    policy = RetryPolicy(
        base_seconds=settings.base_seconds,
        max_seconds=settings.max_seconds,
        jitter=settings.jitter,
    )
    sent = failed = 0
    for _ in range(100):
        # a read first: the round runs every sweep interval, nearly always with nothing due,
        # and the claim is a write transaction (on SQLite the file's write lock, which the
        # API's intake waits for)
        if not await _any_due(runtime):
            break
        async with runtime.engine.begin() as conn:
            claimed = await claim(conn, owner, settings.batch_size, settings.lease_seconds)
        if not claimed:
            break
        async with runtime.reader.connect() as conn:
            subs = {
                r.id: r
                for r in (
                    await conn.execute(
                        select(webhook_subscriptions).where(
                            webhook_subscriptions.c.id.in_({c.subscription_id for c in claimed})
                        )
                    )
                ).all()
            }
            evs = {
                r.id: r
                for r in (
                    await conn.execute(
                        select(events).where(events.c.id.in_([c.event_id for c in claimed]))
                    )
                ).all()
            }
            apps = {
                r.id: r
                for r in (
                    await conn.execute(
                        select(applications).where(
                            applications.c.id.in_({c.application_id for c in claimed})
                        )
                    )
                ).all()
            }
        outcomes = await asyncio.gather(
            *(
                _post(
                    runtime,
                    subs[c.subscription_id],
                    c,
                    evs[c.event_id],
                    apps[c.application_id],
                )
                for c in claimed
            )
        )
        at = now()
        async with runtime.engine.begin() as conn:
            for c, error in zip(claimed, outcomes, strict=True):
                fence = and_(
                    webhook_deliveries.c.id == c.id,
                    webhook_deliveries.c.lease_owner == owner,
                    webhook_deliveries.c.state == LEASED,
                )
                if error is None:
                    values: dict[str, Any] = {
                        "state": DELIVERED,
                        "delivered_at": at,
                        "lease_owner": None,
                        "attempts": c.attempts + 1,
                        "last_error": None,
                    }
                    sent += 1
                else:
                    wait = backoff(policy, c.attempts + 1, None, _rng)
                    values = {
                        "state": PENDING,
                        "lease_owner": None,
                        "attempts": c.attempts + 1,
                        "last_error": error,
                        "next_attempt_at": at + dt.timedelta(seconds=wait),
                    }
                    failed += 1
                    log.info(
                        "webhook delivery failed",
                        subscription=c.subscription_id,
                        event_id=c.event_id,
                        attempts=c.attempts + 1,
                        error=error,
                    )
                await conn.execute(update(webhook_deliveries).where(fence).values(**values))
        if failed and not sent:
            break
    return {"sent": sent, "failed": failed} if sent or failed else None


async def release(runtime: Runtime, owner: str) -> None:
    """Hand back this owner's leased deliveries (graceful shutdown)."""
    async with runtime.engine.begin() as conn:
        await conn.execute(
            update(webhook_deliveries)
            .where(
                webhook_deliveries.c.lease_owner == owner,
                webhook_deliveries.c.state == LEASED,
            )
            .values(state=PENDING, lease_owner=None, next_attempt_at=now())
        )


__all__ = [
    "DeliveryOut",
    "ReplayIn",
    "SubscriptionIn",
    "SubscriptionOut",
    "claim",
    "deliveries",
    "disable",
    "event_body",
    "get",
    "replay",
    "subscribe",
    "subscriptions",
    "sweep",
]
