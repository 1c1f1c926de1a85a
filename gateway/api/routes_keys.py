"""Ops endpoints for API keys: list, create, revoke, rotate (an ops key required).

The same operations as ``gateway keys``; a new key is in the answer once and never again.
"""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.api.auth import OpsDep, RuntimeDep
from gateway.api.paging import Page, PageDep
from gateway.api.problems import Problem
from gateway.store import clients
from gateway.store.clients import KeyInfo
from gateway.text import CleanStr

router = APIRouter(prefix="/v1/ops/keys", tags=["ops"])

_GRACE_MAX = int(dt.timedelta(days=30).total_seconds())


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: CleanStr = Field(min_length=1, max_length=100)
    centre: str | None = Field(default=None, max_length=32)
    ops: bool = False

    @model_validator(mode="after")
    def _one_scope(self) -> KeyIn:
        if (self.centre is None) != self.ops:
            raise ValueError("give exactly one of centre or ops = true")
        return self


class NewKey(BaseModel):
    info: KeyInfo
    key: str = Field(description="the key itself: shown this once, only its hash is kept")


class RotateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_seconds: int = Field(
        default=86400, ge=0, le=_GRACE_MAX, description="how long the old key keeps working"
    )


class Rotated(BaseModel):
    old: KeyInfo
    new: KeyInfo
    key: str = Field(description="the new key: shown this once")


def _unknown(key_id: str) -> Problem:
    return Problem(
        404,
        "Unknown key",
        f"no API key with id '{key_id}'",
        field="key_id",
        params={"id": key_id},
    )


class KeyPage(Page[KeyInfo]):
    pass


@router.get("", response_model=KeyPage)
async def list_keys(runtime: RuntimeDep, _ops: OpsDep, paging: PageDep) -> KeyPage:
    """Every key in the database (never the key itself) and whether it works now."""
    async with runtime.engine.connect() as conn:
        found = await clients.list_keys(conn, limit=paging.limit + 1, after=paging.key("keys", 2))
    cut = paging.page("keys", found, lambda k: [k.created_at, k.id])
    return KeyPage(items=cut.items, next_cursor=cut.next_cursor)


@router.post("", response_model=NewKey, status_code=201)
async def create_key(body: KeyIn, runtime: RuntimeDep, _ops: OpsDep) -> NewKey:
    if body.centre is not None and body.centre not in {
        c.code for c in runtime.config.gateway.centres
    }:
        raise Problem(
            422,
            "Unknown centre",
            f"no centre '{body.centre}'",
            field="centre",
            params={"centre": body.centre},
        )
    async with runtime.engine.begin() as conn:
        client, key = await clients.create_client(
            conn, name=body.name, centre=body.centre, ops=body.ops
        )
        info = await clients.get_key(conn, client.id)
    assert info is not None
    return NewKey(info=info, key=key)


@router.post("/{key_id}/revoke", response_model=KeyInfo)
async def revoke_key(key_id: str, runtime: RuntimeDep, _ops: OpsDep) -> KeyInfo:
    """Revoke a key: every process refuses it from the next request on."""
    async with runtime.engine.begin() as conn:
        info = await clients.revoke(conn, key_id)
    if info is None:
        raise _unknown(key_id)
    return info


@router.post("/{key_id}/rotate", response_model=Rotated)
async def rotate_key(
    key_id: str, runtime: RuntimeDep, _ops: OpsDep, body: RotateIn | None = None
) -> Rotated:
    """A new key for the same holder and scope; the old one works until the grace ends."""
    grace = dt.timedelta(seconds=(body or RotateIn()).grace_seconds)
    try:
        async with runtime.engine.begin() as conn:
            rotated = await clients.rotate(conn, key_id, grace)
    except clients.NotRotatable as exc:
        raise Problem(409, "Key not active", str(exc), field="key_id") from exc
    if rotated is None:
        raise _unknown(key_id)
    old, new, key = rotated
    return Rotated(old=old, new=new, key=key)
