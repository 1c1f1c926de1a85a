"""Running the gateway: API and daemon in one event loop, stopped by SIGTERM/SIGINT.

``gateway serve`` runs the API and (by default) the daemon in one process on SQLite: the
embedded setup. ``gateway daemon`` runs only the daemon (:mod:`gateway.daemon`); many of them can
share one PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import structlog

from gateway import reload as reloading
from gateway import snapshot, stopping, workdays
from gateway.clock import now
from gateway.clocks import CHINA
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
    migrate: bool = True,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
) -> AsyncIterator[tuple[Dispatcher | None, str | None]]:
    """Start the parts asked for; yields (dispatcher, API base URL). The daemon part is the
    APScheduler-driven :class:`~gateway.daemon.Daemon` (the same one ``gateway daemon`` runs).
    Leaving the block stops them gracefully: no new claims or ticks, in-flight work finishes or
    is released.

    :param migrate: bring an empty or older schema up to date first; with False an outdated
        schema is an error naming ``gateway migrate`` (several nodes must not migrate at once).
    :param metrics_port: also serve ``/metrics`` and ``/healthz`` there (daemons have no API).
    """
    await runtime.prepare_database(auto_migrate=migrate)
    worker = Daemon(runtime) if daemon else None
    base_url = None
    async with contextlib.AsyncExitStack() as stack:
        if metrics_port is not None:
            from gateway.api.metrics_app import metrics_app

            await stack.enter_async_context(
                serve_asgi(
                    metrics_app(runtime), host=metrics_host, port=metrics_port, lifespan="off"
                )
            )
        if api:
            # imported here: a daemon does not pay for FastAPI and the routes (~0.3 s of start)
            from gateway.api.app import create_app

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


def settle_heap() -> None:
    """Once started: what start-up made (config, catalog, plugins, routes, SQLAlchemy's
    metadata and compiled statements: ~200,000 objects) lives as long as the process, so it is
    moved out of the garbage collector's generations (``gc.freeze``): each full collection
    walked all of it again, ~60 ms a time, about 0.1 ms per application at intake's rate
    (docs/performance.md, Intake, session 5). Later objects are collected as before."""
    gc.collect()
    gc.freeze()


async def serve_until_signalled(
    config: Config,
    *,
    api: bool,
    daemon: bool,
    host: str | None = None,
    port: int | None = None,
    on_ready: Callable[[str | None], Awaitable[None]] | None = None,
    migrate: bool = True,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    config_path: Path | None = None,
) -> None:
    """Run until SIGTERM/SIGINT. SIGHUP reloads ``config_path`` (validated first; a bad or
    restart-only change is refused with a WARNING and the running configuration kept).
    SIGUSR1 logs what the process is doing (:mod:`gateway.snapshot`)."""
    runtime = Runtime(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    stopping.on_loop(loop, stop.set)  # a SIGTERM held while this process started stops it now
    # from the start: a SIGUSR1 while the parts start must not end the process (its default)
    parts: dict[str, Dispatcher | None] = {"dispatcher": None}
    loop.add_signal_handler(
        signal.SIGUSR1, lambda: snapshot.log_snapshot(runtime.links(), parts["dispatcher"])
    )
    reloads: set[asyncio.Task[bool]] = set()
    if config_path is not None:

        def on_hup() -> None:
            task = loop.create_task(reloading.reload(runtime, config_path))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hup)
    pid_file = reloading.write_pid_file(config.gateway.data_dir)
    try:
        async with running(
            runtime,
            api=api,
            daemon=daemon,
            host=host,
            port=port,
            migrate=migrate,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
        ) as (dispatcher, url):
            parts["dispatcher"] = dispatcher
            workdays.warm(now().astimezone(CHINA).date())  # before the heap settles: kept
            settle_heap()
            log.info(
                "gateway running", api=url, daemon=daemon, unavailable=runtime.unavailable or None
            )
            if on_ready:
                await on_ready(url)
            await stop.wait()
            log.info("stopping: finishing in-flight work")
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
        if config_path is not None:
            loop.remove_signal_handler(signal.SIGHUP)
        await asyncio.gather(*reloads, return_exceptions=True)
        pid_file.unlink(missing_ok=True)
        await runtime.aclose()
