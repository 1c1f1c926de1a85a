"""Result documents (licences, certificates, decision letters): kept content-addressed in the blob
store, listed per case, read back with their hash checked."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, exists, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.blobs import BlobStore
from gateway.clock import new_id, now
from gateway.connector import ResultDocument
from gateway.states import State
from gateway.store import paging
from gateway.store.lists import PerEngine
from gateway.store.tables import applications, result_documents


async def put(
    blobs: BlobStore, updates: Sequence[Sequence[ResultDocument]]
) -> list[list[str | None]]:
    """Put the contents of several updates' documents in the blob store (one worker-thread trip),
    before the transaction that lists them: a file written and fsynced under the database's
    write lock kept every other writer waiting. Returns each document's sha256 (None: a link)."""
    contents = [d.content for docs in updates for d in docs if d.content is not None]
    shas = iter(await blobs.put_many(contents))
    return [[None if d.content is None else next(shas) for d in docs] for docs in updates]


async def store_many(
    conn: AsyncConnection,
    items: Sequence[tuple[str, int, Sequence[ResultDocument], Sequence[str | None]]],
) -> list[list[dict[str, Any]]]:
    """List the documents of several department updates, each (application id, case version,
    its documents, their sha256s from :func:`put`); the same content (or link) sent again for a
    case is not listed twice. One SELECT and at most one INSERT for them all. Returns what each
    update's event detail lists."""
    ids = sorted({app_id for app_id, _v, docs, _s in items if docs})
    known: dict[tuple[str, str | None, str | None], str] = {}
    if ids:
        rows = await conn.execute(_LISTED.for_(conn), {"_ids": ids})
        for app_id, sha, url, doc_id in rows.all():
            known.setdefault((app_id, sha, None if sha is not None else url), doc_id)
    new: list[dict[str, Any]] = []
    out: list[list[dict[str, Any]]] = []
    at = now()
    for app_id, version, docs, shas in items:
        entries: list[dict[str, Any]] = []
        for doc, sha in zip(docs, shas, strict=True):
            key = (app_id, sha, None if sha is not None else doc.url)
            doc_id = known.get(key)
            if doc_id is None:
                doc_id = known[key] = new_id("d")
                new.append(
                    {
                        "id": doc_id,
                        "application_id": app_id,
                        "version": version,
                        "name": _display_name(doc.name),
                        "content_type": doc.content_type[:100],
                        "sha256": sha,
                        "size": len(doc.content) if doc.content is not None else None,
                        "url": doc.url,
                        "created_at": at,
                    }
                )
            entry: dict[str, Any] = {
                "id": doc_id,
                "name": doc.name,
                "content_type": doc.content_type,
            }
            if sha is not None:
                entry.update(sha256=sha, size=len(doc.content or b""))
            else:
                entry["url"] = doc.url
            entries.append(entry)
        out.append(entries)
    if new:
        await conn.execute(insert(result_documents), new)
    return out


_LISTED = PerEngine(
    lambda one_of: select(
        result_documents.c.application_id,
        result_documents.c.sha256,
        result_documents.c.url,
        result_documents.c.id,
    ).where(one_of(result_documents.c.application_id, "_ids"))
)


def _display_name(name: str) -> str:
    # a display name only (never a path): last path segment, printable, bounded
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(ch for ch in base if ch.isprintable())[:255] or "document"


async def for_application(conn: AsyncConnection, app_id: str) -> Sequence[Row[Any]]:
    q = (
        select(result_documents)
        .where(result_documents.c.application_id == app_id)
        .order_by(result_documents.c.created_at, result_documents.c.id)
    )
    return (await conn.execute(q)).all()


async def for_applications(
    conn: AsyncConnection, app_ids: Sequence[str]
) -> dict[str, list[Row[Any]]]:
    out: dict[str, list[Row[Any]]] = {}
    if not app_ids:
        return out
    q = (
        select(result_documents)
        .where(result_documents.c.application_id.in_(list(app_ids)))
        .order_by(result_documents.c.created_at, result_documents.c.id)
    )
    for row in (await conn.execute(q)).all():
        out.setdefault(row.application_id, []).append(row)
    return out


async def get(conn: AsyncConnection, app_id: str, doc_id: str) -> Row[Any] | None:
    q = select(result_documents).where(
        result_documents.c.id == doc_id, result_documents.c.application_id == app_id
    )
    return (await conn.execute(q)).first()


async def documents_in(conn: AsyncConnection, app: Row[Any]) -> bool:
    """Whether a decided case has what is handed out: an approval needs at least one document
    from the department; a refusal (or not accepting) is handed out as its decision."""
    if app.status != State.APPROVED.value:
        return True
    q = select(func.count()).where(result_documents.c.application_id == app.id)
    return bool((await conn.execute(q)).scalar())


async def holding(conn: AsyncConnection, app_ids: Sequence[str]) -> set[str]:
    """Which of these cases hold at least one result document (one statement)."""
    if not app_ids:
        return set()
    q = _HOLDING.for_(conn)
    return {r[0] for r in (await conn.execute(q, {"_ids": list(app_ids)})).all()}


_HOLDING = PerEngine(
    lambda one_of: (
        select(result_documents.c.application_id)
        .where(one_of(result_documents.c.application_id, "_ids"))
        .distinct()
    )
)


async def undocumented(
    conn: AsyncConnection,
    *,
    department: str | None = None,
    app_ids: Sequence[str] | None = None,
    limit: int = 500,
    after: Sequence[Any] | None = None,
) -> Sequence[Row[Any]]:
    """Cases decided ``approved`` that hold no result document: nothing to hand out, so they
    wait (oldest decision first). ``app_ids`` narrows to those cases; ``after`` is the
    (updated_at, id) a page starts after."""
    q = select(applications).where(
        applications.c.status == State.APPROVED.value,
        ~exists().where(result_documents.c.application_id == applications.c.id),
    )
    if department is not None:
        q = q.where(applications.c.department == department)
    if app_ids is not None:
        q = q.where(applications.c.id.in_(list(app_ids)))
    start = paging.after([applications.c.updated_at, applications.c.id], after)
    if start is not None:
        q = q.where(start)
    q = q.order_by(applications.c.updated_at, applications.c.id).limit(limit)
    return (await conn.execute(q)).all()


__all__ = [
    "documents_in",
    "for_application",
    "for_applications",
    "get",
    "put",
    "store_many",
    "undocumented",
]
