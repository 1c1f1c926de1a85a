"""A department's front door on loopback that misbehaves on request.

:class:`Hostile` is a real HTTP server (ASGI on uvicorn, through ``serve_asgi``) placed in front of
a real simulated department: in mode ``ok`` it forwards every request to the department and
hands back its answer; in the other modes it answers as a broken or hostile system would:

    hold     forwards only once ``release`` is set (requests pile up: the cap is visible)
    trickle  200, then one byte every 50 ms for half a minute (a deadline must cut it)
    bomb     200 with a small gzip body that inflates to 200 MB
    big      200 with a body over a few MB, chunked (no length announced)
    fail     503
    canned   200 with ``canned`` as the body

It counts requests and the most it ever had in flight at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import AsyncIterator
from typing import Any

import httpx

from gateway.serving import serve_asgi

BOMB_INFLATED = 200 * 1024 * 1024
BIG_BYTES = 4 * 1024 * 1024
_CHUNK = 64 * 1024
_bomb: bytes | None = None


def gzip_bomb() -> bytes:
    """~200 KB of gzip that inflates to 200 MB of spaces (made once per test run)."""
    global _bomb
    if _bomb is None:
        packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
        block = b" " * (1024 * 1024)
        parts = [packer.compress(block) for _ in range(BOMB_INFLATED // len(block))]
        _bomb = b"".join(parts) + packer.flush()
    return _bomb


class Hostile:
    def __init__(self, upstream: str, *, xml: bool = False) -> None:
        self.upstream = upstream.rstrip("/")
        self.xml = xml
        self.mode = "ok"
        self.canned = b""
        self.release = asyncio.Event()
        self.requests = 0
        self.inflight = 0
        self.max_inflight = 0
        # a fresh connection per forwarded call: a kept-alive one that the upstream closed as
        # idle just as it was reused failed the forward (httpcore ReadError, answered 500) when
        # a loaded machine stretched the pause between calls past uvicorn's keep-alive (5 s)
        self._client = httpx.AsyncClient(
            timeout=30, limits=httpx.Limits(max_keepalive_connections=0)
        )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await self._client.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.requests += 1
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            await self._answer(scope, body, send)
        finally:
            self.inflight -= 1

    async def _answer(self, scope: dict[str, Any], body: bytes, send: Any) -> None:
        mode = self.mode
        kind = b"text/xml; charset=utf-8" if self.xml else b"application/json"
        if mode == "hold":
            await asyncio.wait_for(self.release.wait(), timeout=60)
            mode = "ok"
        if mode == "canned":
            await _whole(send, 200, [(b"content-type", kind)], self.canned)
        elif mode == "fail":
            await _whole(send, 503, [(b"content-type", b"text/plain")], b"unavailable")
        elif mode == "bomb":
            headers = [(b"content-type", kind), (b"content-encoding", b"gzip")]
            await _whole(send, 200, headers, gzip_bomb())
        elif mode == "big":
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind)]}
            )
            opening = b"<?xml version='1.0'?><a>" if self.xml else b'{"case": {"id": "'
            await send({"type": "http.response.body", "body": opening, "more_body": True})
            for _ in range(BIG_BYTES // _CHUNK + 1):
                await send({"type": "http.response.body", "body": b"x" * _CHUNK, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        elif mode == "trickle":
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", kind)]}
            )
            for _ in range(600):
                await send({"type": "http.response.body", "body": b" ", "more_body": True})
                await asyncio.sleep(0.05)
            await send({"type": "http.response.body", "body": b""})
        else:
            await self._forward(scope, body, send)

    async def _forward(self, scope: dict[str, Any], body: bytes, send: Any) -> None:
        query = scope.get("query_string", b"").decode()
        url = self.upstream + scope["path"] + (f"?{query}" if query else "")
        headers = [
            (k.decode(), v.decode())
            for k, v in scope["headers"]
            if k.lower() not in (b"host", b"content-length", b"accept-encoding")
        ]
        answer = await self._client.request(scope["method"], url, headers=headers, content=body)
        kept = [
            (k.encode(), v.encode())
            for k, v in answer.headers.items()
            if k.lower() not in ("content-length", "content-encoding", "transfer-encoding")
        ]
        await _whole(send, answer.status_code, kept, answer.content)


async def _whole(send: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@contextlib.asynccontextmanager
async def hostile(upstream: str, *, xml: bool = False) -> AsyncIterator[tuple[Hostile, str]]:
    """A :class:`Hostile` in front of ``upstream``; yields it and its base URL."""
    door = Hostile(upstream, xml=xml)
    try:
        async with serve_asgi(door, graceful_seconds=1.0) as url:
            yield door, url
    finally:
        door.release.set()
