"""The gateway's own record of each request it wrote (``sent/<key>.json``): what makes
``submit`` idempotent and what ``list_cases`` starts from.

An entry holds the key, the request file's name, when it was sent, and what became of it: the
last ``status`` and the department's ``case_id`` its results reported, or ``refused`` (the
department's reason) when it moved the request to its error folder.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

from gateway.connector import Envelope
from gateway_filedrop.storage import Change, FileTooLarge, Storage

__all__ = ["ENTRY_BYTES", "Ledger", "iso"]

#: the largest ledger entry read
ENTRY_BYTES = 65536
_ENTRY_BYTES = ENTRY_BYTES


def iso(value: dt.datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _entry(data: bytes | None) -> dict[str, Any] | None:
    """An entry from its file's bytes: None if there is no file, ``{}`` if unreadable."""
    if data is None:
        return None
    try:
        entry = json.loads(data)
    except ValueError:
        return {}
    return entry if isinstance(entry, dict) else {}


def _at(value: Any) -> dt.datetime:
    """An entry's ISO time (the earliest possible when absent or unreadable)."""
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return dt.datetime.min.replace(tzinfo=dt.UTC)


class Ledger:
    def __init__(self, storage: Storage, folder: str) -> None:
        self.storage = storage
        self.folder = folder

    def path(self, key: str) -> str:
        return f"{self.folder}/{key}.json"

    async def read(self, key: str) -> dict[str, Any] | None:
        """The entry; None if there is none, ``{}`` if it is there but unreadable (the request
        was written: it must not be written again)."""
        try:
            return _entry(await self.storage.read_if_exists(self.path(key), _ENTRY_BYTES))
        except FileTooLarge:
            return {}

    async def record_sent(self, envelope: Envelope, name: str, started: dt.datetime) -> None:
        """Record the request ``name`` written; ``started``: when its writing began. A refusal
        noted since then is this request's (the department can take and refuse a request
        before this record is written, and the gateway read that refusal): it is kept, so a
        replay writes the request again."""
        change = self.sent(envelope, name, started)
        try:  # read and written in one trip
            await self.storage.update(self.path(envelope.idempotency_key), change, _ENTRY_BYTES)
        except FileTooLarge:  # an unreadable entry is replaced
            await self.storage.write(
                self.path(envelope.idempotency_key), change(None) or b"", atomic=True
            )

    def sent(self, envelope: Envelope, name: str, started: dt.datetime) -> Change:
        """:meth:`record_sent`'s change of the entry (for :meth:`Storage.update`)."""
        key = envelope.idempotency_key
        now = iso(dt.datetime.now(dt.UTC))
        entry: dict[str, Any] = {
            "case_id": key,
            "idempotency_key": key,
            "application_id": envelope.application_id,
            "version": envelope.version,
            "file": name,
            "sent_at": now,
            "status": None,
            "updated_at": now,
        }

        def change(old: bytes | None) -> bytes:
            before = _entry(old)
            if before and before.get("refused") and _at(before.get("updated_at")) >= started:
                entry["refused"] = before["refused"]
            return json.dumps(entry).encode()

        return change

    async def note(self, key: str, at: dt.datetime | None, **changes: Any) -> None:
        """Record what became of a request (changes that are None are left as they are)."""
        await self.note_many([(key, at, changes)])

    async def note_many(self, notes: list[tuple[str, dt.datetime | None, dict[str, Any]]]) -> None:
        """:meth:`note` for each (key, time, changes), in one trip to the storage. The notes
        of one key are applied in order to its entry read once and written once (a case's
        results often come in one batch: "accepted", then the decision), as the same notes
        one after the other would leave it; only that last state is written (each write of
        an entry is a new file renamed over it, ~1 ms of CPU here)."""

        def changing(key: str, steps: list[tuple[dt.datetime | None, dict[str, Any]]]) -> Change:
            def change(old: bytes | None) -> bytes | None:
                entry = _entry(old)
                for at, changes in steps:
                    if entry is None and changes.get("refused"):
                        # refused before the request's own record was written (see record_sent)
                        entry = {"case_id": key, "idempotency_key": key, "status": None}
                    if not entry:
                        continue  # no request of ours (or unreadable): list_cases won't show it
                    entry.update({k: v for k, v in changes.items() if v is not None})
                    entry["updated_at"] = iso(at or dt.datetime.now(dt.UTC))
                return json.dumps(entry).encode() if entry else None

            return change

        if not notes:
            return
        by_key: dict[str, list[tuple[dt.datetime | None, dict[str, Any]]]] = {}
        for key, at, changes in notes:
            by_key.setdefault(key, []).append((at, changes))
        # A refusal must survive a power cut: it is what lets a replay write the request again
        # (see record_sent). A status is not fsynced (one fsync a result, the pull's slowest
        # step under I/O load): the case's own is in the gateway's database (the result is
        # moved out only after it is applied there); a status lost with the page cache sends
        # submit's duplicate check to the department's folders, and list_cases shows the
        # status noted before it until the case's next result.
        durable = any(changes.get("refused") for _, _, changes in notes)
        # read and written in one trip; an unreadable entry (too large, a link) is left as it is
        await self.storage.update_many(
            [(self.path(key), changing(key, steps)) for key, steps in by_key.items()],
            _ENTRY_BYTES,
            durable=durable,
        )

    async def entries(self, names: list[str]) -> AsyncIterator[dict[str, Any]]:
        """The readable entries among the folder's file ``names``, in name order."""
        for name in sorted(names):
            if not name.endswith(".json") or name.startswith("."):
                continue
            try:
                entry = json.loads(await self.storage.read(f"{self.folder}/{name}", _ENTRY_BYTES))
            except (ValueError, FileTooLarge):
                continue
            if isinstance(entry, dict) and isinstance(entry.get("idempotency_key"), str):
                yield entry
