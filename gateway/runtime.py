"""Everything a running gateway holds: config, database, plugins, blob store, connectors and the
department links every call to a connector goes through.

The API, the dispatcher, the daemon and the CLI all start from one :class:`Runtime`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import httpx
import structlog
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.blobs import BlobStore
from gateway.clock import now
from gateway.connector import Connector, ConnectorContext, Envelope, MaterialRef
from gateway.departments import Breaker, DepartmentLink, bounded_client
from gateway.errors import SchemaOutdated
from gateway.http import make_client
from gateway.logs import ensure_configured
from gateway.pii_crypto import use as use_cipher
from gateway.plugin_manager import Plugins, load_plugins
from gateway.store import breakers, pii_keys
from gateway.store.db import create_engine, create_reader, migrate, needs_migration

if TYPE_CHECKING:
    from gateway.config.loader import Config

log = structlog.get_logger("gateway")


class Runtime:
    def __init__(
        self,
        config: Config,
        *,
        plugins: Plugins | None = None,
        engine: AsyncEngine | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        ensure_configured()
        self.config = config
        settings = config.gateway
        self.plugins = plugins or load_plugins(
            load=settings.plugins.load,
            block=settings.plugins.block,
            enable=settings.plugins.enable,
            trace=settings.plugins.trace,
        )
        self.engine = engine or create_engine(
            settings.database_url, **settings.database.engine_options()
        )
        #: ID and phone numbers are encrypted at rest with it ([gateway.security] pii_key)
        self.pii_cipher = settings.security.cipher()
        use_cipher(self.engine.sync_engine.dialect, self.pii_cipher)
        #: for work that only reads (gateway.store.db.create_reader: on SQLite no write lock)
        self.reader = create_reader(self.engine)
        if self.reader is not self.engine:
            use_cipher(self.reader.sync_engine.dialect, self.pii_cipher)
        self.blobs = BlobStore(
            settings.data_dir / "blobs", min_free_bytes=settings.data_dir_min_free_mb * 2**20
        )
        self.http = http or make_client(
            max_connections=settings.http.max_connections, timeout=settings.http.timeout_seconds
        )
        #: department code -> its connector (tests may replace one: its link follows)
        self.connectors: dict[str, Connector] = {}
        self._links: dict[str, DepartmentLink] = {}
        self._clients: list[httpx.AsyncClient] = []
        #: department code -> why it cannot be dispatched to (disabled, connector missing, ...)
        self.unavailable: dict[str, str] = {}
        #: set when new work is committed in this process (:meth:`new_work`) or a dispatch slot
        #: frees, so the dispatcher need not wait a sweep
        self.wakeup = asyncio.Event()
        #: how many times new work was committed in this process (the dispatcher asks again of a
        #: department it found empty when this moves)
        self.work_added = 0
        #: called (in reverse order) by aclose, before the database and http client close
        self.on_close: list[Callable[[], Awaitable[None]]] = []
        #: this process, as it signs what it records for others (its breakers)
        self.process = f"{socket.gethostname()}:{os.getpid()}"
        self._recording: set[asyncio.Task[None]] = set()
        self._build_connectors()

    def new_work(self) -> None:
        """New work was committed in this process: wake the dispatcher."""
        self.work_added += 1
        self.wakeup.set()

    def _build_connectors(self) -> None:
        kinds = self.plugins.connectors()
        for code, dept in self.config.departments.items():
            if not dept.enabled:
                self.unavailable[code] = f"disabled in config ({dept.connector} connector)"
                continue
            cls = kinds.get(dept.connector)
            if cls is None:
                self.unavailable[code] = (
                    f"connector kind '{dept.connector}' is not installed "
                    f"(installed: {', '.join(sorted(kinds)) or 'none'})"
                )
                continue
            try:
                options = cls.Options.model_validate(dept.options)
            except ValidationError as exc:
                self.unavailable[code] = f"invalid options: {exc.errors()[0]['msg']}"
                continue

            self.connectors[code] = cls(self.context_for(code, options))

    def context_for(self, code: str, options: BaseModel) -> ConnectorContext:
        """What department ``code``'s connector is given: its options, an HTTP client over the
        shared pool whose answers are capped (decompressed bytes), the material store and the
        ``map_payload`` hook."""
        dept = self.config.departments[code]

        def mapper(envelope: Envelope) -> dict[str, Any] | None:
            return self.plugins.map_payload(envelope, dept)

        http = bounded_client(self.http, department=code, limit=dept.max_answer_bytes)
        self._clients.append(http)
        return ConnectorContext(
            department=code,
            options=options,
            http=http,
            read_material=self.read_material,
            map_payload=mapper,
            max_answer_bytes=dept.max_answer_bytes,
        )

    def attach(self, code: str, connector: Connector) -> None:
        """Use ``connector`` (built elsewhere, e.g. a test's fake) for department ``code``: it
        gets this runtime's context for the department and is called through its link."""
        connector.context = self.context_for(code, connector.context.options)
        self.connectors[code] = connector
        self.unavailable.pop(code, None)

    def link(self, code: str) -> DepartmentLink | None:
        """The guarded path to department ``code`` (None if it has no active connector)."""
        connector = self.connectors.get(code)
        if connector is None:
            return None
        link = self._links.get(code)
        if link is None or link.connector is not connector:
            link = self._links[code] = DepartmentLink(
                self.config.departments[code], connector, on_breaker=self._breaker_changed
            )
        return link

    def apply_config(self, config: Config) -> None:
        """Take a reloaded configuration (checked by :mod:`gateway.reload`): readers see it at
        once; a department whose guards (concurrency, rate limit, breaker) changed gets a
        fresh link, the others keep theirs (and their breaker state) with the new settings."""
        self.config = config
        for code, link in list(self._links.items()):
            dept = config.departments[code]
            old = link.dept
            guards = ("concurrency", "rate_limit_per_second", "breaker")
            if any(getattr(old, key) != getattr(dept, key) for key in guards):
                del self._links[code]  # calls in flight finish on the old link
            else:
                link.dept = dept

    def links(self) -> list[DepartmentLink]:
        """Every active department's link, by code."""
        return [link for code in sorted(self.connectors) if (link := self.link(code))]

    def _breaker_changed(self, breaker: Breaker) -> None:
        """Record a breaker's change for other processes (the ops API, ``gateway status``),
        after the call that changed it; a database problem only costs the record."""
        is_open = breaker.is_open()
        until = now() + dt.timedelta(seconds=breaker.open_for()) if is_open else None
        task = asyncio.get_running_loop().create_task(
            self._record_breaker(breaker.department, is_open, breaker.failures, until)
        )
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)

    async def _record_breaker(
        self, department: str, is_open: bool, failures: int, until: dt.datetime | None
    ) -> None:
        try:
            async with self.engine.begin() as conn:
                await breakers.record(
                    conn,
                    department,
                    self.process,
                    is_open=is_open,
                    failures=failures,
                    open_until=until,
                )
        except Exception as exc:
            log.warning("breaker state not recorded", department=department, error=str(exc))

    async def read_material(self, ref: MaterialRef) -> bytes:
        return await self.blobs.get(ref.sha256)

    async def prepare_database(self, *, auto_migrate: bool = True) -> None:
        """Migrate an empty or older database (``serve``/``daemon`` do this on start); with
        ``auto_migrate=False`` an outdated schema is an error that says what to run. A database
        holding ID numbers encrypted with a key this process lacks is a ConfigError naming
        [gateway.security] pii_key."""
        if await needs_migration(self.engine):
            if not auto_migrate:
                raise SchemaOutdated(
                    "the database schema is older than this gateway (or empty): run "
                    "'gateway migrate' once, then start the API nodes and daemons"
                )
            log.info("migrating database")
            await migrate(self.engine)
        await pii_keys.prepare(self.engine, self.pii_cipher)

    async def aclose(self) -> None:
        for hook in reversed(self.on_close):
            await hook()
        await asyncio.gather(*self._recording, return_exceptions=True)
        for connector in self.connectors.values():
            try:
                await connector.aclose()
            except Exception:
                log.exception("connector close failed", department=connector.context.department)
        for client in self._clients:
            await client.aclose()
        await self.http.aclose()
        if self.reader is not self.engine:
            await self.reader.dispose()
        await self.engine.dispose()
