"""``gateway serve``, ``gateway daemon``, ``gateway migrate``."""

from __future__ import annotations

from typing import Annotated

import typer

from gateway.cli import app
from gateway.cli.common import DEFAULT_CONFIG, ConfigOption, console, load, run
from gateway.logs import configure


@app.command()
def serve(
    config: ConfigOption = DEFAULT_CONFIG,
    with_daemon: Annotated[
        bool,
        typer.Option("--with-daemon/--no-daemon", help="also dispatch and poll in this process"),
    ] = True,
    host: Annotated[str | None, typer.Option(help="override [gateway.api] host")] = None,
    port: Annotated[int | None, typer.Option(help="override [gateway.api] port")] = None,
) -> None:
    """Run the HTTP API (and, by default, the daemon loops: the embedded setup)."""
    from gateway.service import serve_until_signalled

    cfg = load(config)
    configure()
    run(serve_until_signalled(cfg, api=True, daemon=with_daemon, host=host, port=port))


@app.command()
def daemon(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Run the dispatcher and status polling; any number may share one PostgreSQL."""
    from gateway.service import serve_until_signalled

    cfg = load(config)
    configure()
    run(serve_until_signalled(cfg, api=False, daemon=True))


@app.command("migrate")
def migrate_cmd(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Create or upgrade the database schema."""
    from gateway.store.db import create_engine, migrate

    cfg = load(config)

    async def go() -> None:
        engine = create_engine(cfg.gateway.database_url)
        try:
            await migrate(engine)
        finally:
            await engine.dispose()

    run(go())
    console.print("database is at the newest schema")
