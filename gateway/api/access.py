"""The access log: one INFO line per API request (``gateway.access``), PII masked.

Fields: ``method``, ``path`` (with the query string, ID and phone numbers masked), ``status``,
``ms``, ``client`` and, when the caller sent one, its W3C ``traceparent`` (so a front desk's
trace can be followed into the gateway). Probes (``/healthz``, ``/readyz``, ``/metrics``) log at
DEBUG: a scraper every 15 s is not news.
"""

from __future__ import annotations

import logging
import time

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.pii import scrub

log = structlog.get_logger("gateway.access")
_stdlib_log = logging.getLogger("gateway.access")  # its level follows gateway.logs.configure

PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
_MAX_PATH = 300  # a hostile URL must not make a hostile log line


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client sees if the app dies before answering

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            _log_request(scope, status, started)


def _log_request(scope: Scope, status: int, started: float) -> None:
    path: str = scope["path"]
    probe = path in PROBES
    if not _stdlib_log.isEnabledFor(logging.DEBUG if probe else logging.INFO):
        return  # nothing to build for a line that is dropped
    query = scope.get("query_string", b"").decode("latin-1")
    fields = {
        "method": scope["method"],
        "path": scrub((path + ("?" + query if query else ""))[:_MAX_PATH]),
        "status": status,
        "ms": round((time.perf_counter() - started) * 1000, 1),
        "client": (scope.get("client") or ("-",))[0],
    }
    for name, value in scope.get("headers") or []:
        if name == b"traceparent":
            fields["traceparent"] = value.decode("latin-1")[:64]
    if probe:
        log.debug("request", **fields)
    else:
        log.info("request", **fields)
