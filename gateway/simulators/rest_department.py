"""A simulated department back-office system with a REST API, all in memory.

It behaves like the real ones the gateway talks to: cases take time to decide, some are refused,
some need supplements, some are not accepted, results come back with a document, and it can be
told to fail (``POST /_control``). Used by the demo, the benchmarks, ``gateway simulate`` and tests.

Department status codes (strings, as real systems send them)::

    "0" received   "1" accepted (受理)   "5" in review   "2" not accepted (不予受理)
    "3" supplement required (补正)   "4" refused (不予许可)   "9" approved, certificate issued

Endpoints::

    POST /api/v1/cases            Idempotency-Key header; 201 {"case"} new, 200 {"case"} duplicate;
                                  a key ``ow-<id>-v<n>`` whose ``ow-<id>`` lineage is known
                                  re-opens that case as version n (re-sent after a supplement)
    GET  /api/v1/cases/{id}       {"case": {id, status, opinion, updated_at, supplement_items,
                                            documents: [{name, content_type, content_b64}]}}
    GET  /api/v1/cases            ?since&until&cursor&limit -> {"items": [...], "next": cursor|null}
                                  (cases whose status changed in [since, until); ``view=full``:
                                  each item as GET /cases/{id} shows it, for a change feed)
    GET  /api/v1/changes          ?since_seq&limit -> {"items": [case + "seq"]}: the numbered
                                  change feed, every status change after ``since_seq`` in order
    POST /_control                {"mode": ok|fail503|fail429|busy|timeout|slow,
                                   "slow_seconds", "retry_after", "count"}
    POST /api/v1/auth/token       with ``[simulator.token]``: {appId, appSecret} -> token

Answers follow the style set in ``[simulator]`` (envelope, inline documents, listing style,
charset, form bodies, token auth, signed requests): see :mod:`.rest_styles`.
    GET  /_stats                  {"submissions", "cases", "duplicates"}

A case's status is computed from the clock when read; only callbacks (``callbacks = true``) run
as tasks, owned by :class:`RestDepartmentState` and cancelled when the app shuts down.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import datetime as dt
import hashlib
import heapq
import hmac
import itertools
import json
import logging
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Receive, Scope, Send
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from gateway.simulators.decisions import Mix, Outcome, default_mix, draw, version_of
from gateway.simulators.rest_styles import (
    SimStyle,
    TokenStore,
    answer,
    check_signature,
    error,
    read_body,
)
from gateway.tracing import new_traceparent

__all__ = [
    "STATUS_ACCEPTED",
    "STATUS_APPROVED",
    "STATUS_IN_REVIEW",
    "STATUS_NOT_ACCEPTED",
    "STATUS_RECEIVED",
    "STATUS_REFUSED",
    "STATUS_SUPPLEMENT",
    "STATUS_WITHDRAWN",
    "ControlRequest",
    "RestDepartmentState",
    "RestSimulatorSettings",
    "SimCase",
    "certificate",
    "create_rest_department",
    "sign",
]

_log = logging.getLogger(__name__)

STATUS_RECEIVED = "0"
STATUS_ACCEPTED = "1"
STATUS_NOT_ACCEPTED = "2"
STATUS_SUPPLEMENT = "3"
STATUS_REFUSED = "4"
STATUS_IN_REVIEW = "5"
STATUS_WITHDRAWN = "8"
STATUS_APPROVED = "9"

_FINAL_STATUS: dict[str, str] = {
    "approve": STATUS_APPROVED,
    "reject": STATUS_REFUSED,
    "supplement": STATUS_SUPPLEMENT,
    "not_accept": STATUS_NOT_ACCEPTED,
}
_OPINIONS: dict[str, str] = {
    "approve": "准予许可",
    "reject": "不予许可：申请材料不符合法定条件",
    "supplement": "请补正以下材料",
    "not_accept": "不予受理：申请事项不属于本机关职权范围",
}
_SUPPLEMENT_ITEMS = ["营业场所使用证明", "法定代表人身份证明复印件"]
# The longest a request hangs in "timeout" mode: far beyond any client timeout.
_HANG_SECONDS = 3600.0


class _CallbackFailed(Exception):
    """A callback the gateway did not take (no answer, or not 2xx): tried again with backoff."""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The callback signature: ``sha256=`` + hex HMAC-SHA256(secret, ``f"{timestamp}."`` + body)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class RestSimulatorSettings(SimStyle):
    """The ``[simulator]`` table of a department file whose simulator kind is ``rest``; the
    style fields (envelope, documents, listing, charset, form bodies, token, signing) are
    :class:`~gateway.simulators.rest_styles.SimStyle`'s."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["rest"] = "rest"
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    seed: int = 1
    decision_delay_seconds: float = Field(default=2.0, ge=0)
    mix: Mix = Field(default_factory=default_mix)
    callbacks: bool = False
    callback_url: str | None = None
    callback_secret: str | None = None
    callback_attempts: int = Field(default=4, ge=1, le=20)
    callback_backoff_seconds: float = Field(default=0.2, ge=0)
    auth_token: str | None = Field(default=None, description="require Authorization: Bearer")
    auth_header: str = Field(default="X-Api-Key", description="header checked for auth_key")
    auth_key: str | None = Field(default=None, description="require this key in auth_header")
    case_prefix: str = "AMR"
    required_fields: list[str] = Field(
        default_factory=list,
        description="dotted body paths that must be present; missing = 422 business answer",
    )


class ControlRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["ok", "fail503", "fail429", "busy", "timeout", "slow"] = "ok"
    slow_seconds: float = Field(default=1.0, ge=0)
    retry_after: int = Field(default=1, ge=0)
    #: fail this many API calls, then back to ok (0: until told otherwise)
    count: int = Field(default=0, ge=0)


@dataclass
class SimCase:
    """One case in the simulated department; its status follows from the clock."""

    seq: int
    id: str
    idempotency_key: str
    outcome: Outcome
    body: dict[str, Any]
    created_at: dt.datetime
    version: Any = None
    #: a status set by a drift helper (see RestDepartmentState.force_status), and since when
    forced: tuple[str, dt.datetime] | None = None
    #: the last view made and what it was made from (see :meth:`view`)
    _view: tuple[Any, dict[str, Any]] | None = field(default=None, repr=False, compare=False)

    def phase(self, now: dt.datetime, delay: float) -> tuple[str, dt.datetime]:
        """The status at ``now`` and when the case entered it."""
        if self.forced is not None:
            return self.forced
        at = self.created_at
        if delay <= 0:
            return _FINAL_STATUS[self.outcome], at
        if self.outcome == "not_accept":
            # 不予受理 is decided at acceptance: such a case is never accepted or reviewed
            steps: tuple[tuple[float, str], ...] = ((delay * 0.5, STATUS_NOT_ACCEPTED),)
        else:
            steps = (
                (delay, _FINAL_STATUS[self.outcome]),
                (delay * 0.75, STATUS_IN_REVIEW),
                (delay * 0.5, STATUS_ACCEPTED),
            )
        for after, status in steps:
            when = at + dt.timedelta(seconds=after)
            if now >= when:
                return status, when
        return STATUS_RECEIVED, at

    def decided_at(self, delay: float) -> dt.datetime:
        share = 0.5 if self.outcome == "not_accept" else 1.0
        return self.created_at + dt.timedelta(seconds=max(delay * share, 0.0))

    def view(self, now: dt.datetime, delay: float, style: str = "list") -> dict[str, Any]:
        status, updated = self.phase(now, delay)
        final = status == _FINAL_STATUS[self.outcome] and now >= self.decided_at(delay)
        # a change feed shows a case again on every page of every tick while it is in the
        # window: the view is made again only when something it shows changed
        made_of: tuple[Any, ...] = (status, updated, final, style, self.outcome, self.id)
        made_of += (self.idempotency_key, self.version, self.created_at)
        if self._view is not None and self._view[0] == made_of:
            return dict(self._view[1])
        view = self._make_view(status, updated, final, style)
        self._view = (made_of, view)
        return dict(view)

    def _make_view(
        self, status: str, updated: dt.datetime, final: bool, style: str
    ) -> dict[str, Any]:
        documents: list[dict[str, str]] = []
        if final and self.outcome == "approve":
            documents.append(
                {
                    "name": f"certificate-{self.id}.pdf",
                    "content_type": "application/pdf",
                    "content_b64": base64.b64encode(certificate(self.id)).decode(),
                }
            )
        doc = documents[0] if documents else None
        if style == "inline":  # one document in fields of the case itself, as many send it
            extra: dict[str, Any] = {
                "certFile": doc["content_b64"] if doc else None,
                "certName": doc["name"] if doc else None,
            }
        elif style == "url":  # a link to fetch it from, on the department's own host
            extra = {
                "certUrl": f"/api/v1/cases/{self.id}/certificate" if doc else None,
                "certName": doc["name"] if doc else None,
            }
        else:
            extra = {"documents": documents}
        return {
            **extra,
            "id": self.id,
            "status": status,
            "idempotency_key": self.idempotency_key,
            "version": self.version,
            "opinion": _OPINIONS[self.outcome] if final else None,
            "supplement_items": list(_SUPPLEMENT_ITEMS)
            if final and self.outcome == "supplement"
            else [],
            "created_at": _iso(self.created_at),
            "updated_at": _iso(updated),
        }

    def summary(self, now: dt.datetime, delay: float) -> dict[str, Any]:
        status, updated = self.phase(now, delay)
        return {
            "id": self.id,
            "idempotency_key": self.idempotency_key,
            "status": status,
            "updated_at": _iso(updated),
        }


def certificate(case_id: str) -> bytes:
    """The document the department issues for an approved case (tests compare it byte for
    byte with what the front desk hands out)."""
    return b"%PDF-1.4\n% simulated certificate\n" + case_id.encode() + b"\n%%EOF\n"


def _iso(value: dt.datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class RestDepartmentState:
    """Everything the simulated department holds; tests read it directly."""

    settings: RestSimulatorSettings
    clock: Callable[[], dt.datetime] = _utcnow
    cases: dict[str, SimCase] = field(default_factory=dict)
    by_key: dict[str, str] = field(default_factory=dict)
    #: key lineage (``ow-<id>``) -> case id: a re-sent version updates the same case
    by_lineage: dict[str, str] = field(default_factory=dict)
    submissions: int = 0
    duplicates: int = 0
    last_seq: int = 0
    mode: str = "ok"
    slow_seconds: float = 1.0
    retry_after: int = 1
    callbacks_sent: int = 0
    callbacks_failed: int = 0
    #: API calls still to fail in the current mode (0: fail until told otherwise)
    fail_left: int = 0
    #: calls refused as transient (503/429/busy): tests assert that retries happened
    transient_answers: int = 0
    tokens: TokenStore | None = None
    nonces: set[str] = field(default_factory=set)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    #: the callback sender's session (made on the first callback, in the running loop)
    http: aiohttp.ClientSession | None = None
    #: the numbered change feed: change ``n`` (from 1) is ``change_log[n - 1]``, a case id
    change_log: list[str] = field(default_factory=list)
    #: status changes the clock will make: (when, tie, case id, the case's created_at then)
    _coming: list[tuple[dt.datetime, int, str, dt.datetime]] = field(default_factory=list)
    _ties: Any = field(default_factory=itertools.count)
    #: case ids whose changes the numbered feed leaves out (a department's feed losing them)
    feed_drops: set[str] = field(default_factory=set)

    def _changed(self, case: SimCase) -> None:
        """Number a status change of ``case`` (now) and note the ones its clock will make."""
        if case.id not in self.feed_drops:
            self.change_log.append(case.id)
        if case.forced is None:
            delay = self.settings.decision_delay_seconds
            share = (0.5,) if case.outcome == "not_accept" else (0.5, 0.75, 1.0)
            for part in share if delay > 0 else ():
                when = case.created_at + dt.timedelta(seconds=delay * part)
                heapq.heappush(self._coming, (when, next(self._ties), case.id, case.created_at))

    def changes_after(self, sequence: int, limit: int) -> list[tuple[int, SimCase]]:
        """Up to ``limit`` numbered changes after ``sequence``: (number, the case now)."""
        now = self.clock()
        while self._coming and self._coming[0][0] <= now:
            _when, _tie, case_id, created = heapq.heappop(self._coming)
            case = self.cases.get(case_id)
            live = case is not None and case.forced is None and case.created_at == created
            if live and case_id not in self.feed_drops:
                self.change_log.append(case_id)
        out: list[tuple[int, SimCase]] = []
        for number in range(max(sequence, 0) + 1, len(self.change_log) + 1):
            case = self.cases.get(self.change_log[number - 1])
            if case is not None:  # a dropped case's changes keep their numbers
                out.append((number, case))
            if len(out) >= limit:
                break
        return out

    def stats(self) -> dict[str, int]:
        return {
            "submissions": self.submissions,
            "cases": len(self.cases),
            "duplicates": self.duplicates,
            "callbacks_sent": self.callbacks_sent,
            "callbacks_failed": self.callbacks_failed,
        }

    def outcome_for(self, idempotency_key: str) -> Outcome:
        """Deterministic in (seed, key): the same key always gets the same decision."""
        return draw(self.settings.seed, idempotency_key, self.settings.mix)

    def create(self, idempotency_key: str, body: dict[str, Any]) -> tuple[SimCase, bool]:
        """Record a submission; returns the case and whether it is new."""
        self.submissions += 1
        existing = self.by_key.get(idempotency_key)
        if existing is not None:
            self.duplicates += 1
            return self.cases[existing], False
        now = self.clock()
        lineage, version = version_of(idempotency_key)
        if version > 1 and lineage in self.by_lineage:
            return self._resend(self.cases[self.by_lineage[lineage]], idempotency_key, body), True
        self.last_seq += 1
        seq = self.last_seq
        case = SimCase(
            seq=seq,
            id=f"{self.settings.case_prefix}-{now.year}-{seq:06d}",
            idempotency_key=idempotency_key,
            outcome=self.outcome_for(idempotency_key),
            body=body,
            created_at=now,
            version=body.get("version"),
        )
        self.cases[case.id] = case
        self.by_key[idempotency_key] = case.id
        self.by_lineage[lineage] = case.id
        self._changed(case)
        if self.settings.callbacks and self.settings.callback_url:
            self._spawn(self._callback_when_decided(case))
        return case, True

    def _resend(self, case: SimCase, idempotency_key: str, body: dict[str, Any]) -> SimCase:
        """A new version of a case after a supplement (补正): the same case, decided afresh;
        a supplemented case is not asked for a supplement again."""
        case.outcome = draw(self.settings.seed, idempotency_key, self.settings.mix, resent=True)
        case.idempotency_key = idempotency_key
        case.body = body
        case.version = body.get("version")
        case.created_at = self.clock()
        self.by_key[idempotency_key] = case.id
        self._changed(case)
        if self.settings.callbacks and self.settings.callback_url:
            self._spawn(self._callback_when_decided(case))
        return case

    def view(self, case: SimCase) -> dict[str, Any]:
        return case.view(
            self.clock(), self.settings.decision_delay_seconds, self.settings.documents
        )

    def approve(self, case_id: str) -> bytes:
        """Decide a case as approved now; returns the certificate it is issued with."""
        case = self.cases[case_id]
        case.outcome, case.forced = "approve", None
        delay = self.settings.decision_delay_seconds
        case.created_at = self.clock() - dt.timedelta(seconds=delay)
        self._changed(case)
        return certificate(case.id)

    def fail_one(self) -> str | None:
        """The failure mode for one API call, counting down a limited failure run."""
        mode = self.mode
        if mode in ("fail503", "fail429", "busy"):
            self.transient_answers += 1
            if self.fail_left:
                self.fail_left -= 1
                if not self.fail_left:
                    self.mode = "ok"
        return mode

    # -- drift, for reconciliation tests: what real back offices do behind the gateway's back --

    def drop_case(self, case_id: str) -> None:
        """The department loses a case (restored from an old backup, say)."""
        self.cases.pop(case_id)
        for index in (self.by_key, self.by_lineage):
            for key in [k for k, v in index.items() if v == case_id]:
                del index[key]

    def force_status(self, case_id: str, status: str) -> None:
        """A clerk changes a case's status and no callback or poll tells the gateway."""
        self.cases[case_id].forced = (status, self.clock())
        self._changed(self.cases[case_id])

    def add_case(self, idempotency_key: str, status: str = STATUS_ACCEPTED) -> SimCase:
        """A case the department holds under ``idempotency_key`` without the key index: entered
        by hand (unknown to the gateway) or a second case for a key it already has (a duplicate)."""
        now = self.clock()
        self.last_seq += 1
        seq = self.last_seq
        case = SimCase(
            seq=seq,
            id=f"{self.settings.case_prefix}-{now.year}-{seq:06d}",
            idempotency_key=idempotency_key,
            outcome=self.outcome_for(idempotency_key),
            body={},
            created_at=now,
            forced=(status, now),
        )
        self.cases[case.id] = case
        self.by_key.setdefault(idempotency_key, case.id)
        self._changed(case)
        return case

    def duplicate_case(self, case_id: str) -> SimCase:
        """The department opens a second case for a key it already has."""
        original = self.cases[case_id]
        status, _ = original.phase(self.clock(), self.settings.decision_delay_seconds)
        return self.add_case(original.idempotency_key, status)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _callback_when_decided(self, case: SimCase) -> None:
        delay = self.settings.decision_delay_seconds
        wait = (case.decided_at(delay) - self.clock()).total_seconds()
        if wait > 0:
            await asyncio.sleep(wait)
        view = self.view(case)
        event = {
            "event_id": str(uuid.uuid4()),
            "case_id": case.id,
            "idempotency_key": case.idempotency_key,
            "status": view["status"],
            "opinion": view["opinion"],
            "occurred_at": view["updated_at"],
            "documents": view["documents"],
            "supplement_items": view["supplement_items"],
        }
        await self._deliver(event)

    async def _deliver(self, event: dict[str, Any]) -> None:
        url = self.settings.callback_url
        assert url is not None
        body = json.dumps(event, ensure_ascii=False).encode()
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.settings.callback_attempts),
            wait=wait_exponential(multiplier=self.settings.callback_backoff_seconds, min=0),
            retry=retry_if_exception_type(_CallbackFailed),
            before_sleep=lambda state: _log.warning(
                "callback %s attempt %d failed: %s",
                event["case_id"],
                state.attempt_number,
                state.outcome.exception() if state.outcome else "?",
            ),
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self._post_callback(url, body, event["event_id"])
        except RetryError as exc:
            _log.warning("callback %s given up: %s", event["case_id"], exc.last_attempt.exception())
            self.callbacks_failed += 1
            return
        self.callbacks_sent += 1

    async def _post_callback(self, url: str, body: bytes, event_id: str) -> None:
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", "X-Timestamp": timestamp}
        headers["X-Event-Id"] = event_id
        if self.settings.callback_secret:
            headers["X-Signature"] = sign(self.settings.callback_secret, timestamp, body)
        headers["traceparent"] = new_traceparent()[0]  # as the gateway's own client sends one
        try:
            async with self._client().post(url, data=body, headers=headers) as response:
                status = response.status
                await response.read()  # the connection goes back to the pool for the next one
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _CallbackFailed(type(exc).__name__) from exc
        if status >= 300:
            raise _CallbackFailed(f"HTTP {status}")

    def _client(self) -> aiohttp.ClientSession:
        if self.http is None:
            # aiohttp itself, not the gateway's httpx-over-aiohttp client (connectors must use
            # httpx; a simulator need not): httpx's request building and its auth, redirect and
            # cookie layers were ~15 of the ~38 points callbacks took of this process in the
            # city day. One session per department, its pool bounded as the client's was.
            self.http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=32),
                timeout=aiohttp.ClientTimeout(total=5.0),
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
            )
        return self.http

    async def aclose(self) -> None:
        """Cancel pending callbacks and close the callback client."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.http is not None:
            await self.http.close()
            self.http = None


#: a hot endpoint as the fast path calls it: the request (and a case id, or "") -> the answer
_Endpoint = Callable[[Request, str], Awaitable[Response]]


class _FaultMiddleware:
    """Applies the ``/_control`` fault mode to the department API (never to ``/_control``),
    then answers the hot endpoints itself.

    The fast path: case creation, the case view and both feeds (``hot``, filled in by
    :func:`create_rest_department`) are called straight from here with a plain Starlette request,
    without FastAPI's per-request pipeline (exception middleware, routing through every route,
    the request wrapper and its exit stack, dependency solving): that pipeline was ~20 % of the
    simulators process in the city day. The endpoints are the very functions the routes call,
    so the answers are the same bytes (tests/test_rest_simulator.py compares both paths); the
    routes stay declared, and every other request goes through the application as before."""

    def __init__(
        self,
        app: ASGIApp,
        state: RestDepartmentState,
        hot: dict[tuple[str, str], _Endpoint] | None = None,
    ) -> None:
        self.app = app
        self.state = state
        self.hot = hot if hot is not None else {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        mode = self.state.fail_one()
        style = self.state.settings
        if mode == "busy" and style.envelope:
            # the envelope style's outage: HTTP 200 with a "system busy" business code
            response: Response = answer(style, None, code="busy")
            await response(scope, receive, send)
        elif mode in ("fail503", "busy"):
            response = error(style, 503, "unavailable", "department system is down")
            await response(scope, receive, send)
        elif mode == "fail429":
            response = error(style, 429, "rate_limited", "too many requests")
            response.headers["Retry-After"] = str(self.state.retry_after)
            await response(scope, receive, send)
        elif mode == "timeout":
            await _hang_until_disconnect(receive)
        else:
            if mode == "slow":
                await asyncio.sleep(self.state.slow_seconds)
            endpoint, case_id = self._hot(scope)
            if endpoint is None:
                await self.app(scope, receive, send)
                return
            response = await endpoint(Request(scope, receive), case_id)
            await response(scope, receive, send)

    def _hot(self, scope: Scope) -> tuple[_Endpoint | None, str]:
        if not self.hot or scope.get("root_path"):
            return None, ""
        path, method = scope["path"], scope["method"]
        endpoint = self.hot.get((method, path))
        if endpoint is not None:
            return endpoint, ""
        # GET /api/v1/cases/{case_id}: one path segment, as the route's pattern takes it
        case_id = path[len(_CASE_PREFIX) :]
        if method == "GET" and path.startswith(_CASE_PREFIX) and case_id and "/" not in case_id:
            return self.hot.get(("GET", _CASE_ROUTE)), case_id
        return None, ""


_CASE_ROUTE = "/api/v1/cases/{case_id}"
_CASE_PREFIX = _CASE_ROUTE.removesuffix("{case_id}")


async def _hang_until_disconnect(receive: Receive) -> None:
    # Never answer; return when the client gives up (so the server can shut down promptly).
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_HANG_SECONDS):
            while (await receive())["type"] != "http.disconnect":
                pass


def _has_path(body: dict[str, Any], dotted: str) -> bool:
    node: Any = body
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return node is not None


def _parse_time(value: str | None) -> dt.datetime | None:
    if value is None or value == "":
        return None
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed


def create_rest_department(
    settings: RestSimulatorSettings,
    *,
    clock: Callable[[], dt.datetime] = _utcnow,
    fast_path: bool = True,
) -> tuple[FastAPI, RestDepartmentState]:
    """Build the simulated department's ASGI app and the state it serves from.

    ``fast_path=False``: the hot endpoints go through FastAPI's routing too (the tests compare
    the two paths' answers byte for byte)."""
    state = RestDepartmentState(settings=settings, clock=clock)
    hot: dict[tuple[str, str], _Endpoint] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await state.aclose()

    app = FastAPI(title="Simulated department (REST)", lifespan=lifespan)
    app.add_middleware(_FaultMiddleware, state=state, hot=hot)

    async def denied(request: Request, raw_body: str = "") -> Response | None:
        if settings.token is not None and state.tokens is not None:
            given = request.headers.get("authorization", "")
            if not state.tokens.valid(given, state.clock()):
                response = error(settings, 401, "unauthorized", "token missing or expired")
                response.headers["WWW-Authenticate"] = "Bearer"
                return response
        if settings.auth_token is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {settings.auth_token}".encode()):
                response = error(settings, 401, "unauthorized", "missing or wrong bearer token")
                response.headers["WWW-Authenticate"] = "Bearer"
                return response
        if settings.auth_key is not None:
            given = request.headers.get(settings.auth_header, "")
            if not hmac.compare_digest(given.encode(), settings.auth_key.encode()):
                return error(
                    settings, 401, "unauthorized", f"missing or wrong {settings.auth_header}"
                )
        if settings.signing is not None:
            problem = check_signature(settings.signing, request, raw_body, state.nonces)
            if problem is not None:
                return error(settings, 401, "bad_sign", f"签名错误: {problem}")
        return None

    if settings.token is not None:
        state.tokens = TokenStore(settings.token)

        @app.post("/api/v1/auth/token")
        async def token(request: Request) -> Response:
            assert settings.token is not None and state.tokens is not None
            body, _raw = await read_body(request, settings.model_copy(update={"form_bodies": True}))
            if (
                body is None
                or body.get("appId") != settings.token.app_id
                or not hmac.compare_digest(
                    str(body.get("appSecret", "")).encode(), settings.token.app_secret.encode()
                )
            ):
                return error(settings, 401, "unauthorized", "wrong appId or appSecret")
            issued, ttl = state.tokens.issue(state.clock())
            return answer(settings, {"access_token": issued, "expires_in": ttl})

    @app.post("/api/v1/cases")
    async def create_case(request: Request) -> Response:
        body, raw = await read_body(request, settings)
        if (refused := await denied(request, raw)) is not None:
            return refused
        key = request.headers.get("idempotency-key")
        if not key:
            return error(
                settings, 400, "missing_idempotency_key", "Idempotency-Key header is required"
            )
        if body is None:
            return error(settings, 422, "bad_body", "body must be a JSON object or a form")
        missing = [p for p in settings.required_fields if not _has_path(body, p)]
        if missing and key not in state.by_key:
            return error(settings, 422, "refused", f"申请材料不全：缺少 {', '.join(missing)}")
        case, new = state.create(key, body)
        if settings.envelope:
            return answer(settings, state.view(case), code="ok" if new else "exists")
        return answer(settings, {"case": state.view(case)}, status=201 if new else 200)

    @app.get("/api/v1/cases/{case_id}")
    async def get_case(case_id: str, request: Request) -> Response:
        if (refused := await denied(request)) is not None:
            return refused
        case = state.cases.get(case_id)
        if case is None:
            return error(settings, 404, "not_found", f"no case {case_id}")
        view = state.view(case)
        return answer(settings, view if settings.envelope else {"case": view})

    @app.get("/api/v1/cases/{case_id}/certificate")
    async def get_certificate(case_id: str, request: Request) -> Response:
        if (refused := await denied(request)) is not None:
            return refused
        case = state.cases.get(case_id)
        if case is None or not state.view(case).get("certUrl"):
            return error(settings, 404, "not_found", f"no certificate for {case_id}")
        return Response(certificate(case_id), media_type="application/pdf")

    @app.post("/api/v1/cases/{case_id}/withdraw")
    async def withdraw_case(case_id: str, request: Request) -> Response:
        raw = (await request.body()).decode("utf-8", errors="replace")
        if (refused := await denied(request, raw)) is not None:
            return refused
        case = state.cases.get(case_id)
        if case is None:
            return error(settings, 404, "not_found", f"no case {case_id}")
        status, _since = case.phase(state.clock(), state.settings.decision_delay_seconds)
        if status not in (STATUS_RECEIVED, STATUS_ACCEPTED, STATUS_IN_REVIEW, STATUS_WITHDRAWN):
            return error(settings, 409, "decided", f"case {case_id} is already decided ({status})")
        state.force_status(case_id, STATUS_WITHDRAWN)
        view = state.view(case)
        return answer(settings, view if settings.envelope else {"case": view})

    @app.get("/api/v1/cases")
    async def list_cases(request: Request) -> Response:
        if (refused := await denied(request)) is not None:
            return refused
        query = request.query_params
        try:
            lower = _parse_time(query.get("since"))
            upper = _parse_time(query.get("until"))
            after = int(query.get("cursor") or 0)
            size = int(query.get("size" if settings.listing == "page" else "limit") or 100)
            page = int(query.get("page") or 1)
            offset = int(query.get("offset") or 0)
        except ValueError:
            return error(settings, 400, "bad_query", "since/until ISO 8601, numbers for paging")
        size = min(max(size, 1), 1000)
        now = state.clock()
        delay = state.settings.decision_delay_seconds
        # ?view=full: each item is the whole case as GET /cases/{id} shows it (a change feed)
        full = query.get("view") == "full"

        def item(case: SimCase) -> dict[str, Any]:
            return state.view(case) if full else case.summary(now, delay)

        def in_window(cases: Iterable[SimCase]) -> Iterator[SimCase]:
            for case in cases:
                changed = case.phase(now, delay)[1]
                if (lower is None or changed >= lower) and (upper is None or changed < upper):
                    yield case

        cases = list(state.cases.values())  # insertion order is seq order
        result: dict[str, Any]
        if settings.listing in ("page", "offset"):
            matching = list(in_window(cases))
            start = (max(page, 1) - 1) * size if settings.listing == "page" else max(offset, 0)
            chosen = matching[start : start + size]
            result = {
                "items": [item(c) for c in chosen],
                "total": len(matching),
            }
        else:
            # a cursor page reads from the cursor on, and no further than one case past the
            # page: a change feed re-reads its window page after page, and reading every case
            # for every page made each tick quadratic in the cases of the window
            first = bisect.bisect_right(cases, after, key=lambda c: c.seq)
            rest = list(itertools.islice(in_window(cases[first:]), size + 1))
            chosen = rest[:size]
            more = len(rest) > size
            cursor = str(chosen[-1].seq) if more else None
            result = {"items": [item(c) for c in chosen]}
            if settings.listing == "next_link":
                link = None
                if cursor is not None:
                    params = {k: v for k, v in query.items() if k not in ("cursor", "sign")}
                    params = {
                        k: v for k, v in params.items() if k not in ("appKey", "timestamp", "nonce")
                    }
                    link = "/api/v1/cases?" + urllib.parse.urlencode({**params, "cursor": cursor})
                result["links"] = {"next": link}
            else:
                result["next"] = cursor
        return answer(settings, result)

    @app.get("/api/v1/changes")
    async def numbered_changes(request: Request) -> Response:
        if (refused := await denied(request)) is not None:
            return refused
        try:
            after = int(request.query_params.get("since_seq") or 0)
            size = int(request.query_params.get("limit") or 100)
        except ValueError:
            return error(settings, 400, "bad_query", "since_seq and limit are numbers")
        chosen = state.changes_after(after, min(max(size, 1), 1000))
        items = [{**state.view(case), "seq": number} for number, case in chosen]
        return answer(settings, {"items": items})

    if fast_path:
        hot[("POST", "/api/v1/cases")] = lambda request, _id: create_case(request)
        hot[("GET", _CASE_ROUTE)] = lambda request, case_id: get_case(case_id, request)
        hot[("GET", "/api/v1/cases")] = lambda request, _id: list_cases(request)
        hot[("GET", "/api/v1/changes")] = lambda request, _id: numbered_changes(request)

    @app.post("/_control")
    async def control(request: ControlRequest) -> dict[str, Any]:
        state.mode = request.mode
        state.fail_left = request.count
        state.slow_seconds = request.slow_seconds
        state.retry_after = request.retry_after
        return {"mode": state.mode}

    @app.get("/_stats")
    async def stats() -> dict[str, int]:
        return state.stats()

    return app, state
