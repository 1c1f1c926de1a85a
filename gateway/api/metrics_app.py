"""The daemon's own scrape endpoint (``gateway daemon --metrics-port``): ``/metrics`` with the
scrape-time backlog gauges, and ``/healthz``. A daemon serves no API, so this is all it listens
for; its counters (deliveries, calls, latencies) exist only in its process."""

from __future__ import annotations

import json

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import collector
from gateway.runtime import Runtime


def metrics_app(runtime: Runtime) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/metrics":
            await collector.collect_or_log(runtime)
            status, body, kind = 200, generate_latest(), CONTENT_TYPE_LATEST
        elif scope["path"] == "/healthz":
            status, body, kind = 200, json.dumps({"status": "ok"}).encode(), "application/json"
        else:
            status, body, kind = 404, b"not found: /metrics or /healthz\n", "text/plain"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", kind.encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app
