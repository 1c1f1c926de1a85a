"""An SFTP server as a :class:`~gateway_filedrop.storage.Storage` (asyncssh).

The server resolves paths itself (SFTP v3 has no ``O_NOFOLLOW``), so before a file is opened
each component below the root is ``lstat``-ed (folders must be folders, the file a regular
file) and the server's ``realpath`` of it must be the path asked for under the root's
``realpath``; after opening, the handle's ``fstat`` must say regular file again. Temporary
names are removed and then created exclusively, so a planted link is never written through.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import stat
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncssh

from gateway.errors import PermanentError, TransientError
from gateway_filedrop.options import SftpTarget
from gateway_filedrop.storage import (
    Change,
    Entry,
    FileTooLarge,
    Kind,
    Move,
    UnsafeFile,
    candidates,
    files_of,
    kind_of,
    not_a,
    split,
    temp_name,
)

__all__ = ["SftpStorage"]

T = TypeVar("T")
_Keys = list[asyncssh.SSHKey]
_KnownHosts = asyncssh.SSHKnownHosts | tuple[_Keys, _Keys, _Keys]
_TYPES: dict[int, Kind] = {
    asyncssh.FILEXFER_TYPE_REGULAR: "file",
    asyncssh.FILEXFER_TYPE_DIRECTORY: "folder",
    asyncssh.FILEXFER_TYPE_SYMLINK: "symbolic link",
    asyncssh.FILEXFER_TYPE_FIFO: "FIFO",
    asyncssh.FILEXFER_TYPE_CHAR_DEVICE: "device",
    asyncssh.FILEXFER_TYPE_BLOCK_DEVICE: "device",
    asyncssh.FILEXFER_TYPE_SOCKET: "socket",
}

# One request in flight per file: asyncssh's parallel file I/O (up to 128 requests) leaves the
# other requests' ConnectionLost unretrieved when a connection drops mid-transfer, and asyncio
# logs each one with a traceback ("Task exception was never retrieved"): a flapping SFTP link
# buried the log. The files exchanged here are small; one request at a time costs little.
_REQUESTS = 1


def _kind(attrs: asyncssh.SFTPAttrs) -> Kind:
    if attrs.permissions is not None and stat.S_IFMT(attrs.permissions):
        return kind_of(attrs.permissions)
    return _TYPES.get(attrs.type, "special file")


class SftpStorage:
    """One SSH connection, opened on first use and reopened after a failure."""

    def __init__(self, target: SftpTarget, label: str, timeout: float) -> None:
        self.target = target
        self.label = label
        self.timeout = timeout
        self._conn: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._real_root: str | None = None
        self._lock = asyncio.Lock()

    def _path(self, path: str) -> str:
        root = self.target.root.rstrip("/") or "/"
        if root == ".":
            return path or "."
        return posixpath.join(root, path) if path else root

    def _known_hosts(self) -> _KnownHosts:
        if self.target.host_key:
            try:
                key = asyncssh.import_public_key(self.target.host_key)
            except (asyncssh.KeyImportError, ValueError) as exc:
                raise PermanentError(
                    f"{self.label}: host_key is not an OpenSSH public key"
                ) from exc
            return ([key], [], [])
        assert self.target.known_hosts is not None
        try:
            return asyncssh.read_known_hosts(str(self.target.known_hosts))
        except (OSError, ValueError) as exc:
            raise PermanentError(
                f"{self.label}: cannot read known_hosts {self.target.known_hosts}: "
                f"{type(exc).__name__}"
            ) from exc

    async def _connect(self) -> asyncssh.SFTPClient:
        target = self.target
        client_keys: list[asyncssh.SSHKey] | None = None
        if target.private_key is not None:
            passphrase = (
                target.private_key_passphrase.get_secret_value()
                if target.private_key_passphrase
                else None
            )
            try:
                client_keys = [asyncssh.read_private_key(str(target.private_key), passphrase)]
            except (OSError, asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as exc:
                raise PermanentError(
                    f"{self.label}: cannot load private_key {target.private_key}: "
                    f"{type(exc).__name__}"
                ) from exc
        where = f"{self.label}: sftp {target.host}:{target.port}"
        try:
            conn = await asyncssh.connect(
                target.host,
                target.port,
                username=target.username,
                password=target.password.get_secret_value() if target.password else None,
                client_keys=client_keys,
                known_hosts=self._known_hosts(),
                agent_path=None,
                config=[],
                connect_timeout=target.connect_timeout_seconds,
                login_timeout=target.connect_timeout_seconds,
            )
        except asyncssh.HostKeyNotVerifiable as exc:
            raise PermanentError(
                f"{where}: server host key not trusted (check known_hosts / host_key)"
            ) from exc
        except asyncssh.PermissionDenied as exc:
            raise PermanentError(f"{where}: authentication failed for {target.username}") from exc
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            raise TransientError(f"{where}: cannot connect: {type(exc).__name__}") from exc
        try:
            sftp = await conn.start_sftp_client()
        except (asyncssh.Error, OSError) as exc:
            conn.abort()
            raise TransientError(f"{where}: no SFTP session: {type(exc).__name__}") from exc
        self._conn, self._sftp, self._real_root = conn, sftp, None
        return sftp

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.abort()
        self._conn = self._sftp = None

    async def _run(self, what: str, fn: Callable[[asyncssh.SFTPClient], Awaitable[T]]) -> T:
        async with self._lock:
            sftp = self._sftp or await self._connect()
            try:
                async with asyncio.timeout(self.timeout):
                    return await fn(sftp)
            except (FileTooLarge, UnsafeFile):
                raise
            except asyncssh.SFTPPermissionDenied as exc:
                raise TransientError(
                    f"{self.label}: cannot {what}: permission denied on the server"
                ) from exc
            except asyncssh.SFTPError as exc:
                if isinstance(exc, asyncssh.SFTPConnectionLost):
                    self._drop()
                raise TransientError(f"{self.label}: cannot {what}: {type(exc).__name__}") from exc
            except (asyncssh.Error, OSError, TimeoutError) as exc:
                self._drop()
                raise TransientError(
                    f"{self.label}: cannot {what}: connection lost ({type(exc).__name__})"
                ) from exc

    # -- what is on a path -----------------------------------------------------------------------

    async def _lkind(self, sftp: asyncssh.SFTPClient, path: str) -> Kind | None:
        try:
            return _kind(await sftp.lstat(self._path(path)))
        except asyncssh.SFTPNoSuchFile:
            return None

    async def _check_folder(self, sftp: asyncssh.SFTPClient, folder: str) -> None:
        """Every component of ``folder`` is a folder (not a link to one); a missing one
        raises ``SFTPNoSuchFile``."""
        walked = ""
        for part in folder.split("/") if folder else []:
            if part in ("", ".", ".."):
                raise UnsafeFile(f"{folder!r} is not a plain folder path")
            walked = f"{walked}/{part}" if walked else part
            kind = await self._lkind(sftp, walked)
            if kind is None:
                raise asyncssh.SFTPNoSuchFile(f"{walked} missing")
            if kind == "file":  # a mistake, not a trick: retried until someone fixes it
                raise asyncssh.SFTPNoSuchFile(f"{walked} is a file")
            if kind != "folder":
                raise not_a(walked, kind, "folder")

    async def _check_file(self, sftp: asyncssh.SFTPClient, path: str) -> None:
        folder, _name = split(path)
        await self._check_folder(sftp, folder)
        kind = await self._lkind(sftp, path)
        if kind is None:
            raise asyncssh.SFTPNoSuchFile(f"{path} missing")
        if kind != "file":
            raise not_a(path, kind, "file")
        if self._real_root is None:
            self._real_root = await sftp.realpath(self._path(""))
        real = await sftp.realpath(self._path(path))
        if real != posixpath.join(self._real_root, path):
            raise UnsafeFile(f"{path} resolves outside its folder: refused")

    # -- the interface -----------------------------------------------------------------------------

    async def prepare(self, folders: list[str]) -> None:
        async def run(sftp: asyncssh.SFTPClient) -> None:
            root = self.target.root
            if not await sftp.isdir(root):
                raise asyncssh.SFTPNoSuchFile(f"root folder {root} missing")
            for folder in folders:
                walked = ""
                for part in folder.split("/"):
                    walked = f"{walked}/{part}" if walked else part
                    kind = await self._lkind(sftp, walked)
                    if kind is None:
                        with contextlib.suppress(asyncssh.SFTPFailure):  # created meanwhile
                            await sftp.mkdir(self._path(walked))
                    elif kind == "file":
                        raise asyncssh.SFTPFailure(f"{walked} is a file")
                    elif kind != "folder":
                        raise not_a(walked, kind, "folder")

        await self._run("prepare folders", run)

    async def listdir(self, folder: str) -> list[Entry]:
        async def run(sftp: asyncssh.SFTPClient) -> list[Entry]:
            await self._check_folder(sftp, folder)
            out = []
            for item in await sftp.readdir(self._path(folder)):
                name = item.filename
                if not isinstance(name, str) or name in (".", ".."):
                    continue
                attrs = item.attrs  # the server's lstat: a link shows as a link
                out.append(Entry(name, attrs.size or 0, float(attrs.mtime or 0), _kind(attrs)))
            return out

        return await self._run(f"list {folder}", run)

    async def exists(self, path: str) -> bool:
        async def run(sftp: asyncssh.SFTPClient) -> bool:
            return await self._lkind(sftp, path) is not None

        return await self._run(f"check {path}", run)

    async def read(self, path: str, max_bytes: int) -> bytes:
        async def run(sftp: asyncssh.SFTPClient) -> bytes:
            await self._check_file(sftp, path)
            async with sftp.open(self._path(path), "rb", max_requests=_REQUESTS) as fh:
                kind = _kind(await fh.stat())
                if kind != "file":  # swapped since the lstat
                    raise not_a(path, kind, "file")
                data = await fh.read(max_bytes + 1)
            if not isinstance(data, bytes):
                raise TypeError("SFTP file opened in text mode")
            if len(data) > max_bytes:
                raise FileTooLarge(path)
            return data

        return await self._run(f"read {path}", run)

    async def write(self, path: str, data: bytes, *, atomic: bool) -> None:
        async def run(sftp: asyncssh.SFTPClient) -> None:
            await self._check_folder(sftp, split(path)[0])
            final = self._path(path)
            if atomic:
                temp = self._path(temp_name(path))
                with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                    await sftp.remove(temp)  # stale, or a link planted where we write
                # exclusive: never through a link
                async with sftp.open(temp, "xb", max_requests=_REQUESTS) as fh:
                    await fh.write(data)
                await _replace(sftp, temp, final)
                return
            kind = await self._lkind(sftp, path)
            if kind not in (None, "file"):
                raise not_a(path, kind, "file")
            async with sftp.open(final, "wb", max_requests=_REQUESTS) as fh:
                await fh.write(data)

        await self._run(f"write {path}", run)

    async def move(self, src: str, dst: str) -> bool:
        async def run(sftp: asyncssh.SFTPClient) -> bool:
            await self._check_folder(sftp, split(src)[0])
            await self._check_folder(sftp, split(dst)[0])
            try:
                await sftp.rename(self._path(src), self._path(dst))
            except asyncssh.SFTPNoSuchFile:
                return False
            return True

        return await self._run(f"move {src}", run)

    # The compound operations as their parts: each part a round trip to the server anyway.

    async def read_if_exists(self, path: str, max_bytes: int) -> bytes | None:
        if not await self.exists(path):
            return None
        return await self.read(path, max_bytes)

    async def read_many(self, paths: list[str], max_bytes: int) -> list[bytes | Exception]:
        out: list[bytes | Exception] = []
        for path in paths:
            try:
                out.append(await self.read(path, max_bytes))
            except (FileTooLarge, UnsafeFile) as exc:
                out.append(exc)
        return out

    async def any_exists(self, paths: list[str]) -> bool:
        for path in paths:
            if await self.exists(path):
                return True
        return False

    async def update(
        self, path: str, change: Change, max_bytes: int, *, durable: bool = True
    ) -> None:
        # durable or not: SFTP writes are the server's to sync (no fsync is asked for)
        data = change(await self.read_if_exists(path, max_bytes))
        if data is not None:
            await self.write(path, data, atomic=True)

    async def move_free(
        self, src: str, name: str, folder: str, done_suffix: str | None
    ) -> str | None:
        for dest in candidates(name):
            if not (
                await self.exists(f"{folder}/{dest}")
                or await self.exists(f"{folder}/{files_of(dest)}")
            ):
                break
        if not await self.move(f"{src}/{name}", f"{folder}/{dest}"):
            return None
        if done_suffix is not None:
            await self.move(f"{src}/{name}{done_suffix}", f"{folder}/{dest}{done_suffix}")
            await self.move(f"{src}/{files_of(name)}", f"{folder}/{files_of(dest)}")
        return dest

    async def create_new(
        self, absent: list[str], path: str, data: bytes, then: tuple[str, Change, int]
    ) -> bool:
        if await self.any_exists(absent):
            return False
        await self.write(path, data, atomic=True)
        await self.update(*then)
        return True

    async def update_many(
        self, changes: list[tuple[str, Change]], max_bytes: int, *, durable: bool = True
    ) -> list[Exception | None]:
        out: list[Exception | None] = []
        for path, change in changes:
            try:
                await self.update(path, change, max_bytes, durable=durable)
            except (FileTooLarge, UnsafeFile) as exc:
                out.append(exc)
            else:
                out.append(None)
        return out

    async def move_free_many(self, moves: list[Move]) -> list[str | None]:
        return [await self.move_free(*move) for move in moves]

    async def health(self, folders: list[str]) -> str:
        async def run(sftp: asyncssh.SFTPClient) -> str:
            if not await sftp.isdir(self.target.root):
                raise asyncssh.SFTPNoSuchFile("root missing")
            for folder in folders:
                with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                    await self._check_folder(sftp, folder)
            return f"sftp {self.target.host}:{self.target.port}"

        return await self._run("reach the server", run)

    async def aclose(self) -> None:
        async with self._lock:
            if self._conn is not None:
                self._conn.close()
                with contextlib.suppress(asyncssh.Error, OSError):
                    await self._conn.wait_closed()
            self._conn = self._sftp = None


async def _replace(sftp: asyncssh.SFTPClient, src: str, dst: str) -> None:
    try:
        await sftp.posix_rename(src, dst)
    except asyncssh.SFTPOpUnsupported:
        # plain SFTP v3 rename refuses an existing target: clear it first
        with contextlib.suppress(asyncssh.SFTPNoSuchFile):
            await sftp.remove(dst)
        await sftp.rename(src, dst)
