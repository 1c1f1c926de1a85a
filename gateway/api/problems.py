"""RFC 9457 problem details: every error the API returns, in one shape a clerk can act on."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.intake import IntakeProblem
from gateway.pii import scrub
from gateway.text import readable

MEDIA_TYPE = "application/problem+json"


class Problem(Exception):
    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        self.status, self.title, self.detail, self.field = status, title, detail, field
        self.headers = headers
        self.extra = extra
        super().__init__(detail)


def problem_response(
    request: Request,
    status: int,
    title: str,
    detail: str,
    *,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"https://onewindow.example/problems/{title.lower().replace(' ', '-')}",
        "title": title,
        "status": status,
        "detail": scrub(detail),
        "instance": request.url.path,
        **extra,
    }
    if errors:
        body["errors"] = [{**e, "message": scrub(e["message"])} for e in errors]
    # readable: a message may quote what the client sent (a field name, an id), whatever it is
    return JSONResponse(readable(body), status_code=status, media_type=MEDIA_TYPE, headers=headers)


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        errors = [{"field": exc.field, "message": exc.detail}] if exc.field else None
        return problem_response(
            request,
            exc.status,
            exc.title,
            exc.detail,
            errors=errors,
            headers=exc.headers,
            **exc.extra,
        )

    @app.exception_handler(IntakeProblem)
    async def _intake(request: Request, exc: IntakeProblem) -> JSONResponse:
        errors = [{"field": exc.field, "message": exc.detail}] if exc.field else None
        return problem_response(
            request, exc.status, exc.title, exc.detail, errors=errors, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = []
        for err in exc.errors():
            if err.get("type") == "json_invalid":
                return problem_response(
                    request,
                    400,
                    "Malformed JSON",
                    f"the request body is not valid JSON ({err.get('ctx', {}).get('error', '')})",
                    errors=[{"field": "body", "message": "not valid JSON"}],
                )
            errors.append({"field": _field(tuple(err["loc"])), "message": err["msg"]})
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem_response(request, 422, "Invalid request", detail, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        titles = {
            404: "Not found",
            405: "Method not allowed",
            401: "Unauthorized",
            413: "Payload too large",
        }
        return problem_response(
            request,
            exc.status_code,
            titles.get(exc.status_code, "Error"),
            str(exc.detail),
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        import structlog

        structlog.get_logger("gateway.api").exception("unhandled error", path=request.url.path)
        return problem_response(
            request,
            500,
            "Internal error",
            "the gateway failed to handle this request; nothing was changed "
            "unless a 2xx was returned. Ops can find it in the logs.",
        )
