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
OUTAGE = Gauge("gateway_outage", "1 while the component (database, storage) is out", ["component"])
OUTAGE_SECONDS = Counter(
    "gateway_outage_seconds", "Length of ended outages, per component", ["component"]
)
UNAVAILABLE = Counter(
    "gateway_unavailable_answers_total",
    "API answers of 503/507 because of the gateway's own infrastructure",
    ["component"],
)
DATA_DIR_FREE = Gauge("gateway_data_dir_free_bytes", "Free space in data_dir")
DATA_DIR_LOW = Gauge(
    "gateway_data_dir_low", "1 while data_dir has less free space than data_dir_min_free_mb"
)
DOCUMENTS_MISSING = Counter(
    "gateway_documents_missing_total",
    "Reports that an approved case is decided but carried no document (the case waits; the "
    "daemon asks again)",
    ["department", "source"],
)
REFETCHES = Counter(
    "gateway_document_refetch_total",
    "Result re-fetches of approved cases without documents, by outcome",
    ["department", "outcome"],
)
RESENDS = Counter(
    "gateway_resends_total",
    "Deliveries the department answered as a case it already held (a re-send)",
    ["department"],
)
