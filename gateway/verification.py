"""Failed identity checks at hand-out, counted so the check cannot be used as an oracle.

``POST /v1/applications/{id}/collect`` compares an ID number (or pickup code) with the record.
Without a bound, a key of the handing centre could guess an applicant's ID number at hundreds
of tries a second. Every failed check is recorded; within :data:`WINDOW`:

- a case takes at most :data:`PER_CASE` wrong ID numbers, then its ID checks are refused (its
  pickup code has a lock of its own: :data:`gateway.handover.MAX_CODE_FAILURES`, for good);
- a key takes at most :data:`PER_KEY` failed checks of either kind over all cases, then its
  checks are refused.

Refused checks are answered ``429`` with ``Retry-After`` and are not compared at all, so a
locked case answers the same whatever is guessed. (The pickup code also stops working for good
after :data:`gateway.handover.MAX_CODE_FAILURES` wrong tries; the ID document still works.)
"""

from __future__ import annotations

import datetime as dt
import math

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.store.clients import Client
from gateway.store.tables import verification_failures

WINDOW = dt.timedelta(minutes=15)
PER_CASE = 5
PER_KEY = 20


class TooManyFailures(Exception):
    def __init__(self, detail: str, retry_after: int) -> None:
        self.detail, self.retry_after = detail, retry_after
        super().__init__(detail)


async def check_allowed(
    conn: AsyncConnection, client: Client, app_id: str, check: str, at: dt.datetime
) -> None:
    """Raise TooManyFailures if this case (for ``check``) or this key used up its failed
    checks."""
    t = verification_failures.c
    limits = [(t.client_id == client.id, PER_KEY, "this API key")]
    if check == "id_number":
        limits.insert(
            0, ((t.application_id == app_id) & (t.check == check), PER_CASE, "this application")
        )
    for condition, limit, what in limits:
        q = select(func.count(), func.min(t.at)).where(condition, t.at > at - WINDOW)
        count, oldest = (await conn.execute(q)).one()
        if count >= limit:
            wait = (oldest + WINDOW - at).total_seconds() if oldest else WINDOW.total_seconds()
            raise TooManyFailures(
                f"too many failed identity checks for {what}; checks are refused for a while "
                "(see Retry-After). Check the applicant's ID document carefully.",
                max(1, math.ceil(wait)),
            )


async def record_failure(
    conn: AsyncConnection, client: Client, app_id: str, check: str, at: dt.datetime
) -> None:
    await conn.execute(
        insert(verification_failures).values(
            client_id=client.id, application_id=app_id, check=check, at=at
        )
    )
