"""The served OpenAPI document, finished: every error is described as what it is (RFC 9457
problem+json with codes), not as FastAPI's default validation-error shape, which the API
never sends."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

_REF = "#/components/schemas/{model}"


class FieldProblem(BaseModel):
    field: str = Field(description="the request field at fault (form.business_name, materials[0])")
    code: str = Field(description="stable machine code (docs/front-desk-api.md, Errors)")
    message: str = Field(description="in the language of the answer (Content-Language)")


class Problem(BaseModel):
    """An error (RFC 9457). Program against ``code``; ``type`` is a page the gateway serves."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    code: str
    errors: list[FieldProblem] | None = None


def _problem_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": _REF.format(model="Problem")}}},
    }


_RETRY = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}

#: What every operation of a kind can answer besides its own success (docs/front-desk-api.md,
#: Errors). Keyed operations: no key or an unknown/revoked one, a key of the wrong scope, the
#: database out; path parameters: nothing there for this key; query parameters and bodies:
#: fields to fix, malformed JSON, a body over the limit.
_KEYED = {
    "401": "No valid API key: send Authorization: Bearer <key>",
    "403": "This key may not do this (scope: its centre, or ops)",
    "503": "The gateway's database is unavailable: send it again after Retry-After seconds",
}
_PATH = {"404": "Nothing with this id is visible to this key"}
_QUERY = {"400": "A query parameter is invalid: errors[] names it"}
_BODY = {
    "400": "The body is not valid JSON (or a header is invalid)",
    "413": "The body is larger than the limit",
}
#: What particular operations answer beyond their kind (where the code raises it)
_OWN: dict[tuple[str, str], dict[str, str]] = {
    ("post", "/v1/materials"): {
        "415": "This type of document is not accepted (material_types)",
        "429": "This key uploads faster than its quota: send it again after Retry-After",
        "507": "The gateway's data folder is full: send it again after Retry-After",
    },
    ("post", "/v1/applications"): {
        "409": "This Idempotency-Key was used for a different application",
        "429": "This key submits faster than its quota: send it again (same Idempotency-Key) "
        "after Retry-After",
        "507": "The gateway's storage is full: send it again after Retry-After",
    },
    ("post", "/v1/callbacks/{department}"): {
        "401": "Unsigned, badly signed, outside the clock window or replayed",
        "413": "The body is larger than the limit",
        "503": "The gateway's database is unavailable: the department sends it again later",
    },
    ("get", "/readyz"): {"503": "Not ready: the database or the schema is not there"},
    ("get", "/metrics"): {
        "401": '[gateway.api] metrics = "ops": send an ops key',
        "403": '[gateway.api] metrics = "ops": this key is not an ops key',
        "404": '[gateway.api] metrics = "off"',
    },
    ("post", "/v1/applications/{app_id}/collect"): {
        "409": "Not ready for pickup, or already handed out",
        "429": "Too many failed identity checks (case or key): wait Retry-After seconds",
    },
    ("post", "/v1/applications/{app_id}/mail"): {
        "409": "Not ready for mailing, or already handed out",
        "502": "The delivery method (courier plugin) failed: nothing was changed",
    },
    ("post", "/v1/applications/{app_id}/supplements"): {"409": "No supplement is asked for"},
    ("post", "/v1/applications/{app_id}/withdraw"): {"409": "The case can no longer be withdrawn"},
    ("get", "/v1/applications/{app_id}/documents/{doc_id}"): {
        "409": "The department only linked this document: fetch it from its url",
        "500": "The stored copy of this document is damaged (ops are told in the log)",
    },
    ("post", "/v1/ops/applications/{app_id}/retry"): {"409": "The case is not replayable"},
    ("post", "/v1/ops/applications/{app_id}/check"): {"409": "The case is not at a department"},
    ("post", "/v1/ops/keys/{key_id}/revoke"): {"409": "The key is not active"},
    ("post", "/v1/ops/keys/{key_id}/rotate"): {"409": "The key is not active"},
    ("post", "/v1/webhooks"): {"409": "This centre has too many subscriptions"},
    ("get", "/v1/ops/deadlines"): {"404": "Unknown department"},
    ("post", "/v1/ops/refetch"): {"404": "Unknown department"},
}


def _declare(path: str, method: str, op: dict[str, Any]) -> None:
    """Every status the operation really answers, each as a problem (RFC 9457)."""
    responses = op.setdefault("responses", {})
    params = op.get("parameters", [])
    found: dict[str, str] = {}
    if op.get("security"):
        found |= _KEYED
    if any(p.get("in") == "path" for p in params):
        found |= _PATH
    if any(p.get("in") == "query" for p in params):
        found |= _QUERY
    if "requestBody" in op:
        found |= _BODY
    found |= _OWN.get((method, path), {})
    for status, description in found.items():
        if status not in responses:
            responses[status] = _problem_response(description)
        if status in ("429", "503", "507"):
            responses[status]["headers"] = _RETRY


def _upload_types(spec: dict[str, Any], types: list[str]) -> None:
    """The types an upload may have (``material_types``), as the file part's encoding: clients
    and generators see what is accepted instead of finding out by a 415."""
    op = spec.get("paths", {}).get("/v1/materials", {}).get("post", {})
    form = op.get("requestBody", {}).get("content", {}).get("multipart/form-data")
    if form is not None and types:
        form["encoding"] = {"file": {"contentType": ", ".join(types)}}


def _binary(node: Any) -> None:
    """Uploads as ``format: binary`` too (OpenAPI 3.0 style, which client generators read; 3.1's
    ``contentMediaType`` alone makes them type the file as a string)."""
    if isinstance(node, dict):
        if node.get("type") == "string" and "contentMediaType" in node:
            node.setdefault("format", "binary")
        for value in node.values():
            _binary(value)
    elif isinstance(node, list):
        for value in node:
            _binary(value)


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        for model in (FieldProblem, Problem):
            schema = model.model_json_schema(ref_template=_REF)
            schema.pop("$defs", None)
            schemas[model.__name__] = schema
        for route, path in spec.get("paths", {}).items():
            for method, op in path.items():
                _declare(route, method, op)
                responses = op["responses"]
                if "422" in responses:
                    responses["422"] = _problem_response(
                        "The request has fields to fix: errors[] names each with its code"
                    )
                responses.setdefault("default", _problem_response("Any other error"))
        _upload_types(spec, app.state.runtime.config.gateway.api.material_types)
        _binary(schemas)
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
