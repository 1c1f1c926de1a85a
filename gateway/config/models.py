"""Pydantic models of the configuration files. Every model forbids unknown keys: a typo is an
error naming the key, never a silent default."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Literal

from jsonschema import Draft202012Validator
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from gateway.clock import ZoneName
from gateway.connector import MAX_ANSWER_BYTES
from gateway.pii_crypto import PiiCipher, parse_key
from gateway.states import State

REGION_CODE = r"^\d{6}(\d{3})?$"
MATTER_CODE = r"^[A-Z]{2,4}\d{8}$"
DEPARTMENT_CODE = r"^[a-z][a-z0-9_]{1,31}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Region(_Strict):
    code: str = Field(pattern=REGION_CODE)
    name: str
    kind: Literal["city", "district", "township"]
    parent: str | None = None


Language = Literal["zh-CN", "en"]


class Centre(_Strict):
    code: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$")
    name: str
    region: str = Field(pattern=REGION_CODE)
    language: Language | None = Field(
        default=None, description="language of API errors for this centre's keys (default: api)"
    )


class StaticKey(_Strict):
    """An API key given in config (as a sha256 hash, or a ``${ENV}`` reference to the key)."""

    name: str
    centre: str | None = None
    ops: bool = False
    key_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    key: SecretStr | None = None


class QuotaSettings(_Strict):
    """``[gateway.api.quotas]``: per key and per API process (gateway/api/quotas.py)."""

    centre_intake_per_second: float = Field(default=200.0, gt=0)
    centre_uploads_per_second: float = Field(default=20.0, gt=0)
    ops_intake_per_second: float = Field(default=20.0, gt=0)
    ops_uploads_per_second: float = Field(default=5.0, gt=0)
    burst_seconds: float = Field(default=5.0, gt=0, description="a full bucket lasts this long")
    upload_bytes_per_day: int = Field(default=2 * 1024**3, gt=0, description="per key, 24 h")
    unused_upload_hours: float = Field(
        default=72.0, gt=0, description="an upload no application refers to expires after this"
    )


class ApiSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    public_url: str | None = None
    max_body_bytes: int = Field(default=1_048_576, gt=0)
    material_max_bytes: int = Field(default=10_485_760, gt=0)
    material_types: list[str] = Field(
        default_factory=lambda: ["application/pdf", "image/jpeg", "image/png"]
    )
    page_size: int = Field(default=50, ge=1, le=500)
    #: the language of error messages for centre keys that send no Accept-Language
    language: Language = "zh-CN"
    access_log: bool = Field(default=True, description="one INFO line per request")
    #: who may read /openapi.json, /docs and /redoc: public | key (any valid key) | off
    openapi: Literal["public", "key", "off"] = "public"
    #: who may read /metrics: public | ops (an ops key) | off
    metrics: Literal["public", "ops", "off"] = "public"
    quotas: QuotaSettings = Field(default_factory=QuotaSettings)


class DispatchSettings(_Strict):
    batch_size: int = Field(default=64, ge=1, le=1000)
    lease_seconds: float = Field(default=60.0, gt=0)
    sweep_interval_seconds: float = Field(default=0.5, gt=0)


class WebhookSettings(_Strict):
    """``[gateway.webhooks]``: status subscriptions of front-desk systems. A delivery is retried
    with backoff (base_seconds doubling up to max_seconds, jittered) until the receiver
    answers 2xx; there is no give-up (ops see what is pending at /v1/ops/webhooks)."""

    base_seconds: float = Field(default=1.0, gt=0)
    max_seconds: float = Field(default=300.0, gt=0)
    jitter: float = Field(default=0.25, ge=0, le=1)
    timeout_seconds: float = Field(default=10.0, gt=0, description="per POST")
    batch_size: int = Field(default=50, ge=1, le=1000, description="deliveries claimed at once")
    lease_seconds: float = Field(default=60.0, gt=0)
    max_subscriptions_per_centre: int = Field(default=10, ge=1, le=1000)
    #: hosts a subscription may point at ("frontdesk.example", or "*.example" for its
    #: subdomains); empty: any. Set it where the gateway can reach hosts a centre must not
    #: make it call (an internal network).
    allowed_hosts: list[str] = Field(default_factory=list)


class PluginSettings(_Strict):
    load: list[str] = Field(default_factory=list, description="only these plugins (empty: all)")
    block: list[str] = Field(default_factory=list, description="never these plugins")
    enable: list[str] = Field(
        default_factory=list,
        description="opt-in plugins to load too (entry-point group gateway.opt_in, e.g. examples)",
    )
    trace: bool = False


class ScheduleSettings(_Strict):
    """``[gateway.schedule]``: the daemon's periodic tasks. Dispatch sweeps follow
    ``[gateway.dispatch]``, status polls each department's ``poll_interval_seconds`` and
    reconciliation each department's ``reconcile_cron``."""

    results_seconds: float = Field(default=2.0, gt=0, description="result pulls")
    deadlines_seconds: float = Field(default=900.0, gt=0, description="deadline watch")
    figures_seconds: float = Field(
        default=30.0, gt=0, description="case clocks and daily figures brought up to date"
    )
    due_soon_days: int = Field(default=3, ge=0, le=60, description="working days")
    refetch_seconds: float = Field(
        default=300.0, gt=0, description="re-fetch results of approved cases without documents"
    )
    housekeeping_seconds: float = Field(default=3600.0, gt=0)
    archive_after_days: int = Field(default=90, ge=1, description="idempotency records")
    lease_retention_days: int = Field(default=7, ge=1, description="task lease rows")
    misfire_grace_seconds: float = Field(default=60.0, gt=0)
    reconcile_overlap_seconds: float = Field(default=3600.0, ge=0)
    timezone: ZoneName = Field(default="Asia/Shanghai", description="for reconcile_cron")


class SecuritySettings(_Strict):
    """``[gateway.security]``: field-level encryption of applicants' ID and phone numbers
    (docs/security.md, "Personal data at rest"). Keys are ``${ENV}`` references to 32 random
    bytes (base64 or hex); without ``pii_key`` they are stored in clear."""

    pii_key: SecretStr | None = Field(
        default=None, description="encrypts ID and phone numbers written from now on"
    )
    pii_previous_keys: list[SecretStr] = Field(
        default_factory=list, max_length=8, description="still decrypt, never encrypt (rotation)"
    )

    @field_validator("pii_key", "pii_previous_keys")
    @classmethod
    def _keys(cls, value: Any) -> Any:
        for key in value if isinstance(value, list) else [value]:
            if key is not None:
                parse_key(key.get_secret_value())
        return value

    def cipher(self) -> PiiCipher | None:
        if self.pii_key is None:
            return None
        return PiiCipher(
            parse_key(self.pii_key.get_secret_value()),
            [parse_key(k.get_secret_value()) for k in self.pii_previous_keys],
        )


class DatabaseSettings(_Strict):
    """``[gateway.database]``: the connection pool of each process (PostgreSQL; SQLite always
    uses one connection). Size it so that every process's ``pool_size + max_overflow`` summed
    over API nodes and daemons stays under the server's ``max_connections`` (docs/deploy.md)."""

    pool_size: int = Field(default=10, ge=1, le=500)
    max_overflow: int = Field(default=10, ge=0, le=500)
    pool_timeout_seconds: float = Field(
        default=10.0, gt=0, description="a request waits this long for a free connection"
    )
    recycle_seconds: float = Field(default=1800.0, gt=0, description="reconnect after this age")
    statement_timeout_seconds: float = Field(default=15.0, gt=0)
    connect_timeout_seconds: float = Field(default=5.0, gt=0)

    def engine_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`gateway.store.db.create_engine`."""
        return {
            "pool_size": self.pool_size,
            "max_overflow": self.max_overflow,
            "pool_timeout": self.pool_timeout_seconds,
            "recycle_seconds": self.recycle_seconds,
            "statement_timeout": self.statement_timeout_seconds,
            "connect_timeout": self.connect_timeout_seconds,
        }


class HttpSettings(_Strict):
    """``[gateway.http]``: the outbound client every connector shares (per process)."""

    max_connections: int = Field(default=200, ge=1, le=10_000)
    timeout_seconds: float = Field(
        default=30.0, gt=0, description="per request; a department's timeout_seconds is tighter"
    )


class GatewaySettings(_Strict):
    name: str = "OneWindow Gateway"
    city: str = Field(pattern=REGION_CODE)
    database_url: str = "sqlite+aiosqlite:///var/gateway.db"
    data_dir: Path = Path("var")
    #: under this many MiB free in data_dir: a WARNING and gateway_data_dir_low = 1
    data_dir_min_free_mb: int = Field(default=1024, ge=0)
    api: ApiSettings = Field(default_factory=ApiSettings)
    dispatch: DispatchSettings = Field(default_factory=DispatchSettings)
    webhooks: WebhookSettings = Field(default_factory=WebhookSettings)
    plugins: PluginSettings = Field(default_factory=PluginSettings)
    regions: list[Region] = Field(default_factory=list)
    centres: list[Centre] = Field(default_factory=list)
    api_keys: list[StaticKey] = Field(default_factory=list)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    #: the time zone the CLI shows times in (stored times are UTC)
    timezone: ZoneName = "Asia/Shanghai"


class RetryPolicy(_Strict):
    """One retry policy: short in-call retries, then persisted backoff across calls."""

    max_attempts: int = Field(default=8, ge=1, description="calls before the case is failed")
    base_seconds: float = Field(default=1.0, gt=0)
    max_seconds: float = Field(default=600.0, gt=0)
    jitter: float = Field(default=0.25, ge=0, le=1)
    in_call_attempts: int = Field(default=2, ge=1, le=5)
    in_call_wait_seconds: float = Field(default=0.05, ge=0)


class BreakerSettings(_Strict):
    """``[breaker]`` of a department file: after ``threshold`` transient failures in a row
    (timeouts, refused connections, 5xx) the gateway stops calling the department for
    ``cooldown_seconds``, then lets one probe call through; a success closes it again."""

    threshold: int = Field(default=5, ge=1, le=1000, description="failures in a row")
    cooldown_seconds: float = Field(default=15.0, gt=0, le=3600)


class SyncSettings(_Strict):
    """A department's ``[sync]`` table: how the daemon learns of status changes it is not told
    about (docs/ops.md, "Status sync"). With a change feed (the connector offers one) the
    daemon asks "what changed since the watermark" every ``changes_interval_seconds``, going
    back one interval before it, and once per ``changes_overlap_seconds`` back that overlap
    before the last such tick's watermark, so clock skew and changes committed late are still
    seen; per-case polls then run only every ``feed_poll_seconds`` while the feed
    keeps up (a feed that has not synced for three intervals hands its cases back to adaptive
    polling: quiet cases every ``poll_ceiling_seconds`` at most)."""

    changes_interval_seconds: float = Field(default=30.0, gt=0)
    changes_overlap_seconds: float = Field(default=120.0, ge=0, le=86_400)
    poll_ceiling_seconds: float = Field(default=3600.0, gt=0)
    feed_poll_seconds: float = Field(default=7 * 86_400.0, gt=0)


class DepartmentConfig(_Strict):
    code: str = Field(pattern=DEPARTMENT_CODE)
    name: str
    connector: str
    enabled: bool = True
    options: dict[str, Any] = Field(default_factory=dict)
    status_map: dict[str, State] = Field(default_factory=dict)
    poll_interval_seconds: float | None = Field(default=None, gt=0)
    sync: SyncSettings = Field(default_factory=SyncSettings)
    callback_secrets: list[SecretStr] = Field(default_factory=list, max_length=2)
    concurrency: int = Field(default=8, ge=1, le=1024)
    rate_limit_per_second: float | None = Field(default=None, gt=0)
    timeout_seconds: float = Field(default=30.0, gt=0)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    #: an answer (HTTP body after decompression) larger than this is refused: PermanentError
    max_answer_bytes: int = Field(default=MAX_ANSWER_BYTES, ge=1024, le=1024 * 1024 * 1024)
    reconcile_cron: str = "0 2 * * *"
    simulator: dict[str, Any] | None = None
    #: what reconciliation does with a case the department lost: re-send it with the same
    #: idempotency key, or only flag it for ops
    reconcile_missing: Literal["resend", "flag"] = "resend"

    def map_status(self, raw: str) -> State | None:
        """The gateway state for a department status code; gateway state names map to
        themselves unless the map says otherwise. None if the code is unknown."""
        if raw in self.status_map:
            return self.status_map[raw]
        try:
            return State(raw)
        except ValueError:
            return None


class Matter(_Strict):
    code: str = Field(pattern=MATTER_CODE)
    name: str
    department: str
    regions: list[str]
    promised_days: int = Field(ge=1, le=365)
    materials: list[str] = Field(default_factory=list)
    form_schema: dict[str, Any] | None = None
    pickup_anywhere: bool = True

    @functools.cached_property
    def form_validator(self) -> Draft202012Validator | None:
        """The compiled JSON Schema of the form (built once per loaded catalog)."""
        return Draft202012Validator(self.form_schema) if self.form_schema else None

    @field_validator("regions")
    @classmethod
    def _regions(cls, value: list[str]) -> list[str]:
        bad = [r for r in value if not re.fullmatch(REGION_CODE, r)]
        if bad:
            raise ValueError(f"not 6- or 9-digit division codes: {', '.join(bad)}")
        if not value:
            raise ValueError("a matter needs at least one region")
        return value
