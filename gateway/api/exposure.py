"""What the API shows besides its answers: the API description, metrics, and the headers every
answer carries.

``[gateway.api] openapi`` and ``metrics`` say who may read ``/openapi.json`` (with ``/docs`` and
``/redoc``) and ``/metrics``: ``public``, only with a key (``key``: any valid key for the API
description; ``ops``: an ops key for metrics), or nobody (``off``: 404). Production settings use
``key``/``ops`` or ``off``: the description maps every endpoint for an attacker, and metrics
name departments and volumes.

Every answer carries headers that keep a browser from doing anything with it but show it:
``nosniff`` (no guessing a content type), no framing, no referrer, no caching (answers hold
personal data), and a content security policy that allows nothing (the API serves no pages; the
documentation pages get a policy of their own).
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import Message

from gateway.api.auth import ClientDep, authenticate, require_ops

_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
_API_POLICY = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")
_NO_STORE = (b"cache-control", b"no-store")
_DOC_PAGES = ("/docs", "/redoc")
_PAGE_HEADERS = (*_HEADERS, _NO_STORE)  # the documentation pages set a policy of their own
_API_HEADERS = (*_HEADERS, _NO_STORE, _API_POLICY)


def security_headers(message: Message, path: str) -> Message:
    """An answer's ``http.response.start`` with the headers above added (those it does not set
    itself); :class:`gateway.api.front.Front` applies it to every answer."""
    headers = list(message.get("headers") or [])
    present = {name.lower() for name, _v in headers}
    wanted = _PAGE_HEADERS if path in _DOC_PAGES else _API_HEADERS
    headers += [(n, v) for n, v in wanted if n not in present]
    return {**message, "headers": headers}


def install_docs(app: FastAPI, setting: str) -> None:
    """``/openapi.json``, ``/docs`` and ``/redoc`` as ``setting`` says (the app was built
    without FastAPI's own, unguarded ones unless it is ``public``)."""
    if setting in ("public", "off"):
        return
    router = APIRouter(include_in_schema=False)

    @router.get("/openapi.json")
    async def openapi_json(_client: ClientDep) -> JSONResponse:
        return JSONResponse(app.openapi())

    @router.get("/docs")
    async def swagger(_client: ClientDep) -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=app.title)

    @router.get("/redoc")
    async def redoc(_client: ClientDep) -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title=app.title)

    app.include_router(router)


def docs_urls(setting: str) -> dict[str, Any]:
    """FastAPI's own description routes: only when they are public."""
    if setting == "public":
        return {}
    return {"openapi_url": None, "docs_url": None, "redoc_url": None}


async def metrics_allowed(request: Request) -> None:
    """The dependency guarding ``/metrics`` by ``[gateway.api] metrics``."""
    setting = request.app.state.runtime.config.gateway.api.metrics
    if setting == "off":
        raise HTTPException(404, "Not Found")
    if setting == "ops":
        await require_ops(await authenticate(request))


_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+")
_HOST_PORT = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?\b|\blocalhost(?::\d+)?\b")


def centre_safe(text: str | None) -> str | None:
    """A department error as a centre may see it: no addresses of department systems (URLs,
    IP addresses): they map the internal network. Ops see the whole text."""
    if not text:
        return text
    return _HOST_PORT.sub("[address]", _URL.sub("[department address]", text))


def safe_link(url: str | None) -> str | None:
    """A link from a department as the API may pass it on: http(s) only (never
    ``javascript:``, ``data:`` or ``file:``)."""
    if not url:
        return None
    scheme = url.split(":", 1)[0].strip().lower() if ":" in url else ""
    return url if scheme in ("http", "https") and url.strip() == url else None


#: Content types a downloaded document keeps; any other is sent as application/octet-stream
#: (a department's text/html or image/svg+xml would run in the clerk's browser otherwise).
SAFE_DOCUMENT_TYPES = frozenset(
    {"application/pdf", "image/png", "image/jpeg", "application/ofd", "application/zip"}
)


def document_media_type(content_type: str | None) -> str:
    base = (content_type or "").split(";", 1)[0].strip().lower()
    return base if base in SAFE_DOCUMENT_TYPES else "application/octet-stream"
