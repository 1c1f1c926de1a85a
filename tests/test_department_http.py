"""A department's HTTP client (``bounded_client`` over the gateway's shared client): what the
short path through the shared client's transport must keep. Real server on loopback."""

from __future__ import annotations

import gzip
import re
from typing import Any

import pytest

from gateway.departments import bounded_client
from gateway.errors import AnswerTooLarge
from gateway.http import make_client
from gateway.simulators.server import serve_asgi

TRACEPARENT = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01")


class Department:
    """Answers ``/login`` with a session cookie, ``/big`` with a gzip answer of 2 MB, anything
    else with ``{"ok": true}``; records the headers of every request."""

    def __init__(self) -> None:
        self.seen: list[dict[bytes, bytes]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        self.seen.append(dict(scope["headers"]))
        headers = [(b"content-type", b"application/json")]
        body = b'{"ok": true}'
        if scope["path"] == "/login":
            headers.append((b"set-cookie", b"session=s3cr3t; Path=/"))
        elif scope["path"] == "/big":
            body = gzip.compress(b" " * (2 * 2**20))
            headers.append((b"content-encoding", b"gzip"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def test_cookies_hooks_and_bounds_survive_the_short_path() -> None:
    dept = Department()
    async with serve_asgi(dept, lifespan="off") as url:
        shared = make_client()
        client = bounded_client(shared, department="amr", limit=2**20)
        try:
            first = await client.get(url + "/cases")
            assert first.json() == {"ok": True}
            await client.post(url + "/login", content=b"{}")
            await client.get(url + "/cases")
            with pytest.raises(AnswerTooLarge):
                await client.get(url + "/big")
        finally:
            await client.aclose()
            await shared.aclose()
    # the shared client's request hook still runs: every call carries a traceparent
    assert all(TRACEPARENT.fullmatch(h[b"traceparent"].decode()) for h in dept.seen), dept.seen
    assert all(h[b"accept-encoding"] == b"gzip, deflate" for h in dept.seen)
    # the department's cookie is kept by its own client and sent back to it...
    assert b"cookie" not in dept.seen[0] and b"cookie" not in dept.seen[1]
    assert dept.seen[2][b"cookie"] == b"session=s3cr3t"
    assert client.cookies.get("session") == "s3cr3t"
    # ...and never lands in the jar every department and webhook share
    assert not shared.cookies


async def test_a_department_client_keeps_cookies_it_is_given() -> None:
    dept = Department()
    async with serve_asgi(dept, lifespan="off") as url:
        shared = make_client()
        client = bounded_client(shared, department="amr", limit=2**20)
        client.cookies = {"lang": "zh"}
        try:
            await client.get(url + "/cases")
            await client.post(url + "/login", content=b"{}")
            await client.get(url + "/cases")
        finally:
            await client.aclose()
            await shared.aclose()
    assert dept.seen[0][b"cookie"] == b"lang=zh"
    assert sorted(dept.seen[2][b"cookie"].split(b"; ")) == [b"lang=zh", b"session=s3cr3t"]
