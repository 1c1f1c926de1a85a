"""W3C trace context (``traceparent``) on every outbound call, so one case can be followed
across the gateway's logs and the department's.

A case's trace id is derived from its application id (the id's 24 hex digits, then 8 of its
sha256), so every call about one case (each attempt, each poll, the withdrawal) carries the
same trace id, a department can read the application id out of it, and ops can compute it from
the id alone. Each call gets a new span id. Calls outside a case (health checks, case lists)
get a fresh random trace id. Work about a case runs inside :func:`case`, which also puts
``trace_id`` on every log line written inside it.

    with tracing.case(application_id):
        await connector.submit(envelope)   # traceparent: 00-<trace id>-<span id>-01
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import re
import secrets
from collections.abc import Iterator

__all__ = ["case", "current_trace_id", "new_traceparent", "trace_id_for"]

_HEX24 = re.compile(r"[0-9a-f]{24}")
_trace: contextvars.ContextVar[str | None] = contextvars.ContextVar("gateway_trace", default=None)


def trace_id_for(application_id: str) -> str:
    """The 32-hex-digit trace id of a case (never all zeros, as W3C requires)."""
    digest = hashlib.sha256(application_id.encode()).hexdigest()
    tail = application_id[-24:]
    if _HEX24.fullmatch(tail):
        return tail + digest[:8]
    return digest[:32]


def current_trace_id() -> str | None:
    return _trace.get()


def new_traceparent() -> tuple[str, str]:
    """(traceparent header value, trace id) for one outbound call."""
    trace_id = _trace.get() or secrets.token_hex(16)
    return f"00-{trace_id}-{secrets.token_hex(8)}-01", trace_id


@contextlib.contextmanager
def case(application_id: str) -> Iterator[str]:
    """Calls and log lines inside the block belong to this case's trace; yields the trace id."""
    from structlog.contextvars import bind_contextvars, reset_contextvars

    trace_id = trace_id_for(application_id)
    token = _trace.set(trace_id)
    # tokens, not bound_contextvars: that copies the whole context to save what it replaces
    logged = bind_contextvars(trace_id=trace_id)
    try:
        yield trace_id
    finally:
        reset_contextvars(**logged)
        _trace.reset(token)
