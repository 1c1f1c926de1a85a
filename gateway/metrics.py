"""Prometheus metrics, named gateway_*; served at /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

INTAKE = Counter("gateway_intake_total", "Applications submitted", ["outcome"])
DISPATCH = Counter("gateway_dispatch_total", "Dispatch attempts", ["department", "outcome"])
DISPATCH_SECONDS = Histogram(
    "gateway_dispatch_seconds", "Time of one submit call to a department", ["department"]
)
STATUS_CHANGES = Counter(
    "gateway_status_changes_total", "Committed status changes", ["department", "source", "to"]
)
INFLIGHT = Gauge(
    "gateway_dispatch_inflight", "Calls to a department in flight (every operation)", ["department"]
)
BREAKER_OPEN = Gauge(
    "gateway_breaker_open", "1 while a department's breaker is open", ["department"]
)
CALLS = Counter(
    "gateway_department_calls_total",
    "Calls to a department through its link, by operation and outcome",
    ["department", "operation", "outcome"],
)
CALL_SECONDS = Histogram(
    "gateway_department_call_seconds",
    "Time of one guarded call to a department (slot wait and in-call retries included)",
    ["department", "operation"],
)
