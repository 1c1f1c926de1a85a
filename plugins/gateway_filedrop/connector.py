"""The built-in ``filedrop`` connector: departments that exchange files through folders.

Layout under the target's root (names from ``[options.folders]``)::

    inbox/       requests for the department: <key>.<ext> (+ <key>.m<n>.<ext> materials)
    processed/   where the department moves requests it has taken (optional)
    outbox/      results from the department: any name ending in the result format's extension,
                 documents either inline (base64) or in the folder <result stem>.files/
    archive/     results the gateway applied (or found already applied)
    quarantine/  results it could not read or match, each with a <name>.reason sidecar
                 (among them any link, FIFO, device or socket found where a file should be)
    sent/        the gateway's own record of each request written (idempotency, list_cases)

Every file name the connector makes comes from the gateway's idempotency key
(``ow-<application id>-v<version>``), never from applicant input. Names found in the outbox
are only ever used as one path segment in the folder they were listed from; names inside
result files never become paths unless they pass a strict check.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import PurePosixPath
from typing import Any, ClassVar

from pydantic import BaseModel

from gateway.connector import (
    CaseSummary,
    CaseUpdate,
    Connector,
    ConnectorContext,
    Envelope,
    Health,
    Receipt,
    ResultDocument,
    UpdateOutcome,
)
from gateway.errors import ConnectorError, PermanentError, TransientError
from gateway.mapping import MISSING, get_path, map_envelope, parse_time, put_path
from gateway_filedrop.formats import EXTENSIONS, ResultFileError, decode_result, encode_request
from gateway_filedrop.local_storage import LocalStorage
from gateway_filedrop.options import FiledropOptions, LocalTarget
from gateway_filedrop.sftp_storage import SftpStorage
from gateway_filedrop.storage import Entry, FileTooLarge, Storage, UnsafeFile

__all__ = ["FiledropConnector", "FiledropOptions", "safe_document_name"]

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_FILE_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_MATERIAL_EXT = {"application/pdf": ".pdf", "image/jpeg": ".jpg", "image/png": ".png"}


def safe_document_name(name: str) -> str:
    """A display name from a department's document name: the last segment, no leading dots,
    no control characters. It is stored as data only; this keeps it harmless if shown."""
    last = PurePosixPath(name.replace("\\", "/")).name
    last = "".join(ch for ch in last if ch.isprintable()).lstrip(".").strip()
    return last[:128] or "document"


class FiledropConnector(Connector):
    """Writes request files for a department and reads its result files back."""

    kind: ClassVar[str] = "filedrop"
    Options: ClassVar[type[BaseModel]] = FiledropOptions

    def __init__(self, context: ConnectorContext) -> None:
        super().__init__(context)
        self.options = options = self.options_as(FiledropOptions)
        label = context.department
        target = options.target
        self.storage: Storage = (
            LocalStorage(target, label)
            if isinstance(target, LocalTarget)
            else SftpStorage(target, label, options.timeout_seconds)
        )
        self._prepared = False
        # the file is the department's answer: capped by [options.result] and the department's cap
        self._max_bytes = min(options.result.max_bytes, context.max_answer_bytes)
        #: outbox name -> (size, mtime, monotonic time first seen like that)
        self._seen: dict[str, tuple[int, float, float]] = {}
        self._clock = time.monotonic

    # -- submit --------------------------------------------------------------------------------

    async def submit(self, envelope: Envelope) -> Receipt:
        key = envelope.idempotency_key
        if not _KEY.fullmatch(key):
            raise PermanentError(
                f"{self.context.department}: idempotency key unfit for a file name"
            )
        try:
            return await self._submit(envelope, key)
        except UnsafeFile as exc:
            raise self._unsafe(exc) from exc

    def _unsafe(self, exc: UnsafeFile) -> PermanentError:
        """A link or special file where the gateway writes or lists: not for retrying."""
        return PermanentError(
            f"{self.context.department}: {exc} (an operator must check the share)"
        )

    async def _submit(self, envelope: Envelope, key: str) -> Receipt:
        await self._prepare()
        folders, request = self.options.folders, self.options.request
        name = key + EXTENSIONS[request.format]
        receipt = Receipt(case_id=key)
        if await self.storage.exists(self._ledger(key)):
            return receipt
        inbox_path = f"{folders.inbox}/{name}"
        if await self.storage.exists(inbox_path) or (
            folders.processed and await self.storage.exists(f"{folders.processed}/{name}")
        ):
            # an earlier attempt wrote the request and stopped before recording it
            if request.commit == "done_marker" and await self.storage.exists(inbox_path):
                await self.storage.write(inbox_path + request.done_suffix, b"", atomic=False)
            await self._record_sent(envelope, name)
            return receipt
        payload = await self._payload(envelope, key)
        data = encode_request(
            payload, request.format, encoding=request.encoding, xml_root=request.xml_root
        )
        if request.commit == "rename":
            await self.storage.write(inbox_path, data, atomic=True)
        else:
            await self.storage.write(inbox_path, data, atomic=False)
            await self.storage.write(inbox_path + request.done_suffix, b"", atomic=False)
        await self._record_sent(envelope, name)
        return receipt

    async def _payload(self, envelope: Envelope, key: str) -> dict[str, Any]:
        request = self.options.request
        source = envelope.model_dump(mode="json")
        mapped = self.context.map_payload(envelope)
        if mapped is not None:
            payload = dict(mapped)
        elif not request.body:
            payload = source
            payload.pop("materials", None)
        else:
            payload = map_envelope(
                source, request.body, where=f"{self.context.department} [options.request.body]"
            )
        for target, value in request.constants.items():
            put_path(payload, target, value)
        if request.materials == "files":
            put_path(payload, request.materials_field, await self._write_materials(envelope, key))
        return payload

    async def _write_materials(self, envelope: Envelope, key: str) -> list[dict[str, Any]]:
        """Each material next to the request, named from the key (the applicant's file name
        goes inside the request as data, never into a path). Written before the request, so
        a department that sees the request finds its materials."""
        listed = []
        for index, material in enumerate(envelope.materials, start=1):
            file = f"{key}.m{index}{_MATERIAL_EXT.get(material.content_type, '.bin')}"
            content = await self.context.read_material(material)
            await self.storage.write(f"{self.options.folders.inbox}/{file}", content, atomic=True)
            listed.append(
                {
                    "file": file,
                    "filename": material.filename,
                    "content_type": material.content_type,
                    "sha256": material.sha256,
                    "size": material.size,
                }
            )
        return listed

    def _ledger(self, key: str) -> str:
        return f"{self.options.folders.sent}/{key}.json"

    async def _record_sent(self, envelope: Envelope, name: str) -> None:
        now = _iso(dt.datetime.now(dt.UTC))
        entry = {
            "case_id": envelope.idempotency_key,
            "idempotency_key": envelope.idempotency_key,
            "application_id": envelope.application_id,
            "version": envelope.version,
            "file": name,
            "sent_at": now,
            "status": None,
            "updated_at": now,
        }
        await self._write_ledger(envelope.idempotency_key, entry)

    async def _write_ledger(self, key: str, entry: dict[str, Any]) -> None:
        await self.storage.write(self._ledger(key), json.dumps(entry).encode(), atomic=True)

    # -- results -------------------------------------------------------------------------------

    async def pull_updates(self, limit: int) -> list[CaseUpdate]:
        await self._prepare()
        outbox = self.options.folders.outbox
        entries = await self._list(outbox)
        names = {e.name for e in entries}
        self._seen = {n: s for n, s in self._seen.items() if n in names}
        updates: list[CaseUpdate] = []
        for entry in sorted(entries, key=lambda e: (e.mtime, e.name)):
            if len(updates) >= limit:
                break
            if not self._candidate(entry):
                continue
            if entry.kind != "file":  # never opened, followed, or waited for
                await self._quarantine(entry.name, f"{outbox}/{entry.name} is a {entry.kind}")
                continue
            if not self._complete(entry, names):
                continue
            try:
                updates.append(await self._read_result(entry))
            except ResultFileError as exc:
                await self._quarantine(entry.name, str(exc))
            except FileTooLarge:
                await self._quarantine(entry.name, f"larger than {self._max_bytes} bytes")
        return updates

    def _candidate(self, entry: Entry) -> bool:
        name = entry.name
        result = self.options.result
        if entry.is_dir or not _plain_name(name) or name.startswith("."):
            return False
        if name.endswith(".files"):  # a result's documents (a link there fails that result)
            return False
        return not name.endswith((".tmp", ".part", result.done_suffix, ".reason"))

    def _complete(self, entry: Entry, names: set[str]) -> bool:
        result = self.options.result
        if result.complete == "done_marker":
            return entry.name + result.done_suffix in names
        now = self._clock()
        seen = self._seen.get(entry.name)
        if seen is None or seen[:2] != (entry.size, entry.mtime):
            self._seen[entry.name] = (entry.size, entry.mtime, now)
            return result.stable_seconds == 0
        return now - seen[2] >= result.stable_seconds

    async def _read_result(self, entry: Entry) -> CaseUpdate:
        result = self.options.result
        ext = EXTENSIONS[result.format]
        if not entry.name.endswith(ext):
            raise ResultFileError(f"not a {ext} file")
        data = await self.storage.read(
            f"{self.options.folders.outbox}/{entry.name}", self._max_bytes
        )
        record = decode_result(data, result.format, encoding=result.encoding)
        return await self._case_update(record, entry.name)

    async def _case_update(self, record: dict[str, Any], name: str) -> CaseUpdate:
        fields = self.options.result.fields
        key = _text(record, fields.idempotency_key)
        case_id = _text(record, fields.case_id) or key
        status = _text(record, fields.status)
        if not status:
            raise ResultFileError(f"no status in {fields.status!r}")
        if not case_id:
            raise ResultFileError("names no case (no case id or idempotency key)")
        items = get_path(record, fields.supplement_items) if fields.supplement_items else None
        if isinstance(items, str):
            items = [i for i in items.split(";") if i.strip()]
        elif isinstance(items, dict) and len(items) == 1:
            items = _as_list(next(iter(items.values())))
        return CaseUpdate(
            case_id=case_id[:200],
            idempotency_key=key[:200] if key else None,
            ref=name,
            status=status[:64],
            detail=(_text(record, fields.detail) or None) if fields.detail else None,
            occurred_at=parse_time(_text(record, fields.occurred_at)),
            event_id=(_text(record, fields.event_id) or None) if fields.event_id else None,
            documents=await self._documents(record, name),
            supplement_items=[str(i) for i in items] if isinstance(items, list) else [],
        )

    async def _documents(self, record: dict[str, Any], name: str) -> list[ResultDocument]:
        fields = self.options.result.fields
        if not fields.documents:
            return []
        raw = get_path(record, fields.documents)
        if raw is MISSING or raw in (None, ""):
            return []
        if isinstance(raw, str):  # CSV: ";"-separated file names
            raw = [
                {fields.document_fields.file: part.strip()}
                for part in raw.split(";")
                if part.strip()
            ]
        docs = []
        spec = fields.document_fields
        for item in _as_list(raw):
            if not isinstance(item, dict):
                raise ResultFileError("a document entry is not a record")
            file_ref = _text(item, spec.file)
            encoded = _text(item, spec.content_b64)
            content: bytes | None = None
            if encoded:
                try:
                    content = base64.b64decode(encoded, validate=True)
                except (binascii.Error, ValueError) as exc:
                    raise ResultFileError("a document is not valid base64") from exc
            elif file_ref:
                content = await self._document_file(name, file_ref)
            display = _text(item, spec.name) or file_ref or "document"
            docs.append(
                ResultDocument(
                    name=safe_document_name(display),
                    content_type=(_text(item, spec.content_type) or "application/octet-stream")[
                        :100
                    ],
                    content=content,
                    url=_text(item, spec.url) or None,
                )
            )
        return docs

    async def _document_file(self, result_name: str, file_ref: str) -> bytes:
        if not _FILE_REF.fullmatch(file_ref) or ".." in file_ref:
            raise ResultFileError("unsafe document file name (only plain names are allowed)")
        folder = f"{self.options.folders.outbox}/{_stem(result_name)}.files"
        try:
            return await self.storage.read(f"{folder}/{file_ref}", self._max_bytes)
        except FileTooLarge as exc:
            raise ResultFileError("a document file is too large") from exc
        except TransientError as exc:
            if await self.storage.exists(f"{folder}/{file_ref}"):
                raise
            raise ResultFileError("a document file named in the result is missing") from exc

    async def ack_update(
        self, update: CaseUpdate, outcome: UpdateOutcome, reason: str = ""
    ) -> None:
        name = update.ref
        if not name or not _plain_name(name):
            return
        if outcome == "unmatched":
            await self._quarantine(name, reason or "no matching case")
            return
        await self._move_out(name, self.options.folders.archive)
        key = update.idempotency_key or update.case_id
        if _KEY.fullmatch(key):
            await self._note_status(key, update)

    async def _note_status(self, key: str, update: CaseUpdate) -> None:
        path = self._ledger(key)
        try:
            entry = json.loads(await self.storage.read(path, 65536))
        except (FileTooLarge, ValueError, ConnectorError):
            return  # no request of ours (or unreadable): list_cases just won't show it
        entry["status"] = update.status
        entry["updated_at"] = _iso(update.occurred_at or dt.datetime.now(dt.UTC))
        await self._write_ledger(key, entry)

    async def _quarantine(self, name: str, reason: str) -> None:
        moved = await self._move_out(name, self.options.folders.quarantine)
        if moved is not None:
            note = f"{_iso(dt.datetime.now(dt.UTC))} {name}: {reason}\n"
            await self.storage.write(
                f"{self.options.folders.quarantine}/{moved}.reason", note.encode(), atomic=True
            )

    async def _move_out(self, name: str, folder: str) -> str | None:
        """Move an outbox file (and its done marker and documents) into ``folder`` under a
        free name; returns that name, or None if the file was already gone."""
        outbox = self.options.folders.outbox
        taken = {e.name for e in await self._list(folder)}
        stem, ext = _stem(name), name[len(_stem(name)) :]
        dest, n = name, 1
        while dest in taken or f"{_stem(dest)}.files" in taken:
            dest, n = f"{stem}.dup{n}{ext}", n + 1
        self._seen.pop(name, None)
        if not await self.storage.move(f"{outbox}/{name}", f"{folder}/{dest}"):
            return None
        suffix = self.options.result.done_suffix
        await self.storage.move(f"{outbox}/{name}{suffix}", f"{folder}/{dest}{suffix}")
        await self.storage.move(f"{outbox}/{stem}.files", f"{folder}/{_stem(dest)}.files")
        return dest

    # -- reconciliation and health -------------------------------------------------------------

    async def list_cases(
        self, since: dt.datetime, until: dt.datetime
    ) -> AsyncIterator[CaseSummary]:
        """Every request the gateway wrote, with the last status a result file reported
        (``delivered`` until one did), whose last change falls in ``[since, until)``."""
        await self._prepare()
        sent = self.options.folders.sent
        for entry in sorted(await self._list(sent), key=lambda e: e.name):
            if entry.is_dir or not entry.name.endswith(".json") or entry.name.startswith("."):
                continue
            try:
                data = json.loads(await self.storage.read(f"{sent}/{entry.name}", 65536))
                updated = parse_time(data.get("updated_at"))
                summary = CaseSummary(
                    case_id=str(data["case_id"]),
                    idempotency_key=data.get("idempotency_key"),
                    status=str(data.get("status") or "delivered"),
                    updated_at=updated,
                )
            except (ValueError, KeyError, TypeError, FileTooLarge):
                continue
            if updated is None or since <= updated < until:
                yield summary

    async def health(self) -> Health:
        try:
            detail = await self.storage.health(self._folders())
        except UnsafeFile as exc:
            return Health(ok=False, detail=str(self._unsafe(exc))[:300])
        except ConnectorError as exc:
            return Health(ok=False, detail=str(exc)[:300])
        return Health(ok=True, detail=detail)

    async def aclose(self) -> None:
        await self.storage.aclose()

    async def _prepare(self) -> None:
        if not self._prepared:
            try:
                await self.storage.prepare(self._folders()[:5])
            except UnsafeFile as exc:
                raise self._unsafe(exc) from exc
            self._prepared = True

    def _folders(self) -> list[str]:
        f = self.options.folders
        return [f.inbox, f.outbox, f.archive, f.quarantine, f.sent] + (
            [f.processed] if f.processed else []
        )

    async def _list(self, folder: str) -> list[Entry]:
        try:
            return await self.storage.listdir(folder)
        except UnsafeFile as exc:
            raise self._unsafe(exc) from exc


# -- helpers -------------------------------------------------------------------------------------


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\0")


def _stem(name: str) -> str:
    stem, dot, _ext = name.rpartition(".")
    return stem if dot and stem else name


def _text(data: Any, path: str | None) -> str:
    value = get_path(data, path)
    if value is MISSING or value is None or isinstance(value, (dict, list)):
        return ""
    return str(value).strip()


def _as_list(value: Any) -> list[Any]:
    """A list from JSON lists and from XML's shapes (one child, or a wrapper of children)."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict) and len(value) == 1:
        inner = next(iter(value.values()))
        if isinstance(inner, (list, dict)):
            return _as_list(inner) if isinstance(inner, list) else [inner]
    if value in (None, "", MISSING):
        return []
    return [value]


def _iso(value: dt.datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")
