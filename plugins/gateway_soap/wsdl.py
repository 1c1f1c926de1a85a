"""Load and parse a department's WSDL once per process, offline, with hostile XML refused.

zeep parses WSDLs slowly and its cache only stores downloaded bytes, so the parsed
:class:`zeep.wsdl.Document` itself is kept here, keyed by WSDL location and schema map, and
shared by every connector (and every rebuilt connector) that names the same WSDL.

Fetching is split from parsing: a WSDL given by URL is downloaded once with the gateway's
async http client (zeep's own loader is synchronous and would block the event loop, or deadlock
against a department served by the same loop); parsing then runs in a worker thread with a
loader that never touches the network. Every URL an import names must be mapped to a local
copy in ``schemas``; anything else is refused with a message saying so.
"""

from __future__ import annotations

import asyncio
import os
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


class _OfflineLoader(Transport):
    """A zeep transport for parsing only: serves pre-fetched bytes and local files."""

    def __init__(self, fetched: dict[str, bytes], schemas: dict[str, str]) -> None:
        # Deliberately not Transport.__init__: it builds a requests session we never use.
        self.cache = None
        self._close_session = False
        self.fetched = fetched
        self.schemas = schemas

    def load(self, url: str) -> bytes:
        if url in self.fetched:
            return self.fetched[url]
        if url in self.schemas:
            return Path(self.schemas[url]).read_bytes()
        scheme = urlparse(url).scheme
        if scheme in ("http", "https"):
            raise RefusedImport(
                f"the WSDL imports {url}, which is not fetched at run time: "
                f"save a copy and map it in [options.schemas]"
            )
        path = url[len("file://") :] if scheme == "file" else url
        return Path(os.path.expanduser(path)).read_bytes()

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


def _key(location: str, schemas: dict[str, str]) -> tuple[Any, ...]:
    return (location, tuple(sorted(schemas.items())))


def cached(location: str, schemas: dict[str, str]) -> Document | None:
    """The parsed document if it is cached (counts a hit), else None."""
    with _guard:
        document = _documents.get(_key(location, schemas))
        if document is not None:
            _info.hits += 1
        return document


async def load_document(
    location: str,
    schemas: dict[str, str],
    fetch: Any,
) -> Document:
    """The parsed WSDL at ``location``, parsing it at most once per process.

    :param fetch: ``async (url) -> bytes`` used to download an http(s) WSDL; the caller
        translates its errors. Local files are read by the parser's loader.
    :raises RefusedImport: the WSDL imports an unmapped URL.
    """
    key = _key(location, schemas)
    document = cached(location, schemas)
    if document is not None:
        return document
    with _guard:
        per_loop = _locks.setdefault(asyncio.get_running_loop(), {})
        lock = per_loop.setdefault(key, asyncio.Lock())
    async with lock:
        document = cached(location, schemas)
        if document is not None:
            return document
        fetched: dict[str, bytes] = {}
        if urlparse(location).scheme in ("http", "https") and location not in schemas:
            fetched[location] = await fetch(location)
        loader = _OfflineLoader(fetched, schemas)
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
