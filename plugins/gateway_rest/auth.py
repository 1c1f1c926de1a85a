"""Token auth: a token from the department's token endpoint, kept until it expires.

One token is shared by every call of a connector; concurrent calls that find it missing or
expired wait for one fetch instead of each asking for a token (token endpoints are often rate
limited). A 401 on a call drops the token it used, so the next call fetches a fresh one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from gateway_rest.options import TokenAuth

__all__ = ["TokenCache"]

#: fetch() -> (token, seconds it is valid for; None: the configured default)
Fetch = Callable[[], Awaitable[tuple[str, float | None]]]


class TokenCache:
    """The current token of one connector, fetched through ``fetch`` when needed."""

    def __init__(
        self, spec: TokenAuth, fetch: Fetch, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._spec = spec
        self._fetch = fetch
        self._clock = clock
        self._token: str | None = None
        self._expires = 0.0
        self._lock = asyncio.Lock()
        #: how many tokens were fetched (tests and logs)
        self.fetched = 0

    async def token(self) -> str:
        """A token valid for at least ``refresh_margin_seconds`` more."""
        async with self._lock:
            if self._token is None or self._clock() >= self._expires:
                token, ttl = await self._fetch()
                self.fetched += 1
                ttl = self._spec.default_ttl_seconds if ttl is None else ttl
                self._token = token
                self._expires = self._clock() + max(ttl - self._spec.refresh_margin_seconds, 0.0)
            return self._token

    async def header(self) -> tuple[str, str]:
        return self._spec.header, self._spec.prefix + await self.token()

    def drop(self, token_header: str | None) -> None:
        """Forget the token a call was refused with (not a newer one another call fetched)."""
        if token_header is not None and token_header == self._spec.prefix + (self._token or ""):
            self._token = None
