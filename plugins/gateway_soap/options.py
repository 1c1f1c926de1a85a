"""Options of the ``soap`` connector: the ``[options]`` table of a department file.

Every model forbids unknown keys, so a typo is a config error naming the key. Defaults fit the
simulated SOAP department (:mod:`gateway.simulators.soap_department`). Request mappings are
dotted paths: ``"Request.ApplicantIdNo" = "applicant.id_number"`` puts the envelope's
``applicant.id_number`` at ``Request.ApplicantIdNo`` in the operation's arguments (the first
segment is the operation's parameter name). Response mappings are dotted paths into the
operation's result as zeep returns it (an ``Array`` of spyne appears as ``{"Item": [...]}``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from gateway.connector import FIELD_NAMES
from gateway.mapping import check_source_path

__all__ = [
    "BasicAuth",
    "ChangeItemFields",
    "ChangesOptions",
    "DocumentFields",
    "FaultAction",
    "ListItemFields",
    "ListOptions",
    "Paging",
    "PollOptions",
    "PollResponse",
    "SoapOptions",
    "SubmitOptions",
    "SubmitResponse",
    "UsernameToken",
]

FaultAction = Literal["transient", "permanent", "rejected"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_target_path(path: str) -> str:
    if not path or any(not p for p in path.split(".")):
        raise ValueError(f"empty segment in argument path {path!r}")
    return path


class UsernameToken(_Strict):
    """WS-Security UsernameToken in the SOAP header; ``digest`` sends PasswordDigest
    (SHA-1 of nonce + created + password) instead of the password text."""

    username: str
    password: SecretStr
    digest: bool = False


class BasicAuth(_Strict):
    """HTTP basic authentication on every request (the WSDL fetch included)."""

    username: str
    password: SecretStr


class SubmitResponse(_Strict):
    """Where the case id and status are in the submit operation's result."""

    case_id: str = "CaseId"
    status: str | None = "Status"
    detail: str | None = None


class SubmitOptions(_Strict):
    """How an application is delivered."""

    operation: str = "SubmitApplication"
    arguments: Annotated[dict[str, str], FIELD_NAMES] = Field(
        default_factory=dict, description="argument path = envelope path"
    )
    constants: dict[str, Any] = Field(default_factory=dict, description="fixed argument values")
    json_arguments: Annotated[list[str], FIELD_NAMES] = Field(
        default_factory=list, description="argument paths sent as a JSON string (e.g. the form)"
    )
    idempotency_argument: Annotated[str | None, FIELD_NAMES] = Field(
        default="Request.IdempotencyKey", description="argument path of the idempotency key"
    )
    idempotency_header: str | None = Field(
        default=None,
        description="also send the key as a SOAP header element, in Clark notation "
        "'{namespace}Name'",
    )
    response: Annotated[SubmitResponse, FIELD_NAMES] = Field(default_factory=SubmitResponse)

    @field_validator("arguments")
    @classmethod
    def _argument_paths(cls, value: dict[str, str]) -> dict[str, str]:
        for target, source in value.items():
            _check_target_path(target)
            check_source_path(source)
        return value

    @field_validator("idempotency_header")
    @classmethod
    def _clark(cls, value: str | None) -> str | None:
        if value is not None and not (value.startswith("{") and "}" in value[1:-1]):
            raise ValueError("use Clark notation '{namespace}Name'")
        return value

    @model_validator(mode="after")
    def _key_is_sent(self) -> SubmitOptions:
        if self.idempotency_argument is None and self.idempotency_header is None:
            raise ValueError(
                "the idempotency key must be sent: set idempotency_argument or idempotency_header"
            )
        return self


class DocumentFields(_Strict):
    """Field names inside each result document element."""

    name: str = "Name"
    content_type: str = "ContentType"
    content: str = Field(default="Content", description="base64Binary (or base64 text)")


class PollResponse(_Strict):
    case_id: str = "CaseId"
    status: str = "Status"
    detail: str | None = "Opinion"
    occurred_at: str | None = "UpdatedAt"
    documents: str | None = "Documents.Document"
    supplement_items: str | None = "SupplementItems.string"
    document_fields: DocumentFields = Field(default_factory=DocumentFields)


class PollOptions(_Strict):
    """How a case's status is read."""

    operation: str = "QueryStatus"
    case_id_argument: Annotated[str, FIELD_NAMES] = "CaseId"
    constants: dict[str, Any] = Field(default_factory=dict)
    response: Annotated[PollResponse, FIELD_NAMES] = Field(default_factory=PollResponse)


class ListItemFields(_Strict):
    case_id: str = "CaseId"
    status: str = "Status"
    idempotency_key_path: str | None = "IdempotencyKey"
    updated_at: str | None = "UpdatedAt"


class Paging(_Strict):
    """How a paged operation over a time window is called (``[options.list]`` and
    ``[options.changes]``): the window and page size as arguments, a cursor from the answer's
    ``next`` sent back until it is empty."""

    operation: str = "ListCases"
    since_argument: Annotated[str, FIELD_NAMES] = "Since"
    until_argument: Annotated[str, FIELD_NAMES] = "Until"
    cursor_argument: Annotated[str, FIELD_NAMES] = "Cursor"
    limit_argument: Annotated[str, FIELD_NAMES] = "Limit"
    items: Annotated[str, FIELD_NAMES] = "Items.CaseSummary"
    next: Annotated[str, FIELD_NAMES] = "Next"
    page_size: int = Field(default=100, ge=1, le=10_000)
    max_pages: int = Field(default=10_000, ge=1, description="guard against a cursor loop")


class ListOptions(Paging):
    """How the department's case list is paged through for reconciliation."""

    item: Annotated[ListItemFields, FIELD_NAMES] = Field(default_factory=ListItemFields)


class ChangeItemFields(PollResponse):
    """Where an update's fields are inside one item of the change feed (paths from the item)."""

    idempotency_key: str | None = "IdempotencyKey"


class ChangesOptions(Paging):
    """The department's "changes since" operation: every case whose status changed in the
    window, each item the whole case as the poll operation returns it. With it the daemon asks
    once per ``[sync] changes_interval_seconds`` instead of polling every open case
    (docs/plugins/soap.md, "Change feed")."""

    operation: str = "ListChanges"
    items: Annotated[str, FIELD_NAMES] = "Items.CaseInfo"
    item: Annotated[ChangeItemFields, FIELD_NAMES] = Field(default_factory=ChangeItemFields)


def _default_faults() -> dict[str, FaultAction]:
    return {"Server": "transient", "Client": "permanent"}


class SoapOptions(_Strict):
    """The ``[options]`` table of a department whose ``connector = "soap"``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    wsdl: str = Field(description="http(s) URL, or a file path (relative: to the working dir)")
    endpoint: str = Field(
        description="the service address: required, the WSDL's soap:address is never used "
        "(the WSDL comes from the department; its address would receive whole applications)"
    )
    service: str | None = Field(default=None, description="WSDL service name (default: first)")
    port: str | None = Field(default=None, description="WSDL port name (default: first)")
    schemas: dict[str, str] = Field(
        default_factory=dict,
        description="schema/WSDL URL -> local file; any other URL an import names is refused",
    )
    timeout_seconds: float = Field(default=10.0, gt=0)
    max_response_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_wsdl_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, description="largest WSDL or schema file read"
    )
    wsse: UsernameToken | None = None
    basic_auth: BasicAuth | None = None
    faults: dict[str, FaultAction] = Field(
        default_factory=_default_faults,
        description="fault code (without namespace prefix) -> what it means; the longest "
        "matching dotted prefix wins ('Client.Rejected' before 'Client')",
    )
    fault_default: FaultAction = "permanent"
    reject_status: str = Field(
        default="not_accepted", description="status code a 'rejected' fault is recorded as"
    )
    submit: SubmitOptions = Field(default_factory=SubmitOptions)
    poll: PollOptions | None = None
    cases: ListOptions | None = Field(default=None, alias="list")
    changes: ChangesOptions | None = None

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("faults")
    @classmethod
    def _fault_codes(cls, value: dict[str, FaultAction]) -> dict[str, FaultAction]:
        for code in value:
            if not code or ":" in code or any(not p for p in code.split(".")):
                raise ValueError(f"fault code {code!r}: give it without a namespace prefix")
        return value
