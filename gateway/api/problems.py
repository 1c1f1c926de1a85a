"""RFC 9457 problem details: every error the API returns, in one shape a clerk can act on.

Every problem has a stable ``code`` (its ``type`` is ``<gateway>/problems/<code>``, a page the
gateway serves), a ``title`` and ``detail`` in the client's language, and ``errors[]``: one
item per field to fix, each with ``field``, ``code`` and ``message``. The language is chosen by
``Accept-Language`` (``zh-CN`` or ``en``); without one, a centre's key gets its centre's
configured language (``[gateway.api] language``, zh-CN by default) and anything else English.
Library wording (pydantic's, jsonschema's) never reaches the client: each error is mapped to a
code and its message comes from :mod:`gateway.api.messages`.
"""

from __future__ import annotations

import html
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.api import messages
from gateway.api.messages import LANGUAGES, Language
from gateway.errors import FieldError, RequestProblem
from gateway.pii import scrub
from gateway.text import MAX_DEPTH, readable

MEDIA_TYPE = "application/problem+json"

#: The API's problem exception (raised by the routes; the domain raises the same class).
Problem = RequestProblem


def language(request: Request) -> Language:
    """``Accept-Language`` first (by q-value), else the key's default."""
    offered: list[tuple[float, int, str]] = []
    for i, part in enumerate(request.headers.get("accept-language", "").split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        if tag and q > 0:
            offered.append((-q, i, tag.strip().lower()))
    for _q, _i, tag in sorted(offered):
        if tag.startswith("zh"):
            return "zh-CN"
        if tag.startswith("en"):
            return "en"
    client = getattr(request.state, "client", None)
    if client is not None and client.centre is not None:
        config = request.app.state.runtime.config.gateway
        for centre in config.centres:
            if centre.code == client.centre and centre.language:
                return centre.language  # type: ignore[no-any-return]
        return config.api.language  # type: ignore[no-any-return]
    return "en"


def type_uri(request: Request, code: str) -> str:
    public = request.app.state.runtime.config.gateway.api.public_url
    base = (public or str(request.base_url)).rstrip("/")
    return f"{base}/problems/{code}"


def render(request: Request, exc: RequestProblem) -> JSONResponse:
    lang = language(request)
    errors = list(exc.errors)
    if exc.field and not errors:
        errors = [FieldError(exc.field, exc.code)]
    detail = messages.detail(exc.code, lang, exc.detail, exc.params)
    body: dict[str, Any] = {
        "type": type_uri(request, exc.code),
        "title": messages.title(exc.code, lang, exc.title),
        "status": exc.status,
        "detail": scrub(detail),
        "instance": request.url.path,
        "code": exc.code,
        **exc.extra,
    }
    if errors:
        body["errors"] = [
            {
                "field": e.field,
                "code": e.code,
                # a problem about one field: its message is the problem's own detail
                "message": scrub(
                    detail
                    if e.code == exc.code
                    else messages.field_message(e.code, lang, e.params, e.field)
                ),
            }
            for e in errors
        ]
    headers = {"Content-Language": lang, **(exc.headers or {})}
    # readable: a message may quote what the client sent (a field name, an id), whatever it is
    return JSONResponse(
        readable(body), status_code=exc.status, media_type=MEDIA_TYPE, headers=headers
    )


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


_TYPE_ERRORS = {
    "string_type": "string",
    "int_type": "integer",
    "int_parsing": "integer",
    "int_from_float": "integer",
    "float_type": "number",
    "float_parsing": "number",
    "bool_type": "boolean",
    "bool_parsing": "boolean",
    "dict_type": "object",
    "model_type": "object",
    "model_attributes_type": "object",
    "list_type": "array",
}
_RANGE = {
    "greater_than": ">",
    "greater_than_equal": ">=",
    "less_than": "<",
    "less_than_equal": "<=",
}


def field_error(err: Any) -> FieldError:
    """One pydantic error as a field error with a code (never pydantic's message)."""
    kind: str = err.get("type", "")
    ctx: dict[str, Any] = err.get("ctx") or {}
    field = _field(tuple(err["loc"]))
    if kind in messages.FIELD_ERRORS:  # our own PydanticCustomError types
        sub = ctx.get("field")
        return FieldError(f"{field}.{sub}" if sub else field, kind)
    if kind == "missing":
        return FieldError(field, "required")
    if kind == "extra_forbidden":
        return FieldError(field, "unknown_field")
    if kind in ("string_too_short", "too_short"):
        code = "too_short" if kind.startswith("string") else "too_few"
        return FieldError(field, code, {"min": ctx.get("min_length", "?")})
    if kind in ("string_too_long", "too_long"):
        code = "too_long" if kind.startswith("string") else "too_many"
        return FieldError(field, code, {"max": ctx.get("max_length", "?")})
    if kind == "string_pattern_mismatch":
        return FieldError(field, "bad_format")
    if kind in _TYPE_ERRORS:
        return FieldError(field, "wrong_type", {"expected": _TYPE_ERRORS[kind]})
    if kind in ("literal_error", "enum"):
        allowed = str(ctx.get("expected", "")).replace("'", "")
        return FieldError(field, "not_allowed", {"allowed": allowed})
    if kind in _RANGE:
        bound = next((v for k, v in ctx.items() if k in ("gt", "ge", "lt", "le")), "?")
        return FieldError(field, "out_of_range", {"bound": f"{_RANGE[kind]} {bound}"})
    if kind.startswith(("datetime_", "date_", "timezone_")):
        return FieldError(field, "bad_datetime")
    if kind == "string_unicode":
        return FieldError(field, "bad_characters")
    if kind == "value_error":
        # our own validators' ValueErrors (gateway.text): named by what they found
        reason = str(ctx.get("error", ""))
        if "character" in reason or "surrogate" in reason:
            return FieldError(field, "bad_characters")
        if "deeper than" in reason:
            return FieldError(field, "too_deep", {"max": MAX_DEPTH})
        return FieldError(field, "invalid", {"reason": reason})
    return FieldError(field, "invalid")


def invalid_request(errors: list[FieldError]) -> RequestProblem:
    fields = ", ".join(dict.fromkeys(e.field for e in errors))
    english = "; ".join(
        f"{e.field}: {messages.field_message(e.code, 'en', e.params, e.field)}" for e in errors
    )
    return RequestProblem(
        422,
        "Invalid request",
        english,
        code="invalid_request",
        params={"fields": fields},
        errors=errors,
    )


_HTTP_CODES = {
    404: ("Not found", "not_found"),
    405: ("Method not allowed", "method_not_allowed"),
    401: ("Unauthorized", "unauthorized"),
    413: ("Payload too large", "payload_too_large"),
}


#: endpoints that read their API key themselves (no dependency solved before the body) and
#: the check their key gets before a malformed body is answered: a request with a bad key is
#: refused as such (401) whatever its body, as on the endpoints with a key dependency
KEY_FIRST: dict[Callable[..., Any], Callable[[Request], Awaitable[object]]] = {}


async def _key_first(request: Request) -> RequestProblem | None:
    route = request.scope.get("route")
    check = KEY_FIRST.get(getattr(route, "endpoint", None))  # type: ignore[arg-type]
    if check is None:
        return None
    try:
        await check(request)
    except RequestProblem as exc:
        return exc
    return None


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestProblem)
    async def _problem(request: Request, exc: RequestProblem) -> JSONResponse:
        return render(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        refused = await _key_first(request)
        if refused is not None:
            return render(request, refused)
        errors = []
        for err in exc.errors():
            if err.get("type") == "json_invalid":
                return render(
                    request,
                    RequestProblem(
                        400,
                        "Malformed JSON",
                        "the request body is not valid JSON",
                        code="malformed_json",
                        errors=[FieldError("body", "malformed_json")],
                    ),
                )
            errors.append(field_error(err))
        return render(request, invalid_request(errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        title, code = _HTTP_CODES.get(exc.status_code, ("Error", "error"))
        return render(
            request,
            RequestProblem(
                exc.status_code,
                title,
                str(exc.detail),
                code=code,
                headers=getattr(exc, "headers", None),
            ),
        )

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        structlog.get_logger("gateway.api").exception("unhandled error", path=request.url.path)
        return render(
            request,
            RequestProblem(
                500,
                "Internal error",
                "the gateway failed to handle this request; nothing was changed "
                "unless a 2xx was returned. Ops can find it in the logs.",
                code="internal_error",
            ),
        )

    @app.get("/problems", response_class=HTMLResponse, tags=["problems"])
    async def problem_index() -> HTMLResponse:
        """Every problem code the API answers, with its page."""
        rows = "".join(
            f'<li><a href="problems/{code}"><code>{code}</code></a> '
            f"{html.escape(e.title_en)} / {html.escape(e.title_zh)}</li>"
            for code, e in sorted(messages.PROBLEMS.items())
        )
        return HTMLResponse(_page("Problems / 问题类型", f"<ul>{rows}</ul>"))

    @app.get("/problems/{code}", response_class=HTMLResponse, tags=["problems"])
    async def problem_page(code: str) -> HTMLResponse:
        """The page a problem's ``type`` points at: what it means and what to do."""
        entry = messages.PROBLEMS.get(code)
        if entry is None:
            raise RequestProblem(404, "Not found", f"no problem type '{code}'", code="not_found")
        status = entry.status if isinstance(entry.status, tuple) else (entry.status,)
        body = (
            f"<p><code>{code}</code> · HTTP {', '.join(map(str, status))}</p>"
            f'<h2 lang="en">{html.escape(entry.title_en)}</h2>'
            f'<p lang="en">{html.escape(entry.about_en)}</p>'
            f'<h2 lang="zh-CN">{html.escape(entry.title_zh)}</h2>'
            f'<p lang="zh-CN">{html.escape(entry.about_zh)}</p>'
        )
        return HTMLResponse(_page(f"{entry.title_en} / {entry.title_zh}", body))


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html><html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )


__all__ = ["LANGUAGES", "MEDIA_TYPE", "Problem", "install", "language", "render"]
