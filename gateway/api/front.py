"""The API's one middleware: what every request gets on its way in and out, in one layer.

- the body limit (:mod:`gateway.api.limits`): a declared ``Content-Length`` over the path's
  limit is refused with a 413 before anything reads the body; a body without one is counted as
  it is read, and refused once it is over;
- the security headers (:mod:`gateway.api.exposure`) on every answer that does not set them;
- the access log line (:mod:`gateway.api.access`), when ``access_log`` is on;
- shortcuts: a ``POST`` of a JSON body to a path in ``shortcuts`` (``POST /v1/applications``,
  the hottest endpoint), or to a path of one more segment under a prefix in
  ``last_segment_shortcuts`` (``POST /v1/callbacks/{department}``, a department's pushes), is
  read here and handed to its shortcut, without Starlette's routing
  through every route, FastAPI's request wrapper and dependency solving. A shortcut answers
  with a response, or with ``None`` to let the application answer as usual (it then reads the
  same body, replayed); what a shortcut raises is answered by the application's own exception
  handlers, as it would be inside the router. The route stays declared as usual, so the
  OpenAPI document does not change.

Three middlewares did this before (one layer each, each wrapping ``send`` in a closure): the
layers were a measurable share of a small request's CPU.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.api.access import log_request
from gateway.api.exposure import security_headers
from gateway.api.limits import TooLarge, too_large

#: a shortcut: the request and its whole body -> the answer, or None (the app answers it)
Shortcut = Callable[[Request, bytes], Awaitable[Response | None]]


class Front:
    def __init__(
        self,
        app: ASGIApp,
        *,
        default_limit: int,
        limits: dict[str, int],
        access_log: bool,
        shortcuts: dict[str, Shortcut],
        last_segment_shortcuts: dict[str, Shortcut] | None = None,
    ) -> None:
        self.app = app
        self.default_limit, self.limits = default_limit, limits
        self.access_log = access_log
        self.shortcuts = shortcuts
        #: prefix (ending in "/") -> shortcut for the paths of one non-empty segment more
        self.last_segment_shortcuts = last_segment_shortcuts or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope["path"], self.default_limit)
        exchange = _Exchange(scope, receive, send, limit)
        try:
            await self._answer(exchange)
        finally:
            if self.access_log:
                log_request(scope, exchange.status, exchange.started)

    async def _answer(self, ex: _Exchange) -> None:
        scope = ex.scope
        declared = content_type = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = value  # the last one, as a dict of the headers kept it
            elif name == b"content-type" and content_type is None:
                content_type = value
        if declared is not None and declared.isdigit() and int(declared) > ex.limit:
            await too_large(scope, ex.send, ex.limit)
            return
        shortcut = None
        if scope["method"] == "POST" and content_type == b"application/json":
            path = scope["path"]
            shortcut = self.shortcuts.get(path)
            if shortcut is None and self.last_segment_shortcuts:
                head, _slash, last = path.rpartition("/")
                if last:
                    shortcut = self.last_segment_shortcuts.get(head + "/")
        if shortcut is not None and not scope.get("root_path"):
            await self._shortcut(ex, shortcut)
            return
        try:
            await self.app(scope, ex.receive, ex.send)
        except TooLarge:
            if not ex.responded:
                await too_large(scope, ex.send, ex.limit)

    async def _shortcut(self, ex: _Exchange, shortcut: Shortcut) -> None:
        request = Request(ex.scope, ex.receive)
        raw = None
        try:
            raw = await _body(ex)  # None: the client left (the application sees it as usual)
            response = None if raw is None else await shortcut(request, raw)
        except Exception as exc:
            # answered by the application's handler for it, as inside the router
            handler = _handler(ex.scope["app"].exception_handlers, exc)
            if handler is None:
                raise  # ServerErrorMiddleware answers it (500) and logs it
            answer = handler(request, exc)
            response = await answer if inspect.isawaitable(answer) else answer
        if response is None:  # the application answers it, reading the same body
            if raw is not None:
                ex.replay = [{"type": "http.request", "body": raw, "more_body": False}]
            await self.app(ex.scope, ex.receive, ex.send)
            return
        await response(ex.scope, ex.receive, ex.send)


class _Exchange:
    """One request as this middleware sees it: the body's limit and count so far, the
    answer's status, when it came."""

    __slots__ = (
        "_receive",
        "_send",
        "limit",
        "replay",
        "responded",
        "scope",
        "seen",
        "started",
        "status",
    )

    def __init__(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        self.scope, self._receive, self._send, self.limit = scope, receive, send, limit
        self.seen = 0
        self.status = 500  # what the client sees if the app dies before answering
        self.responded = False
        self.started = time.perf_counter()
        self.replay: list[Message] | None = None  # messages read already, given again first

    async def receive(self) -> Message:
        replay = self.replay
        if replay:
            return replay.pop(0)
        message = await self._receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.limit:
                raise TooLarge(self.limit)
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            self.responded = True
            message = security_headers(message, self.scope["path"])
        await self._send(message)


async def _body(ex: _Exchange) -> bytes | None:
    """The whole body (counted against the limit); None if the client disconnected first."""
    chunks: list[bytes] = []
    while True:
        message = await ex.receive()
        if message["type"] != "http.request":
            ex.replay = [message]
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks) if len(chunks) > 1 else chunks[0]


def _handler(handlers: dict[Any, Any], exc: Exception) -> Any:
    # as Starlette's ExceptionMiddleware looks one up (an HTTPException's status first);
    # Exception's own (500) is ServerErrorMiddleware's, outside this middleware
    if isinstance(exc, HTTPException) and exc.status_code in handlers:
        return handlers[exc.status_code]
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        if cls in handlers:
            return handlers[cls]
    return None
