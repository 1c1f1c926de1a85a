"""Request body limits enforced before the body is read into memory (by
:class:`gateway.api.front.Front`, for every path: ``[gateway.api] max_body_bytes``, larger for
uploads)."""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import Scope, Send


class TooLarge(HTTPException):
    # an HTTPException so FastAPI's body parsing re-raises it and the problem handler renders it
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than the limit of {limit} bytes")


async def too_large(scope: Scope, send: Send, limit: int) -> None:
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
