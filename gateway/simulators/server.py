"""The simulators serve their apps with :func:`gateway.serving.serve_asgi`, the one way the
gateway runs an ASGI app on uvicorn inside a running loop (the API uses it too)."""

from __future__ import annotations

from gateway.serving import serve_asgi

__all__ = ["serve_asgi"]
