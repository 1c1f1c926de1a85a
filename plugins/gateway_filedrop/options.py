"""Options of the ``filedrop`` connector: the ``[options]`` table of a department file.

Every model forbids unknown keys, so a typo is a config error naming the key. The shape::

    [options.target]            where the department's folders are
    type = "local"              # or "sftp" (host, port, username, password | private_key,
    root = "var/filedrop/civil" #          known_hosts | host_key, root)
    [options.folders]           names under root (defaults shown in FolderOptions)
    [options.request]           how request files are written (format, commit, body map)
    [options.result]            how result files are recognised and read (complete, fields)

Mappings are dotted paths as in the ``rest`` connector: ``"applicant.idNo" =
"applicant.id_number"`` puts the envelope's ``applicant.id_number`` at ``applicant.idNo``.
Where a result names a field (``[options.result.fields]``), a field whose literal name is in
the record wins over the dotted reading (a CSV column may be called ``"办件.编号"``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from gateway.clock import ZoneName
from gateway.connector import FIELD_NAMES, PUBLIC_KEY, NotSecret
from gateway.mapping import check_source_path

__all__ = [
    "DocumentFields",
    "FiledropOptions",
    "FolderOptions",
    "LocalTarget",
    "RequestOptions",
    "ResultFields",
    "ResultOptions",
    "SftpTarget",
]

Format = Literal["json", "xml", "csv"]
_FOLDER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_MAX_DEPTH = 4
_XML_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def _suffix(value: str) -> str:
    if not re.fullmatch(r"\.[A-Za-z0-9_-]{1,16}", value):
        raise ValueError("must be a dot and 1 to 16 letters, digits, '_' or '-' (e.g. '.done')")
    return value


#: a file name suffix the gateway or the department adds (``.done``, ``.err``)
Suffix = Annotated[str, AfterValidator(_suffix)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LocalTarget(_Strict):
    """A folder on this machine or a mounted share. ``root`` must exist (an unmounted share
    is an error, not an empty folder to fill); the folders under it are created if missing."""

    type: Literal["local"]
    root: Path


class SftpTarget(_Strict):
    """An SFTP server. One of ``password``/``private_key`` authenticates; one of
    ``known_hosts`` (an OpenSSH known_hosts file) or ``host_key`` (the server's public key,
    ``"ssh-ed25519 AAAA..."``) checks the server. There is no way to skip host-key checking."""

    type: Literal["sftp"]
    host: str
    port: int = Field(default=22, ge=1, le=65535)
    username: str
    password: SecretStr | None = None
    private_key: Annotated[Path | None, NotSecret("the path of a key file")] = None
    private_key_passphrase: SecretStr | None = None
    known_hosts: Path | None = None
    host_key: Annotated[str | None, PUBLIC_KEY] = None
    root: str = Field(default=".", description="folder on the server holding the folders")
    connect_timeout_seconds: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _auth_and_host_check(self) -> SftpTarget:
        if self.password is None and self.private_key is None:
            raise ValueError("give password or private_key")
        if self.known_hosts is None and not self.host_key:
            raise ValueError("give known_hosts or host_key: the server's key is always checked")
        return self


Target = Annotated[LocalTarget | SftpTarget, Field(discriminator="type")]


class FolderOptions(_Strict):
    """Folders under the target's root: plain names, or up to four of them joined by ``/``
    (``processed = "inbox/done"``); never ``..``, never absolute."""

    inbox: str = Field(default="inbox", description="request files for the department")
    outbox: str = Field(default="outbox", description="result files from the department")
    archive: str = Field(default="archive", description="result files applied by the gateway")
    quarantine: str = Field(default="quarantine", description="unreadable or unmatched results")
    sent: str = Field(default="sent", description="the gateway's record of requests written")
    processed: str | None = Field(
        default="processed", description="where the department moves requests it took, if any"
    )
    errors: str | None = Field(
        default=None,
        description="where the department moves requests it refused, each with a reason file "
        "<request name><error_suffix> (or <key><error_suffix>); none: it has no such folder",
    )
    error_suffix: Suffix = ".err"

    @field_validator("inbox", "outbox", "archive", "quarantine", "sent", "processed", "errors")
    @classmethod
    def _plain(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = value.split("/")
        if len(parts) > _MAX_DEPTH or any(not _FOLDER.fullmatch(p) or ".." in p for p in parts):
            raise ValueError(
                f"{value!r} is not a folder path (plain names joined by '/', at most "
                f"{_MAX_DEPTH}, no '..')"
            )
        return value

    @model_validator(mode="after")
    def _distinct(self) -> FolderOptions:
        names = [self.inbox, self.outbox, self.archive, self.quarantine, self.sent]
        names += [n for n in (self.processed, self.errors) if n]
        if len(set(names)) != len(names):
            raise ValueError("folder names must differ from each other")
        return self


class RequestOptions(_Strict):
    """How a request file is written."""

    format: Format = "json"
    commit: Literal["rename", "done_marker"] = Field(
        default="rename",
        description="rename: write a hidden temporary name, then rename; "
        "done_marker: write the file, then an empty <name><done_suffix>",
    )
    done_suffix: Suffix = ".done"
    encoding: str = "utf-8"
    xml_root: str = "application"
    body: Annotated[dict[str, str], FIELD_NAMES] = Field(
        default_factory=dict,
        description="department path = envelope path; empty: the whole envelope",
    )
    constants: dict[str, Any] = Field(default_factory=dict, description="fixed values merged in")
    materials: Literal["files", "none"] = Field(
        default="files", description="files: each material as a file next to the request"
    )
    materials_field: Annotated[str, FIELD_NAMES] = "materials"

    @field_validator("body")
    @classmethod
    def _body_paths(cls, value: dict[str, str]) -> dict[str, str]:
        for target, source in value.items():
            if not target or any(not p for p in target.split(".")):
                raise ValueError(f"empty segment in department path {target!r}")
            check_source_path(source)
        return value

    @field_validator("xml_root")
    @classmethod
    def _xml_root(cls, value: str) -> str:
        if not _XML_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not an XML element name")
        return value


class DocumentFields(_Strict):
    """Field names inside each document entry of a result file."""

    name: str = "name"
    content_type: str = "content_type"
    content_b64: str = "content_b64"
    file: str = Field(
        default="file",
        description="a document file: in <result name stem>.files/, or beside the result "
        "when [options.result] documents_beside = true",
    )
    url: str = "url"


class ResultFields(_Strict):
    """Where things are in a result file (dotted paths; for CSV, column names)."""

    case_id: str | None = "case_id"
    idempotency_key: str | None = "idempotency_key"
    status: str = "status"
    detail: str | None = "opinion"
    occurred_at: str | None = "occurred_at"
    event_id: str | None = None
    documents: str | None = "documents"
    supplement_items: str | None = "supplement_items"
    document_fields: DocumentFields = Field(default_factory=DocumentFields)

    @model_validator(mode="after")
    def _some_id(self) -> ResultFields:
        if not self.case_id and not self.idempotency_key:
            raise ValueError("give case_id or idempotency_key: results must name their case")
        return self


class ResultOptions(_Strict):
    """How result files are recognised as complete and read."""

    format: Format = "json"
    complete: Literal["stable", "done_marker"] = Field(
        default="stable",
        description="stable: size and mtime unchanged over stable_seconds between scans; "
        "done_marker: only once <name><done_suffix> exists",
    )
    stable_seconds: float = Field(default=2.0, ge=0)
    done_suffix: Suffix = ".done"
    encoding: str = "utf-8"
    max_bytes: int = Field(default=20 * 1024 * 1024, gt=0)
    fields: Annotated[ResultFields, FIELD_NAMES] = Field(default_factory=ResultFields)
    list_separators: list[str] = Field(
        default_factory=lambda: [";"],
        description="what separates items where a list is one text field (CSV columns of "
        'document file names and supplement items), e.g. [";", "；"]',
    )
    timezone: ZoneName = Field(
        default="Asia/Shanghai",
        description="the zone of result times written without one (an explicit offset wins)",
    )
    documents_beside: bool = Field(
        default=False,
        description="document files named in a result are in the outbox beside it, not in "
        "<result stem>.files/",
    )
    document_patterns: list[str] = Field(
        default_factory=list,
        description="files beside a result that are its documents without being named in it: "
        'glob patterns where {stem} is the result file\'s name without extension ("{stem}.pdf")',
    )
    missing_document_wait_seconds: float = Field(
        default=60.0,
        ge=0,
        description="how long a result naming a document file that is not there yet waits "
        "before it is quarantined (departments write files in any order)",
    )

    @field_validator("list_separators")
    @classmethod
    def _separators(cls, value: list[str]) -> list[str]:
        if not value or any(not sep or sep.isspace() for sep in value):
            raise ValueError("give one or more non-blank separators")
        return value

    @field_validator("document_patterns")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if "/" in pattern or "\\" in pattern or pattern.startswith("."):
                raise ValueError(f"{pattern!r}: a pattern names files beside the result only")
        return value


class FiledropOptions(_Strict):
    """The ``[options]`` table of a department whose ``connector = "filedrop"``."""

    target: Target
    folders: FolderOptions = Field(default_factory=FolderOptions)
    request: RequestOptions = Field(default_factory=RequestOptions)
    result: ResultOptions = Field(default_factory=ResultOptions)
    timeout_seconds: float = Field(default=30.0, gt=0, description="per file operation")
