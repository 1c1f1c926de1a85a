"""Options of the ``rest`` connector: the ``[options]`` table of a department file.

Every model forbids unknown keys, so a typo is a config error naming the key. Defaults fit the
simulated REST department (:mod:`gateway.simulators.rest_department`). Mappings are dotted
paths: ``"applicant.idNo" = "applicant.id_number"`` puts the envelope's ``applicant.id_number``
at ``applicant.idNo`` in the department's body. Source paths are checked against the envelope's
fields here, at validation time; only ``form.*`` paths can still be missing at run time.
"""

from __future__ import annotations

import codecs
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from gateway.connector import FIELD_NAMES
from gateway.mapping import check_source_path

__all__ = [
    "ApiKeyAuth",
    "BasicAuth",
    "BearerAuth",
    "ChangeItemFields",
    "ChangesOptions",
    "DocumentFields",
    "EnvelopeOptions",
    "InlineDocument",
    "ListItemFields",
    "ListOptions",
    "Paging",
    "PollOptions",
    "PollResponse",
    "RestOptions",
    "SigningOptions",
    "SubmitOptions",
    "SubmitResponse",
    "TokenAuth",
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


class TokenAuth(_Strict):
    """A token from the department's token endpoint (app id + app secret), cached until it
    expires (less ``refresh_margin_seconds``) and fetched again when a call answers 401."""

    type: Literal["token"]
    path: str = Field(default="/auth/token", description="relative to base_url, or a full URL")
    method: Literal["POST", "GET"] = "POST"
    encoding: Literal["json", "form"] = "json"
    app_id: str
    app_secret: SecretStr
    app_id_field: Annotated[str, FIELD_NAMES] = "appId"
    app_secret_field: Annotated[str, FIELD_NAMES] = "appSecret"
    token_path: Annotated[str, FIELD_NAMES] = "data.access_token"
    expires_in_path: Annotated[str | None, FIELD_NAMES] = "data.expires_in"
    default_ttl_seconds: float = Field(default=600.0, gt=0, description="if no expires_in")
    refresh_margin_seconds: float = Field(default=30.0, ge=0)
    header: str = "Authorization"
    prefix: str = "Bearer "


Auth = Annotated[BearerAuth | ApiKeyAuth | BasicAuth | TokenAuth, Field(discriminator="type")]


class SigningOptions(_Strict):
    """Request signing over sorted parameters (see docs/plugins/rest.md, "Signed requests").

    The signed text is ``name=value`` pairs sorted by name and joined by ``&``: the app id,
    timestamp and nonce, every query parameter, every form field (a JSON body is one pair,
    ``body_name`` = the body as sent). The digest algorithms append ``&<secret_name>=<secret>``;
    ``hmac-sha256`` keys the HMAC with the secret instead."""

    algorithm: Literal["md5", "sha256", "hmac-sha256", "sm3"]
    app_id: str
    secret: SecretStr
    place: Literal["header", "query"] = "header"
    app_id_name: Annotated[str, FIELD_NAMES] = "appKey"
    timestamp_name: Annotated[str, FIELD_NAMES] = "timestamp"
    nonce_name: Annotated[str, FIELD_NAMES] = "nonce"
    sign_name: Annotated[str, FIELD_NAMES] = "sign"
    body_name: Annotated[str, FIELD_NAMES] = "body"
    secret_name: Annotated[str, FIELD_NAMES] = "key"
    timestamp_unit: Literal["s", "ms"] = "ms"
    uppercase: bool = True


class EnvelopeOptions(_Strict):
    """A business answer inside HTTP 200: where its code and message are, and what each code
    means. Codes compare as text (``0`` and ``"0"`` are the same). A code in no list is
    permanent: the case goes to ``failed`` naming the code and the department's message."""

    code: Annotated[str, FIELD_NAMES] = "code"
    message: Annotated[str, FIELD_NAMES] = "msg"
    success: list[str] = Field(default_factory=lambda: ["0"])
    transient: list[str] = Field(default_factory=list, description="retry later")
    refused: list[str] = Field(default_factory=list, description="a refusal (DepartmentRejected)")
    not_found: list[str] = Field(default_factory=list, description="no such case (poll)")
    exists: list[str] = Field(
        default_factory=list,
        description="submit: the department already holds the case (a re-send); the answer "
        "still names it",
    )

    @field_validator("success", "transient", "refused", "not_found", "exists", mode="before")
    @classmethod
    def _as_text(cls, value: Any) -> Any:
        return [str(v) for v in value] if isinstance(value, list) else value

    @model_validator(mode="after")
    def _disjoint(self) -> EnvelopeOptions:
        seen: dict[str, str] = {}
        for name in ("success", "transient", "refused", "not_found", "exists"):
            for code in getattr(self, name):
                if code in seen:
                    raise ValueError(f"code {code!r} is in both {seen[code]} and {name}")
                seen[code] = name
        return self


class SubmitResponse(_Strict):
    """Where the case id and status are in the department's answer to a submit."""

    case_id: str = "case.id"
    status: str | None = "case.status"
    detail: str | None = None


class SubmitOptions(_Strict):
    """How an application is delivered."""

    method: Literal["POST", "PUT"] = "POST"
    path: str = "/cases"
    body: Annotated[dict[str, str], FIELD_NAMES] = Field(
        default_factory=dict,
        description="department path = envelope path; empty: the whole envelope as JSON",
    )
    constants: dict[str, Any] = Field(default_factory=dict, description="fixed values merged in")
    materials: Literal["none", "inline_base64"] = "none"
    materials_field: Annotated[str, FIELD_NAMES] = "materials"
    encoding: Literal["json", "form"] = Field(
        default="json", description="form: application/x-www-form-urlencoded, nested values as JSON"
    )
    resent_statuses: list[int] = Field(
        default_factory=list,
        description="HTTP statuses that mean the department already held the case (a re-send)",
    )
    response: Annotated[SubmitResponse, FIELD_NAMES] = Field(default_factory=SubmitResponse)

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
    default_name: str = "document"
    default_content_type: str = "application/octet-stream"


class InlineDocument(_Strict):
    """One document held in fields of the answer itself (paths from the answer's root)."""

    content_b64: str | None = None
    url: str | None = None
    name: str | None = None
    content_type: str | None = None
    default_name: str = "document"
    default_content_type: str = "application/pdf"

    @model_validator(mode="after")
    def _has_content(self) -> InlineDocument:
        if not self.content_b64 and not self.url:
            raise ValueError("give content_b64 or url: where the document is")
        return self


class PollResponse(_Strict):
    case_id: str = "case.id"
    status: str = "case.status"
    detail: str | None = "case.opinion"
    occurred_at: str | None = "case.updated_at"
    documents: str | None = "case.documents"
    supplement_items: str | None = "case.supplement_items"
    document_fields: DocumentFields = Field(default_factory=DocumentFields)
    document: InlineDocument | None = Field(
        default=None, description="a document held inline in the answer (base64 or a URL)"
    )
    fetch_documents: bool = Field(
        default=False,
        description="fetch documents given as URLs (same host only, with the department's auth)",
    )


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
    not_found_statuses: list[int] = Field(
        default_factory=lambda: [404], description="HTTP statuses that mean no such case"
    )
    response: Annotated[PollResponse, FIELD_NAMES] = Field(default_factory=PollResponse)


class ListItemFields(_Strict):
    case_id: str = "id"
    status: str = "status"
    idempotency_key: str | None = "idempotency_key"
    updated_at: str | None = "updated_at"


class Paging(_Strict):
    """How a list of cases is paged through (shared by ``[options.list]`` and
    ``[options.changes]``).

    ``style``: ``cursor`` (``next`` holds a cursor sent back as ``cursor_param``),
    ``next_link`` (``next`` holds the next page's URL), ``page`` (``page_param`` counts from
    ``first_page``; ends at ``total`` or a short page), ``offset`` (``offset_param``; ends the
    same way). With ``total`` the listing fails when it read fewer cases than the department
    said it has."""

    style: Literal["cursor", "next_link", "page", "offset"] = "cursor"
    path: str = "/cases"
    params: dict[str, str] = Field(
        default_factory=dict, description="fixed query parameters sent with every page"
    )
    items: Annotated[str, FIELD_NAMES] = "items"
    next: Annotated[str, FIELD_NAMES] = "next"
    total: Annotated[str | None, FIELD_NAMES] = None
    page_param: str = "page"
    first_page: int = Field(default=1, ge=0)
    offset_param: str = "offset"
    since_param: str = "since"
    until_param: str = "until"
    cursor_param: str = "cursor"
    limit_param: str = "limit"
    page_size: int = Field(default=100, ge=1, le=10_000)
    max_pages: int = Field(default=10_000, ge=1, description="guard against a cursor loop")


class ListOptions(Paging):
    """How the department's case list is paged through for reconciliation."""

    item: Annotated[ListItemFields, FIELD_NAMES] = Field(default_factory=ListItemFields)


class ChangeItemFields(PollResponse):
    """Where an update's fields are inside one item of the change feed (paths from the item)."""

    case_id: str = "id"
    status: str = "status"
    detail: str | None = "opinion"
    occurred_at: str | None = "updated_at"
    documents: str | None = "documents"
    supplement_items: str | None = "supplement_items"
    idempotency_key: str | None = "idempotency_key"
    sequence: str = Field(default="seq", description="the change's number (``by = sequence``)")


class ChangesOptions(Paging):
    """The department's change feed, each item carrying the case's current status (and its
    documents once decided). ``by = "time"``: its case list filtered by update time
    (``since_param``, ``until_param``), paged in ``style``. ``by = "sequence"``: the department
    numbers its changes; the feed is asked for the changes after the last number applied
    (``sequence_param``, with ``limit_param``), page after page, each from the last number of
    the page before, until a page is short. With it the daemon asks once per ``[sync]
    changes_interval_seconds`` instead of polling every open case (docs/plugins/rest.md,
    "Change feed")."""

    by: Literal["time", "sequence"] = "time"
    sequence_param: str = "since_seq"
    item: Annotated[ChangeItemFields, FIELD_NAMES] = Field(default_factory=ChangeItemFields)


class RestOptions(_Strict):
    """The ``[options]`` table of a department whose ``connector = "rest"``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    base_url: str
    timeout_seconds: float = Field(default=10.0, gt=0)
    idempotency_header: str = "Idempotency-Key"
    headers: dict[str, str] = Field(default_factory=dict, description="sent on every request")
    charset: str | None = Field(
        default=None,
        description="answers' text encoding; None: the Content-Type's charset, else UTF-8",
    )
    envelope: EnvelopeOptions | None = None
    signing: SigningOptions | None = None
    reject_statuses: list[int] = Field(default_factory=lambda: [422])
    reject_reason: Annotated[str, FIELD_NAMES] = "error.message"
    reject_status: str = Field(
        default="not_accepted", description="status code a rejection is recorded as"
    )
    health_path: str = ""
    auth: Auth | None = None
    submit: SubmitOptions = Field(default_factory=SubmitOptions)
    poll: PollOptions | None = None
    cases: ListOptions | None = Field(default=None, alias="list")
    changes: ChangesOptions | None = None
    callback: Annotated[CallbackFields, FIELD_NAMES] = Field(default_factory=CallbackFields)
    withdraw: WithdrawOptions | None = None

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("charset")
    @classmethod
    def _charset(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                codecs.lookup(value)
            except LookupError:
                msg = f"unknown text encoding {value!r} (e.g. utf-8, gbk, gb18030)"
                raise ValueError(msg) from None
        return value

    @field_validator("reject_statuses")
    @classmethod
    def _reject_statuses(cls, value: list[int]) -> list[int]:
        bad = [code for code in value if not 400 <= code <= 499]
        if bad:
            raise ValueError(f"only 4xx codes can be business answers, not {bad}")
        return value
