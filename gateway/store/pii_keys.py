"""Which keys have encrypted applicants' ID and phone numbers in this database (their ids only):
a process refuses to start without one of them (:func:`gateway.pii_crypto.check_keys`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import JSON, inspect, select, type_coerce, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway import pii_crypto
from gateway.clock import now
from gateway.store.tables import applications, pii_keys


async def prepare(engine: AsyncEngine, cipher: pii_crypto.PiiCipher | None) -> None:
    """Check the engine's key against the ids the database recorded, then record its own id:
    before this process writes with a key, the database knows that key's id."""
    async with engine.connect() as conn:
        recorded = set((await conn.execute(select(pii_keys.c.key_id))).scalars())
    pii_crypto.check_keys(recorded, cipher)
    if cipher is None or cipher.key_id in recorded:
        return
    try:
        async with engine.begin() as conn:
            await conn.execute(pii_keys.insert().values(key_id=cipher.key_id, first_used_at=now()))
    except IntegrityError:  # another process recorded it first
        pass


async def forget_all_but(engine: AsyncEngine, keep: set[str]) -> None:
    """After every row was re-written with the current key (or in clear): only ``keep``."""
    async with engine.begin() as conn:
        await conn.execute(pii_keys.delete().where(pii_keys.c.key_id.not_in(keep or {""})))


async def recorded_in(database_url: str) -> set[str]:
    """The key ids an existing database recorded (``gateway check-config``): empty when the
    database, or its pii_keys table, does not exist yet. Creates nothing."""
    from sqlalchemy.engine import make_url

    from gateway.store.db import create_engine

    url = make_url(database_url)
    where = url.database
    if url.get_backend_name() == "sqlite" and (
        not where or where == ":memory:" or not Path(where).exists()
    ):
        return set()
    engine = create_engine(database_url, connect_timeout=3.0, pool_timeout=3.0, watch=False)
    try:
        async with engine.connect() as conn:
            if not await conn.run_sync(lambda c: inspect(c).has_table(pii_keys.name)):
                return set()
            return set((await conn.execute(select(pii_keys.c.key_id))).scalars())
    finally:
        await engine.dispose()


async def reseal(engine: AsyncEngine, cipher: pii_crypto.PiiCipher, *, batch: int = 500) -> int:
    """Re-write every applicant whose ID or phone number is clear or sealed with a previous
    key, with ``cipher``'s current key, ``batch`` rows per transaction; then forget the other
    key ids (the old keys may go). Returns how many rows were re-written."""
    raw = type_coerce(applications.c.applicant, JSON)  # the stored value, not opened
    done, after = 0, ""
    while True:
        async with engine.begin() as conn:
            rows = (
                await conn.execute(
                    select(applications.c.id, raw.label("stored"))
                    .where(applications.c.id > after)
                    .order_by(applications.c.id)
                    .limit(batch)
                )
            ).all()
            for row in rows:
                if _stale(row.stored, cipher.key_id):
                    clear = pii_crypto.open_applicant(row.stored, cipher)
                    await conn.execute(
                        update(applications)
                        .where(applications.c.id == row.id)
                        .values(applicant=clear)
                    )
                    done += 1
        if len(rows) < batch:
            break
        after = rows[-1].id
    await forget_all_but(engine, {cipher.key_id})
    return done


def _stale(stored: Any, current: str) -> bool:
    if not isinstance(stored, dict):
        return False
    sealed = f"{pii_crypto.PREFIX}{current}:"
    return any(
        isinstance(v, str) and v and not v.startswith(sealed)
        for v in (stored.get(f) for f in pii_crypto.FIELDS)
    )
