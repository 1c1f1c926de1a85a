"""``gateway keys create|list|revoke|rotate``: API keys for front-desk systems and ops.

A key is printed once; only its sha256 is stored. Revoking takes effect at once in every
process (keys are looked up per request). Rotating prints a new key that works at once; the
old one keeps working until ``--grace`` ends, so the front-desk system can switch without a gap.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from gateway.cli import app
from gateway.cli.common import (
    DEFAULT_CONFIG,
    ConfigOption,
    JsonOption,
    console,
    emit_json,
    err,
    load,
    run,
)
from gateway.cli.output import local_time, print_table, unknown_name

if TYPE_CHECKING:  # the commands import these when they run: `gateway --help` must stay quick
    from sqlalchemy.ext.asyncio import AsyncConnection

    from gateway.config.loader import Config
    from gateway.store import clients

T = TypeVar("T")

keys = typer.Typer(help="API keys for front-desk systems and ops.", no_args_is_help=True)
app.add_typer(keys, name="keys")

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_GRACE = dt.timedelta(days=30)


def parse_grace(text: str) -> dt.timedelta:
    """``0``, ``90s``, ``30m``, ``24h`` or ``7d`` (at most 30 days)."""
    if text == "0":
        return dt.timedelta(0)
    found = _DURATION.match(text.strip())
    if not found:
        raise typer.BadParameter("give a duration such as 0, 30m, 24h or 7d")
    grace = dt.timedelta(seconds=int(found.group(1)) * _UNITS[found.group(2)])
    if grace > MAX_GRACE:
        raise typer.BadParameter("at most 30d: an old key must not live on indefinitely")
    return grace


async def _with_runtime(cfg: Config, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
    from gateway.runtime import Runtime

    runtime = Runtime(cfg)
    try:
        await runtime.prepare_database()
        async with runtime.engine.begin() as conn:
            return await work(conn)
    finally:
        await runtime.aclose()


def _unknown_key(cfg: Config, key_id: str) -> typer.Exit:
    """An unknown key id is an error (exit 1) naming the closest stored id, if one is close."""
    from gateway.store import clients

    stored = run(_with_runtime(cfg, clients.list_keys))
    return unknown_name("key id", key_id, (k.id for k in stored), see="gateway keys list")


def _print_new_key(key: str) -> None:
    console.print(
        "New API key (shown only now; store it in the front-desk system's secrets):",
        highlight=False,
    )
    print(key)


@keys.command("create")
def keys_create(
    config: ConfigOption = DEFAULT_CONFIG,
    centre: Annotated[str | None, typer.Option(help="centre code the key acts for")] = None,
    ops: Annotated[
        bool, typer.Option("--ops", help="an ops key (ops endpoints, all centres)")
    ] = False,
    name: Annotated[str | None, typer.Option(help="who holds the key")] = None,
) -> None:
    """Create an API key; it is printed once and only its hash is stored."""
    if bool(centre) == ops:
        err.print("give exactly one of --centre NAME or --ops")
        raise typer.Exit(2)
    from gateway.store import clients

    cfg = load(config)
    if centre and centre not in {c.code for c in cfg.gateway.centres}:
        raise unknown_name("centre", centre, (c.code for c in cfg.gateway.centres))

    async def work(conn: AsyncConnection) -> tuple[clients.Client, str]:
        return await clients.create_client(
            conn, name=name or (centre or "ops"), centre=centre, ops=ops
        )

    _client, key = run(_with_runtime(cfg, work))
    _print_new_key(key)


@keys.command("list")
def keys_list(config: ConfigOption = DEFAULT_CONFIG, as_json: JsonOption = False) -> None:
    """Every key stored in the database (never the key itself) and whether it works now;
    times in the configured time zone, --json for scripts."""
    from gateway.store import clients

    cfg = load(config)
    zone = cfg.gateway.timezone
    found = run(_with_runtime(cfg, clients.list_keys))
    if as_json:
        emit_json([k.model_dump(mode="json") for k in found])
        return
    rows = []
    for k in found:
        if k.revoked_at:
            state = f"revoked {local_time(k.revoked_at, zone)}"
        elif k.expires_at:
            verb = "expires" if k.active else "expired"
            state = f"{verb} {local_time(k.expires_at, zone)} (-> {k.replaced_by})"
        else:
            state = "active"
        scope = "ops" if k.ops else f"centre {k.centre}"
        rows.append((k.id, k.name, scope, local_time(k.created_at, zone), state))
    print_table(("id", "name", "scope", "created", "state"), rows)


@keys.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="the key's id (gateway keys list)")],
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Revoke a key: every process refuses it from now on."""
    from gateway.store import clients

    cfg = load(config)

    async def work(conn: AsyncConnection) -> clients.KeyInfo | None:
        return await clients.revoke(conn, key_id)

    info = run(_with_runtime(cfg, work))
    if info is None:
        raise _unknown_key(cfg, key_id)
    console.print(f"key {key_id} revoked", highlight=False)


@keys.command("rotate")
def keys_rotate(
    key_id: Annotated[str, typer.Argument(help="the key's id (gateway keys list)")],
    config: ConfigOption = DEFAULT_CONFIG,
    grace: Annotated[
        str, typer.Option(help="how long the old key keeps working: 0, 30m, 24h, 7d")
    ] = "24h",
) -> None:
    """A new key for the same holder and scope, valid at once; the old one until --grace ends."""
    from gateway.store import clients

    period = parse_grace(grace)
    cfg = load(config)

    async def work(conn: AsyncConnection) -> tuple[clients.KeyInfo, clients.KeyInfo, str] | None:
        return await clients.rotate(conn, key_id, period)

    try:
        rotated = run(_with_runtime(cfg, work))
    except clients.NotRotatable as exc:
        err.print(str(exc))
        raise typer.Exit(1) from exc
    if rotated is None:
        raise _unknown_key(cfg, key_id)
    old, new, key = rotated
    _print_new_key(key)
    until = local_time(old.expires_at, cfg.gateway.timezone) if old.expires_at else "now"
    err.print(f"new key id {new.id}; the old key {old.id} works until {until}", highlight=False)
