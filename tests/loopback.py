"""The gateway's API served for real on a free loopback port (uvicorn, as ``gateway serve``
runs it), with a client for it: the front-desk tests talk HTTP over a socket, not in-process."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx

from gateway.api.app import create_app
from gateway.runtime import Runtime
from gateway.serving import serve_asgi


@contextlib.asynccontextmanager
async def loopback_api(
    runtime: Runtime, *, language: str | None = "en"
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the gateway on loopback; ``language``: its default Accept-Language (None:
    send none, as a front-desk system may not)."""
    headers = {"Accept-Language": language} if language else {}
    async with (
        serve_asgi(create_app(runtime)) as base,
        httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client,
    ):
        yield client
