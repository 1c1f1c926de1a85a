"""Load and parse a department's WSDL once per process, offline, with hostile XML refused.

zeep parses WSDLs slowly and its cache only stores downloaded bytes, so the parsed
:class:`zeep.wsdl.Document` itself is kept here, keyed by WSDL location and schema map, and
shared by every connector (and every rebuilt connector) that names the same WSDL.

Fetching is split from parsing: a WSDL given by URL is downloaded once with the gateway's
async http client (zeep's own loader is synchronous and would block the event loop, or deadlock
against a department served by the same loop); parsing then runs in a worker thread with a
loader that never touches the network. Every URL an import names must be mapped to a local
copy in ``schemas``; anything else is refused with a message saying so.

A WSDL comes from the department, so what it imports is not trusted either: a local file is
read only if it is a regular file inside the offline folder (the local WSDL's own folder, or
the folder of a file mapped in ``schemas``), at most ``max_bytes`` long. ``file:///dev/zero``
or the gateway's own database named in an import is refused before anything is read.
"""

from __future__ import annotations

import asyncio
import os
import stat
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from zeep import Settings
from zeep.transports import Transport
from zeep.wsdl import Document

__all__ = ["WsdlCacheInfo", "cache_info", "clear_cache", "load_document", "secure_settings"]


def secure_settings() -> Settings:
    """zeep settings for untrusted XML: no DTDs, no entities, no huge trees.

    ``forbid_external`` is on for answers. For the WSDL itself the offline loader below does
    that job instead: zeep's check fires before a loader could substitute a local copy.
    """
    return Settings(
        strict=True,
        forbid_dtd=True,
        forbid_entities=True,
        forbid_external=True,
        xml_huge_tree=False,
    )


class RefusedImport(Exception):
    """The WSDL names a document that is neither fetched already nor mapped to a local copy."""


def offline_folders(location: str, schemas: dict[str, str]) -> list[Path]:
    """Where local files may be read from: the local WSDL's folder and the mapped copies'."""
    local = [] if urlparse(location).scheme in ("http", "https") else [location]
    return [
        Path(os.path.realpath(Path(p).expanduser())).parent for p in [*local, *schemas.values()]
    ]


def read_local(path: str, folders: list[Path], max_bytes: int, named: str) -> bytes:
    """A regular file inside one of ``folders`` (after resolving links), size-capped."""
    real = Path(os.path.realpath(Path(path).expanduser()))
    if not any(real.is_relative_to(folder) for folder in folders):
        raise RefusedImport(
            f"the WSDL names {named}, outside the offline folder "
            f"({', '.join(map(str, folders)) or 'none: the WSDL is fetched by URL'}); "
            "copy it there and map it in [options.schemas]"
        )
    fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK)  # NONBLOCK: a FIFO must not hang us
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise RefusedImport(f"the WSDL names {named}, which is not a regular file")
        if info.st_size > max_bytes:
            raise RefusedImport(
                f"the WSDL names {named}, larger than {max_bytes} bytes "
                "(raise [options] max_wsdl_bytes if it is legitimate)"
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(max_bytes + 1)[:max_bytes]
    finally:
        os.close(fd)


class _OfflineLoader(Transport):
    """A zeep transport for parsing only: serves pre-fetched bytes and local files."""

    def __init__(
        self,
        fetched: dict[str, bytes],
        schemas: dict[str, str],
        folders: list[Path],
        max_bytes: int,
    ) -> None:
        # Deliberately not Transport.__init__: it builds a requests session we never use.
        self.cache = None
        self._close_session = False
        self.fetched = fetched
        self.schemas = schemas
        self.folders = folders
        self.max_bytes = max_bytes

    def load(self, url: str) -> bytes:
        if url in self.fetched:
            return self.fetched[url]
        if url in self.schemas:
            return read_local(self.schemas[url], self.folders, self.max_bytes, url)
        scheme = urlparse(url).scheme
        if scheme in ("http", "https"):
            raise RefusedImport(
                f"the WSDL imports {url}, which is not fetched at run time: "
                f"save a copy and map it in [options.schemas]"
            )
        if scheme not in ("", "file"):
            raise RefusedImport(f"the WSDL names {url}: only local files and mapped URLs")
        path = url[len("file://") :] if scheme == "file" else url
        return read_local(path, self.folders, self.max_bytes, url)

    def post(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the WSDL loader transport cannot send requests")


@dataclass
class WsdlCacheInfo:
    """How often a parse was needed (misses) or avoided (hits), and the parse time spent."""

    hits: int = 0
    misses: int = 0
    parse_seconds: float = 0.0


_documents: dict[tuple[Any, ...], Document] = {}
# One lock per event loop and WSDL: an asyncio.Lock must not be shared across loops.
_locks: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[Any, ...], asyncio.Lock]
] = weakref.WeakKeyDictionary()
_info = WsdlCacheInfo()
_guard = threading.Lock()


def cache_info() -> WsdlCacheInfo:
    """A copy of the process-wide WSDL cache counters."""
    with _guard:
        return WsdlCacheInfo(_info.hits, _info.misses, _info.parse_seconds)


def clear_cache() -> None:
    """Forget every parsed WSDL (benchmarks measure a cold load with this)."""
    with _guard:
        _documents.clear()
        _locks.clear()
        _info.hits = _info.misses = 0
        _info.parse_seconds = 0.0


def _key(location: str, schemas: dict[str, str], max_bytes: int) -> tuple[Any, ...]:
    return (location, tuple(sorted(schemas.items())), max_bytes)


def cached(location: str, schemas: dict[str, str], max_bytes: int) -> Document | None:
    """The parsed document if it is cached (counts a hit), else None."""
    with _guard:
        document = _documents.get(_key(location, schemas, max_bytes))
        if document is not None:
            _info.hits += 1
        return document


async def load_document(
    location: str,
    schemas: dict[str, str],
    fetch: Any,
    max_bytes: int = 4 * 1024 * 1024,
) -> Document:
    """The parsed WSDL at ``location``, parsing it at most once per process.

    :param fetch: ``async (url) -> bytes`` used to download an http(s) WSDL; the caller
        translates its errors and caps its size. Local files are read by the parser's loader.
    :param max_bytes: the largest local WSDL or schema file read.
    :raises RefusedImport: the WSDL imports an unmapped URL, or a file outside the offline
        folder, not regular, or too large.
    """
    key = _key(location, schemas, max_bytes)
    document = cached(location, schemas, max_bytes)
    if document is not None:
        return document
    with _guard:
        per_loop = _locks.setdefault(asyncio.get_running_loop(), {})
        lock = per_loop.setdefault(key, asyncio.Lock())
    async with lock:
        document = cached(location, schemas, max_bytes)
        if document is not None:
            return document
        fetched: dict[str, bytes] = {}
        if urlparse(location).scheme in ("http", "https") and location not in schemas:
            fetched[location] = await fetch(location)
        loader = _OfflineLoader(fetched, schemas, offline_folders(location, schemas), max_bytes)
        settings = secure_settings()
        # The loader is offline, so external imports are refused there (with a useful message).
        settings.forbid_external = False
        started = time.perf_counter()
        parsed: Document = await asyncio.to_thread(_parse, location, loader, settings)
        elapsed = time.perf_counter() - started
        with _guard:
            _documents[key] = parsed
            _info.misses += 1
            _info.parse_seconds += elapsed
        return parsed


def _parse(location: str, loader: _OfflineLoader, settings: Settings) -> Document:
    parse: Any = Document
    document: Document = parse(location, loader, settings=settings)
    return document
