"""The FastAPI application: front-desk API, ops API, probes."""

from __future__ import annotations

from fastapi import FastAPI

from gateway.api import problems
from gateway.api.auth import KeyRing
from gateway.api.limits import BodyLimit
from gateway.api.routes_applications import router as applications_router
from gateway.api.routes_callbacks import router as callbacks_router
from gateway.api.routes_ops import router as ops_router
from gateway.api.routes_pickup import router as pickup_router
from gateway.api.routes_reconcile import router as reconcile_router
from gateway.api.routes_supplements import router as supplements_router
from gateway.api.routes_withdrawals import router as withdrawals_router
from gateway.runtime import Runtime


def create_app(runtime: Runtime) -> FastAPI:
    """The API over a started :class:`Runtime` (the caller owns its lifecycle)."""
    app = FastAPI(
        title="OneWindow Gateway",
        version="0.1.0",
        description="One window in, one window out: the front-desk API of the gateway.",
    )
    app.state.runtime = runtime
    app.state.keyring = KeyRing(runtime)
    problems.install(app)
    app.include_router(applications_router)
    app.include_router(callbacks_router)
    app.include_router(ops_router)
    app.include_router(reconcile_router)
    app.include_router(pickup_router)
    app.include_router(supplements_router)
    app.include_router(withdrawals_router)
    api = runtime.config.gateway.api
    app.add_middleware(
        BodyLimit,
        default=api.max_body_bytes,
        per_path={"/v1/materials": api.material_max_bytes + 64 * 1024},
    )
    return app
