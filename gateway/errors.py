"""Errors raised across the gateway.

The hierarchy::

    GatewayError
    ├── RequestProblem         a request the client must fix (rendered as problem+json by the API)
    ├── ConfigError            configuration is invalid (carries every problem found)
    ├── SchemaOutdated         the database schema needs ``gateway migrate`` (started without it)
    ├── PluginError            a plugin failed to import or register (names the plugin)
    ├── ConnectorError         raised by a connector while talking to a department
    │   ├── TransientError     try again later; may carry ``retry_after`` seconds
    │   ├── PermanentError     retrying cannot help; the case goes to ``failed`` for an operator
    │   │   ├── AnswerTooLarge an answer over the department's ``max_answer_bytes``
    │   │   └── CaseNotFound   ``poll``: the department holds no such case
    │   └── DepartmentRejected a business answer from the department; becomes a case status
    └── InfrastructureError    the gateway's own infrastructure failed; nothing is wrong with the
        │                      request, the same request later will do (API: 503 + Retry-After)
        ├── DatabaseUnavailable  unreachable, connection lost, too slow (statement/pool timeout)
        ├── StorageFull          ``data_dir`` has no space left (API: 507)
        ├── StorageUnavailable   ``data_dir`` cannot be written (read-only, permissions, I/O error)
        └── Overloaded           a bounded queue is full: load is shed instead of memory growing

Connectors translate library errors at their boundary (``raise TransientError(...) from exc``).
The department link (:mod:`gateway.departments`) maps what is left, in one place: a deterministic
local error (``ValueError``, ``TypeError``, ``RecursionError``: an envelope that cannot be
serialised) is permanent; anything else is logged with the plugin's name and treated as transient.
The store translates database and disk errors the same way (:mod:`gateway.store.db`,
:mod:`gateway.blobs`): an ``InfrastructureError`` is logged once per outage
(:mod:`gateway.outage`), never once per request, and the daemon pauses while it lasts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


class GatewayError(Exception):
    """Base class of every error the gateway raises on purpose."""


@dataclass(frozen=True)
class FieldError:
    """One field the client must fix: ``code`` is stable (docs/front-desk-api.md lists them),
    ``params`` fill the message in the client's language."""

    field: str
    code: str
    params: dict[str, Any] = dataclasses.field(default_factory=dict)


class RequestProblem(GatewayError):
    """A request the client must fix, or cannot have: the API answers it as problem+json.

    ``code`` is the stable machine code (it also names the problem's ``type`` page); ``title``
    and ``detail`` are the English text, ``params`` fill the other languages' messages (see
    :mod:`gateway.api.messages`). ``field`` names the one request field at fault; ``errors``
    lists several (one per failing field). ``extra`` members are added to the problem body.
    """

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        field: str | None = None,
        *,
        code: str | None = None,
        params: dict[str, Any] | None = None,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        self.status, self.title, self.detail, self.field = status, title, detail, field
        self.code = code or "_".join(title.lower().replace("-", " ").split())
        self.params = params or {}
        self.errors = errors or []
        self.headers = headers
        self.extra = extra
        super().__init__(detail)


def unknown_application(app_id: str) -> RequestProblem:
    """The one answer for a case that does not exist or that the key may not see."""
    return RequestProblem(
        404,
        "Unknown application",
        f"no application '{app_id}' visible to this key",
        "id",
        params={"id": app_id},
    )


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in one configuration file."""

    file: str
    key: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        key = f" [{self.key}]" if self.key else ""
        return f"{where}{key}: {self.message}"


class ConfigError(GatewayError):
    """Configuration is invalid; ``problems`` lists every problem found, not just the first."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class SchemaOutdated(GatewayError):
    """The database schema is older than the code (or empty) and this process may not migrate
    it (``--no-migrate``: with several nodes, one ``gateway migrate`` runs before the restart)."""


class PluginError(GatewayError):
    """A plugin could not be imported or registered."""

    def __init__(self, plugin: str, message: str) -> None:
        self.plugin = plugin
        super().__init__(f'Error in plugin "{plugin}": {message}')


#: The name the front-desk path has long raised problems by: the same class.
IntakeProblem = RequestProblem


class ConnectorError(GatewayError):
    """Base class of errors a connector raises about a department call."""


class TransientError(ConnectorError):
    """The call may succeed later (timeout, 5xx, 429, connection refused)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class PermanentError(ConnectorError):
    """Retrying cannot help (bad mapping, 4xx the department will never accept)."""


class AnswerTooLarge(PermanentError):
    """A department's answer was larger than the department's ``max_answer_bytes`` (counted
    after decompression, so a small gzip bomb is refused too)."""

    def __init__(self, department: str, limit: int) -> None:
        self.department = department
        self.limit = limit
        super().__init__(
            f"{department}: answer larger than {limit} bytes (max_answer_bytes in the "
            "department file; raise it if such answers are legitimate)"
        )


class CaseNotFound(PermanentError):
    """``poll`` asked about a case the department does not hold (its own "no such case"
    answer). Retrying cannot help, and no update may be made up for it."""

    def __init__(self, department: str, case_id: str, detail: str = "") -> None:
        self.department = department
        self.case_id = case_id
        super().__init__(
            f"{department}: no such case {case_id}" + (f" ({detail})" if detail else "")
        )


class DepartmentRejected(ConnectorError):
    """The department gave a business answer instead of a case (e.g. 不予受理).

    ``status`` is the department's own status code, mapped through the department's
    status map like any other; ``reason`` is shown to the front desk.
    """

    def __init__(self, reason: str, *, status: str = "not_accepted") -> None:
        self.reason = reason
        self.status = status
        super().__init__(reason)


class InfrastructureError(GatewayError):
    """The database, the disk or a queue of the gateway itself is failing; retry later.

    ``retry_after`` is the seconds a client should wait; ``status`` the HTTP status it is
    answered with (503 unless the class says otherwise).
    """

    status = 503
    component = "infrastructure"

    def __init__(self, message: str, *, retry_after: float = 5.0) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class DatabaseUnavailable(InfrastructureError):
    """The database cannot be reached, lost the connection, or did not answer in time.

    ``connection_lost``: an established connection died mid-work (server restart, failover,
    ``pg_terminate_backend``): a fresh connection may well work at once.
    """

    component = "database"

    def __init__(
        self, message: str, *, retry_after: float = 5.0, connection_lost: bool = False
    ) -> None:
        self.connection_lost = connection_lost
        super().__init__(message, retry_after=retry_after)


class StorageFull(InfrastructureError):
    """``data_dir`` has no space left (ENOSPC, EDQUOT, or SQLite's "database or disk is full")."""

    status = 507
    component = "storage"


class StorageUnavailable(InfrastructureError):
    """``data_dir`` cannot be written: read-only, permissions, an I/O error."""

    component = "storage"


class Overloaded(InfrastructureError):
    """A bounded queue is full; the caller is asked to come back instead of queueing forever."""

    component = "intake"


__all__ = [
    "AnswerTooLarge",
    "CaseNotFound",
    "ConfigError",
    "ConfigProblem",
    "ConnectorError",
    "DatabaseUnavailable",
    "DepartmentRejected",
    "FieldError",
    "GatewayError",
    "InfrastructureError",
    "IntakeProblem",
    "Overloaded",
    "PermanentError",
    "PluginError",
    "RequestProblem",
    "StorageFull",
    "StorageUnavailable",
    "TransientError",
    "unknown_application",
]
