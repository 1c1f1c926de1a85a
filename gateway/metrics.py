"""Prometheus metrics, named gateway_*; served at /metrics (API) and on the daemon's metrics
port. deploy/prometheus/alerts.yml and deploy/grafana/gateway.json use these names; a test
checks that every name they query is defined here.

Counters and histograms count what happened in this process (sum them over instances).
Backlog gauges (``gateway_backlog_cases``, ``gateway_retrying_jobs``, ``gateway_failed_cases``,
``gateway_overdue_cases``, ``gateway_due_soon_cases``) describe the shared database: every
instance reports the same value, read at scrape time by :mod:`gateway.collector` (use
``max by (department)``, not ``sum``).
"""

from __future__ import annotations

import functools
from typing import Any, TypeVar

from prometheus_client import Counter, Gauge, Histogram

M = TypeVar("M", Counter, Gauge, Histogram)


@functools.lru_cache(maxsize=4096)
def _child(metric: Any, values: tuple[str, ...]) -> Any:
    return metric.labels(*values)


def child(metric: M, *values: str) -> M:
    """``metric.labels(*values)``, looked up once per label set (the delivery path records a
    dozen per case; ``labels`` validates and locks on every call). No metric here ever drops a
    label set, so a cached child stays the one the registry reports."""
    found: M = _child(metric, values)
    return found


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
DEPARTMENT_UP = Gauge(
    "gateway_department_up",
    "1 while the department answers this process's calls, 0 after repeated failures",
    ["department"],
)

# -- latency of a case, from intake ---------------------------------------------------------------
_MINUTE, _HOUR, _DAY = 60.0, 3600.0, 86400.0
DELIVERY_LATENCY = Histogram(
    "gateway_delivery_latency_seconds",
    "From intake until the department acknowledged the case (delivered)",
    ["department"],
    buckets=(0.1, 0.5, 1, 5, 15, _MINUTE, 5 * _MINUTE, 15 * _MINUTE, _HOUR, 6 * _HOUR, _DAY),
)
DECISION_LATENCY = Histogram(
    "gateway_decision_latency_seconds",
    "From intake until the department decided (approved, rejected, not accepted)",
    ["department"],
    buckets=(
        _MINUTE,
        _HOUR,
        6 * _HOUR,
        _DAY,
        3 * _DAY,
        7 * _DAY,
        14 * _DAY,
        30 * _DAY,
        60 * _DAY,
    ),
)

# -- results coming back --------------------------------------------------------------------------
CALLBACKS = Counter(
    "gateway_callbacks_total",
    "Department callbacks by outcome (applied, unchanged, duplicate, refused_<HTTP status>)",
    ["department", "outcome"],
)
POLLS = Counter(
    "gateway_polls_total", "Per-case status polls answered by the department", ["department"]
)
SYNC_CHANGES = Counter(
    "gateway_sync_changes_total",
    "Change-feed items by outcome (applied: changed a case; unchanged; unmatched: not ours)",
    ["department", "outcome"],
)
SYNC_WATERMARK_LAG = Gauge(
    "gateway_sync_watermark_lag_seconds",
    "Seconds between now and the change feed's watermark, after the last sync",
    ["department"],
)
POLL_LAG = Gauge(
    "gateway_poll_lag_seconds",
    "How long the case whose poll is most overdue has waited for it (scrape time)",
    ["department"],
)
RECONCILE_RUNS = Counter(
    "gateway_reconcile_runs_total", "Reconciliation runs by final state", ["department", "state"]
)
RECONCILE_DISCREPANCIES = Counter(
    "gateway_reconcile_discrepancies_total",
    "Discrepancies found by reconciliation, by class",
    ["department", "class"],
)

# -- the shared backlog, read at scrape time (gateway.collector) -------------------------------
BACKLOG = Gauge(
    "gateway_backlog_cases", "Open cases by department and state", ["department", "state"]
)
RETRYING = Gauge(
    "gateway_retrying_jobs",
    "Dispatch jobs waiting to be retried after a failed attempt",
    ["department"],
)
FAILED = Gauge("gateway_failed_cases", "Cases in failed (dead letter) state", ["department"])
OVERDUE = Gauge("gateway_overdue_cases", "Open cases past their promised date", ["department"])
DUE_SOON = Gauge(
    "gateway_due_soon_cases", "Open cases due within the warning window", ["department"]
)
COLLECT_SECONDS = Gauge("gateway_collector_seconds", "Time the last scrape-time backlog query took")
