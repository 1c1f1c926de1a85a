"""Running the gateway: API and daemon in one event loop, stopped by SIGTERM/SIGINT.

``gateway serve`` runs the API and (by default) the daemon in one process on SQLite: the
embedded setup. ``gateway daemon`` runs only the daemon (:mod:`gateway.daemon`); many of them can
share one PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog

from gateway.api.app import create_app
from gateway.config.loader import Config
from gateway.daemon import Daemon
from gateway.dispatcher import Dispatcher
from gateway.runtime import Runtime
from gateway.serving import serve_asgi

log = structlog.get_logger("gateway.service")


@contextlib.asynccontextmanager
async def running(
    runtime: Runtime,
    *,
    api: bool,
    daemon: bool,
    host: str | None = None,
    port: int | None = None,
) -> AsyncIterator[tuple[Dispatcher | None, str | None]]:
    """Start the parts asked for; yields (dispatcher, API base URL). The daemon part is the
    APScheduler-driven :class:`~gateway.daemon.Daemon` (the same one ``gateway daemon`` runs).
    Leaving the block stops them gracefully: no new claims or ticks, in-flight work finishes or
    is released."""
    await runtime.prepare_database()
    worker = Daemon(runtime) if daemon else None
    base_url = None
    async with contextlib.AsyncExitStack() as stack:
        if api:
            settings = runtime.config.gateway.api
            base_url = await stack.enter_async_context(
                serve_asgi(
                    create_app(runtime),
                    host=host or settings.host,
                    port=settings.port if port is None else port,
                    lifespan="off",
                )
            )
        if worker is not None:
            await worker.start()
        try:
            yield (worker.dispatcher if worker else None), base_url
        finally:
            if worker is not None:
                await worker.stop()


async def serve_until_signalled(
    config: Config,
    *,
    api: bool,
    daemon: bool,
    host: str | None = None,
    port: int | None = None,
    on_ready: Callable[[str | None], Awaitable[None]] | None = None,
) -> None:
    runtime = Runtime(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with running(runtime, api=api, daemon=daemon, host=host, port=port) as (_, url):
            log.info(
                "gateway running", api=url, daemon=daemon, unavailable=runtime.unavailable or None
            )
            if on_ready:
                await on_ready(url)
            await stop.wait()
            log.info("stopping: finishing in-flight work")
    finally:
        await runtime.aclose()
