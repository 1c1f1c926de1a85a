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
        for path in spec.get("paths", {}).values():
            for op in path.values():
                responses = op.setdefault("responses", {})
                if "422" in responses:
                    responses["422"] = _problem_response(
                        "The request has fields to fix: errors[] names each with its code"
                    )
                responses.setdefault("default", _problem_response("Any other error"))
        _binary(schemas)
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
