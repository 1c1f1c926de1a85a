"""Console sessions: an ops key is exchanged once for a random session id kept server-side.

The browser holds only the session id (an HttpOnly, SameSite=Strict cookie scoped to
``/console``); the key itself is never stored, only its sha256, so every request can check that
the key was not revoked meanwhile (revoking an ops key ends its console sessions at once). Each
session carries its own CSRF token, sent back with every form. Sessions live in this process's
memory: a restart signs everyone out, and behind a load balancer the console needs sticky
sessions (docs/ops.md).
"""

from __future__ import annotations

import hmac
import secrets
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.runtime import Runtime
from gateway.store.clients import Client

COOKIE = "owg_console"
#: a session unused this long ends (seconds)
IDLE_SECONDS = 30 * 60
#: and no session outlives this, used or not
ABSOLUTE_SECONDS = 8 * 3600
#: bound on live sessions: the oldest go first (a flood of sign-ins cannot fill memory)
MAX_SESSIONS = 1000


@dataclass
class Session:
    id: str
    csrf: str
    client: Client
    key_sha256: str
    started: float
    seen: float
    new_key: str | None = field(default=None)  # a key just created, shown on the next page once

    def csrf_ok(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf, str(token))


class Sessions:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._now = clock
        self._live: dict[str, Session] = {}

    def open(self, client: Client, key_sha256: str) -> Session:
        at = self._now()
        while len(self._live) >= MAX_SESSIONS:
            self._live.pop(next(iter(self._live)))
        session = Session(
            id=secrets.token_urlsafe(32),
            csrf=secrets.token_urlsafe(32),
            client=client,
            key_sha256=key_sha256,
            started=at,
            seen=at,
        )
        self._live[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id (touched), or None when unknown or expired."""
        if not session_id:
            return None
        session = self._live.get(session_id)
        if session is None:
            return None
        at = self._now()
        if at - session.seen > IDLE_SECONDS or at - session.started > ABSOLUTE_SECONDS:
            self.close(session_id)
            return None
        session.seen = at
        return session

    def close(self, session_id: str) -> None:
        self._live.pop(session_id, None)

    def close_for_key(self, key_sha256: str) -> None:
        for sid in [s.id for s in self._live.values() if s.key_sha256 == key_sha256]:
            self.close(sid)


_SESSIONS: weakref.WeakKeyDictionary[Runtime, Sessions] = weakref.WeakKeyDictionary()


def sessions_of(runtime: Runtime) -> Sessions:
    """The sessions of this runtime (one store per gateway process)."""
    found = _SESSIONS.get(runtime)
    if found is None:
        found = _SESSIONS[runtime] = Sessions()
    return found
