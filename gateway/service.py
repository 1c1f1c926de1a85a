"""Running the gateway: API, dispatcher and poller in one event loop, stopped by SIGTERM/SIGINT.

``gateway serve`` runs the API and (by default) the daemon loops in one process on SQLite: the
embedded setup. ``gateway daemon`` runs only the loops; many of them can share one PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog

from gateway.api.app import create_app
from gateway.config.loader import Config
from gateway.dispatcher import Dispatcher
from gateway.poller import poll_sweep
from gateway.results import pull_sweep
from gateway.runtime import Runtime
from gateway.simulators.server import serve_asgi

log = structlog.get_logger("gateway.service")


async def poll_loop(runtime: Runtime, stopping: asyncio.Event) -> None:
    interval = runtime.config.gateway.dispatch.poll_sweep_seconds
    while not stopping.is_set():
        try:
            await poll_sweep(runtime)
            await pull_sweep(runtime)
        except Exception:
            log.exception("poll sweep failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=interval)


@contextlib.asynccontextmanager
async def running(
    runtime: Runtime,
    *,
    api: bool,
    daemon: bool,
    host: str | None = None,
    port: int | None = None,
) -> AsyncIterator[tuple[Dispatcher | None, str | None]]:
    """Start the parts asked for; yields (dispatcher, API base URL). Leaving the block stops
    them gracefully: no new claims, in-flight deliveries finish or are released."""
    await runtime.prepare_database()
    stopping = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    dispatcher = None
    base_url = None
    if daemon:
        dispatcher = Dispatcher(runtime)
        tasks.append(asyncio.create_task(dispatcher.run(), name="dispatcher"))
        tasks.append(asyncio.create_task(poll_loop(runtime, stopping), name="poller"))
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
        try:
            yield dispatcher, base_url
        finally:
            stopping.set()
            if dispatcher is not None:
                await dispatcher.stop()
            await asyncio.gather(*tasks, return_exceptions=True)


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
