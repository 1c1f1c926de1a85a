"""The connector contract: what a department plugin implements.

A connector is shaped like an httpx transport: pydantic models in, pydantic models out, one
instance per department, given everything it needs in a :class:`ConnectorContext` (its validated
options, the department's config, a shared ``httpx.AsyncClient``, the material store). Connectors
never touch the database; the dispatcher and the daemon do that with what they return.

Department status codes travel raw (``Receipt.status``, ``CaseUpdate.status``); the core maps them
through the department's ``status_map``, whose defaults accept the gateway's own state names.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field

from gateway.text import CleanStr


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MaterialRef(_Model):
    """A document the applicant handed in, stored content-addressed by the gateway."""

    id: str
    sha256: str
    filename: str
    content_type: str
    size: int


class Applicant(_Model):
    """Who applies. ``id_number`` and ``phone`` are PII: never log them unmasked."""

    kind: Literal["person", "organization"] = "person"
    name: CleanStr = Field(min_length=1, max_length=200)
    id_type: CleanStr = Field(default="resident_id", max_length=32)
    id_number: CleanStr = Field(min_length=1, max_length=64)
    phone: CleanStr | None = Field(default=None, max_length=32)


class Envelope(_Model):
    """One delivery of one version of an application to its department."""

    application_id: str
    idempotency_key: str = Field(
        description="Stable for this application and version; sent on every attempt."
    )
    version: int = 1
    department: str
    matter_code: str
    matter_name: str
    region: str
    receipt_number: str
    centre: str
    applicant: Applicant
    form: dict[str, Any] = Field(default_factory=dict)
    materials: list[MaterialRef] = Field(default_factory=list)
    submitted_at: dt.datetime


class ResultDocument(_Model):
    """A document the department issued (licence, certificate, decision letter)."""

    name: str
    content_type: str = "application/pdf"
    content: bytes | None = None
    url: str | None = None


class Receipt(_Model):
    """The department's acknowledgement of a submission."""

    case_id: str
    status: str | None = None  # department status code, if it says one
    detail: str | None = None
    #: the department already held this case (a re-send after a crash or a lost answer);
    #: the gateway records it on the case and counts it
    resent: bool = False


class CaseUpdate(_Model):
    """A status the department reports for one case (from a poll, callback or result file).

    ``case_id`` is the department's case id; where the department's message names the
    gateway's ``idempotency_key`` instead (or too), the core matches on that.
    ``ref`` is the connector's own handle for :meth:`Connector.pull_updates` (e.g. a file name).
    """

    case_id: str
    idempotency_key: str | None = None
    ref: str | None = None
    status: str
    detail: str | None = None
    occurred_at: dt.datetime | None = None
    event_id: str | None = None
    documents: list[ResultDocument] = Field(default_factory=list)
    supplement_items: list[str] = Field(default_factory=list)
    #: the change's number in the department's change sequence (:meth:`Connector.changes_after`)
    sequence: int | None = None


class CaseSummary(_Model):
    """One line of a department's case list, for reconciliation."""

    case_id: str
    idempotency_key: str | None = None
    status: str
    updated_at: dt.datetime | None = None


class Health(_Model):
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class NotSecret:
    """Declares, in a connector's ``Options`` model, an option whose value is no credential
    although its name may look like one: ``body: Annotated[dict[str, str], FIELD_NAMES]``.
    The config's literal-secret check (a key named like ``token``, ``password``, ``*_key``
    must be a ``${ENV}`` reference) skips exactly such options and everything below them, so
    a column called ``password`` or ``id_key`` can be named; every other key is checked."""

    what: str


#: the option holds names of fields: a mapping's department fields and gateway paths, a
#: result's column names
FIELD_NAMES = NotSecret("names of fields")
#: the option holds a public key (a server's SSH host key)
PUBLIC_KEY = NotSecret("a public key")


OptionsT = TypeVar("OptionsT", bound=BaseModel)
#: default cap on one answer from a department (decompressed bytes; ``max_answer_bytes``)
MAX_ANSWER_BYTES = 8 * 1024 * 1024
UpdateOutcome = Literal["applied", "duplicate", "unmatched"]


class Ack(NamedTuple):
    """One pulled update to settle (:meth:`Connector.ack_updates`): what became of it and,
    for ``unmatched``, why."""

    update: CaseUpdate
    outcome: UpdateOutcome
    reason: str = ""


MaterialReader = Callable[[MaterialRef], Awaitable[bytes]]
PayloadMapper = Callable[[Envelope], "dict[str, Any] | None"]


class ConnectorContext:
    """What the gateway hands a connector when it builds one for a department."""

    def __init__(
        self,
        *,
        department: str,
        options: BaseModel,
        http: httpx.AsyncClient,
        read_material: MaterialReader,
        map_payload: PayloadMapper | None = None,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self.department = department
        self.options = options
        #: answers read through it are capped at ``max_answer_bytes`` (decompressed bytes)
        self.http = http
        self.read_material = read_material
        #: the department's cap on one answer: a connector reading answers other than through
        #: ``http`` (files, a queue) reads at most this many bytes of one
        self.max_answer_bytes = max_answer_bytes
        # The ``map_payload`` hook; connectors that build payloads ask it before their own mapping.
        self.map_payload: PayloadMapper = map_payload or (lambda envelope: None)


class Connector:
    """Base class of department connectors.

    Subclasses set ``kind`` (the ``connector = "..."`` value in a department file) and ``Options``
    (a pydantic model with ``extra="forbid"``, validated from the department's ``[options]``).
    Raise :mod:`gateway.errors` classes; anything else is treated as transient and logged.
    """

    kind: ClassVar[str]
    Options: ClassVar[type[BaseModel]]
    #: pages the last ``list_cases`` read (reconciliation reports it); None: not counted
    last_listing_pages: int | None = None

    def __init__(self, context: ConnectorContext) -> None:
        self.context = context

    def options_as(self, cls: type[OptionsT]) -> OptionsT:
        """The department's validated options, typed as this connector's ``Options`` model."""
        options = self.context.options
        if isinstance(options, cls):
            return options
        return cls.model_validate(options.model_dump(by_alias=True))

    async def submit(self, envelope: Envelope) -> Receipt:
        """Deliver one application version. MUST be idempotent on ``envelope.idempotency_key``:
        a second call with the same key returns the same case, never creates another."""
        raise NotImplementedError

    async def poll(self, receipt: Receipt) -> CaseUpdate | None:
        """Current status of a case, or None if the department cannot be polled.

        A case the department does not hold raises :class:`~gateway.errors.CaseNotFound`:
        never an update (there is nothing to report), never ``TransientError`` (asking again
        cannot find it)."""
        return None

    def list_cases(self, since: dt.datetime, until: dt.datetime) -> AsyncIterator[CaseSummary]:
        """Every case the department has that changed in ``[since, until)``."""
        raise NotImplementedError(f"{self.kind} connector cannot list cases")

    def offers_changes(self) -> bool:
        """Whether :meth:`changes` works for this department (a connector may offer a change
        feed only when the department's configuration names one). The daemon then syncs the
        department from the feed and polls single cases only as a safety net."""
        return False

    def changes(self, since: dt.datetime, until: dt.datetime) -> AsyncIterator[CaseUpdate]:
        """The department's change feed: an update for every case whose status changed in
        ``[since, until)`` (its current status, detail and documents, as :meth:`poll` gives
        them), paged however the department pages. The daemon asks once per interval from a
        durable watermark less an overlap, so the same change may come more than once (the
        state machine makes a repeat a no-op) and cases the gateway does not hold are skipped.
        """
        raise NotImplementedError(f"{self.kind} connector has no change feed")

    def changes_by_sequence(self) -> bool:
        """Whether the department numbers its changes: the daemon then reads the feed with
        :meth:`changes_after` from the last sequence it applied (no overlap window: a number
        does not skew or commit late), not with :meth:`changes` by time."""
        return False

    def changes_after(self, sequence: int) -> AsyncIterator[CaseUpdate]:
        """The department's numbered change feed: every change numbered above ``sequence``, in
        order, each update carrying its ``sequence`` (the case's current status, as
        :meth:`poll` gives it). The daemon moves its watermark to the highest sequence of a
        page in the same transaction that applies the page."""
        raise NotImplementedError(f"{self.kind} connector has no numbered change feed")

    def parse_callback(self, payload: Any) -> CaseUpdate:
        """Turn a department's pushed callback body (already authenticated by the gateway's
        signature check) into an update. Raise ``ValueError`` naming what is missing if the
        body is not usable; departments that do not push need not implement this."""
        raise NotImplementedError(f"{self.kind} connector does not take callbacks")

    async def pull_updates(self, limit: int) -> list[CaseUpdate]:
        """Updates the department left where the gateway reads them (result files, a queue).

        The daemon calls this on a schedule, applies each update through the state machine,
        commits, and only then calls :meth:`ack_updates` (whose default calls
        :meth:`ack_update` for each). An update not yet acknowledged must be
        returned again by a later call (a crash between apply and ack re-applies it, which the
        state machine makes a no-op). Departments without such a channel return [].
        """
        return []

    async def ack_update(
        self, update: CaseUpdate, outcome: UpdateOutcome, reason: str = ""
    ) -> None:
        """Settle a pulled update: ``applied`` or ``duplicate`` (archive it) or ``unmatched``
        (no such case: quarantine it with ``reason``)."""

    async def ack_updates(self, acks: Sequence[Ack]) -> None:
        """Settle the pulled updates of one batch, all committed by the gateway (optional).

        The default settles each with :meth:`ack_update`, in order. A connector that can settle
        many at once more cheaply (a file share: one trip for a page's files instead of one or
        two per file) overrides it; the daemon then makes one call per batch (of at most 100)
        under the department's timeout, where it made one call per update. The contract is
        :meth:`ack_update`'s for each: an update this call did not settle (it raised part way,
        or timed out) must come back with a later :meth:`pull_updates`, and the daemon applies
        it again (a no-op) and settles it then; an update settled twice must do no harm.
        Connectors that only implement :meth:`ack_update` keep working unchanged."""
        for ack in acks:
            await self.ack_update(ack.update, ack.outcome, ack.reason)

    async def withdraw(self, receipt: Receipt) -> None:
        """Withdraw a case at the applicant's request, before the department decides (optional).

        Return once the department has withdrawn it (a second call for a withdrawn case must
        succeed too). Raise ``DepartmentRejected`` if the department refuses (it may have
        decided already), ``TransientError``/``PermanentError`` if it cannot be reached. A
        connector that does not implement this leaves the default: the gateway then records the
        withdrawal and flags it for ops to settle with the department by hand.
        """
        raise NotImplementedError(f"{self.kind} connector cannot withdraw cases")

    async def health(self) -> Health:
        return Health(ok=True)

    async def aclose(self) -> None:
        """Release what the connector holds (the shared http client is not its to close)."""


__all__ = [
    "FIELD_NAMES",
    "MAX_ANSWER_BYTES",
    "PUBLIC_KEY",
    "Ack",
    "Applicant",
    "CaseSummary",
    "CaseUpdate",
    "Connector",
    "ConnectorContext",
    "Envelope",
    "Health",
    "MaterialReader",
    "MaterialRef",
    "NotSecret",
    "PayloadMapper",
    "Receipt",
    "ResultDocument",
    "UpdateOutcome",
]
