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
from gateway.errors import ConnectorError
from gateway_filedrop.storage import FileTooLarge, Storage, UnsafeFile

__all__ = ["Ledger", "iso"]

_ENTRY_BYTES = 65536


def iso(value: dt.datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


class Ledger:
    def __init__(self, storage: Storage, folder: str) -> None:
        self.storage = storage
        self.folder = folder

    def path(self, key: str) -> str:
        return f"{self.folder}/{key}.json"

    async def read(self, key: str) -> dict[str, Any] | None:
        """The entry; None if there is none, ``{}`` if it is there but unreadable (the request
        was written: it must not be written again)."""
        if not await self.storage.exists(self.path(key)):
            return None
        try:
            entry = json.loads(await self.storage.read(self.path(key), _ENTRY_BYTES))
        except (FileTooLarge, ValueError):
            return {}
        return entry if isinstance(entry, dict) else {}

    async def record_sent(self, envelope: Envelope, name: str) -> None:
        now = iso(dt.datetime.now(dt.UTC))
        await self._write(
            envelope.idempotency_key,
            {
                "case_id": envelope.idempotency_key,
                "idempotency_key": envelope.idempotency_key,
                "application_id": envelope.application_id,
                "version": envelope.version,
                "file": name,
                "sent_at": now,
                "status": None,
                "updated_at": now,
            },
        )

    async def note(self, key: str, at: dt.datetime | None, **changes: Any) -> None:
        """Record what became of a request (changes that are None are left as they are)."""
        try:
            entry = await self.read(key)
        except (UnsafeFile, ConnectorError):
            return
        if not entry:
            return  # no request of ours (or unreadable): list_cases just won't show it
        entry.update({k: v for k, v in changes.items() if v is not None})
        entry["updated_at"] = iso(at or dt.datetime.now(dt.UTC))
        await self._write(key, entry)

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

    async def _write(self, key: str, entry: dict[str, Any]) -> None:
        await self.storage.write(self.path(key), json.dumps(entry).encode(), atomic=True)
