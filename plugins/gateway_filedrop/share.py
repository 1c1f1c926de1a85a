"""The department's share as every part of the connector sees it: the storage opened from
``[options.target]``, the folders, listing (a link or special file there is no retry matter)
and moving files under a free name.

Names found in a folder are only ever used as one path segment in the folder they were listed
from (:func:`plain_name`); every name the gateway makes comes from its idempotency key
(:data:`KEY`), never from applicant input.
"""

from __future__ import annotations

import re

from gateway.errors import PermanentError, TransientError
from gateway_filedrop.local_storage import LocalStorage
from gateway_filedrop.options import FiledropOptions, LocalTarget
from gateway_filedrop.storage import Entry, Storage, UnsafeFile

__all__ = ["KEY", "Share", "open_storage", "plain_name"]

#: what an idempotency key must look like to become a file name
KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")


def open_storage(options: FiledropOptions, label: str) -> Storage:
    """The storage of a department's target (local folder or SFTP server)."""
    target = options.target
    if isinstance(target, LocalTarget):
        return LocalStorage(target, label)
    # imported here: asyncssh costs every start ~0.1 s, and only SFTP targets use it
    from gateway_filedrop.sftp_storage import SftpStorage

    return SftpStorage(target, label, options.timeout_seconds)


def plain_name(name: str) -> bool:
    """Whether ``name`` is one path segment (never a path, never ``.`` or ``..``)."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\0")


class Share:
    """One department's folders on its storage."""

    def __init__(self, options: FiledropOptions, department: str) -> None:
        self.options = options
        self.folders = options.folders
        self.department = department
        self.storage = open_storage(options, department)
        self._prepared = False

    def unsafe(self, exc: UnsafeFile) -> PermanentError:
        """A link or special file where the gateway writes or lists: not for retrying."""
        return PermanentError(f"{self.department}: {exc} (an operator must check the share)")

    async def prepare(self) -> None:
        """Create the gateway's folders once (the department's own are its to make)."""
        if not self._prepared:
            f = self.folders
            try:
                await self.storage.prepare([f.inbox, f.outbox, f.archive, f.quarantine, f.sent])
            except UnsafeFile as exc:
                raise self.unsafe(exc) from exc
            self._prepared = True

    def all_folders(self) -> list[str]:
        f = self.folders
        return [f.inbox, f.outbox, f.archive, f.quarantine, f.sent] + [
            n for n in (f.processed, f.errors) if n
        ]

    async def list(self, folder: str) -> list[Entry]:
        try:
            return await self.storage.listdir(folder)
        except UnsafeFile as exc:
            raise self.unsafe(exc) from exc

    async def names(self, folder: str) -> set[str]:
        """The names in ``folder``; none if it is not there (yet)."""
        try:
            return {e.name for e in await self.list(folder)}
        except TransientError:
            return set()

    async def move(
        self, src: str, name: str, folder: str, *, also_files: bool = False
    ) -> str | None:
        """Move ``src/name`` into ``folder`` under a free name (``also_files``: with its done
        marker and ``.files`` folder); the name used, or None if it was gone."""
        suffix = self.options.result.done_suffix if also_files else None
        try:
            return await self.storage.move_free(src, name, folder, suffix)
        except UnsafeFile as exc:
            raise self.unsafe(exc) from exc

    async def aclose(self) -> None:
        await self.storage.aclose()
