"""Reading one decoded result record: field lookup, lists, times, document references.

Pure functions over the dict :func:`gateway_filedrop.formats.decode_result` returns, so the
connector keeps to files and folders. A field is looked up by its literal name first (a CSV
column may be called ``"办件.编号"``), then as a dotted path into nested JSON or XML.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import fnmatch
import re
import zoneinfo
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from gateway.mapping import MISSING, get_path
from gateway_filedrop.formats import ResultFileError
from gateway_filedrop.options import ResultOptions

__all__ = [
    "DocumentRef",
    "as_list",
    "beside",
    "content_type_of",
    "document_refs",
    "field",
    "items",
    "note_text",
    "safe_document_name",
    "text",
    "time_of",
]

_TYPES = {
    ".pdf": "application/pdf",
    ".ofd": "application/ofd",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".xml": "application/xml",
}


@dataclass(frozen=True)
class DocumentRef:
    """A document of a result: inline ``content`` or a ``file`` to read, a display name."""

    name: str
    content_type: str
    content: bytes | None = None
    file: str | None = None
    url: str | None = None


def field(record: dict[str, Any], path: str | None) -> Any:
    """The value at ``path``: the literal key if the record has one, else the dotted path."""
    if not path:
        return MISSING
    if path in record:
        return record[path]
    return get_path(record, path)


def text(record: dict[str, Any], path: str | None) -> str:
    value = field(record, path)
    if value is MISSING or value is None or isinstance(value, (dict, list)):
        return ""
    return str(value).strip()


def _splitter(separators: list[str]) -> re.Pattern[str]:
    return re.compile("|".join(re.escape(sep) for sep in separators))


def items(value: Any, separators: list[str]) -> list[Any]:
    """A list field: a JSON/XML list as it is, a text split on any of ``separators``."""
    if isinstance(value, str):
        return [part.strip() for part in _splitter(separators).split(value) if part.strip()]
    return as_list(value)


def as_list(value: Any) -> list[Any]:
    """A list from JSON lists and from XML's shapes (one child, or a wrapper of children)."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict) and len(value) == 1:
        inner = next(iter(value.values()))
        if isinstance(inner, (list, dict)):
            return inner if isinstance(inner, list) else [inner]
    if value is None or value is MISSING or value == "":
        return []
    return [value]


def time_of(value: str, zone: str) -> dt.datetime | None:
    """A department's timestamp; one written without a zone is in ``zone`` (its local time).
    ISO 8601 with ``T`` or a space, ``-`` or ``/`` between date parts; None if unreadable (a
    bad timestamp is no reason to drop a status update)."""
    if not value:
        return None
    cleaned = value.strip().replace("Z", "+00:00")
    if re.match(r"^\d{4}/\d{1,2}/\d{1,2}", cleaned):
        date, _, rest = cleaned.partition(" ")
        y, m, d = date.split("/")
        cleaned = f"{y}-{int(m):02d}-{int(d):02d}" + (f" {rest}" if rest else "")
    try:
        parsed = dt.datetime.fromisoformat(cleaned)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=zoneinfo.ZoneInfo(zone))


def safe_document_name(name: str) -> str:
    """A display name from a department's document name: the last segment, no leading dots,
    no control characters. It is stored as data only; this keeps it harmless if shown."""
    last = PurePosixPath(name.replace("\\", "/")).name
    last = "".join(ch for ch in last if ch.isprintable()).lstrip(".").strip()
    return last[:128] or "document"


def content_type_of(name: str) -> str:
    return _TYPES.get(PurePosixPath(name).suffix.lower(), "application/octet-stream")


def document_refs(record: dict[str, Any], options: ResultOptions) -> list[DocumentRef]:
    """The documents a record names (inline or as files), in order."""
    fields = options.fields
    spec = fields.document_fields
    raw = field(record, fields.documents)
    if isinstance(raw, str):  # one text field: file names split on the separators
        raw = [{spec.file: part} for part in items(raw, options.list_separators)]
    out = []
    for item in as_list(raw):
        if not isinstance(item, dict):
            raise ResultFileError("a document entry is not a record")
        file_ref = text(item, spec.file)
        encoded = text(item, spec.content_b64)
        content: bytes | None = None
        if encoded:
            try:
                content = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ResultFileError("a document is not valid base64") from exc
        display = text(item, spec.name) or file_ref or "document"
        out.append(
            DocumentRef(
                name=safe_document_name(display),
                content_type=(text(item, spec.content_type) or content_type_of(display))[:100],
                content=content,
                file=None if encoded else (file_ref or None),
                url=text(item, spec.url) or None,
            )
        )
    return out


def beside(result_name: str, names: set[str], patterns: list[str]) -> list[str]:
    """Names among ``names`` that ``patterns`` (``{stem}`` = the result's stem) give to the
    result ``result_name``, sorted."""
    if not patterns:
        return []  # not a scan of the whole outbox for every result it holds
    stem = stem_of(result_name)
    escaped = re.sub(r"([\[\]*?])", r"[\1]", stem)
    wanted = [p.replace("{stem}", escaped) for p in patterns]
    return sorted(
        n for n in names if n != result_name and any(fnmatch.fnmatchcase(n, w) for w in wanted)
    )


def note_text(data: bytes, encoding: str) -> str:
    """A department's short note (an ``.err`` reason) as one printable line: in its request
    encoding, else UTF-8, else GB18030; at most 300 characters."""
    for candidate in dict.fromkeys((encoding, "utf-8", "gb18030")):
        try:
            text = data.decode(candidate)
            break
        except (UnicodeDecodeError, LookupError):
            continue
    else:
        text = data.decode("utf-8", "replace")
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text[:300] or "(no reason given)"


def stem_of(name: str) -> str:
    stem, dot, _ext = name.rpartition(".")
    return stem if dot and stem else name
