"""The schema. Changing it means a new Alembic revision in gateway/migrations/versions/."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)

from gateway import pii_crypto


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC datetimes on both engines (SQLite keeps no zone, so store naive UTC)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        return value.replace(tzinfo=dt.UTC)


class Sealed(TypeDecorator[Any]):
    """The applicant (JSON) with its ID and phone numbers encrypted by the engine's
    :class:`~gateway.pii_crypto.PiiCipher`, when it has one ([gateway.security] pii_key); every
    reader of the column gets clear values, rows written before the key included."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return pii_crypto.seal_applicant(value, pii_crypto.cipher_of(dialect))

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return pii_crypto.open_applicant(value, pii_crypto.cipher_of(dialect))


# BIGINT autoincrement on PostgreSQL, INTEGER PRIMARY KEY (rowid) on SQLite.
BigId = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

api_clients = Table(
    "api_clients",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("centre", String(32)),
    Column("ops", Boolean, nullable=False, default=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("revoked_at", UTCDateTime),
    # a rotated key works until its grace period ends, then never again (migration 0008)
    Column("expires_at", UTCDateTime),
    Column("replaced_by", String(32)),
)

materials = Table(
    "materials",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("sha256", String(64), nullable=False),
    Column("filename", String(255), nullable=False),
    Column("content_type", String(100), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("client_id", String(32), nullable=False),
    Column("centre", String(32)),
    Column("created_at", UTCDateTime, nullable=False),
    # when an application or supplement first referred to it; an upload nothing refers to
    # expires (housekeeping, migration 0013)
    Column("used_at", UTCDateTime),
    Index("ix_materials_unused", "used_at", "created_at"),
)

applications = Table(
    "applications",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("receipt_number", String(48), nullable=False, unique=True),
    Column("client_id", String(32), nullable=False),
    Column("centre", String(32), nullable=False),
    Column("window", String(32)),
    Column("clerk", String(64)),
    Column("matter_code", String(16), nullable=False),
    Column("matter_name", String(200), nullable=False),
    Column("region", String(9), nullable=False),
    Column("department", String(32), nullable=False),
    Column("status", String(24), nullable=False),
    Column("version", Integer, nullable=False, default=1),
    Column("applicant", Sealed, nullable=False),  # PII: never logged; ID/phone sealed with a key
    Column("form", JSON, nullable=False),
    Column("materials", JSON, nullable=False),
    Column("delivery", JSON, nullable=False),
    Column("idempotency_key", String(200), nullable=False),
    Column("department_case_id", String(128)),
    Column("promised_by", Date),
    # the calendar covered every day of promised_by (migration 0009; NULL: from before it)
    Column("promised_final", Boolean),
    Column("last_error", Text),
    Column("next_poll_at", UTCDateTime),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("decided_at", UTCDateTime),
    # hash of the case's latest event: the head of its chain (store/chain.py, migration 0011)
    Column("events_hash", String(64)),
    Index("ix_applications_department_status", "department", "status"),
    Index("ix_applications_department_case", "department", "department_case_id"),
    Index("ix_applications_updated_at", "updated_at"),
    Index("ix_applications_centre_status", "centre", "status"),
    Index("ix_applications_poll", "department", "next_poll_at"),
    # reconciliation pages through one department in id order (migration 0005)
    Index("ix_applications_department_id", "department", "id"),
    # the ops console's board and department pages: cases decided in a period (migration 0014)
    Index("ix_applications_decided_at", "decided_at"),
    # failed cases, most recently failed first (migration 0016)
    Index("ix_applications_status_updated", "status", "updated_at"),
)

events = Table(
    "events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("application_id", String(32), ForeignKey("applications.id"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("source", String(16), nullable=False),
    Column("actor", String(100), nullable=False),
    Column("from_status", String(24)),
    Column("to_status", String(24), nullable=False),
    Column("detail", JSON, nullable=False),
    # sha256 over the previous event's hash of the case and this event (store/chain.py)
    Column("hash", String(64)),
    Index("ix_events_application", "application_id", "id"),
    # the ops console's deliveries per hour: events of one status since a time (migration 0014)
    Index("ix_events_to_status_at", "to_status", "at"),
)

#: a dispatch job not yet done or dead; written out (not a bound parameter) wherever it is
#: queried, so that the planner can use the partial index ix_dispatch_jobs_unfinished
UNFINISHED_JOB = "state IN ('pending', 'leased')"

dispatch_jobs = Table(
    "dispatch_jobs",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("application_id", String(32), ForeignKey("applications.id"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("department", String(32), nullable=False),
    # pending -> leased -> done | dead; a leased job's next_attempt_at is its lease expiry, so
    # one index finds both due jobs and abandoned leases.
    Column("state", String(12), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("lease_owner", String(64)),
    Column("last_error", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("application_id", "version"),
    Index("ix_dispatch_jobs_due", "department", "state", "next_attempt_at"),
    # unfinished jobs per department (the console's queues): only pending and leased jobs have
    # an entry, so it stays as small as the backlog (migration 0019)
    Index(
        "ix_dispatch_jobs_unfinished",
        "state",
        "department",
        "attempts",
        sqlite_where=text(UNFINISHED_JOB),
        postgresql_where=text(UNFINISHED_JOB),
    ),
)


def _idempotency_columns() -> list[Column[Any]]:
    return [
        Column("client_id", String(32), primary_key=True),
        Column("key", String(200), primary_key=True),
        Column("request_hash", String(64), nullable=False),
        Column("status_code", Integer, nullable=False),
        Column("response", JSON, nullable=False),
        Column("created_at", UTCDateTime, nullable=False),
    ]


def _callback_event_columns() -> list[Column[Any]]:
    return [
        Column("department", String(32), primary_key=True),
        Column("event_id", String(128), primary_key=True),
        Column("application_id", String(32)),
        Column("received_at", UTCDateTime, nullable=False),
    ]


idempotency_records = Table("idempotency_records", metadata, *_idempotency_columns())

callback_events = Table("callback_events", metadata, *_callback_event_columns())

receipt_counters = Table(
    "receipt_counters",
    metadata,
    Column("centre", String(32), primary_key=True),
    Column("day", String(8), primary_key=True),
    Column("last", Integer, nullable=False),
)

# -- the daemon (issue 5): appended; existing tables above are unchanged --------------------------

task_leases = Table(
    "task_leases",
    metadata,
    # one row per periodic task per tick: the daemon that inserts it runs the tick, the others
    # find it taken (INSERT ... ON CONFLICT DO NOTHING); the row doubles as the run record
    Column("task", String(100), primary_key=True),
    Column("tick", UTCDateTime, primary_key=True),
    Column("owner", String(64), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    Column("outcome", String(16)),  # done | failed | skipped | released
    Column("detail", JSON),
    Index("ix_task_leases_task_open", "task", "finished_at"),
)

reconcile_runs = Table(
    "reconcile_runs",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("department", String(32), nullable=False),
    Column("since", UTCDateTime, nullable=False),
    Column("until", UTCDateTime, nullable=False),
    Column("trigger", String(16), nullable=False),  # schedule | cli | api
    Column("owner", String(64), nullable=False),
    Column("state", String(12), nullable=False),  # running | done | failed
    Column("counts", JSON, nullable=False),
    Column("error", Text),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    Index("ix_reconcile_runs_department", "department", "started_at"),
)

reconcile_discrepancies = Table(
    "reconcile_discrepancies",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("run_id", String(32), ForeignKey("reconcile_runs.id"), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("action", String(16), nullable=False),  # applied | flagged | resent | adopted
    Column("application_id", String(32)),
    Column("department_case_id", String(128)),
    Column("idempotency_key", String(200)),
    Column("gateway_status", String(24)),
    Column("department_status", String(64)),
    Column("detail", JSON, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Index("ix_reconcile_discrepancies_run", "run_id", "id"),
)

# housekeeping moves old rows here instead of deleting them
idempotency_records_archive = Table(
    "idempotency_records_archive",
    metadata,
    *_idempotency_columns(),
    Column("archived_at", UTCDateTime, nullable=False),
)

callback_events_archive = Table(
    "callback_events_archive",
    metadata,
    *_callback_event_columns(),
    Column("archived_at", UTCDateTime, nullable=False),
)


# -- the back half of a case: result documents, handing out, supplements, withdrawals --------

result_documents = Table(
    "result_documents",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("application_id", String(32), ForeignKey("applications.id"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("name", String(255), nullable=False),
    Column("content_type", String(100), nullable=False),
    # content in the blob store; a department that only links a document leaves sha256 empty
    Column("sha256", String(64)),
    Column("size", BigInteger),
    Column("url", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Index("ix_result_documents_application", "application_id"),
)

handovers = Table(
    "handovers",
    metadata,
    Column("application_id", String(32), ForeignKey("applications.id"), primary_key=True),
    # the centre that hands the result out: the pickup centre, or the receiving one for mail
    Column("centre", String(32), nullable=False),
    Column("method", String(8), nullable=False),  # pickup | mail, as chosen at intake
    Column("pickup_code", String(16)),
    Column("code_failures", Integer, nullable=False, default=0),
    Column("ready_at", UTCDateTime),
    Column("outcome", String(12)),  # collected | mailed
    Column("handed_out_at", UTCDateTime),
    Column("handed_out_by", String(100)),
    Column("window", String(32)),
    Column("verified_with", String(16)),  # id_number | pickup_code
    Column("delivery_method", String(32)),
    Column("carrier", String(64)),
    Column("tracking_number", String(64)),
    Column("address", Text),
    Column("recipient", String(100)),
    Index("ix_handovers_centre_ready", "centre", "ready_at"),
)

supplements = Table(
    "supplements",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("application_id", String(32), ForeignKey("applications.id"), nullable=False),
    Column("version", Integer, nullable=False),  # the version this supplement starts
    Column("items", JSON, nullable=False),  # what the department asked for
    Column("materials", JSON, nullable=False),  # material ids handed in
    Column("note", Text),
    Column("actor", String(100), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("application_id", "version"),
)

withdrawals = Table(
    "withdrawals",
    metadata,
    Column("application_id", String(32), ForeignKey("applications.id"), primary_key=True),
    Column("requested_at", UTCDateTime, nullable=False),
    Column("actor", String(100), nullable=False),
    Column("reason", Text),
    Column("from_status", String(24), nullable=False),
    # pending (the daemon asks the department) | not_sent | withdrawn (department confirmed)
    # | refused (department said no) | too_late (decided first) | unsupported | error | unknown
    Column("outcome", String(16), nullable=False),
    Column("detail", Text),
    Column("needs_ops", Boolean, nullable=False, default=False),
    Column("resolved_at", UTCDateTime),
    Column("resolved_by", String(100)),
    # asking the department (migration 0006), as for dispatch jobs: while pending,
    # next_attempt_at is when the daemon asks next, or the lease expiry while lease_owner asks
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime),
    Column("lease_owner", String(64)),
    Column("settled_at", UTCDateTime),  # when the outcome stopped being pending
    Index("ix_withdrawals_needs_ops", "needs_ops"),
    Index("ix_withdrawals_due", "outcome", "next_attempt_at"),
)

# Wrong identity checks at hand-out (ID number or pickup code), counted per case and per key
# over a window (migration 0007): the check must not be an oracle to guess ID numbers with.
verification_failures = Table(
    "verification_failures",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("client_id", String(32), nullable=False),
    Column("application_id", String(32), nullable=False),
    Column("check", String(16), nullable=False),  # id_number | pickup_code
    Column("at", UTCDateTime, nullable=False),
    Index("ix_verification_failures_client", "client_id", "at"),
    Index("ix_verification_failures_application", "application_id", "at"),
)

# -- status subscriptions of front-desk systems (migration 0010) --------------------------------

webhook_subscriptions = Table(
    "webhook_subscriptions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("centre", String(32), nullable=False),
    # set: only the cases this key submitted (scope "key"); NULL: every case of the centre
    Column("client_id", String(32)),
    Column("url", Text, nullable=False),
    Column("secret", String(64), nullable=False),  # signs deliveries; shown once at creation
    Column("created_by", String(100), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("disabled_at", UTCDateTime),
    Index("ix_webhook_subscriptions_centre", "centre"),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("subscription_id", String(32), ForeignKey("webhook_subscriptions.id"), nullable=False),
    Column("event_id", BigInteger, nullable=False),  # events.id: what is delivered
    Column("application_id", String(32), nullable=False),
    # pending -> leased -> delivered; a leased delivery's next_attempt_at is its lease expiry
    Column("state", String(12), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("lease_owner", String(64)),
    Column("last_error", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Column("delivered_at", UTCDateTime),
    UniqueConstraint("subscription_id", "event_id"),
    Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
    # order per case: an earlier undelivered event of the same case holds the later ones back
    Index("ix_webhook_deliveries_case", "subscription_id", "application_id", "event_id"),
)

# Append-only record of who read personal data, when, through what (migration 0011). Rows are
# hash-chained like events; chain_heads holds the latest hash (a deleted last row shows there).
audit_log = Table(
    "audit_log",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("channel", String(8), nullable=False),  # api | cli
    Column("actor", String(100), nullable=False),  # key id and name, or the OS user
    Column("centre", String(32)),
    Column("action", String(64), nullable=False),  # e.g. GET /v1/applications/{app_id}
    Column("applications", JSON, nullable=False),  # ids of the cases whose data was shown
    Column("hash", String(64), nullable=False),
)

chain_heads = Table(
    "chain_heads",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("last_id", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

department_breakers = Table(
    "department_breakers",
    metadata,
    # each process's breaker per department, as it last changed (open or closed): what another
    # process (the ops API, `gateway status`) can know of a daemon's breakers
    Column("department", String(32), primary_key=True),
    Column("owner", String(64), primary_key=True),
    Column("open", Boolean, nullable=False),
    Column("failures", Integer, nullable=False),
    Column("open_until", UTCDateTime),
    Column("changed_at", UTCDateTime, nullable=False),
)

sync_watermarks = Table(
    "sync_watermarks",
    metadata,
    # per department: the change feed has been applied up to ``watermark`` (the department's
    # clock, less nothing: the overlap is subtracted when asking), written only after the
    # changes it covers are committed
    Column("department", String(32), primary_key=True),
    Column("watermark", UTCDateTime, nullable=False),
    Column("applied", Integer, nullable=False, default=0),
    Column("synced_at", UTCDateTime, nullable=False),
    # a numbered feed (by sequence): the last change number applied (migration 0018)
    Column("sequence", BigInteger),
)

# -- the ops console's figures, kept by gateway/clocks.py (migration 0016) ---------------------

case_clocks = Table(
    "case_clocks",
    metadata,
    # one row per case: its promised-time clock as its history says (no date in it: the day
    # enters only when the clock is read) and, once decided, how it went
    Column("application_id", String(32), primary_key=True),
    Column("department", String(32), nullable=False),
    Column("open", Boolean, nullable=False),  # status not in FINAL
    Column("promised_by", Date),
    Column("paused_days", Integer, nullable=False),  # working days, finished pauses
    Column("paused_since", Date),  # China day the running pause began
    Column("due_by", Date),  # promised_by + paused_days: the due date while the clock runs
    Column("decided_on", Date),  # China day; only for cases with a promised date
    Column("decision_seconds", Float),
    Column("on_time", Boolean),
    Index("ix_case_clocks_decided", "department", "decided_on", "decision_seconds"),
)


def _open_clocks(paused: bool) -> dict[str, Any]:
    """The partial-index condition of the open clocks that run (or stand still), written as the
    queries of gateway/clocks.py write it so that the planner sees the index fits."""
    since = case_clocks.c.paused_since
    return {
        f"{dialect}_where": (
            case_clocks.c.open.is_(True) & (since.is_not(None) if paused else since.is_(None))
        )
        for dialect in ("sqlite", "postgresql")
    }


# partial indexes of the open clocks only (a few percent of the cases; migration 0019): the
# running ones by due date, and the paused ones (read on the day)
Index(
    "ix_case_clocks_running", case_clocks.c.department, case_clocks.c.due_by, **_open_clocks(False)
)
Index(
    "ix_case_clocks_paused",
    case_clocks.c.department,
    case_clocks.c.promised_by,
    case_clocks.c.paused_days,
    case_clocks.c.paused_since,
    **_open_clocks(True),
)

daily_figures = Table(
    "daily_figures",
    metadata,
    # decisions per department per China day, summed from case_clocks
    Column("department", String(32), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("decided", Integer, nullable=False),
    Column("on_time", Integer, nullable=False),
    # their decision times summed: any change to a day's decisions changes the row (a cache of
    # the weekly percentiles is keyed by it; migration 0019)
    Column("decision_seconds", Float),
    Index("ix_daily_figures_day", "day", "department"),
)

hourly_deliveries = Table(
    "hourly_deliveries",
    metadata,
    # deliveries to each department per clock hour (UTC), the last HOURLY_DAYS days: the
    # overview's sparkline and "delivered today" (gateway/clocks.py, migration 0019)
    Column("department", String(32), primary_key=True),
    Column("hour", UTCDateTime, primary_key=True),
    Column("delivered", Integer, nullable=False),
    Index("ix_hourly_deliveries_hour", "hour"),
)

rollup_watermarks = Table(
    "rollup_watermarks",
    metadata,
    # how far a summary has read applications.updated_at (less its overlap when read again)
    Column("name", String(32), primary_key=True),
    Column("watermark", UTCDateTime, nullable=False),
    Column("refreshed_at", UTCDateTime, nullable=False),
)

# Every key that ever encrypted applicants' ID and phone numbers (its id, never the key), so a
# process started without it, or with another, refuses to start (migration 0017).
pii_keys = Table(
    "pii_keys",
    metadata,
    Column("key_id", String(16), primary_key=True),
    Column("first_used_at", UTCDateTime, nullable=False),
)

console_sessions = Table(
    "console_sessions",
    metadata,
    # ops console sign-ins (migration 0019): the token's and the ops key's sha256, never either
    Column("token_hash", String(64), primary_key=True),
    Column("key_sha256", String(64), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("seen_at", UTCDateTime, nullable=False),
    # a key just created, until the next page shows it: sealed with the session token
    Column("new_key", Text),
    Index("ix_console_sessions_key", "key_sha256"),
)

__all__ = [
    "api_clients",
    "applications",
    "audit_log",
    "callback_events",
    "callback_events_archive",
    "case_clocks",
    "chain_heads",
    "console_sessions",
    "daily_figures",
    "department_breakers",
    "dispatch_jobs",
    "events",
    "handovers",
    "hourly_deliveries",
    "idempotency_records",
    "idempotency_records_archive",
    "materials",
    "metadata",
    "pii_keys",
    "receipt_counters",
    "reconcile_discrepancies",
    "reconcile_runs",
    "result_documents",
    "rollup_watermarks",
    "supplements",
    "sync_watermarks",
    "task_leases",
    "verification_failures",
    "webhook_deliveries",
    "webhook_subscriptions",
    "withdrawals",
]
