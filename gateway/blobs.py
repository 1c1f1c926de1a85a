"""Content-addressed file store for materials and result documents (a local folder).

Files live at ``<root>/<sha[:2]>/<sha>``; writing is atomic (temporary file, fsync, rename) and
reading checks the hash, so a damaged file is an error, never a silently wrong document.

A write that fails because the disk is full or cannot be written leaves nothing behind (the
temporary file is removed) and raises :class:`~gateway.errors.StorageFull` or
:class:`~gateway.errors.StorageUnavailable`: an upload is answered 507/503, a department update
that carried a document is not applied (so it comes again: callback retried, poll repeated,
pulled update not acked). The failure is logged once per outage; free space under
``min_free_bytes`` is a WARNING (and ``gateway_data_dir_free_bytes`` shows it all the time).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import itertools
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import structlog

from gateway import metrics
from gateway.errors import InfrastructureError, StorageFull, StorageUnavailable
from gateway.outage import REMIND_SECONDS, Outage

log = structlog.get_logger("gateway.blobs")

_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_HEX = frozenset("0123456789abcdef")
#: temporary names: ``.tmp-<pid>-<n>``, unique among this process's writers (the counter is
#: shared by the worker threads; ``next`` on it is atomic); a name left by an earlier process
#: with the same id is skipped (O_EXCL). tempfile.mkstemp drew random names and went through
#: more Python per file: a put's CPU less the fsync was about halved
_SERIAL = itertools.count()
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


class BlobCorrupted(Exception):
    pass


class BlobStore:
    def __init__(self, root: Path, *, min_free_bytes: int = 0) -> None:
        self.root = root
        self.min_free_bytes = min_free_bytes
        self.outage = Outage("storage", what="not writable")
        self._low_said = -float("inf")  # monotonic time of the last low-space WARNING
        self._low = False
        root.mkdir(parents=True, exist_ok=True)
        metrics.DATA_DIR_FREE.set_function(self.free_bytes)
        self.check_space()

    def free_bytes(self) -> float:
        try:
            return float(shutil.disk_usage(self.root).free)
        except OSError:
            return float("nan")

    def check_space(self) -> float:
        """Free bytes under the root; a WARNING when under ``min_free_bytes`` (again at most
        every few minutes while it stays so), an INFO when it is back over."""
        free = self.free_bytes()
        low = free < self.min_free_bytes
        metrics.DATA_DIR_LOW.set(int(low))
        t = time.monotonic()
        if low and (not self._low or t - self._low_said >= REMIND_SECONDS):
            self._low_said = t
            log.warning(
                "data_dir low on free space",
                path=str(self.root),
                free_mb=round(free / 2**20, 1),
                threshold_mb=round(self.min_free_bytes / 2**20, 1),
            )
        elif self._low and not low:
            log.info("data_dir has free space again", free_mb=round(free / 2**20, 1))
        self._low = low
        return free

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or not _HEX.issuperset(sha256):
            raise ValueError("not a sha256 hex digest")
        return self.root / sha256[:2] / sha256

    def _put(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        folder = os.path.join(self.root, sha[:2])
        target = os.path.join(folder, sha)
        try:
            os.utime(target)  # there: fresh again (expiring uploads leaves recent puts alone)
            return sha
        except FileNotFoundError:
            pass
        fd, tmp = _create(folder)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return sha

    def _get(self, sha256: str) -> bytes:
        data = self.path(sha256).read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise BlobCorrupted(f"stored file {sha256[:12]}… does not match its hash")
        return data

    async def put(self, data: bytes) -> str:
        """Store ``data``; returns its sha256. Raises StorageFull / StorageUnavailable."""
        [sha] = await self.put_many([data])
        return sha

    async def put_many(self, items: Sequence[bytes]) -> list[str]:
        """:meth:`put` for several, in one trip to a worker thread; their sha256s in order."""
        if not items:
            return []
        try:
            shas = await asyncio.to_thread(lambda: [self._put(data) for data in items])
        except OSError as exc:
            error = storage_error(exc)
            self.outage.failed(str(error))
            self.check_space()
            raise error from exc
        self.outage.ok()
        if self.min_free_bytes:
            self.check_space()
        return shas

    def remove_if_older(self, sha256: str, before: float) -> bool:
        """Remove a stored file not put (or put again) since ``before`` (epoch seconds)."""
        target = self.path(sha256)
        try:
            if target.stat().st_mtime >= before:
                return False
            target.unlink()
        except FileNotFoundError:
            return False
        return True

    async def get(self, sha256: str) -> bytes:
        """The bytes stored under ``sha256``, checked against it."""
        return await asyncio.to_thread(self._get, sha256)


def _create(folder: str) -> tuple[int, str]:
    """A new temporary file in ``folder`` (made if missing): its descriptor and name."""
    pid = os.getpid()
    while True:
        tmp = os.path.join(folder, f".tmp-{pid}-{next(_SERIAL)}")
        try:
            return os.open(tmp, _CREATE, 0o600), tmp
        except FileExistsError:  # left by an earlier process of the same id
            continue
        except FileNotFoundError:
            os.makedirs(folder, exist_ok=True)
            return _create(folder)


def storage_error(exc: OSError) -> InfrastructureError:
    """What a failed write under data_dir means for the caller."""
    why = exc.strerror or type(exc).__name__
    if exc.errno in _FULL:
        return StorageFull(f"data_dir is full: {why}", retry_after=60.0)
    return StorageUnavailable(f"data_dir cannot be written: {why}", retry_after=30.0)
