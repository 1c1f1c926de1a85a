"""What every console page shares: templates, the session check, CSRF, headers, language."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from gateway.console import i18n
from gateway.console.sessions import COOKIE, Session, sessions_of
from gateway.deadlines import CHINA
from gateway.runtime import Runtime
from gateway.store.clients import find_many

HERE = Path(__file__).parent
PREFIX = "/console"
#: the sign-in form's CSRF token before there is a session (double submit: cookie and field)
PRE_COOKIE = "owg_console_pre"

# A page carries no inline script or style, so the strictest policy fits; set only when the
# gateway (its security headers) has not set one already.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; object-src 'none'",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

env = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
env.filters["local"] = lambda at: at.astimezone(CHINA).strftime("%Y-%m-%d %H:%M:%S")


def _static_version() -> str:
    digest = hashlib.sha256()
    for name in sorted(p.name for p in (HERE / "static").iterdir()):
        digest.update((HERE / "static" / name).read_bytes())
    return digest.hexdigest()[:12]


STATIC_VERSION = _static_version()


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def lang_of(request: Request) -> str:
    return i18n.pick(request.cookies.get(i18n.COOKIE))


def secure(request: Request) -> bool:
    return request.url.scheme == "https"


def with_headers(response: Response) -> Response:
    for name, value in HEADERS.items():
        if name.lower() not in response.headers:
            response.headers[name] = value
    return response


def render(
    request: Request,
    template: str,
    session: Session | None,
    status_code: int = 200,
    **context: Any,
) -> Response:
    lang = lang_of(request)
    here = request.url.path + (("?" + request.url.query) if request.url.query else "")
    html = env.get_template(template).render(
        t=i18n.translator(lang),
        lang=lang,
        session=session,
        csrf=session.csrf if session else "",
        path=request.url.path,
        here=quote(here, safe="/?=&"),
        static=f"{PREFIX}/static",
        static_version=STATIC_VERSION,
        **context,
    )
    return with_headers(HTMLResponse(html, status_code=status_code))


def redirect(url: str) -> Response:
    return with_headers(RedirectResponse(url, status_code=303))


def to_signin(request: Request, reason: str = "") -> Response:
    response = redirect(f"{PREFIX}/signin" + (f"?why={reason}" if reason else ""))
    if request.cookies.get(COOKIE):
        response.delete_cookie(COOKIE, path=PREFIX)
    return response


async def signed_in(request: Request) -> Session | None:
    """The request's live session, its key still valid (a revoked key ends it), or None."""
    runtime = runtime_of(request)
    sessions = sessions_of(runtime)
    session = await sessions.get(request.cookies.get(COOKIE))
    if session is None:
        return None
    client = request.app.state.keyring.static.get(session.key_sha256)
    if client is None:
        async with runtime.engine.connect() as conn:
            client = (await find_many(conn, [session.key_sha256])).get(session.key_sha256)
    if client is None or not client.ops:
        await sessions.close_for_key(session.key_sha256)
        return None
    session.client = client
    return session


async def form_of(request: Request, session: Session) -> dict[str, Any] | None:
    """The posted form when its CSRF token is the session's; None otherwise."""
    form = await request.form()
    token = form.get("csrf")
    if not session.csrf_ok(token if isinstance(token, str) else None):
        return None
    return {k: form.getlist(k) if k == "id" else form.get(k) for k in form}


def safe_next(value: str | None) -> str:
    """Only a console path (never another site) may be where a redirect goes."""
    if value and value.startswith(PREFIX + "/") and "//" not in value and "\\" not in value:
        return value
    return f"{PREFIX}/overview"
