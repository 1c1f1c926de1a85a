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

import datetime as dt
import functools
import logging
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import httpx
from httpx._client import ClientState, UseClientDefault
from httpx._exceptions import request_context
from httpx._types import (
    AuthTypes,
    CookieTypes,
    HeaderTypes,
    QueryParamTypes,
    RequestContent,
    RequestData,
    RequestExtensions,
    RequestFiles,
    TimeoutTypes,
)
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AiohttpResponseStream, map_aiohttp_exceptions

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
    """The answer's bytes from the transport's ``raw`` stream, decoded and counted."""

    def __init__(
        self, raw: httpx.AsyncByteStream, encodings: list[str], department: str, limit: int
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
        async for chunk in self._raw:
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

        async for chunk in self._raw:
            for piece in through(chunk, 0):
                yield piece
        for piece in flushed(0):
            yield piece

    async def aclose(self) -> None:
        await self._raw.aclose()


def _encodings(coding: str | None) -> list[str]:
    """The content codings an answer declares, identity left out."""
    if not coding:
        return []
    return [
        e.strip().lower()
        for e in coding.split(",")
        if e.strip() and e.strip().lower() != "identity"
    ]


def _refusal(
    department: str, limit: int, encodings: list[str], declared: str
) -> PermanentError | None:
    """Why an answer is refused before its body is read: an encoding the gateway did not ask
    for, or a declared length over the cap (an encoded answer is counted as it is decoded)."""
    unknown = [e for e in encodings if e not in ("gzip", "x-gzip", "deflate")]
    if unknown:
        return PermanentError(
            f"{department}: answer in an encoding the gateway did not ask for "
            f"({', '.join(unknown)})"
        )
    if not encodings and declared.isdigit() and int(declared) > limit:
        return AnswerTooLarge(department, limit)
    return None


class BoundedTransport(httpx.AsyncBaseTransport):
    """Sends through ``shared`` (the gateway's one client); answers come back decoded and capped."""

    def __init__(self, shared: httpx.AsyncClient, *, department: str, limit: int) -> None:
        self._shared = shared
        self._department = department
        self._limit = limit

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.headers["Accept-Encoding"] = ACCEPT_ENCODING
        raw = await self._send(request)
        encodings = _encodings(raw.headers.get("content-encoding"))
        refused = _refusal(
            self._department, self._limit, encodings, raw.headers.get("content-length", "")
        )
        if refused is not None:
            await raw.aclose()
            raise refused
        stream = raw.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        # the body handed on is decoded: its encoding and length headers no longer describe it
        return httpx.Response(
            raw.status_code,
            headers=_decoded_headers(raw.headers.raw),
            stream=_Counted(stream, encodings, self._department, self._limit),
            request=request,
            extensions=raw.extensions,
        )

    def lane(self, url: httpx.URL) -> AiohttpTransport | None:
        """The shared client's aiohttp transport for ``url`` when a whole answer may be read
        through it directly (:meth:`_DepartmentClient.request`): no proxy, no socket path."""
        transport = self._shared._transport_for_url(url)
        if type(transport) is not AiohttpTransport or transport.proxy or transport.uds:
            return None
        return transport

    async def answer(
        self,
        transport: AiohttpTransport,
        request: httpx.Request,
        timeout: aiohttp.ClientTimeout,
        started: float,
    ) -> httpx.Response:
        """``request`` sent through ``transport``'s aiohttp session, and its whole answer
        read, decoded and capped as :meth:`handle_async_request` and :class:`_Counted` do
        it: what ``client.request()`` gives through the long path, with one ``httpx.Response``
        built instead of three and no request or response models in between. The shared
        client's hooks run as :meth:`_send` runs them; aiohttp's errors become httpx's as the
        transport maps them."""
        request.headers["Accept-Encoding"] = ACCEPT_ENCODING
        await self._request_hooks(request)
        session = transport.client
        if not isinstance(session, aiohttp.ClientSession):
            session = transport.client = transport.get_client()
        content = request.content
        with request_context(request=request), map_aiohttp_exceptions():
            got = await session.request(
                request.method,
                str(request.url),
                headers=request.headers.multi_items(),
                data=content or None,
                allow_redirects=False,
                auto_decompress=False,
                compress=False,
                timeout=timeout,
            )
        try:
            encodings = _encodings(got.headers.get("Content-Encoding"))
            declared = got.headers.get("Content-Length", "")
            refused = _refusal(self._department, self._limit, encodings, declared)
            if refused is not None:
                raise refused
            with request_context(request=request):
                if not encodings and declared.isdigit():
                    # aiohttp reads exactly the declared length, at most the cap (above)
                    with map_aiohttp_exceptions():
                        body = await got.read()
                else:
                    counted = _Counted(
                        AiohttpResponseStream(got), encodings, self._department, self._limit
                    )
                    body = b"".join([piece async for piece in counted])
        finally:
            got.release()
        extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}
        if got.reason:
            extensions["reason_phrase"] = got.reason.encode()
        response = httpx.Response(
            got.status,
            headers=_decoded_headers(got.raw_headers),
            stream=httpx.ByteStream(body),
            request=request,
            extensions=extensions,
        )
        response.read()
        response.elapsed = dt.timedelta(seconds=time.perf_counter() - started)
        await self._response_hooks(response)
        return response

    async def _send(self, request: httpx.Request) -> httpx.Response:
        """The request through the shared client's transport, with the shared client's event
        hooks (the ``traceparent``), but not through its ``send``: that would run a second
        client pipeline (auth flow, redirect loop, cookie jar) per call, ~15 % of a delivery's
        CPU. The department's own client (:func:`bounded_client`) has already done those for
        this request: the shared client must neither follow redirects (it did not) nor keep a
        department's cookies (they are the department client's, not every department's and
        webhook's)."""
        await self._request_hooks(request)
        # the shared client's transport for this URL (its mounts and proxies respected)
        raw = await self._shared._transport_for_url(request.url).handle_async_request(request)
        raw.request = request
        await self._response_hooks(raw)
        return raw

    async def _request_hooks(self, request: httpx.Request) -> None:
        for hook in self._shared.event_hooks["request"]:
            await hook(request)

    async def _response_hooks(self, response: httpx.Response) -> None:
        """The shared client's response hooks; the answer closed if one of them raises."""
        try:
            for hook in self._shared.event_hooks["response"]:
                await hook(response)
        except BaseException:
            await response.aclose()
            raise

    async def aclose(self) -> None:
        """The shared client is the gateway's to close."""


def _decoded_headers(raw: Any) -> list[tuple[bytes, bytes]]:
    """An answer's headers without those that describe its encoded body."""
    return [(k, v) for k, v in raw if k.lower() not in (b"content-encoding", b"content-length")]


_httpx_log = logging.getLogger("httpx")


@functools.lru_cache(maxsize=64)
def _aiohttp_timeout(connect: float | None, read: float | None, pool: float | None) -> Any:
    # as httpx_aiohttp's transport maps httpx's timeouts (one object per distinct value)
    return aiohttp.ClientTimeout(sock_connect=connect, sock_read=read, connect=pool)


@functools.lru_cache(maxsize=256)
def _url(url: str) -> httpx.URL:
    """A URL given as text, parsed once (httpx parses it on every request otherwise)."""
    return httpx.URL(url)


@functools.lru_cache(maxsize=64)
def _timeout(value: Any) -> httpx.Timeout:
    return httpx.Timeout(value)


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
    """httpx's client with :class:`_Cookies` as its jar, and a short path for a plain
    ``request()`` (:meth:`request`)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._cookies = _Cookies(self._cookies)

    async def request(
        self,
        method: str,
        url: httpx.URL | str,
        *,
        content: RequestContent | None = None,
        data: RequestData | None = None,
        files: RequestFiles | None = None,
        json: Any | None = None,
        params: QueryParamTypes | None = None,
        headers: HeaderTypes | None = None,
        cookies: CookieTypes | None = None,
        auth: AuthTypes | UseClientDefault | None = httpx.USE_CLIENT_DEFAULT,
        follow_redirects: bool | UseClientDefault = httpx.USE_CLIENT_DEFAULT,
        timeout: TimeoutTypes | UseClientDefault = httpx.USE_CLIENT_DEFAULT,
        extensions: RequestExtensions | None = None,
    ) -> httpx.Response:
        """``client.request()`` (``get``, ``post`` and the others too). A request with at most
        bytes for a body and headers as a dict of ASCII strings, sent with the client's own
        auth (none), redirect rule (not followed) and cookies (none kept yet), no hooks of its
        own, to an absolute URL the shared client sends through aiohttp, skips httpx's client
        pipeline (the request's and headers' models built twice, the auth and redirect loops,
        four async generators per answer: ~150 us a call, more than the connector's own work):
        the same request on the wire, the same answer (decoded, capped, cookies kept,
        ``next_request`` set for a redirect), one ``httpx.Response``. Anything else, and
        ``client.stream()``, take httpx's own path."""
        if (
            data is None
            and files is None
            and json is None
            and params is None
            and cookies is None
            and extensions is None
            and isinstance(auth, UseClientDefault)
            and isinstance(follow_redirects, UseClientDefault)
            and (content is None or type(content) is bytes)
            and (headers is None or type(headers) is dict)
        ):
            lane = self._lane(url)
            if lane is not None:
                request = self._lean_request(method, lane[0], content, headers, timeout)
                if request is not None:
                    return await self._lean_send(lane[1], lane[2], request)
        return await super().request(
            method,
            url,
            content=content,
            data=data,
            files=files,
            json=json,
            params=params,
            headers=headers,
            cookies=cookies,
            auth=auth,
            follow_redirects=follow_redirects,
            timeout=timeout,
            extensions=extensions,
        )

    def _lane(
        self, url: httpx.URL | str
    ) -> tuple[httpx.URL, BoundedTransport, AiohttpTransport] | None:
        """The URL, this client's transport and the shared aiohttp transport, when the short
        path may take a request to ``url`` (see :meth:`request`)."""
        if (
            self.is_closed
            or self._auth is not None
            or self.follow_redirects
            or self._event_hooks["request"]
            or self._event_hooks["response"]
            or self._mounts
            or self._params
            or self._cookies.jar
        ):
            return None
        target = _url(url) if type(url) is str else url
        transport = self._transport
        if (
            not isinstance(target, httpx.URL)
            or target.scheme not in ("http", "https")
            or not target.host
            or target.userinfo
            or not isinstance(transport, BoundedTransport)
        ):
            return None
        lane = transport.lane(target)
        return None if lane is None else (target, transport, lane)

    def _lean_request(
        self,
        method: str,
        url: httpx.URL,
        content: bytes | None,
        headers: dict[str, str] | None,
        timeout: TimeoutTypes | UseClientDefault,
    ) -> httpx.Request | None:
        """The request httpx's ``build_request`` makes: the client's headers, then the call's
        replacing them by name, Host and Content-Length as httpx adds them, the timeouts in
        its extensions. None when a header is not a plain ASCII string (httpx's own path then
        says what is wrong with it)."""
        given: dict[bytes, tuple[bytes, bytes]] = {}
        for name, text in (headers or {}).items():
            if type(name) is not str or type(text) is not str:
                return None
            if not (name.isascii() and text.isascii()):
                return None
            key = name.encode()
            given[key.lower()] = (key, text.encode())
        if headers and len(given) != len(headers):
            return None  # one name twice (in two cases): httpx sends both
        # the client's headers, those the call names taken out, then the call's (Headers.update)
        listed = [(key, value) for key, value in self.headers.raw if key.lower() not in given]
        names = {key.lower() for key, _value in listed}
        names.update(given)
        listed += given.values()
        method = method.upper()
        if content and b"content-length" not in names:
            listed.append((b"Content-Length", str(len(content)).encode()))
            names.add(b"content-length")
        auto = []
        if b"host" not in names:
            auto.append((b"Host", url.netloc))
        if (
            b"content-length" not in names
            and b"transfer-encoding" not in names
            and method in ("POST", "PUT", "PATCH")
        ):
            auto.append((b"Content-Length", b"0"))
        limits = (
            self.timeout
            if isinstance(timeout, UseClientDefault)
            else timeout
            if isinstance(timeout, httpx.Timeout)
            else _timeout(timeout)
        )
        request = httpx.Request(
            method,
            url,
            headers=auto + listed,
            stream=httpx.ByteStream(content or b""),
            extensions={"timeout": limits.as_dict()},
        )
        request.read()
        return request

    async def _lean_send(
        self, transport: BoundedTransport, lane: AiohttpTransport, request: httpx.Request
    ) -> httpx.Response:
        started = time.perf_counter()
        self._state = ClientState.OPENED
        limits = request.extensions["timeout"]
        wait = _aiohttp_timeout(limits.get("connect"), limits.get("read"), limits.get("pool"))
        response = await transport.answer(lane, request, wait, started)
        # what httpx's send makes of an answer for this client (no hooks, no auth)
        self._cookies.extract_cookies(response)
        response.default_encoding = self._default_encoding
        if response.has_redirect_location:
            response.next_request = self._build_redirect_request(request, response)
        if _httpx_log.isEnabledFor(logging.INFO):
            _httpx_log.info(
                'HTTP Request: %s %s "%s %d %s"',
                request.method,
                request.url,
                response.http_version,
                response.status_code,
                response.reason_phrase,
            )
        return response

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
