"""Per-key quotas: how fast a key may submit applications and upload materials, and how many
bytes of uploads it may have stored in a day.

Rates are token buckets per key and per process (``[gateway.api.quotas]``, per key class: a
centre's key and an ops key), refilled continuously and allowing a burst of ``burst_seconds``
worth; N API processes allow N times the rate. A request over the rate is answered 429 with
``Retry-After`` (when the next one fits) and changes nothing. The upload quota counts the bytes
a key uploaded in the last 24 hours, from the database, so it holds across processes.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.clock import now
from gateway.config.models import QuotaSettings
from gateway.errors import RequestProblem
from gateway.store.clients import Client
from gateway.store.tables import materials

QUOTA_WINDOW = dt.timedelta(hours=24)


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """Token buckets by (key, what); ``check`` takes one token or raises a 429 problem."""

    def __init__(self, settings: QuotaSettings) -> None:
        self.settings = settings
        self._buckets: dict[tuple[str, str], _Bucket] = {}

    def _rate(self, client: Client, what: str) -> float:
        s = self.settings
        if what == "intake":
            return s.ops_intake_per_second if client.ops else s.centre_intake_per_second
        return s.ops_uploads_per_second if client.ops else s.centre_uploads_per_second

    def check(self, client: Client, what: str) -> None:
        rate = self._rate(client, what)
        capacity = max(1.0, rate * self.settings.burst_seconds)
        t = time.monotonic()
        bucket = self._buckets.get((client.id, what))
        if bucket is None:
            bucket = self._buckets[(client.id, what)] = _Bucket(capacity, t)
        bucket.tokens = min(capacity, bucket.tokens + (t - bucket.at) * rate)
        bucket.at = t
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return
        wait = math.ceil((1.0 - bucket.tokens) / rate)
        label = "applications" if what == "intake" else "uploads"
        raise RequestProblem(
            429,
            "Too many requests",
            f"this key sends {label} faster than {rate:g} a second; send this one again after "
            f"{wait} s (with the same Idempotency-Key, that is safe)",
            params={"retry": wait},
            headers={"Retry-After": str(wait)},
        )


async def check_upload_quota(
    conn: AsyncConnection, client: Client, size: int, settings: QuotaSettings
) -> None:
    """Raise a 413 problem if this upload takes the key past its bytes in the last 24 h."""
    q = select(func.coalesce(func.sum(materials.c.size), 0)).where(
        materials.c.client_id == client.id, materials.c.created_at > now() - QUOTA_WINDOW
    )
    used = int((await conn.execute(q)).scalar_one())
    if used + size > settings.upload_bytes_per_day:
        raise RequestProblem(
            413,
            "Upload quota exceeded",
            f"this key uploaded {used} bytes in the last 24 hours; the quota is "
            f"{settings.upload_bytes_per_day}. Ops can raise [gateway.api.quotas] "
            "upload_bytes_per_day.",
            "file",
            params={"used": used, "quota": settings.upload_bytes_per_day},
        )
