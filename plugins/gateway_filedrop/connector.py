"""The built-in ``filedrop`` connector: departments that exchange files through folders.

Layout under the target's root (names from ``[options.folders]``; nested paths allowed)::

    inbox/       requests for the department: <key>.<ext> (+ <key>.m<n>.<ext> materials)
    processed/   where the department moves requests it has taken (optional)
    errors/      where the department moves requests it refused, with <name>.err (optional)
    outbox/      results from the department: any name ending in the result format's extension,
                 documents inline (base64), in the folder <result stem>.files/, or beside
                 the result (``documents_beside``, ``document_patterns``)
    archive/     results the gateway applied (or found already applied), and .err files read
    quarantine/  results it could not read or match, each with a <name>.reason sidecar
                 (among them any link, FIFO, device or socket found where a file should be)
    sent/        the gateway's own record of each request written (idempotency, list_cases)

Every file name the connector makes comes from the gateway's idempotency key
(``ow-<application id>-v<version>``), never from applicant input. Names found in the outbox
are only ever used as one path segment in the folder they were listed from; names inside
result files never become paths unless they pass a strict check.

Nothing is dropped silently: a quarantined result is logged at WARNING and counted
(``gateway_filedrop_quarantined_total``), health reports the quarantine until ops clears it
(``gateway filedrop quarantine`` lists it, ``... requeue`` puts a file back), and a request
the department refused (``.err``) moves its case to ``failed`` with the department's reason,
where ``gateway replay`` re-sends it.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from prometheus_client import Counter
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
from gateway.mapping import map_envelope, put_path
from gateway_filedrop import quarantine, records
from gateway_filedrop.formats import (
    EXTENSIONS,
    ResultFileError,
    decode_result,
    encode_request,
    unencodable,
)
from gateway_filedrop.ledger import Ledger, iso
from gateway_filedrop.local_storage import LocalStorage
from gateway_filedrop.options import FiledropOptions, LocalTarget
from gateway_filedrop.records import safe_document_name
from gateway_filedrop.sftp_storage import SftpStorage
from gateway_filedrop.storage import Entry, FileTooLarge, Storage, UnsafeFile

__all__ = ["REFUSED", "FiledropConnector", "FiledropOptions", "open_storage", "safe_document_name"]

log = logging.getLogger("gateway_filedrop")

QUARANTINED = Counter(
    "gateway_filedrop_quarantined_total",
    "Result files moved to quarantine, by department",
    ["department"],
)
REFUSALS = Counter(
    "gateway_filedrop_refused_requests_total",
    "Request files the department moved to its error folder, by department",
    ["department"],
)

#: the status a refused request (a department-side .err file) reports: the gateway state
REFUSED = "failed"
_ERR_REF = "errors:"
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_FILE_REF = re.compile(r"^[^/\\\x00-\x1f]{1,128}$")
_MATERIAL_EXT = {"application/pdf": ".pdf", "image/jpeg": ".jpg", "image/png": ".png"}
_REASON_BYTES = 4096


class _DocumentNotYet(ResultFileError):
    """A document file the result names is not there (yet)."""


def open_storage(options: FiledropOptions, label: str) -> Storage:
    """The storage of a department's target (local folder or SFTP server)."""
    target = options.target
    if isinstance(target, LocalTarget):
        return LocalStorage(target, label)
    return SftpStorage(target, label, options.timeout_seconds)


class FiledropConnector(Connector):
    """Writes request files for a department and reads its result files back."""

    kind: ClassVar[str] = "filedrop"
    Options: ClassVar[type[BaseModel]] = FiledropOptions

    def __init__(self, context: ConnectorContext) -> None:
        super().__init__(context)
        self.options = self.options_as(FiledropOptions)
        self.storage = open_storage(self.options, context.department)
        self.ledger = Ledger(self.storage, self.options.folders.sent)
        self._prepared = False
        # the file is the department's answer: capped by [options.result] and the department's cap
        self._max_bytes = min(self.options.result.max_bytes, context.max_answer_bytes)
        #: outbox name -> (size, mtime, monotonic time first seen like that)
        self._seen: dict[str, tuple[int, float, float]] = {}
        #: outbox name -> monotonic time a document it names was first found missing
        self._waiting: dict[str, float] = {}
        #: outbox name -> document files beside it, moved along when it is archived
        self._beside: dict[str, list[str]] = {}
        self._clock = time.monotonic

    @property
    def _dept(self) -> str:
        return self.context.department

    # -- submit --------------------------------------------------------------------------------

    async def submit(self, envelope: Envelope) -> Receipt:
        key = envelope.idempotency_key
        if not _KEY.fullmatch(key):
            raise PermanentError(f"{self._dept}: idempotency key unfit for a file name")
        try:
            return await self._submit(envelope, key)
        except UnsafeFile as exc:
            raise self._unsafe(exc) from exc

    def _unsafe(self, exc: UnsafeFile) -> PermanentError:
        """A link or special file where the gateway writes or lists: not for retrying."""
        return PermanentError(f"{self._dept}: {exc} (an operator must check the share)")

    async def _submit(self, envelope: Envelope, key: str) -> Receipt:
        await self._prepare()
        folders, request = self.options.folders, self.options.request
        name = key + EXTENSIONS[request.format]
        receipt = Receipt(case_id=key)
        ledger = await self.ledger.read(key)
        if ledger is not None and not ledger.get("refused"):
            if ledger.get("status") or await self._at_department(name) is not False:
                return receipt
            ledger = None  # the department lost it (reconciliation's re-send): write it again
        inbox_path = f"{folders.inbox}/{name}"
        if ledger is None and (
            await self.storage.exists(inbox_path)
            or (folders.processed and await self.storage.exists(f"{folders.processed}/{name}"))
        ):
            # an earlier attempt wrote the request and stopped before recording it
            if request.commit == "done_marker" and await self.storage.exists(inbox_path):
                await self.storage.write(inbox_path + request.done_suffix, b"", atomic=False)
            await self.ledger.record_sent(envelope, name)
            return receipt
        # new, or refused by the department and now sent again (an operator's replay)
        payload = await self._payload(envelope, key)
        try:
            data = encode_request(
                payload, request.format, encoding=request.encoding, xml_root=request.xml_root
            )
        except UnicodeEncodeError as exc:
            # intake refuses such text for this department; this is what slipped past it
            # (a material's file name, a case accepted before the check): name the field only
            path, char = unencodable(payload, request.encoding, "") or ("?", "?")
            raise PermanentError(
                f"{self._dept}: request field {path}: character {char} cannot be written in "
                f"{request.encoding}"
            ) from exc
        if request.commit == "rename":
            await self.storage.write(inbox_path, data, atomic=True)
        else:
            await self.storage.write(inbox_path, data, atomic=False)
            await self.storage.write(inbox_path + request.done_suffix, b"", atomic=False)
        await self.ledger.record_sent(envelope, name)
        return receipt

    async def _at_department(self, name: str) -> bool | None:
        """Whether the request ``name`` is in the department's inbox, processed or error
        folder; None when that cannot be known (no processed folder: taken requests vanish)."""
        folders = self.options.folders
        if not folders.processed:
            return None
        for folder in (folders.inbox, folders.processed, folders.errors):
            if folder and await self.storage.exists(f"{folder}/{name}"):
                return True
        return False

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
                source, request.body, where=f"{self._dept} [options.request.body]"
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

    # -- results -------------------------------------------------------------------------------

    async def pull_updates(self, limit: int) -> list[CaseUpdate]:
        await self._prepare()
        outbox = self.options.folders.outbox
        entries = await self._list(outbox)
        names = {e.name for e in entries}
        self._seen = {n: s for n, s in self._seen.items() if n in names}
        self._waiting = {n: s for n, s in self._waiting.items() if n in names}
        files = {e.name for e in entries if e.kind == "file"}
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
                updates.append(await self._read_result(entry, files))
            except _DocumentNotYet as exc:
                first = self._waiting.setdefault(entry.name, self._clock())
                if self._clock() - first >= self.options.result.missing_document_wait_seconds:
                    await self._quarantine(entry.name, str(exc))
            except ResultFileError as exc:
                await self._quarantine(entry.name, str(exc))
            except FileTooLarge:
                await self._quarantine(entry.name, f"larger than {self._max_bytes} bytes")
        if len(updates) < limit and self.options.folders.errors:
            updates += await self._refusals(limit - len(updates))
        return updates

    def _candidate(self, entry: Entry) -> bool:
        name = entry.name
        result = self.options.result
        if entry.is_dir or not _plain_name(name) or name.startswith("."):
            return False
        if name.endswith(".files"):  # a result's documents (a link there fails that result)
            return False
        if entry.kind == "file" and self._documents_beside and not self._is_result(name):
            return False  # a document waiting beside its result
        return not name.endswith((".tmp", ".part", result.done_suffix, ".reason"))

    @property
    def _documents_beside(self) -> bool:
        result = self.options.result
        return result.documents_beside or bool(result.document_patterns)

    def _is_result(self, name: str) -> bool:
        return name.endswith(EXTENSIONS[self.options.result.format])

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

    async def _read_result(self, entry: Entry, files: set[str]) -> CaseUpdate:
        result = self.options.result
        ext = EXTENSIONS[result.format]
        if not self._is_result(entry.name):
            raise ResultFileError(f"not a {ext} file")
        data = await self.storage.read(
            f"{self.options.folders.outbox}/{entry.name}", self._max_bytes
        )
        record = decode_result(data, result.format, encoding=result.encoding)
        return await self._case_update(record, entry.name, files)

    async def _case_update(self, record: dict[str, Any], name: str, files: set[str]) -> CaseUpdate:
        result = self.options.result
        fields = result.fields
        key = records.text(record, fields.idempotency_key)
        case_id = records.text(record, fields.case_id) or key
        status = records.text(record, fields.status)
        if not status:
            raise ResultFileError(f"no status in {fields.status!r}")
        if not case_id:
            raise ResultFileError("names no case (no case id or idempotency key)")
        items = records.items(
            records.field(record, fields.supplement_items), result.list_separators
        )
        detail = records.text(record, fields.detail) if fields.detail else ""
        event_id = records.text(record, fields.event_id) if fields.event_id else ""
        return CaseUpdate(
            case_id=case_id[:200],
            idempotency_key=key[:200] if key else None,
            ref=name,
            status=status[:64],
            detail=detail or None,
            occurred_at=records.time_of(records.text(record, fields.occurred_at), result.timezone),
            event_id=event_id or None,
            documents=await self._documents(record, name, files),
            supplement_items=[str(i) for i in items if not isinstance(i, (dict, list))],
        )

    async def _documents(
        self, record: dict[str, Any], name: str, files: set[str]
    ) -> list[ResultDocument]:
        result = self.options.result
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
                content = await self._document_file(name, ref.file)
                if self._documents_beside:
                    beside.append(ref.file)
            docs.append(
                ResultDocument(
                    name=ref.name, content_type=ref.content_type, content=content, url=ref.url
                )
            )
        self._beside[name] = beside
        return docs

    async def _document_file(self, result_name: str, file_ref: str) -> bytes:
        if not _FILE_REF.fullmatch(file_ref) or file_ref.startswith(".") or ".." in file_ref:
            raise ResultFileError("unsafe document file name (only plain names are allowed)")
        outbox = self.options.folders.outbox
        if self._documents_beside:
            if file_ref == result_name:
                raise ResultFileError("a document file is the result itself")
            path = f"{outbox}/{file_ref}"
        else:
            path = f"{outbox}/{records.stem_of(result_name)}.files/{file_ref}"
        try:
            return await self.storage.read(path, self._max_bytes)
        except FileTooLarge as exc:
            raise ResultFileError("a document file is too large") from exc
        except TransientError as exc:
            if await self.storage.exists(path):
                raise
            raise _DocumentNotYet(
                f"a document file named in the result is missing ({path})"
            ) from exc

    async def _refusals(self, limit: int) -> list[CaseUpdate]:
        """The department's error files (``<request name>.err`` or ``<key>.err``) as updates
        that move their case to ``failed`` with the department's reason."""
        folders = self.options.folders
        assert folders.errors is not None
        try:
            entries = await self._list(folders.errors)
        except TransientError:
            return []  # the department has not made its error folder (yet)
        out: list[CaseUpdate] = []
        for entry in sorted(entries, key=lambda e: (e.mtime, e.name)):
            if len(out) >= limit:
                break
            name = entry.name
            key = name.split(".", 1)[0]
            if not name.endswith(folders.error_suffix) or not _KEY.fullmatch(key):
                continue
            if entry.kind != "file":
                why = f"(its reason file is a {entry.kind}; not read)"
            else:
                why = await self._reason_text(f"{folders.errors}/{name}")
            REFUSALS.labels(self._dept).inc()
            log.warning("%s: the department refused request %s (%s)", self._dept, key, name)
            out.append(
                CaseUpdate(
                    case_id=key,
                    idempotency_key=key,
                    ref=_ERR_REF + name,
                    status=REFUSED,
                    detail=f"the department refused the request file: {why}",
                )
            )
        return out

    async def _reason_text(self, path: str) -> str:
        try:
            data = await self.storage.read(path, _REASON_BYTES)
        except FileTooLarge:
            return f"(its reason file is over {_REASON_BYTES} bytes; not read)"
        except (UnsafeFile, TransientError):
            return "(its reason file could not be read)"
        return records.note_text(data, self.options.request.encoding)

    async def ack_update(
        self, update: CaseUpdate, outcome: UpdateOutcome, reason: str = ""
    ) -> None:
        name = update.ref
        if not name:
            return
        if name.startswith(_ERR_REF):
            await self._settle_refusal(update, name[len(_ERR_REF) :], outcome, reason)
            return
        if not _plain_name(name):
            return
        if outcome == "unmatched":
            await self._quarantine(name, reason or "no matching case")
            return
        await self._move_out(name, self.options.folders.archive)
        key = update.idempotency_key or update.case_id
        if _KEY.fullmatch(key):
            at = update.occurred_at
            await self.ledger.note(key, at, status=update.status, case_id=update.case_id)

    async def _settle_refusal(
        self, update: CaseUpdate, name: str, outcome: UpdateOutcome, reason: str
    ) -> None:
        folders = self.options.folders
        if not _plain_name(name) or folders.errors is None:
            return
        target = folders.quarantine if outcome == "unmatched" else folders.archive
        if outcome != "unmatched":
            # a replay writes the request again instead of trusting the record of it
            await self.ledger.note(update.case_id, None, refused=update.detail or "refused")
        moved = await self._move(folders.errors, name, target)
        if moved is not None and outcome == "unmatched":
            await self._write_reason(moved, name, reason or "no matching case")

    async def _quarantine(self, name: str, reason: str) -> None:
        folders = self.options.folders
        moved = await self._move_out(name, folders.quarantine)
        if moved is not None:
            QUARANTINED.labels(self._dept).inc()
            log.warning(
                "%s: result file %s quarantined: %s (gateway filedrop quarantine lists it)",
                self._dept,
                name,
                reason,
            )
            await self._write_reason(moved, name, reason)

    async def _write_reason(self, moved: str, name: str, reason: str) -> None:
        note = f"{iso(dt.datetime.now(dt.UTC))} {name}: {reason}\n"
        await self.storage.write(
            f"{self.options.folders.quarantine}/{moved}.reason", note.encode(), atomic=True
        )

    async def _move_out(self, name: str, folder: str) -> str | None:
        """Move an outbox file (and its done marker and documents) into ``folder`` under a
        free name; returns that name, or None if the file was already gone."""
        outbox = self.options.folders.outbox
        self._seen.pop(name, None)
        self._waiting.pop(name, None)
        beside = self._beside.pop(name, [])
        dest = await self._move(outbox, name, folder, also_files=True)
        if dest is None:
            return None
        for document in beside:
            await self._move(outbox, document, folder)
        return dest

    async def _move(
        self, src: str, name: str, folder: str, *, also_files: bool = False
    ) -> str | None:
        taken = {e.name for e in await self._list(folder)}
        suffix = self.options.result.done_suffix if also_files else None
        return await quarantine.move_free(self.storage, src, name, folder, taken, suffix)

    # -- reconciliation and health -------------------------------------------------------------

    async def list_cases(
        self, since: dt.datetime, until: dt.datetime
    ) -> AsyncIterator[CaseSummary]:
        """Every request the gateway wrote whose last change falls in ``[since, until)``, as
        the department's side shows it: the last status its result files reported, ``failed``
        if it refused the request (an error file, read or not), else ``delivered`` while the
        request is in its inbox or (when ``processed`` is configured) its processed folder.
        A request found in neither, with no result ever, is left out: the department lost it,
        and reconciliation reports it missing."""
        await self._prepare()
        folders = self.options.folders
        waiting = await self._names(folders.inbox)
        taken = await self._names(folders.processed) if folders.processed else None
        refused = await self._names(folders.errors) if folders.errors else set()
        refused_keys = {n.split(".", 1)[0] for n in refused if n.endswith(folders.error_suffix)}
        sent = [e.name for e in await self._list(folders.sent) if e.kind == "file"]
        async for data in self.ledger.entries(sent):
            key = data["idempotency_key"]
            updated = records.time_of(str(data.get("updated_at") or ""), "UTC")
            status = data.get("status")
            if data.get("refused") or key in refused_keys:
                status = REFUSED
            elif not status and taken is not None:
                request = str(data.get("file") or "")
                if request not in waiting and request not in taken:
                    continue  # lost by the department
            if updated is None or since <= updated < until:
                yield CaseSummary(
                    case_id=str(data.get("case_id") or key)[:200],
                    idempotency_key=key,
                    status=str(status or "delivered")[:64],
                    updated_at=updated,
                )

    async def _names(self, folder: str) -> set[str]:
        try:
            return {e.name for e in await self._list(folder)}
        except TransientError:
            return set()  # not there (yet)

    async def health(self) -> Health:
        try:
            detail = await self.storage.health(self._folders())
            held = await quarantine.held(
                self.storage,
                self.options.folders,
                self.options.result.done_suffix,
                reasons=False,
            )
        except UnsafeFile as exc:
            return Health(ok=False, detail=str(self._unsafe(exc))[:300])
        except ConnectorError as exc:
            return Health(ok=False, detail=str(exc)[:300])
        if held:
            return Health(
                ok=False,
                detail=f"{detail}; {len(held)} result file(s) in quarantine "
                f"(gateway filedrop quarantine --department {self._dept})",
            )
        return Health(ok=True, detail=detail)

    async def aclose(self) -> None:
        await self.storage.aclose()

    async def _prepare(self) -> None:
        if not self._prepared:
            f = self.options.folders
            try:
                await self.storage.prepare([f.inbox, f.outbox, f.archive, f.quarantine, f.sent])
            except UnsafeFile as exc:
                raise self._unsafe(exc) from exc
            self._prepared = True

    def _folders(self) -> list[str]:
        f = self.options.folders
        return [f.inbox, f.outbox, f.archive, f.quarantine, f.sent] + [
            n for n in (f.processed, f.errors) if n
        ]

    async def _list(self, folder: str) -> list[Entry]:
        try:
            return await self.storage.listdir(folder)
        except UnsafeFile as exc:
            raise self._unsafe(exc) from exc


# -- helpers -------------------------------------------------------------------------------------


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\0")
