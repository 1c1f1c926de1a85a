"""Bearer-key authentication. Keys are looked up by their sha256; config keys first, then the
database on every request, so a revoked key is refused at once in every process. Lookups that
arrive together share one query (:class:`~gateway.store.group.GroupCommit`), so under load the
check costs a fraction of a query per request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.api.problems import Problem
from gateway.runtime import Runtime
from gateway.store.clients import Client, find_many, hash_key
from gateway.store.group import GroupCommit


async def get_runtime(request: Request) -> Runtime:
    # async so FastAPI does not hand every request to a thread pool for it
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def _unauthorized(detail: str) -> Problem:
    return Problem(401, "Unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})


class KeyRing:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.static: dict[str, Client] = {}
        for i, k in enumerate(runtime.config.gateway.api_keys):
            digest = k.key_sha256 or (hash_key(k.key.get_secret_value()) if k.key else None)
            if digest:
                self.static[digest] = Client(f"static{i}", k.name, k.centre, k.ops)
        self._lookups: GroupCommit[str, Client | None] = GroupCommit(
            runtime.engine,
            _lookup,
            idempotent=True,  # reads
        )
        runtime.on_close.append(self._lookups.aclose)

    async def find(self, key: str) -> Client | None:
        digest = hash_key(key)
        if digest in self.static:
            return self.static[digest]
        return await self._lookups.submit(digest)


async def _lookup(conn: AsyncConnection, digests: list[str]) -> list[Client | None]:
    found = await find_many(conn, sorted(set(digests)))
    return [found.get(d) for d in digests]


# declares the bearer scheme in OpenAPI (the header is read below, with our own messages)
_BEARER = HTTPBearer(auto_error=False, description="an API key: gateway keys create")


def bearer_key(request: Request) -> str | None:
    """The API key of ``Authorization: Bearer <key>``; None when there is none."""
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


def no_key() -> Problem:
    return _unauthorized(
        "send an API key as 'Authorization: Bearer <key>'; ops can create "
        "one with 'gateway keys create --centre NAME'"
    )


def admit(request: Request, client: Client | None) -> Client:
    """The checks on a looked-up key (``None``: not known): refused with a problem, or the
    client, which errors then speak the language of."""
    if client is None:
        raise _unauthorized("this API key is not known or was revoked")
    if client.centre is None and not client.ops:
        # check-config refuses such keys; one in the database must not act for every centre
        raise Problem(403, "Key has no scope", "this API key is neither a centre's nor ops")
    request.state.client = client  # errors speak the key's centre's language
    return client


async def authenticate(
    request: Request,
    _declared: Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)] = None,
) -> Client:
    key = bearer_key(request)
    if key is None:
        raise no_key()
    keyring: KeyRing = request.app.state.keyring
    return admit(request, await keyring.find(key))


async def require_ops(client: Annotated[Client, Depends(authenticate)]) -> Client:
    if not client.ops:
        raise Problem(
            403, "Ops key required", "this endpoint needs an ops key ('gateway keys create --ops')"
        )
    return client


ClientDep = Annotated[Client, Depends(authenticate)]
OpsDep = Annotated[Client, Depends(require_ops)]
