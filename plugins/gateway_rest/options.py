"""Options of the ``rest`` connector: the ``[options]`` table of a department file.

Every model forbids unknown keys, so a typo is a config error naming the key. Defaults fit the
simulated REST department (:mod:`gateway.simulators.rest_department`). Mappings are dotted
paths: ``"applicant.idNo" = "applicant.id_number"`` puts the envelope's ``applicant.id_number``
at ``applicant.idNo`` in the department's body. Source paths are checked against the envelope's
fields here, at validation time; only ``form.*`` paths can still be missing at run time.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from gateway.mapping import check_source_path

__all__ = [
    "ApiKeyAuth",
    "BasicAuth",
    "BearerAuth",
    "DocumentFields",
    "ListItemFields",
    "ListOptions",
    "PollOptions",
    "PollResponse",
    "RestOptions",
    "SubmitOptions",
    "SubmitResponse",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_target_path(path: str) -> str:
    if not path or any(not p for p in path.split(".")):
        raise ValueError(f"empty segment in department path {path!r}")
    return path


class BearerAuth(_Strict):
    """``Authorization: Bearer <token>``."""

    type: Literal["bearer"]
    token: SecretStr


class ApiKeyAuth(_Strict):
    """A key in a header of the department's choosing."""

    type: Literal["api_key"]
    header: str = "X-Api-Key"
    key: SecretStr


class BasicAuth(_Strict):
    """HTTP basic authentication."""

    type: Literal["basic"]
    username: str
    password: SecretStr


Auth = Annotated[BearerAuth | ApiKeyAuth | BasicAuth, Field(discriminator="type")]


class SubmitResponse(_Strict):
    """Where the case id and status are in the department's answer to a submit."""

    case_id: str = "case.id"
    status: str | None = "case.status"
    detail: str | None = None


class SubmitOptions(_Strict):
    """How an application is delivered."""

    method: Literal["POST", "PUT"] = "POST"
    path: str = "/cases"
    body: dict[str, str] = Field(
        default_factory=dict,
        description="department path = envelope path; empty: the whole envelope as JSON",
    )
    constants: dict[str, Any] = Field(default_factory=dict, description="fixed values merged in")
    materials: Literal["none", "inline_base64"] = "none"
    materials_field: str = "materials"
    response: SubmitResponse = Field(default_factory=SubmitResponse)

    @field_validator("body")
    @classmethod
    def _body_paths(cls, value: dict[str, str]) -> dict[str, str]:
        for target, source in value.items():
            _check_target_path(target)
            check_source_path(source)
        return value


class DocumentFields(_Strict):
    """Field names inside each entry of a result document list."""

    name: str = "name"
    content_type: str = "content_type"
    content_b64: str = "content_b64"
    url: str = "url"


class PollResponse(_Strict):
    case_id: str = "case.id"
    status: str = "case.status"
    detail: str | None = "case.opinion"
    occurred_at: str | None = "case.updated_at"
    documents: str | None = "case.documents"
    supplement_items: str | None = "case.supplement_items"
    document_fields: DocumentFields = Field(default_factory=DocumentFields)


class CallbackFields(PollResponse):
    """Where the fields of a pushed callback body are (defaults fit the simulated department)."""

    case_id: str = "case_id"
    status: str = "status"
    detail: str | None = "opinion"
    occurred_at: str | None = "occurred_at"
    documents: str | None = "documents"
    supplement_items: str | None = "supplement_items"
    event_id: str | None = "event_id"
    idempotency_key: str | None = "idempotency_key"


class WithdrawOptions(_Strict):
    """How a case is withdrawn; ``{case_id}`` in ``path`` is the department's case id. A
    refusal (409, or a status in ``reject_statuses``) is the department's business answer."""

    method: Literal["POST", "PUT", "DELETE"] = "POST"
    path: str = "/cases/{case_id}/withdraw"


class PollOptions(_Strict):
    """How a case's status is read; ``{case_id}`` in ``path`` is the department's case id."""

    method: Literal["GET", "POST"] = "GET"
    path: str = "/cases/{case_id}"
    response: PollResponse = Field(default_factory=PollResponse)


class ListItemFields(_Strict):
    case_id: str = "id"
    status: str = "status"
    idempotency_key: str | None = "idempotency_key"
    updated_at: str | None = "updated_at"


class ListOptions(_Strict):
    """How the department's case list is paged through for reconciliation."""

    path: str = "/cases"
    items: str = "items"
    next: str = "next"
    since_param: str = "since"
    until_param: str = "until"
    cursor_param: str = "cursor"
    limit_param: str = "limit"
    page_size: int = Field(default=100, ge=1, le=10_000)
    max_pages: int = Field(default=10_000, ge=1, description="guard against a cursor loop")
    item: ListItemFields = Field(default_factory=ListItemFields)


class RestOptions(_Strict):
    """The ``[options]`` table of a department whose ``connector = "rest"``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    base_url: str
    timeout_seconds: float = Field(default=10.0, gt=0)
    idempotency_header: str = "Idempotency-Key"
    headers: dict[str, str] = Field(default_factory=dict, description="sent on every request")
    reject_statuses: list[int] = Field(default_factory=lambda: [422])
    reject_reason: str = "error.message"
    reject_status: str = Field(
        default="not_accepted", description="status code a rejection is recorded as"
    )
    health_path: str = ""
    auth: Auth | None = None
    submit: SubmitOptions = Field(default_factory=SubmitOptions)
    poll: PollOptions | None = None
    cases: ListOptions | None = Field(default=None, alias="list")
    callback: CallbackFields = Field(default_factory=CallbackFields)
    withdraw: WithdrawOptions | None = None

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("reject_statuses")
    @classmethod
    def _reject_statuses(cls, value: list[int]) -> list[int]:
        bad = [code for code in value if not 400 <= code <= 499]
        if bad:
            raise ValueError(f"only 4xx codes can be business answers, not {bad}")
        return value
