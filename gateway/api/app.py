"""The FastAPI application: front-desk API, ops API, probes."""

from __future__ import annotations

import math

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from gateway import metrics
from gateway.api import exposure, openapi, problems
from gateway.api.auth import KeyRing
from gateway.api.front import Front
from gateway.api.quotas import RateLimiter
from gateway.api.routes_applications import intake_shortcut
from gateway.api.routes_applications import router as applications_router
from gateway.api.routes_audit import router as audit_router
from gateway.api.routes_callbacks import PREFIX as CALLBACKS_PREFIX
from gateway.api.routes_callbacks import callback_shortcut
from gateway.api.routes_callbacks import router as callbacks_router
from gateway.api.routes_keys import router as keys_router
from gateway.api.routes_ops import router as ops_router
from gateway.api.routes_pickup import router as pickup_router
from gateway.api.routes_reconcile import router as reconcile_router
from gateway.api.routes_refetch import router as refetch_router
from gateway.api.routes_supplements import router as supplements_router
from gateway.api.routes_webhooks import router as webhooks_router
from gateway.api.routes_withdrawals import router as withdrawals_router
from gateway.console import router as console_router
from gateway.errors import InfrastructureError, RequestProblem
from gateway.runtime import Runtime

_UNAVAILABLE = {
    "database": "the gateway's database is not answering right now",
    "storage": "the gateway has no room (or no permission) to store files right now; ops are "
    "alerted",
    "intake": "the gateway is receiving more applications than it can store right now",
}


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    """The one answer to an infrastructure failure: 503 (507 when data_dir is full) with
    Retry-After. Not logged here: :mod:`gateway.outage` tells ops once per outage."""
    assert isinstance(exc, InfrastructureError)
    metrics.UNAVAILABLE.labels(exc.component).inc()
    why = _UNAVAILABLE.get(exc.component, "the gateway cannot complete requests right now")
    retry = math.ceil(exc.retry_after)
    return problems.render(
        request,
        RequestProblem(
            exc.status,
            "Insufficient storage" if exc.status == 507 else "Service unavailable",
            f"{why}. Send the same request again after {retry} s: with the "
            "same Idempotency-Key (or the same upload) that is safe, whether or not this attempt "
            "was stored.",
            code="insufficient_storage" if exc.status == 507 else "service_unavailable",
            params={"retry": retry},
            headers={"Retry-After": str(retry)},
        ),
    )


def _operation_id(route: APIRoute) -> str:
    return route.name


def create_app(runtime: Runtime) -> FastAPI:
    """The API over a started :class:`Runtime` (the caller owns its lifecycle)."""
    api = runtime.config.gateway.api
    app = FastAPI(
        **exposure.docs_urls(api.openapi),
        title="OneWindow Gateway",
        version="0.1.0",
        description="One window in, one window out: the front-desk API of the gateway. "
        "The guide is docs/front-desk-api.md; every error is application/problem+json with a "
        "stable code (GET /problems lists them).",
        # operation ids are the handlers' names (submit_application, list_pickups, ...): what
        # a generated client calls its functions
        generate_unique_id_function=_operation_id,
    )
    app.state.runtime = runtime
    app.state.keyring = KeyRing(runtime)
    app.state.rate_limiter = RateLimiter(api.quotas)
    problems.install(app)
    openapi.install(app)
    exposure.install_docs(app, api.openapi)
    app.add_exception_handler(InfrastructureError, _unavailable)
    app.include_router(applications_router)
    app.include_router(callbacks_router)
    app.include_router(ops_router)
    app.include_router(keys_router)
    app.include_router(audit_router)
    app.include_router(reconcile_router)
    app.include_router(refetch_router)
    app.include_router(pickup_router)
    app.include_router(supplements_router)
    app.include_router(withdrawals_router)
    app.include_router(webhooks_router)
    app.include_router(console_router)  # /console: the ops console (issue 14)
    app.add_middleware(
        Front,  # the body limit, the security headers, the access log; the shortcuts
        default_limit=api.max_body_bytes,
        limits={"/v1/materials": api.material_max_bytes + 64 * 1024},
        access_log=api.access_log,
        shortcuts={"/v1/applications": intake_shortcut},
        last_segment_shortcuts={CALLBACKS_PREFIX: callback_shortcut},
    )
    return app
