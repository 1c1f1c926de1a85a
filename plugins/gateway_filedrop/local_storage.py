"""A local folder or mounted share as a :class:`~gateway_filedrop.storage.Storage`.

Every operation starts from a descriptor of the root (which config names, so it may itself be
a link, e.g. to a mount point) and reaches its folder one component at a time with
``O_NOFOLLOW | O_DIRECTORY``; files are then opened relative to that folder's descriptor with
``O_NOFOLLOW | O_NONBLOCK`` after an lstat said they are regular (a FIFO is never opened, so it
cannot block a worker thread, which no cancellation or SIGTERM could interrupt), and fstat
confirms it after the open. Writes go to a temporary name created with ``O_EXCL`` after
removing whatever had that name, so a planted link is replaced, never written through.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import Callable, Iterator
from typing import TypeVar

from gateway.errors import TransientError
from gateway_filedrop.options import LocalTarget
from gateway_filedrop.storage import (
    Change,
    Entry,
    FileTooLarge,
    Move,
    UnsafeFile,
    files_of,
    free_name,
    kind_of,
    not_a,
    split,
    temp_name,
)

__all__ = ["LocalStorage"]

T = TypeVar("T")
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | _CLOEXEC
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC
_OVERWRITE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
_CHUNK = 1 << 20


class _RootMissing(Exception):
    pass


class LocalStorage:
    def __init__(self, target: LocalTarget, label: str) -> None:
        self.root = target.root
        self.label = label

    async def _run(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(fn)
        except (FileTooLarge, UnsafeFile):
            raise
        except _RootMissing as exc:
            raise TransientError(
                f"{self.label}: root folder {self.root} is not a directory (is the share mounted?)"
            ) from exc
        except OSError as exc:
            hint = " (check the folder's permissions)" if isinstance(exc, PermissionError) else ""
            raise TransientError(
                f"{self.label}: cannot {what}: {type(exc).__name__}{hint}"
            ) from exc

    @contextlib.contextmanager
    def _folder(self, folder: str, *, create: bool = False) -> Iterator[int]:
        """A descriptor of ``folder`` (relative to the root), reached without following any
        link below the root; ``create``: make missing components."""
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise _RootMissing from exc
        try:
            walked: list[str] = []
            for part in folder.split("/") if folder else []:
                if part in ("", ".", ".."):
                    raise UnsafeFile(f"{folder!r} is not a plain folder path")
                walked.append(part)
                try:
                    inner = os.open(part, _DIR, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):  # made meanwhile
                        os.mkdir(part, dir_fd=fd)
                    inner = os.open(part, _DIR, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise
                    kind = kind_of(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode)
                    if kind == "file":  # a mistake, not a trick: retried until someone fixes it
                        raise
                    raise not_a("/".join(walked), kind, "folder") from exc
                os.close(fd)
                fd = inner
            yield fd
        finally:
            os.close(fd)

    async def prepare(self, folders: list[str]) -> None:
        def run() -> None:
            for folder in folders:
                with self._folder(folder, create=True):
                    pass

        await self._run("create folders", run)

    async def listdir(self, folder: str) -> list[Entry]:
        def run() -> list[Entry]:
            out = []
            with self._folder(folder) as fd, os.scandir(fd) as it:
                for item in it:
                    try:
                        st = item.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    out.append(Entry(item.name, st.st_size, st.st_mtime, kind_of(st.st_mode)))
            return out

        return await self._run(f"list {folder}", run)

    async def exists(self, path: str) -> bool:
        return await self._run(f"check {path}", lambda: self._exists(path))

    async def read(self, path: str, max_bytes: int) -> bytes:
        return await self._run(f"read {path}", lambda: self._read(path, max_bytes))

    async def write(self, path: str, data: bytes, *, atomic: bool) -> None:
        await self._run(f"write {path}", lambda: self._write(path, data, atomic=atomic))

    async def move(self, src: str, dst: str) -> bool:
        def run() -> bool:
            (src_folder, src_name), (dst_folder, dst_name) = split(src), split(dst)
            with self._folder(src_folder) as src_fd, self._folder(dst_folder) as dst_fd:
                return _rename(src_name, src_fd, dst_name, dst_fd)

        return await self._run(f"move {src}", run)

    async def read_if_exists(self, path: str, max_bytes: int) -> bytes | None:
        return await self._run(f"read {path}", lambda: self._read_if_exists(path, max_bytes))

    async def read_many(self, paths: list[str], max_bytes: int) -> list[bytes | Exception]:
        def run() -> list[bytes | Exception]:
            out: list[bytes | Exception] = []
            for path in paths:
                try:
                    out.append(self._read(path, max_bytes))
                except (FileTooLarge, UnsafeFile) as exc:
                    out.append(exc)
            return out

        return await self._run(f"read {paths[0]}", run)

    async def any_exists(self, paths: list[str]) -> bool:
        return await self._run(f"check {paths[0]}", lambda: any(map(self._exists, paths)))

    async def update(
        self, path: str, change: Change, max_bytes: int, *, durable: bool = True
    ) -> None:
        def run() -> None:
            data = change(self._read_if_exists(path, max_bytes))
            if data is not None:
                self._write(path, data, atomic=True, durable=durable)

        await self._run(f"update {path}", run)

    async def create_new(
        self, absent: list[str], path: str, data: bytes, then: tuple[str, Change, int]
    ) -> bool:
        def run() -> bool:
            if any(map(self._exists, absent)):
                return False
            self._write(path, data, atomic=True)
            after, change, max_bytes = then
            new = change(self._read_if_exists(after, max_bytes))
            if new is not None:
                self._write(after, new, atomic=True)
            return True

        return await self._run(f"write {path}", run)

    async def update_many(
        self, changes: list[tuple[str, Change]], max_bytes: int, *, durable: bool = True
    ) -> list[Exception | None]:
        def run() -> list[Exception | None]:
            out: list[Exception | None] = []
            for path, change in changes:
                try:
                    data = change(self._read_if_exists(path, max_bytes))
                    if data is not None:
                        self._write(path, data, atomic=True, durable=durable)
                except (FileTooLarge, UnsafeFile) as exc:
                    out.append(exc)
                else:
                    out.append(None)
            return out

        if not changes:
            return []
        return await self._run(f"update {changes[0][0]}", run)

    async def move_free(
        self, src: str, name: str, folder: str, done_suffix: str | None
    ) -> str | None:
        [dest] = await self.move_free_many([(src, name, folder, done_suffix)])
        return dest

    async def move_free_many(self, moves: list[Move]) -> list[str | None]:
        def run() -> list[str | None]:
            return [self._move_free(*move) for move in moves]

        if not moves:
            return []
        return await self._run(f"move {moves[0][0]}/{moves[0][1]}", run)

    # -- in the worker thread ----------------------------------------------------------------

    def _move_free(self, src: str, name: str, folder: str, done_suffix: str | None) -> str | None:
        with self._folder(src) as src_fd, self._folder(folder) as dst_fd:

            def taken(candidate: str) -> bool:
                try:
                    os.stat(candidate, dir_fd=dst_fd, follow_symlinks=False)
                except FileNotFoundError:
                    return False
                return True

            dest = free_name(name, taken)
            if not _rename(name, src_fd, dest, dst_fd):
                return None
            if done_suffix is not None:
                _rename(name + done_suffix, src_fd, dest + done_suffix, dst_fd)
                _rename(files_of(name), src_fd, files_of(dest), dst_fd)
            return dest

    def _exists(self, path: str) -> bool:
        folder, name = split(path)
        try:
            with self._folder(folder) as fd:
                os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def _read_if_exists(self, path: str, max_bytes: int) -> bytes | None:
        try:
            return self._read(path, max_bytes)
        except FileNotFoundError:  # the file or a folder on its path
            return None

    def _read(self, path: str, max_bytes: int) -> bytes:
        folder, name = split(path)
        with self._folder(folder) as dir_fd:
            kind = kind_of(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
            if kind != "file":
                raise not_a(path, kind, "file")
            try:
                fd = os.open(name, _READ, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:  # became a link since the lstat
                    raise not_a(path, "symbolic link", "file") from exc
                raise
        try:
            kind = kind_of(os.fstat(fd).st_mode)
            if kind != "file":
                raise not_a(path, kind, "file")
            chunks, size = [], 0
            while size <= max_bytes:
                chunk = os.read(fd, min(_CHUNK, max_bytes + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
        if size > max_bytes:
            raise FileTooLarge(path)
        return b"".join(chunks)

    def _write(self, path: str, data: bytes, *, atomic: bool, durable: bool = True) -> None:
        folder, name = split(path)
        with self._folder(folder) as dir_fd:
            if atomic:
                temp = split(temp_name(path))[1]
                # a stale temporary file, or a link planted where we write: drop the name
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp, dir_fd=dir_fd)
                fd = os.open(temp, _CREATE, 0o666, dir_fd=dir_fd)
                try:
                    _write_all(fd, data)
                    if durable:
                        os.fsync(fd)
                except BaseException:
                    os.close(fd)
                    os.unlink(temp, dir_fd=dir_fd)
                    raise
                os.close(fd)
                os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                return
            try:
                kind = kind_of(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
            except FileNotFoundError:
                kind = "file"
            if kind != "file":
                raise not_a(path, kind, "file")
            try:
                fd = os.open(name, _OVERWRITE, 0o666, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENXIO):  # swapped for a link or FIFO
                    raise not_a(path, "special file", "file") from exc
                raise
        try:
            if kind_of(os.fstat(fd).st_mode) != "file":
                raise not_a(path, "special file", "file")
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)

    async def health(self, folders: list[str]) -> str:
        def run() -> None:
            for folder in folders:
                with contextlib.suppress(FileNotFoundError), self._folder(folder):
                    pass

        await self._run("check folders", run)
        return f"folder {self.root}"

    async def aclose(self) -> None:
        """Nothing held."""


def _rename(src: str, src_fd: int, dst: str, dst_fd: int) -> bool:
    """Rename within the two folders; False if ``src`` is gone."""
    try:
        os.rename(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
    except FileNotFoundError:
        return False
    return True


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
