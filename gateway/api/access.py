"""The access log: one INFO line per API request (``gateway.access``), PII masked; written by
:class:`gateway.api.front.Front` once the request is answered.

Fields: ``method``, ``path`` (with the query string, ID and phone numbers masked), ``status``,
``ms``, ``client`` and, when the caller sent one, its W3C ``traceparent`` (so a front desk's
trace can be followed into the gateway). Probes (``/healthz``, ``/readyz``, ``/metrics``) log at
DEBUG: a scraper every 15 s is not news.
"""

from __future__ import annotations

import logging
import time

import structlog
from starlette.types import Scope

from gateway.logs import info_line
from gateway.pii import scrub

log = structlog.get_logger("gateway.access")
_stdlib_log = logging.getLogger("gateway.access")  # its level follows gateway.logs.configure

PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
_MAX_PATH = 300  # a hostile URL must not make a hostile log line


def log_request(scope: Scope, status: int, started: float) -> None:
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
    elif not info_line(_stdlib_log, "request", fields):  # written directly, or:
        log.info("request", **fields)
