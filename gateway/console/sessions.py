"""Console sessions: an ops key is exchanged once for a random session token kept in the
database, so any API process behind a load balancer knows the session.

The browser holds only the token (an HttpOnly, SameSite=Strict cookie scoped to ``/console``);
the database holds its sha256, the sha256 of the ops key it was opened with (never the key), and
when it started and was last used. Every request checks that the key was not revoked meanwhile
(revoking an ops key ends its console sessions at once). A session's CSRF token is derived from
its token (HMAC), so it needs no storage and a database reader cannot forge a form. A key just
created on the keys page is kept until the next page, sealed with a key derived from the
session token (AES-GCM): only the browser that holds the cookie can have it shown.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import ColumnElement, and_, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.clock import now
from gateway.runtime import Runtime
from gateway.store.clients import Client
from gateway.store.tables import console_sessions as table

COOKIE = "owg_console"
#: a session unused this long ends (seconds)
IDLE_SECONDS = 30 * 60
#: and no session outlives this, used or not
ABSOLUTE_SECONDS = 8 * 3600
#: bound on live sessions: the oldest go first (a flood of sign-ins cannot fill the table)
MAX_SESSIONS = 1000
#: a session's last use is written at most this often (a page view is not a write each time)
TOUCH_SECONDS = 60


@dataclass
class Session:
    id: str  # the token: only in the cookie, never stored
    key_sha256: str
    started: dt.datetime
    seen: dt.datetime
    #: who signed in: looked up by the key on every request (:func:`gateway.console.web.signed_in`)
    client: Client = field(default_factory=lambda: Client("", "", None, False))

    @property
    def csrf(self) -> str:
        return _derive(self.id, b"csrf").hex()

    def csrf_ok(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf, str(token))


def _derive(token: str, purpose: bytes) -> bytes:
    return hmac.new(token.encode(), purpose, hashlib.sha256).digest()


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _live(at: dt.datetime) -> ColumnElement[bool]:
    return and_(
        table.c.seen_at > at - dt.timedelta(seconds=IDLE_SECONDS),
        table.c.started_at > at - dt.timedelta(seconds=ABSOLUTE_SECONDS),
    )


class Sessions:
    """The console sessions in the runtime's database."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def open(self, key_sha256: str) -> Session:
        at = now()
        session = Session(secrets.token_urlsafe(32), key_sha256, at, at)
        async with self.runtime.engine.begin() as conn:
            await _prune(conn, at)
            await conn.execute(
                insert(table).values(
                    token_hash=_hash(session.id), key_sha256=key_sha256, started_at=at, seen_at=at
                )
            )
        return session

    async def get(self, token: str | None) -> Session | None:
        """The live session with this token (its use noted), or None when unknown or expired."""
        if not token or len(token) > 100:
            return None
        at = now()
        async with self.runtime.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(table).where(table.c.token_hash == _hash(token), _live(at))
                )
            ).first()
        if row is None:
            return None
        if (at - row.seen_at).total_seconds() > TOUCH_SECONDS:
            async with self.runtime.engine.begin() as conn:
                await conn.execute(
                    update(table).where(table.c.token_hash == row.token_hash).values(seen_at=at)
                )
        return Session(token, row.key_sha256, row.started_at, at)

    async def close(self, token: str) -> None:
        async with self.runtime.engine.begin() as conn:
            await conn.execute(delete(table).where(table.c.token_hash == _hash(token)))

    async def close_for_key(self, key_sha256: str) -> None:
        async with self.runtime.engine.begin() as conn:
            await conn.execute(delete(table).where(table.c.key_sha256 == key_sha256))

    async def keep_new_key(self, session: Session, key: str) -> None:
        """Keep a just-created key for the session's next page, sealed with its token."""
        nonce = secrets.token_bytes(12)
        sealed = nonce + AESGCM(_derive(session.id, b"new key")).encrypt(nonce, key.encode(), None)
        async with self.runtime.engine.begin() as conn:
            await conn.execute(
                update(table)
                .where(table.c.token_hash == _hash(session.id))
                .values(new_key=base64.b64encode(sealed).decode())
            )

    async def take_new_key(self, session: Session) -> str | None:
        """The key kept by :meth:`keep_new_key`, once."""
        async with self.runtime.engine.begin() as conn:
            where = table.c.token_hash == _hash(session.id)
            sealed = (await conn.execute(select(table.c.new_key).where(where))).scalar()
            if not sealed:
                return None
            await conn.execute(update(table).where(where).values(new_key=None))
        raw = base64.b64decode(sealed)
        key = AESGCM(_derive(session.id, b"new key")).decrypt(raw[:12], raw[12:], None)
        return key.decode()


async def _prune(conn: AsyncConnection, at: dt.datetime) -> None:
    """Expired sessions go; past ``MAX_SESSIONS`` live ones, the oldest go."""
    await conn.execute(delete(table).where(~_live(at)))
    live = (await conn.execute(select(func.count()).select_from(table))).scalar() or 0
    if live >= MAX_SESSIONS:
        oldest = (
            select(table.c.token_hash)
            .order_by(table.c.started_at)
            .limit(live - MAX_SESSIONS + 1)
            .scalar_subquery()
        )
        await conn.execute(delete(table).where(table.c.token_hash.in_(oldest)))


def sessions_of(runtime: Runtime) -> Sessions:
    """The sessions of this runtime's database (shared by every process using it)."""
    return Sessions(runtime)
