"""Bounded answers: every HTTP answer a connector reads is decoded here and counted.

Each department's connector gets its own ``httpx.AsyncClient`` whose transport sends through the
gateway's shared client and hands back the answer already decompressed, byte-counted as it
streams. Past the department's ``max_answer_bytes`` the read stops with
:class:`~gateway.errors.AnswerTooLarge`: a 200 KB gzip answer that would inflate to 200 MB costs
one chunk of memory, not 200 MB, and connector code does not change (``response.json()``,
``aiter_bytes()`` and zeep all read through it).

Only the encodings decoded here are offered (``Accept-Encoding: gzip, deflate``); an answer in
another encoding is refused rather than decoded unbounded somewhere else.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
from httpx._types import CookieTypes

from gateway.errors import AnswerTooLarge, PermanentError

ACCEPT_ENCODING = "gzip, deflate"
#: bytes of output per decompression step: the most one step holds in memory
_STEP = 64 * 1024


class _Inflater:
    """zlib with a bounded output per step (``max_length``), so a bomb never inflates at once."""

    def __init__(self, encoding: str) -> None:
        self._gzip = encoding in ("gzip", "x-gzip")
        self._zlib: zlib._Decompress | None = None

    def _start(self, head: bytes) -> zlib._Decompress:
        if self._gzip:
            return zlib.decompressobj(zlib.MAX_WBITS | 16)
        # "deflate" is zlib-wrapped by the standard, raw deflate by some servers: look at the header
        wrapped = len(head) >= 2 and head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0
        return zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self._zlib is None:
            self._zlib = self._start(data)
        while data:
            try:
                out = self._zlib.decompress(data, _STEP)
            except zlib.error as exc:
                raise PermanentError(f"answer is not valid compressed data: {exc}") from exc
            if out:
                yield out
            data = self._zlib.unconsumed_tail

    def flush(self) -> Iterator[bytes]:
        if self._zlib is not None and (out := self._zlib.flush()):
            yield out


class _Counted(httpx.AsyncByteStream):
    def __init__(
        self, raw: httpx.Response, encodings: list[str], department: str, limit: int
    ) -> None:
        self._raw = raw
        self._encodings = encodings
        self._department = department
        self._limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        total = 0
        pieces = self._decoded() if self._encodings else self._plain()
        async for piece in pieces:
            total += len(piece)
            if total > self._limit:
                raise AnswerTooLarge(self._department, self._limit)
            yield piece

    async def _plain(self) -> AsyncIterator[bytes]:
        # an answer without a content coding (nearly every one): the transport's chunks as they
        # come, without the raw response's chunker (closing it is this stream's aclose)
        stream = self._raw.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        async for chunk in stream:
            yield chunk

    async def _decoded(self) -> AsyncIterator[bytes]:
        # Content-Encoding lists codings in the order applied: undo them last to first
        layers = [_Inflater(e) for e in reversed(self._encodings)]

        def through(data: bytes, at: int) -> Iterator[bytes]:
            if at == len(layers):
                yield data
                return
            for out in layers[at].feed(data):
                yield from through(out, at + 1)

        def flushed(at: int) -> Iterator[bytes]:
            for i in range(at, len(layers)):
                for out in layers[i].flush():
                    yield from through(out, i + 1)

        async for chunk in self._raw.aiter_raw():
            for piece in through(chunk, 0):
                yield piece
        for piece in flushed(0):
            yield piece

    async def aclose(self) -> None:
        await self._raw.aclose()


class BoundedTransport(httpx.AsyncBaseTransport):
    """Sends through ``shared`` (the gateway's one client); answers come back decoded and capped."""

    def __init__(self, shared: httpx.AsyncClient, *, department: str, limit: int) -> None:
        self._shared = shared
        self._department = department
        self._limit = limit

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.headers["Accept-Encoding"] = ACCEPT_ENCODING
        raw = await self._send(request)
        coding = raw.headers.get("content-encoding")
        encodings = (
            [
                e.strip().lower()
                for e in coding.split(",")
                if e.strip() and e.strip().lower() != "identity"
            ]
            if coding
            else []
        )
        unknown = [e for e in encodings if e not in ("gzip", "x-gzip", "deflate")]
        declared = raw.headers.get("content-length", "")
        if unknown or (not encodings and declared.isdigit() and int(declared) > self._limit):
            await raw.aclose()
            if unknown:
                raise PermanentError(
                    f"{self._department}: answer in an encoding the gateway did not ask for "
                    f"({', '.join(unknown)})"
                )
            raise AnswerTooLarge(self._department, self._limit)
        # the body handed on is decoded: its encoding and length headers no longer describe it
        headers = [
            (k, v)
            for k, v in raw.headers.raw
            if k.lower() not in (b"content-encoding", b"content-length")
        ]
        return httpx.Response(
            raw.status_code,
            headers=headers,
            stream=_Counted(raw, encodings, self._department, self._limit),
            request=request,
            extensions=raw.extensions,
        )

    async def _send(self, request: httpx.Request) -> httpx.Response:
        """The request through the shared client's transport, with the shared client's event
        hooks (the ``traceparent``), but not through its ``send``: that would run a second
        client pipeline (auth flow, redirect loop, cookie jar) per call, ~15 % of a delivery's
        CPU. The department's own client (:func:`bounded_client`) has already done those for
        this request: the shared client must neither follow redirects (it did not) nor keep a
        department's cookies (they are the department client's, not every department's and
        webhook's)."""
        shared = self._shared
        hooks = shared.event_hooks
        for hook in hooks["request"]:
            await hook(request)
        # the shared client's transport for this URL (its mounts and proxies respected)
        raw = await shared._transport_for_url(request.url).handle_async_request(request)
        raw.request = request
        try:
            for hook in hooks["response"]:
                await hook(raw)
        except BaseException:
            await raw.aclose()
            raise
        return raw

    async def aclose(self) -> None:
        """The shared client is the gateway's to close."""


class _Cookies(httpx.Cookies):
    """A cookie jar that reads an answer's cookies only when it sets any: httpx builds urllib's
    request and response adapters for every answer otherwise (~3 % of a delivery's CPU), and
    nearly no department sets a cookie. Same cookies kept either way: the jar reads only the
    Set-Cookie and Set-Cookie2 headers."""

    def extract_cookies(self, response: httpx.Response) -> None:
        headers = response.headers
        if "set-cookie" in headers or "set-cookie2" in headers:
            super().extract_cookies(response)


class _DepartmentClient(httpx.AsyncClient):
    """httpx's client with :class:`_Cookies` as its jar."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._cookies = _Cookies(self._cookies)

    @property
    def cookies(self) -> httpx.Cookies:
        return self._cookies

    @cookies.setter
    def cookies(self, cookies: CookieTypes) -> None:
        self._cookies = _Cookies(cookies)


def bounded_client(shared: httpx.AsyncClient, *, department: str, limit: int) -> httpx.AsyncClient:
    """A client for one department's connector: the shared pool, answers capped at ``limit``."""
    return _DepartmentClient(
        transport=BoundedTransport(shared, department=department, limit=limit),
        timeout=shared.timeout,
        follow_redirects=False,
    )


__all__ = ["ACCEPT_ENCODING", "BoundedTransport", "bounded_client"]
