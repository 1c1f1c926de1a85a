"""The audit trail of personal data: who read which cases, when, through what.

Every answer that shows an applicant's data (a case, a list page, the pickup list, a result
document, ``gateway status``) is recorded in ``audit_log`` before it is given: the actor (API
key id and name, or the OS user of a CLI command), the centre, the action and the ids of the
cases shown. Rows are only ever appended and are hash-chained (:mod:`gateway.store.chain`).
Records that arrive together are appended in one transaction (group commit), so a busy list page
costs a fraction of a commit.
"""

from __future__ import annotations

import getpass
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.clock import now
from gateway.runtime import Runtime
from gateway.store.chain import append_audit
from gateway.store.clients import Client
from gateway.store.group import GroupCommit, shared


@dataclass(frozen=True)
class Read:
    channel: str  # api | cli
    actor: str
    centre: str | None
    action: str
    applications: tuple[str, ...]


def _writer(runtime: Runtime) -> GroupCommit[Read, None]:
    return shared(runtime, "audit", lambda: _append)


async def _append(conn: AsyncConnection, reads: list[Read]) -> list[None]:
    at = now()
    await append_audit(
        conn,
        [
            {
                "at": at,
                "channel": r.channel,
                "actor": r.actor[:100],
                "centre": r.centre,
                "action": r.action[:64],
                "applications": list(r.applications),
            }
            for r in reads
        ],
    )
    return [None] * len(reads)


async def record(runtime: Runtime, read: Read) -> None:
    """Append one record; returns once it is committed."""
    await _writer(runtime).submit(read)


async def api_read(runtime: Runtime, client: Client, action: str, app_ids: Sequence[str]) -> None:
    """Record that ``client`` was shown these cases' personal data (nothing when none)."""
    if app_ids:
        actor = f"{client.id} {client.name}"
        await record(runtime, Read("api", actor, client.centre, action, tuple(app_ids)))


async def cli_read(runtime: Runtime, action: str, app_ids: Sequence[str]) -> None:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (containers)
        user = "unknown"
    await record(runtime, Read("cli", f"os:{user}", None, action, tuple(app_ids)))
