"""Request body limits enforced before the body is read into memory."""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """Refuse bodies over a limit with a 413 problem; ``per_path`` sets larger limits (uploads)."""

    def __init__(self, app: ASGIApp, *, default: int, per_path: dict[str, int]) -> None:
        self.app, self.default, self.per_path = app, default, per_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.per_path.get(scope["path"], self.default)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await _too_large(scope, send, limit)
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _too_large(scope, send, limit)


class _TooLarge(HTTPException):
    # an HTTPException so FastAPI's body parsing re-raises it and the problem handler renders it
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than the limit of {limit} bytes")


async def _too_large(scope: Scope, send: Send, limit: int) -> None:
    # answered before the app (and its problem renderer) sees the request: the same shape,
    # with the type page on the host the client called
    host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
    base = f"{scope.get('scheme', 'http')}://{host}" if host else ""
    body: dict[str, Any] = {
        "type": f"{base}/problems/payload_too_large",
        "title": "Payload too large",
        "status": 413,
        "detail": f"the request body is larger than the limit of {limit} bytes",
        "instance": scope["path"],
        "code": "payload_too_large",
    }
    raw = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(raw)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": raw})
