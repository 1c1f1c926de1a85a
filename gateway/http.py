"""The one outbound HTTP client factory.

httpx's API over aiohttp's transport: on this hardware raw httpx reached ~700-950 req/s against a
local endpoint where aiohttp reached ~5,700, and connectors keep httpx's types and MockTransport.
"""

from __future__ import annotations

import httpx
from httpx_aiohttp import AiohttpTransport


def make_client(*, max_connections: int = 200, timeout: float = 30.0) -> httpx.AsyncClient:
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    return httpx.AsyncClient(
        transport=AiohttpTransport(limits=limits, trust_env=False),
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
    )
