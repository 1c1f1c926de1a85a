"""Serve an ASGI app with uvicorn inside the running event loop (tests, demo, ``gateway simulate``).

Usage::

    async with serve_asgi(app, port=0) as base_url:   # "http://127.0.0.1:54321"
        ...

The server binds before the block starts (the real port is read from the bound socket, so
``port=0`` picks a free one) and is shut down, in-flight requests included, when it ends.
Signals are left to the caller: several servers share one loop, and the caller decides what
Ctrl-C means. Servers given the same ``stop`` event shut down together once it is set (each
shutdown takes uvicorn a few tenths of a second; one after the other, a city of four took ~0.8 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Generator
from typing import Any

import uvicorn

from gateway.eventloop import http_parser

__all__ = ["serve_asgi"]

_log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to whoever runs the loop."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@contextlib.asynccontextmanager
async def serve_asgi(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    lifespan: str = "on",
    startup_timeout: float = 10.0,
    graceful_seconds: float = 2.0,
    stop: asyncio.Event | None = None,
) -> AsyncIterator[str]:
    """Run ``app`` on ``host:port`` for the duration of the block; yields its base URL.

    :param lifespan: ``"on"`` runs the app's startup/shutdown events, ``"off"`` skips them.
    :param startup_timeout: seconds to wait for the socket to be bound before failing.
    :param graceful_seconds: how long shutdown waits for in-flight requests before cancelling them.
    :param stop: when set, the server starts shutting down (the block's end still waits for it).
    :raises RuntimeError: the server did not start (port taken, app startup failed).
    """
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan=lifespan,  # type: ignore[arg-type]
        http=http_parser(),
        log_level="warning",
        # uvicorn's own handlers would bypass the gateway's format (JSON); its records go to
        # the root logger that gateway.logs sets up
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=max(1, round(graceful_seconds)),
    )
    server = _Server(config)
    task = asyncio.create_task(_run(server), name=f"uvicorn {host}:{port}")
    watcher = asyncio.create_task(_exit_when(stop, server)) if stop is not None else None
    try:
        await _wait_started(server, task, startup_timeout)
        sockname = server.servers[0].sockets[0].getsockname()
        yield f"http://{host}:{sockname[1]}"
    finally:
        server.should_exit = True
        if watcher is not None:
            watcher.cancel()
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
        except RuntimeError:
            # startup failed: already reported by _wait_started, or the block raised first
            pass


async def _exit_when(stop: asyncio.Event, server: uvicorn.Server) -> None:
    await stop.wait()
    server.should_exit = True


async def _run(server: uvicorn.Server) -> None:
    try:
        await server.serve()
    except SystemExit as exc:
        # uvicorn exits the process when it cannot bind or the app's startup fails;
        # inside a shared loop that must be an ordinary error instead.
        where = f"{server.config.host}:{server.config.port}"
        raise RuntimeError(
            f"cannot serve on {where}: uvicorn exited with code {exc.code} (the port is taken "
            "or the app's startup failed; its log line above says which)"
        ) from None


async def _wait_started(server: uvicorn.Server, task: asyncio.Task[None], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not server.started:
        if task.done():
            task.result()  # raises the startup failure
            raise RuntimeError(
                f"the server on {server.config.host}:{server.config.port} stopped before it started"
            )
        if loop.time() > deadline:
            server.should_exit = True
            raise RuntimeError(
                f"the server on {server.config.host}:{server.config.port} did not start within "
                f"{timeout} s"
            )
        await asyncio.sleep(0.005)
