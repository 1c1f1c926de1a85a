"""API clients: keys are shown once and only their sha256 is kept (they are 256-bit random, so a
fast hash is enough; a slow KDF would only slow every request)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.clock import new_id, now
from gateway.store.tables import api_clients

KEY_PREFIX = "owk_"


@dataclass(frozen=True)
class Client:
    id: str
    name: str
    centre: str | None
    ops: bool


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


async def create_client(
    conn: AsyncConnection, *, name: str, centre: str | None, ops: bool, key: str | None = None
) -> tuple[Client, str]:
    """Store a new client; returns it with its key (the only time the key is known)."""
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


async def find_by_hash(conn: AsyncConnection, key_hash: str) -> Client | None:
    q = select(api_clients).where(
        api_clients.c.key_hash == key_hash, api_clients.c.revoked_at.is_(None)
    )
    row = (await conn.execute(q)).first()
    return Client(row.id, row.name, row.centre, row.ops) if row else None
