"""Where the files go: a local folder or an SFTP server, behind one small interface.

Paths are POSIX strings relative to the target's root (``"inbox/ow-a1-v1.json"``), always made
by the connector from folder names in config and names it checked; nothing here accepts a
name from a file's content. Library errors become :mod:`gateway.errors` at this boundary::

    OSError, SFTP errors, lost connections, timeouts   -> TransientError (the share may come back)
    SSH host key not trusted, SSH authentication fails -> PermanentError (an operator must act)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import asyncssh

from gateway.errors import PermanentError, TransientError
from gateway_filedrop.options import LocalTarget, SftpTarget

__all__ = ["Entry", "FileTooLarge", "LocalStorage", "SftpStorage", "Storage", "temp_name"]

T = TypeVar("T")
_Keys = list[asyncssh.SSHKey]
_KnownHosts = asyncssh.SSHKnownHosts | tuple[_Keys, _Keys, _Keys]


@dataclass(frozen=True)
class Entry:
    name: str
    size: int
    mtime: float
    is_dir: bool


class FileTooLarge(Exception):
    pass


def temp_name(path: str) -> str:
    """The hidden name a file is written under before it is renamed into place."""
    folder, _, name = path.rpartition("/")
    return f"{folder}/.{name}.tmp" if folder else f".{name}.tmp"


class Storage(Protocol):
    async def prepare(self, folders: list[str]) -> None:
        """Check the root exists and create ``folders`` under it if missing."""

    async def listdir(self, folder: str) -> list[Entry]: ...

    async def exists(self, path: str) -> bool: ...

    async def read(self, path: str, max_bytes: int) -> bytes:
        """The file's bytes; :class:`FileTooLarge` beyond ``max_bytes``."""
        ...

    async def write(self, path: str, data: bytes, *, atomic: bool) -> None:
        """Write ``path``; ``atomic``: under :func:`temp_name`, then renamed into place."""

    async def move(self, src: str, dst: str) -> bool:
        """Rename; False if ``src`` is gone (another daemon moved it first)."""
        ...

    async def health(self) -> str:
        """A short description of the target if reachable; raises if not."""
        ...

    async def aclose(self) -> None: ...


# -- local folder --------------------------------------------------------------------------------


class LocalStorage:
    def __init__(self, target: LocalTarget, label: str) -> None:
        self.root = target.root
        self.label = label

    async def _run(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return await asyncio.to_thread(fn)
        except FileTooLarge:
            raise
        except OSError as exc:
            hint = " (check the folder's permissions)" if isinstance(exc, PermissionError) else ""
            raise TransientError(
                f"{self.label}: cannot {what}: {type(exc).__name__}{hint}"
            ) from exc

    def _path(self, path: str) -> Path:
        return self.root.joinpath(*path.split("/"))

    async def prepare(self, folders: list[str]) -> None:
        def run() -> None:
            if not self.root.is_dir():
                raise NotADirectoryError(str(self.root))
            for folder in folders:
                self._path(folder).mkdir(exist_ok=True)

        try:
            await asyncio.to_thread(run)
        except NotADirectoryError as exc:
            raise TransientError(
                f"{self.label}: root folder {self.root} is not a directory (is the share mounted?)"
            ) from exc
        except OSError as exc:
            raise TransientError(
                f"{self.label}: cannot create folders under {self.root}: {type(exc).__name__}"
            ) from exc

    async def listdir(self, folder: str) -> list[Entry]:
        def run() -> list[Entry]:
            out = []
            with os.scandir(self._path(folder)) as it:
                for item in it:
                    try:
                        st = item.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    out.append(Entry(item.name, st.st_size, st.st_mtime, item.is_dir()))
            return out

        return await self._run(f"list {folder}", run)

    async def exists(self, path: str) -> bool:
        return await self._run(f"check {path}", self._path(path).exists)

    async def read(self, path: str, max_bytes: int) -> bytes:
        def run() -> bytes:
            with self._path(path).open("rb") as fh:
                data = fh.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise FileTooLarge(path)
            return data

        return await self._run(f"read {path}", run)

    async def write(self, path: str, data: bytes, *, atomic: bool) -> None:
        def run() -> None:
            final = self._path(path)
            target = self._path(temp_name(path)) if atomic else final
            try:
                with target.open("wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                if atomic:
                    os.replace(target, final)
            except BaseException:
                if atomic:
                    target.unlink(missing_ok=True)
                raise

        await self._run(f"write {path}", run)

    async def move(self, src: str, dst: str) -> bool:
        def run() -> bool:
            try:
                os.rename(self._path(src), self._path(dst))
            except FileNotFoundError:
                return False
            return True

        return await self._run(f"move {src}", run)

    async def health(self) -> str:
        ok = await asyncio.to_thread(self.root.is_dir)
        if not ok:
            raise TransientError(f"{self.label}: root folder {self.root} is missing")
        return f"folder {self.root}"

    async def aclose(self) -> None:
        """Nothing held."""


# -- SFTP ----------------------------------------------------------------------------------------


class SftpStorage:
    """One SSH connection, opened on first use and reopened after a failure."""

    def __init__(self, target: SftpTarget, label: str, timeout: float) -> None:
        self.target = target
        self.label = label
        self.timeout = timeout
        self._conn: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._lock = asyncio.Lock()

    def _path(self, path: str) -> str:
        root = self.target.root.rstrip("/") or "/"
        return f"{root}/{path}" if root != "." else path

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
        self._conn, self._sftp = conn, sftp
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
            except FileTooLarge:
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

    async def prepare(self, folders: list[str]) -> None:
        async def run(sftp: asyncssh.SFTPClient) -> None:
            root = self.target.root
            if not await sftp.isdir(root):
                raise asyncssh.SFTPNoSuchFile(f"root folder {root} missing")
            for folder in folders:
                if not await sftp.isdir(self._path(folder)):
                    with contextlib.suppress(asyncssh.SFTPFailure):  # created meanwhile
                        await sftp.mkdir(self._path(folder))

        await self._run("prepare folders", run)

    async def listdir(self, folder: str) -> list[Entry]:
        async def run(sftp: asyncssh.SFTPClient) -> list[Entry]:
            out = []
            for item in await sftp.readdir(self._path(folder)):
                name = item.filename
                if not isinstance(name, str) or name in (".", ".."):
                    continue
                attrs = item.attrs
                out.append(
                    Entry(
                        name,
                        attrs.size or 0,
                        float(attrs.mtime or 0),
                        attrs.type == asyncssh.FILEXFER_TYPE_DIRECTORY,
                    )
                )
            return out

        return await self._run(f"list {folder}", run)

    async def exists(self, path: str) -> bool:
        async def run(sftp: asyncssh.SFTPClient) -> bool:
            return bool(await sftp.exists(self._path(path)))

        return await self._run(f"check {path}", run)

    async def read(self, path: str, max_bytes: int) -> bytes:
        async def run(sftp: asyncssh.SFTPClient) -> bytes:
            async with sftp.open(self._path(path), "rb") as fh:
                data = await fh.read(max_bytes + 1)
            if not isinstance(data, bytes):
                raise TypeError("SFTP file opened in text mode")
            if len(data) > max_bytes:
                raise FileTooLarge(path)
            return data

        return await self._run(f"read {path}", run)

    async def write(self, path: str, data: bytes, *, atomic: bool) -> None:
        async def run(sftp: asyncssh.SFTPClient) -> None:
            final = self._path(path)
            target = self._path(temp_name(path)) if atomic else final
            async with sftp.open(target, "wb") as fh:
                await fh.write(data)
            if atomic:
                await _replace(sftp, target, final)

        await self._run(f"write {path}", run)

    async def move(self, src: str, dst: str) -> bool:
        async def run(sftp: asyncssh.SFTPClient) -> bool:
            try:
                await sftp.rename(self._path(src), self._path(dst))
            except asyncssh.SFTPNoSuchFile:
                return False
            return True

        return await self._run(f"move {src}", run)

    async def health(self) -> str:
        async def run(sftp: asyncssh.SFTPClient) -> str:
            if not await sftp.isdir(self.target.root):
                raise asyncssh.SFTPNoSuchFile("root missing")
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
