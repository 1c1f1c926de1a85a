"""Where the files go: a local folder or an SFTP server, behind one small interface.

Paths are POSIX strings relative to the target's root (``"inbox/ow-a1-v1.json"``), always made
by the connector from folder names in config and names it checked; nothing here accepts a
name from a file's content. Library errors become :mod:`gateway.errors` at this boundary::

    OSError, SFTP errors, lost connections, timeouts   -> TransientError (the share may come back)
    SSH host key not trusted, SSH authentication fails -> PermanentError (an operator must act)

The share is written by someone else, so nothing in it is trusted to be what its name says.
Below the root, every folder on a path must be a real folder and every file read must be a
regular file: a symbolic link, FIFO, device or socket raises :class:`UnsafeFile` (the
connector quarantines the result with that reason) and is never opened, followed or written
through. Locally this is enforced by walking the path one component at a time with
``O_NOFOLLOW`` from the root's descriptor (so no link anywhere below the root is followed, and
nothing can be swapped between the check and the use); over SFTP, where the server resolves
paths, by ``lstat`` of each component and ``realpath`` containment before a file is opened.
"""

from __future__ import annotations

import itertools
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

from gateway_filedrop.formats import ResultFileError

__all__ = [
    "Change",
    "Entry",
    "FileTooLarge",
    "Kind",
    "Move",
    "Storage",
    "UnsafeFile",
    "candidates",
    "files_of",
    "free_name",
    "kind_of",
    "temp_name",
]

Kind = Literal["file", "folder", "symbolic link", "FIFO", "device", "socket", "special file"]


@dataclass(frozen=True)
class Entry:
    name: str
    size: int
    mtime: float
    kind: Kind  # from lstat: a link is a "symbolic link", whatever it points at

    @property
    def is_dir(self) -> bool:
        return self.kind == "folder"


class FileTooLarge(Exception):
    pass


class UnsafeFile(ResultFileError):
    """Something on a path is not what the share may hold there (a link, a FIFO, a device);
    the message, naming the path relative to the root, is the quarantine reason."""


def kind_of(mode: int) -> Kind:
    """What ``st_mode`` (from an lstat) says the entry is."""
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def not_a(path: str, kind: Kind, wanted: Literal["file", "folder"]) -> UnsafeFile:
    what = "a regular file" if wanted == "file" else "a folder"
    return UnsafeFile(f"{path} is a {kind}, not {what}: refused")


def split(path: str) -> tuple[str, str]:
    """(folder, name) of a path relative to the root."""
    folder, _, name = path.rpartition("/")
    return folder, name


def temp_name(path: str) -> str:
    """The hidden name a file is written under before it is renamed into place."""
    folder, name = split(path)
    return f"{folder}/.{name}.tmp" if folder else f".{name}.tmp"


#: a file's new content from its current one (None: there is none); None: leave it as it is
Change = Callable[[bytes | None], bytes | None]
#: :meth:`Storage.move_free`'s arguments: (src folder, name, dest folder, done suffix)
Move = tuple[str, str, str, str | None]


def candidates(name: str) -> Iterator[str]:
    """``name``, then ``x.dup1.json``, ``x.dup2.json``...: the names :func:`free_name` tries."""
    stem = name.rpartition(".")[0] or name
    ext = name[len(stem) :]
    yield name
    for n in itertools.count(1):
        yield f"{stem}.dup{n}{ext}"


def files_of(name: str) -> str:
    """The ``<stem>.files`` folder that goes with a result file ``name``."""
    return f"{name.rpartition('.')[0] or name}.files"


def free_name(name: str, taken: Callable[[str], bool]) -> str:
    """The first of :func:`candidates` for which neither it nor its :func:`files_of` is
    ``taken`` in the folder. Each is looked up on its own, never by listing the folder: the
    archive grows by every result, and listing it for each move made reading results
    quadratic in their number."""
    return next(n for n in candidates(name) if not (taken(n) or taken(files_of(n))))


class Storage(Protocol):
    async def prepare(self, folders: list[str]) -> None:
        """Check the root exists and create ``folders`` (and their parents) if missing."""

    async def listdir(self, folder: str) -> list[Entry]: ...

    async def exists(self, path: str) -> bool:
        """Whether anything has this name (a link counts, wherever it points)."""
        ...

    async def read(self, path: str, max_bytes: int) -> bytes:
        """The regular file's bytes; :class:`FileTooLarge` beyond ``max_bytes``,
        :class:`UnsafeFile` if it or a folder on its path is not what it should be."""
        ...

    async def write(self, path: str, data: bytes, *, atomic: bool) -> None:
        """Write ``path``; ``atomic``: under :func:`temp_name`, then renamed into place."""

    async def move(self, src: str, dst: str) -> bool:
        """Rename (a link is moved as a link); False if ``src`` is gone (another daemon
        moved it first)."""
        ...

    # Compound operations: what the connector does per request and per result, each one trip
    # to a worker thread locally (a trip cost more CPU than the file operations it ran).

    async def read_if_exists(self, path: str, max_bytes: int) -> bytes | None:
        """:meth:`read`, or None if nothing has this name."""
        ...

    async def read_many(self, paths: list[str], max_bytes: int) -> list[bytes | Exception]:
        """:meth:`read` of each path: its bytes, or the :class:`FileTooLarge` or
        :class:`UnsafeFile` it raised (anything else raises for all)."""
        ...

    async def any_exists(self, paths: list[str]) -> bool:
        """Whether any of ``paths`` exists (:meth:`exists`)."""
        ...

    async def update(
        self, path: str, change: Change, max_bytes: int, *, durable: bool = True
    ) -> None:
        """Read ``path`` (as :meth:`read_if_exists`, raising as it does), and write what
        ``change`` makes of it atomically (nothing if it returns None). ``change`` may run in
        a worker thread: a pure function of the bytes. ``durable``: on disk before it is
        renamed into place (the rename is atomic either way: the old content or the new)."""

    async def move_free(
        self, src: str, name: str, folder: str, done_suffix: str | None
    ) -> str | None:
        """Move ``src/name`` into ``folder`` under a :func:`free_name` there; with
        ``done_suffix``, its done marker and ``<stem>.files`` folder go along. The name
        used, or None if the file was gone (another daemon moved it first)."""
        ...

    async def create_new(
        self, absent: list[str], path: str, data: bytes, then: tuple[str, Change, int]
    ) -> bool:
        """If none of ``absent`` exists (:meth:`any_exists`): write ``path`` atomically
        (durable), then :meth:`update` ``then`` = (path, change, max_bytes); True. False, and
        nothing written, if one exists. Locally one trip to a worker thread (a new request and
        its ledger record, where they were three)."""
        ...

    async def update_many(
        self, changes: list[tuple[str, Change]], max_bytes: int, *, durable: bool = True
    ) -> list[Exception | None]:
        """:meth:`update` of each path in order; for each, None or the :class:`FileTooLarge`
        or :class:`UnsafeFile` it raised (anything else raises for the rest)."""
        ...

    async def move_free_many(self, moves: list[Move]) -> list[str | None]:
        """:meth:`move_free` of each in order (the names used); stops at the first that
        raises (the moves before it stay done)."""
        ...

    async def health(self, folders: list[str]) -> str:
        """A short description of the target if reachable and none of ``folders`` is
        unsafe (a missing one is fine: it is created on first use); raises if not."""
        ...

    async def aclose(self) -> None: ...
