"""A department's HTTP client (``bounded_client`` over the gateway's shared client): what the
short path through the shared client's transport must keep. Real server on loopback."""

from __future__ import annotations

import gzip
import re
from typing import Any

import httpx
import pytest

from gateway.departments import bounded_client
from gateway.errors import AnswerTooLarge, PermanentError
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


class Varied:
    """Answers by path: plain JSON, a small gzip answer, a chunked one (no length), a
    redirect, an answer in an encoding nobody asked for, one over the cap; records every
    request's method, path, headers (traceparent left out: new per call) and body."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, list[tuple[bytes, bytes]], bytes]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = [(k, v) for k, v in scope["headers"] if k != b"traceparent"]
        self.seen.append((scope["method"], scope["path"], headers, body))
        path = scope["path"]
        status, out, payload = 200, [(b"content-type", b"application/json")], b'{"ok": true}'
        if path == "/gzip":
            payload = gzip.compress(b'{"zipped": "' + b"x" * 3000 + b'"}')
            out.append((b"content-encoding", b"gzip"))
        elif path == "/redirect":
            status, payload = 302, b""
            out.append((b"location", b"/elsewhere"))
        elif path == "/br":
            out.append((b"content-encoding", b"br"))
        elif path == "/big":
            payload = b"x" * 5000
        if path == "/chunked":
            await send({"type": "http.response.start", "status": status, "headers": out})
            for piece in (b'{"chunks": ', b"[1, 2, 3]", b"}"):
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        out.append((b"content-length", str(len(payload)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": payload})


def _answer(response: Any) -> tuple[Any, ...]:
    nxt = response.next_request
    return (
        response.status_code,
        response.headers.multi_items(),
        response.content,
        response.http_version,
        response.reason_phrase,
        None if nxt is None else (nxt.method, str(nxt.url)),
        response.request.method,
        str(response.request.url),
        response.request.content,
    )


async def test_the_short_path_sends_and_answers_as_httpx_does() -> None:
    """``client.request()`` with bytes and a dict of headers skips httpx's pipeline; the same
    call given ``extensions={}`` takes httpx's own path. Both put the same request on the wire
    and give the same answer, decoded and capped alike."""
    from gateway.departments import answers

    dept = Varied()
    calls: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/cases", {}),
        ("POST", "/cases", {"content": b'{"a": 1}', "headers": {"Idempotency-Key": "k-1"}}),
        ("POST", "/cases", {"headers": {"accept": "text/plain", "X-Trace": "t"}}),
        ("PUT", "/cases/1", {"content": b"", "timeout": 5.0}),
        ("DELETE", "/cases/1", {"headers": {"Content-Type": "application/json"}}),
        ("GET", "/gzip", {}),
        ("GET", "/chunked", {}),
        ("GET", "/redirect", {}),
    ]
    async with serve_asgi(dept, lifespan="off") as url:
        shared = make_client()
        client = bounded_client(shared, department="amr", limit=4096)
        short = answers._DepartmentClient._lean_send
        taken: list[str] = []

        async def counted(self: Any, *args: Any) -> Any:
            taken.append(args[-1].url.path)
            return await short(self, *args)

        answers._DepartmentClient._lean_send = counted  # type: ignore[method-assign]
        try:
            for method, path, kwargs in calls:
                fast = await client.request(method, url + path, **kwargs)
                slow = await client.request(method, url + path, extensions={}, **kwargs)
                assert _answer(fast) == _answer(slow), path
                assert dept.seen[-2] == dept.seen[-1], path
            for extensions in (None, {}):
                for path in ("/br", "/big"):
                    with pytest.raises((PermanentError, AnswerTooLarge)) as refused:
                        await client.get(url + path, extensions=extensions)
                    assert isinstance(refused.value, AnswerTooLarge) == (path == "/big")
        finally:
            answers._DepartmentClient._lean_send = short  # type: ignore[method-assign]
            await client.aclose()
            await shared.aclose()
    assert taken == [path for _m, path, _k in calls] + ["/br", "/big"]


async def test_the_short_path_maps_transport_errors_as_httpx_does() -> None:
    """A refused connection is httpx's ``ConnectError`` (with its request) on both paths."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    shared = make_client()
    client = bounded_client(shared, department="amr", limit=4096)
    try:
        for extensions in (None, {}):
            with pytest.raises(httpx.TransportError) as failed:
                await client.post(
                    f"http://127.0.0.1:{port}/cases", content=b"{}", extensions=extensions
                )
            assert failed.value.request.url.port == port
    finally:
        await client.aclose()
        await shared.aclose()
