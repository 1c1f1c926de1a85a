"""API clients: keys are shown once and only their sha256 is kept (they are 256-bit random, so a
fast hash is enough; a slow KDF would only slow every request).

A key is valid until it is revoked (``revoked_at``) or, after a rotation, until its grace period
ends (``expires_at``): the new key works at once, the old one keeps working until then so the
front-desk system can switch without a gap. Every request looks its key up (no cache), so a
revocation takes effect at once in every process sharing the database.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from sqlalchemy import ColumnElement, Row, and_, bindparam, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.clock import new_id, now
from gateway.store import driver, paging
from gateway.store.tables import UTCDateTime, api_clients

KEY_PREFIX = "owk_"


@dataclass(frozen=True)
class Client:
    id: str
    name: str
    centre: str | None
    ops: bool


class KeyInfo(BaseModel):
    """What is known about a stored key (never the key itself)."""

    id: str
    name: str
    centre: str | None
    ops: bool
    created_at: dt.datetime
    revoked_at: dt.datetime | None
    expires_at: dt.datetime | None
    replaced_by: str | None
    active: bool


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


async def create_client(
    conn: AsyncConnection, *, name: str, centre: str | None, ops: bool, key: str | None = None
) -> tuple[Client, str]:
    """Store a new client; returns it with its key (the only time the key is known)."""
    if (centre is None) == (not ops):
        raise ValueError("a key is either a centre's or ops")
    key = key or new_key()
    client = Client(id=new_id("c"), name=name, centre=centre, ops=ops)
    await conn.execute(
        insert(api_clients).values(
            id=client.id,
            name=name,
            centre=centre,
            ops=ops,
            key_hash=hash_key(key),
            created_at=now(),
        )
    )
    return client, key


def _valid_at(at: dt.datetime | ColumnElement[Any]) -> ColumnElement[bool]:
    return and_(
        api_clients.c.revoked_at.is_(None),
        or_(api_clients.c.expires_at.is_(None), api_clients.c.expires_at > at),
    )


def valid_key(at: str = "at") -> ColumnElement[bool]:
    """A stored key valid at the time bound as ``at``: not revoked, not past its grace period
    (the condition of :func:`find_many`, for a statement that looks keys up with more)."""
    return _valid_at(bindparam(at, type_=UTCDateTime()))


async def find_by_hash(conn: AsyncConnection, key_hash: str) -> Client | None:
    found = await find_many(conn, [key_hash])
    return found.get(key_hash)


#: the valid clients among a list of key hashes (one statement text on each engine: the intake
#: group commit runs it for every batch, the key look-ups of other endpoints for theirs)
_FIND_MANY = driver.Query(
    lambda one_of: select(
        api_clients.c.key_hash,
        api_clients.c.id,
        api_clients.c.name,
        api_clients.c.centre,
        api_clients.c.ops,
    ).where(
        one_of(api_clients.c.key_hash, "hashes"),
        valid_key(),
    )
)


async def find_many(conn: AsyncConnection, key_hashes: list[str]) -> dict[str, Client]:
    """The valid clients among ``key_hashes`` (revoked and expired keys are left out)."""
    rows = await _FIND_MANY.all(conn, {"hashes": list(key_hashes), "at": now()})
    return {key_hash: Client(id, name, centre, ops) for key_hash, id, name, centre, ops in rows}


def _info(row: Row[object], at: dt.datetime) -> KeyInfo:
    r = row._mapping
    expires = r["expires_at"]
    return KeyInfo(
        id=r["id"],
        name=r["name"],
        centre=r["centre"],
        ops=r["ops"],
        created_at=r["created_at"],
        revoked_at=r["revoked_at"],
        expires_at=expires,
        replaced_by=r["replaced_by"],
        active=r["revoked_at"] is None and (expires is None or expires > at),
    )


async def list_keys(
    conn: AsyncConnection, *, limit: int | None = None, after: Sequence[Any] | None = None
) -> list[KeyInfo]:
    """Keys, oldest first; ``after`` is the (created_at, id) a page starts after."""
    at = now()
    q = select(api_clients).order_by(api_clients.c.created_at, api_clients.c.id)
    start = paging.after([api_clients.c.created_at, api_clients.c.id], after)
    if start is not None:
        q = q.where(start)
    if limit is not None:
        q = q.limit(limit)
    return [_info(row, at) for row in (await conn.execute(q)).all()]


async def get_key(conn: AsyncConnection, client_id: str) -> KeyInfo | None:
    row = (await conn.execute(select(api_clients).where(api_clients.c.id == client_id))).first()
    return _info(row, now()) if row else None


async def revoke(conn: AsyncConnection, client_id: str) -> KeyInfo | None:
    """Revoke a key now (a revoked key stays revoked: revoking again changes nothing)."""
    await conn.execute(
        update(api_clients)
        .where(api_clients.c.id == client_id, api_clients.c.revoked_at.is_(None))
        .values(revoked_at=now())
    )
    return await get_key(conn, client_id)


class NotRotatable(Exception):
    pass


async def rotate(
    conn: AsyncConnection, client_id: str, grace: dt.timedelta
) -> tuple[KeyInfo, KeyInfo, str] | None:
    """A new key for the same holder and scope, valid at once; the old one stays valid for
    ``grace`` (zero: not at all). Returns (old, new, the new key); None for an unknown id;
    NotRotatable for a key that no longer works."""
    old = await get_key(conn, client_id)
    if old is None:
        return None
    if not old.active:
        raise NotRotatable(f"key {client_id} is revoked or expired: create a new one instead")
    client, key = await create_client(conn, name=old.name, centre=old.centre, ops=old.ops)
    ends = now() + grace
    if old.expires_at is not None:
        ends = min(ends, old.expires_at)
    await conn.execute(
        update(api_clients)
        .where(api_clients.c.id == client_id)
        .values(expires_at=ends, replaced_by=client.id)
    )
    new = await get_key(conn, client.id)
    old_now = await get_key(conn, client_id)
    assert new is not None and old_now is not None
    return old_now, new, key
