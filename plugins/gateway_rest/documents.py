"""Result documents in a department's answer, wherever the department file says they are.

Three shapes, by ``[options.poll.response]`` (the same keys under ``[options.callback]``)::

    documents = "data.files"        a list of objects (or one object), fields per document_fields
    [...response.document]          one document held inline in the answer:
    content_b64 = "data.certFile"   base64 content, or
    url = "data.certUrl"            a URL (fetched with the department's auth: fetch_documents)
    name = "data.certName"          name and content type from fields, else the defaults

A path that is there but holds the wrong shape is an error naming the path: a mapping that
does not fit must never be silently ignored (the case would wait for its documents forever).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any

from gateway.connector import ResultDocument
from gateway.errors import PermanentError
from gateway.mapping import MISSING, get_path
from gateway_rest.options import DocumentFields, InlineDocument, PollResponse

__all__ = ["extract"]

Where = Callable[[str], str]


def extract(data: Any, spec: PollResponse, where: Where) -> list[ResultDocument]:
    """Every document the answer ``data`` carries, by ``spec``."""
    out: list[ResultDocument] = []
    if spec.documents:
        found = get_path(data, spec.documents)
        if isinstance(found, dict):
            found = [found]
        if found not in (None, MISSING, "") and not isinstance(found, list):
            raise PermanentError(
                where(f"{spec.documents!r} is {type(found).__name__}, not a list of documents")
            )
        for raw in found if isinstance(found, list) else []:
            if not isinstance(raw, dict):
                raise PermanentError(where(f"an entry of {spec.documents!r} is not an object"))
            out.append(_listed(raw, spec.document_fields, spec.documents, where))
    if spec.document is not None and (doc := _inline(data, spec.document, where)) is not None:
        out.append(doc)
    return out


def _listed(raw: dict[str, Any], fields: DocumentFields, path: str, where: Where) -> ResultDocument:
    content = _b64(raw.get(fields.content_b64), f"{path}[].{fields.content_b64}", where)
    url = raw.get(fields.url) or None
    if content is None and url is None:
        raise PermanentError(
            where(f"a document in {path!r} has neither {fields.content_b64!r} nor {fields.url!r}")
        )
    return ResultDocument(
        name=str(raw.get(fields.name) or fields.default_name),
        content_type=str(raw.get(fields.content_type) or fields.default_content_type),
        content=content,
        url=str(url) if url is not None else None,
    )


def _inline(data: Any, spec: InlineDocument, where: Where) -> ResultDocument | None:
    content = _b64(_text(data, spec.content_b64), str(spec.content_b64), where)
    url = _text(data, spec.url)
    if content is None and url is None:
        return None  # no document in this answer (not decided yet, or refused)
    return ResultDocument(
        name=_text(data, spec.name) or spec.default_name,
        content_type=_text(data, spec.content_type) or spec.default_content_type,
        content=content,
        url=url,
    )


def _text(data: Any, path: str | None) -> str | None:
    value = get_path(data, path)
    return None if value in (None, MISSING, "") else str(value)


def _b64(value: Any, path: str, where: Where) -> bytes | None:
    if value in (None, ""):
        return None
    try:
        # MIME-style base64 (line breaks every 76 characters) is common: drop the whitespace
        return base64.b64decode("".join(str(value).split()), validate=True)
    except (binascii.Error, TypeError, ValueError) as exc:
        raise PermanentError(where(f"document {path!r} is not base64")) from exc
