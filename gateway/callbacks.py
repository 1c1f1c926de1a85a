"""Department callbacks: signature check, replay protection, then the common update path.

A department signs ``f"{timestamp}.".encode() + body`` with HMAC-SHA256 under its callback
secret and sends ``X-Timestamp`` (unix seconds) and ``X-Signature: sha256=<hex>``. Two secrets
may be configured at once so a secret can be rotated without a gap.

What is not signed is not trusted:
- the event id is the signed body's (the connector's ``event_id`` field); a callback without
  one is refused, and an ``X-Event-Id`` header, if sent, must say the same (a replayed body with
  a fresh header was applied again as a "new" event);
- an update is about one version of the case: the version its idempotency key names, else the
  version current when it was signed (``X-Timestamp``). An update about an older version than
  the case's is stale and changes nothing (a captured ``supplement_required`` for version 1
  must not send the re-sent version 2 back).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import SecretStr
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import documents
from gateway.connector import CaseUpdate
from gateway.events import Source
from gateway.results import match_in
from gateway.runtime import Runtime
from gateway.store import cases
from gateway.store.group import GroupCommit, Store, shared
from gateway.updates import Applied, Report, apply_reports, settle

WINDOW_SECONDS = 300


class CallbackRejected(Exception):
    def __init__(self, status: int, title: str, detail: str) -> None:
        self.status, self.title, self.detail = status, title, detail
        super().__init__(detail)


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    secrets: Sequence[SecretStr],
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    *,
    now: float | None = None,
) -> int:
    """The signed timestamp; CallbackRejected unless one of ``secrets`` signed this body
    recently."""
    if not secrets:
        raise CallbackRejected(
            404, "Callbacks not configured", "this department has no callback secret configured"
        )
    if not timestamp or not signature:
        raise CallbackRejected(
            401, "Unsigned callback", "X-Timestamp and X-Signature headers are required"
        )
    try:
        sent = int(timestamp)
    except ValueError as exc:
        raise CallbackRejected(401, "Bad timestamp", "X-Timestamp must be unix seconds") from exc
    skew = (time.time() if now is None else now) - sent
    if abs(skew) > WINDOW_SECONDS:
        raise CallbackRejected(
            401,
            "Stale callback",
            f"timestamp is {abs(skew):.0f}s from the gateway's clock; "
            f"the window is {WINDOW_SECONDS}s",
        )
    given = signature.encode()
    # compare against every secret (no early exit), in constant time
    ok = False
    for secret in secrets:
        ok |= hmac.compare_digest(sign(secret.get_secret_value(), timestamp, body).encode(), given)
    if not ok:
        raise CallbackRejected(401, "Bad signature", "the callback signature does not match")
    return sent


@dataclass(frozen=True)
class CallbackResult:
    status: str  # applied | duplicate | unchanged
    application_id: str | None


async def receive(
    runtime: Runtime, department: str, headers: dict[str, str], body: bytes
) -> CallbackResult:
    dept = runtime.config.departments.get(department)
    connector = runtime.connectors.get(department)
    if dept is None or connector is None:
        raise CallbackRejected(404, "Unknown department", f"no active department '{department}'")
    signed_at = verify(
        dept.callback_secrets, headers.get("x-timestamp"), headers.get("x-signature"), body
    )
    try:
        payload = json.loads(body)
        update = connector.parse_callback(payload)
    except NotImplementedError as exc:
        raise CallbackRejected(404, "Callbacks not supported", str(exc)) from exc
    except Exception as exc:
        raise CallbackRejected(422, "Unusable callback", f"{type(exc).__name__}: {exc}") from exc
    event_id = update.event_id
    if not event_id:
        raise CallbackRejected(
            422, "Missing event id", "the signed body must carry the event's id (event_id)"
        )
    header_id = headers.get("x-event-id")
    if header_id is not None and header_id != event_id:
        raise CallbackRejected(
            401,
            "Event id not signed",
            "X-Event-Id differs from the signed body's event id; only the body's counts",
        )
    [shas] = await documents.put(runtime.blobs, [update.documents])
    pushed = _Pushed(department, update, signed_at, event_id, shas)
    try:
        outcome = await _group(runtime).submit(pushed)
    except IntegrityError:
        # another process recorded the same event between this batch's check and its insert
        # (the batch was retried alone and failed again on it)
        outcome = _DUPLICATE
    if outcome is None:
        raise CallbackRejected(
            404, "Unknown case", f"no case with case id '{update.case_id}' at {department}"
        )
    app_id, applied = outcome
    settle(runtime, [applied])
    if applied.duplicate:
        return CallbackResult("duplicate", app_id)
    return CallbackResult("applied" if applied.changes else "unchanged", app_id)


#: callbacks waiting for their commit before one is answered 503 (Overloaded, retried by the
#: department): a database slower than the departments makes them wait instead of this
#: process's memory growing
QUEUE_LIMIT = 1000
#: how long a callback that arrives alone waits for others to share its transaction: a
#: department pushes as its cases are decided, one at a time (the city day: ~80 % of the
#: batches held one or two), and a batch's statements (match, dedupe, lock, documents, moves,
#: outbox, handovers: ~20) cost several times what one more callback in it adds. The
#: department's answer comes this much later at most; it is still sent after the commit
LINGER_SECONDS = 0.05


@dataclass(frozen=True)
class _Pushed:
    department: str
    update: CaseUpdate
    signed_at: int
    event_id: str
    shas: list[str | None]


_Outcome = tuple[str | None, Applied] | None
_DUPLICATE: _Outcome = (None, Applied([], duplicate=True))


def _group(runtime: Runtime) -> GroupCommit[_Pushed, _Outcome]:
    return shared(
        runtime,
        "callbacks",
        lambda: _applier(runtime),
        max_queue=QUEUE_LIMIT,
        linger=LINGER_SECONDS,
    )


def _applier(runtime: Runtime) -> Store[_Pushed, _Outcome]:
    """Callbacks that arrive together are matched and applied in one transaction (group
    commit), each answered after its commit: one transaction a callback held SQLite's write
    lock ~10 ms each in the city-day run, beside a read transaction to match it."""

    async def apply(conn: AsyncConnection, batch: list[_Pushed]) -> list[_Outcome]:
        out: list[_Outcome] = [None] * len(batch)
        by_department: dict[str, list[int]] = {}
        for i, pushed in enumerate(batch):
            by_department.setdefault(pushed.department, []).append(i)
        for department, at in by_department.items():
            hits = await match_in(conn, department, [batch[i].update for i in at])
            found: list[tuple[int, Report]] = []
            for i, hit in zip(at, hits, strict=True):
                if hit is None:
                    continue
                pushed = batch[i]
                version = hit.version
                if not pushed.update.idempotency_key:
                    # the update does not name its version: when was it signed?
                    version = await cases.version_at(conn, hit.app_id, pushed.signed_at)
                key = (department, pushed.event_id)
                found.append((i, Report(hit.app_id, pushed.update, version, pushed.shas, key)))
            applied = await apply_reports(
                conn,
                runtime,
                [report for _i, report in found],
                source=Source.CALLBACK,
                actor=f"callback/{department}",
            )
            for (i, report), one in zip(found, applied, strict=True):
                out[i] = (report.app_id, one)
        return out

    return apply
