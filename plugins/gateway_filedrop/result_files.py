"""Reading result files from the department's outbox: which names are results, when one is
complete (stable size and mtime, or a done marker), decoding it into a case update with its
documents, and where it goes afterwards (archive when applied, quarantine with a reason when
it cannot be read or matched: logged at WARNING and counted, never dropped silently)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter

from gateway.connector import CaseUpdate, UpdateOutcome
from gateway_filedrop import quarantine, records
from gateway_filedrop.documents import DocumentNotYet, documents_beside, read_documents
from gateway_filedrop.formats import EXTENSIONS, ResultFileError, decode_result
from gateway_filedrop.ledger import Ledger
from gateway_filedrop.share import KEY, Share, plain_name
from gateway_filedrop.storage import Entry, FileTooLarge, Move, UnsafeFile

__all__ = ["QUARANTINED", "ResultReader"]

log = logging.getLogger("gateway_filedrop")

QUARANTINED = Counter(
    "gateway_filedrop_quarantined_total",
    "Result files moved to quarantine, by department",
    ["department"],
)


#: results archived together (:meth:`ResultReader.archive_many`)
SETTLE_GROUP = 25

#: how many bytes (as listed) of results are read in one trip to the storage
_GROUP_BYTES = 8 << 20


def _groups(entries: list[Entry]) -> list[list[Entry]]:
    """``entries`` in groups read together: one trip each, at most :data:`_GROUP_BYTES` as
    listed (a larger file alone), so a pull never holds more than that unread."""
    groups: list[list[Entry]] = []
    size = _GROUP_BYTES
    for entry in entries:
        if size + entry.size > _GROUP_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(entry)
        size += entry.size
    return groups


class ResultReader:
    """The outbox of one department. Remembers between scans what it saw of each file (for
    ``stable`` completion and for documents still to come)."""

    def __init__(self, share: Share, ledger: Ledger, max_bytes: int) -> None:
        self.share = share
        self.ledger = ledger
        self.max_bytes = max_bytes
        self.clock: Callable[[], float] = time.monotonic
        #: outbox name -> (size, mtime, clock time first seen like that)
        self.seen: dict[str, tuple[int, float, float]] = {}
        #: outbox name -> clock time a document it names was first found missing
        self._waiting: dict[str, float] = {}
        #: outbox name -> document files beside it, moved along when it is archived
        self._beside: dict[str, list[str]] = {}

    async def pull(self, limit: int) -> list[CaseUpdate]:
        """Up to ``limit`` complete results, oldest first; what cannot be read is quarantined."""
        outbox = self.share.folders.outbox
        entries = await self.share.list(outbox)
        names = {e.name for e in entries}
        self.seen = {n: s for n, s in self.seen.items() if n in names}
        self._waiting = {n: s for n, s in self._waiting.items() if n in names}
        files = {e.name for e in entries if e.kind == "file"}
        chosen: list[Entry] = []
        for entry in sorted(entries, key=lambda e: (e.mtime, e.name)):
            if len(chosen) >= limit:
                break
            if not self._candidate(entry):
                continue
            if entry.kind != "file":  # never opened, followed, or waited for
                await self.quarantine(entry.name, f"{outbox}/{entry.name} is a {entry.kind}")
                continue
            if self._complete(entry, names):
                chosen.append(entry)
        updates: list[CaseUpdate] = []
        for group in _groups(chosen):
            results = [e for e in group if self._is_result(e.name)]
            read = (
                await self.share.storage.read_many(
                    [f"{outbox}/{e.name}" for e in results], self.max_bytes
                )
                if results
                else []
            )
            contents = dict(zip((e.name for e in results), read, strict=True))
            for entry in group:
                try:
                    updates.append(await self._read(entry, contents.get(entry.name), files))
                except DocumentNotYet as exc:
                    first = self._waiting.setdefault(entry.name, self.clock())
                    wait = self.share.options.result.missing_document_wait_seconds
                    if self.clock() - first >= wait:
                        await self.quarantine(entry.name, str(exc))
                except ResultFileError as exc:
                    await self.quarantine(entry.name, str(exc))
                except FileTooLarge:
                    await self.quarantine(entry.name, f"larger than {self.max_bytes} bytes")
        return updates

    async def settle(self, update: CaseUpdate, outcome: UpdateOutcome, reason: str) -> None:
        """After the gateway applied (or could not match) a result: archive it (the ledger
        notes its status) or quarantine it with the reason."""
        name = update.ref or ""
        if not plain_name(name):
            return
        if outcome == "unmatched":
            await self.quarantine(name, reason or "no matching case")
            return
        await self._move_out(name, self.share.folders.archive)
        key = update.idempotency_key or update.case_id
        if KEY.fullmatch(key):
            at = update.occurred_at
            await self.ledger.note(key, at, status=update.status, case_id=update.case_id)

    async def archive_many(self, updates: list[CaseUpdate]) -> None:
        """:meth:`settle` of results the gateway applied or found applied (``applied``,
        ``duplicate``), :data:`SETTLE_GROUP` at a time: a group's files archived in one trip
        to the storage, then their ledger statuses noted in another (a result a trip each
        way, before). A call cut short (the department's timeout: over SFTP each file
        operation is a round trip) leaves at most one group archived without its statuses
        noted; the groups after it stay in the outbox and come again.

        A request's results are settled in one group (in the order they came, the requests
        in the order of their first result; a group is whole requests, at most
        :data:`SETTLE_GROUP` results unless one request has more): its ledger entry is then
        noted once for them all. A pull lists many "accepted" results before their decisions,
        and each write of an entry is a new file (~1 ms of CPU here)."""
        by_request: dict[str, list[CaseUpdate]] = {}
        for update in updates:
            by_request.setdefault(update.idempotency_key or update.case_id, []).append(update)
        group: list[CaseUpdate] = []
        for same in by_request.values():
            if group and len(group) + len(same) > SETTLE_GROUP:
                await self._archive_group(group)
                group = []
            group += same
        if group:
            await self._archive_group(group)

    async def _archive_group(self, updates: list[CaseUpdate]) -> None:
        outbox, archive = self.share.folders.outbox, self.share.folders.archive
        suffix = self.share.options.result.done_suffix
        moves: list[Move] = []
        beside: list[list[str]] = []
        for update in updates:
            name = update.ref or ""
            if not plain_name(name):
                continue
            self.seen.pop(name, None)
            self._waiting.pop(name, None)
            moves.append((outbox, name, archive, suffix))
            beside.append(self._beside.pop(name, []))
        try:
            moved = await self.share.storage.move_free_many(moves)
            # the documents beside each result moved (not of one that was gone), in one more
            documents: list[Move] = [
                (outbox, doc, archive, None)
                for dest, docs in zip(moved, beside, strict=True)
                if dest is not None
                for doc in docs
            ]
            await self.share.storage.move_free_many(documents)
        except UnsafeFile as exc:
            raise self.share.unsafe(exc) from exc
        await self.ledger.note_many(
            [
                (key, update.occurred_at, {"status": update.status, "case_id": update.case_id})
                for update in updates
                if plain_name(update.ref or "")
                and KEY.fullmatch(key := update.idempotency_key or update.case_id)
            ]
        )

    async def quarantine(self, name: str, reason: str) -> None:
        moved = await self._move_out(name, self.share.folders.quarantine)
        if moved is not None:
            dept = self.share.department
            QUARANTINED.labels(dept).inc()
            log.warning(
                "%s: result file %s quarantined: %s (gateway filedrop quarantine lists it)",
                dept,
                name,
                reason,
            )
            await quarantine.note(self.share.storage, self.share.folders, moved, name, reason)

    def _candidate(self, entry: Entry) -> bool:
        name = entry.name
        result = self.share.options.result
        if entry.is_dir or not plain_name(name) or name.startswith("."):
            return False
        if name.endswith(".files"):  # a result's documents (a link there fails that result)
            return False
        if entry.kind == "file" and documents_beside(result) and not self._is_result(name):
            return False  # a document waiting beside its result
        return not name.endswith((".tmp", ".part", result.done_suffix, ".reason"))

    def _is_result(self, name: str) -> bool:
        return name.endswith(EXTENSIONS[self.share.options.result.format])

    def _complete(self, entry: Entry, names: set[str]) -> bool:
        result = self.share.options.result
        if result.complete == "done_marker":
            return entry.name + result.done_suffix in names
        now = self.clock()
        seen = self.seen.get(entry.name)
        if seen is None or seen[:2] != (entry.size, entry.mtime):
            self.seen[entry.name] = (entry.size, entry.mtime, now)
            return result.stable_seconds == 0
        return now - seen[2] >= result.stable_seconds

    async def _read(
        self, entry: Entry, data: bytes | Exception | None, files: set[str]
    ) -> CaseUpdate:
        """The update of a result file (``data``: its bytes, or what reading it raised)."""
        result = self.share.options.result
        if data is None or not self._is_result(entry.name):
            raise ResultFileError(f"not a {EXTENSIONS[result.format]} file")
        if isinstance(data, Exception):
            raise data
        record = decode_result(data, result.format, encoding=result.encoding)
        return await self._case_update(record, entry.name, files)

    async def _case_update(self, record: dict[str, Any], name: str, files: set[str]) -> CaseUpdate:
        result = self.share.options.result
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
        occurred_at = records.time_of(records.text(record, fields.occurred_at), result.timezone)
        documents, self._beside[name] = await read_documents(
            self.share, self.max_bytes, record, name, files
        )
        return CaseUpdate(
            case_id=case_id[:200],
            idempotency_key=key[:200] if key else None,
            ref=name,
            status=status[:64],
            detail=detail or None,
            occurred_at=occurred_at,
            event_id=event_id or None,
            documents=documents,
            supplement_items=[str(i) for i in items if not isinstance(i, (dict, list))],
        )

    async def _move_out(self, name: str, folder: str) -> str | None:
        """Move an outbox file (and its done marker and documents) into ``folder`` under a
        free name; returns that name, or None if the file was already gone."""
        outbox = self.share.folders.outbox
        self.seen.pop(name, None)
        self._waiting.pop(name, None)
        beside = self._beside.pop(name, [])
        dest = await self.share.move(outbox, name, folder, also_files=True)
        if dest is None:
            return None
        for document in beside:
            await self.share.move(outbox, document, folder)
        return dest
