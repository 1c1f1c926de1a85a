"""The documents of a result file: inline (base64) in the record, files in
``<result stem>.files/``, or files beside the result in the outbox (named in a column, or
matched by ``document_patterns``). A named file that is not there yet is
:class:`DocumentNotYet` (the result waits for it, then is quarantined)."""

from __future__ import annotations

import re
from typing import Any

from gateway.connector import ResultDocument
from gateway.errors import TransientError
from gateway_filedrop import records
from gateway_filedrop.formats import ResultFileError
from gateway_filedrop.options import ResultOptions
from gateway_filedrop.records import safe_document_name
from gateway_filedrop.share import Share
from gateway_filedrop.storage import FileTooLarge

__all__ = ["DocumentNotYet", "documents_beside", "read_documents"]

_FILE_REF = re.compile(r"^[^/\\\x00-\x1f]{1,128}$")


class DocumentNotYet(ResultFileError):
    """A document file the result names is not there (yet)."""


def documents_beside(result: ResultOptions) -> bool:
    """Whether document files lie in the outbox beside their result (not in a .files folder)."""
    return result.documents_beside or bool(result.document_patterns)


async def read_documents(
    share: Share, max_bytes: int, record: dict[str, Any], name: str, files: set[str]
) -> tuple[list[ResultDocument], list[str]]:
    """The documents of the result ``name`` (``files``: the outbox's file names), and the
    files beside it that belong to it (moved along when it is archived or quarantined)."""
    result = share.options.result
    refs = records.document_refs(record, result) if result.fields.documents else []
    named = {ref.file for ref in refs if ref.file}
    for extra in records.beside(name, files, result.document_patterns):
        if extra not in named:
            refs.append(
                records.DocumentRef(
                    name=safe_document_name(extra),
                    content_type=records.content_type_of(extra),
                    file=extra,
                )
            )
    docs = []
    beside: list[str] = []
    for ref in refs:
        content = ref.content
        if ref.file is not None:
            content = await _document_file(share, max_bytes, name, ref.file)
            if documents_beside(result):
                beside.append(ref.file)
        docs.append(
            ResultDocument(
                name=ref.name, content_type=ref.content_type, content=content, url=ref.url
            )
        )
    return docs, beside


async def _document_file(share: Share, max_bytes: int, result_name: str, file_ref: str) -> bytes:
    if not _FILE_REF.fullmatch(file_ref) or file_ref.startswith(".") or ".." in file_ref:
        raise ResultFileError("unsafe document file name (only plain names are allowed)")
    outbox = share.folders.outbox
    if documents_beside(share.options.result):
        if file_ref == result_name:
            raise ResultFileError("a document file is the result itself")
        path = f"{outbox}/{file_ref}"
    else:
        path = f"{outbox}/{records.stem_of(result_name)}.files/{file_ref}"
    try:
        return await share.storage.read(path, max_bytes)
    except FileTooLarge as exc:
        raise ResultFileError("a document file is too large") from exc
    except TransientError as exc:
        if await share.storage.exists(path):
            raise
        raise DocumentNotYet(f"a document file named in the result is missing ({path})") from exc
