"""``gateway serve``, ``gateway daemon``, ``gateway migrate``."""

from __future__ import annotations

from typing import Annotated

import typer

from gateway import stopping
from gateway.cli import app
from gateway.cli.common import DEFAULT_CONFIG, ConfigOption, err, load, run
from gateway.logs import configure

MigrateOption = Annotated[
    bool,
    typer.Option(
        "--migrate/--no-migrate",
        help="migrate an empty or older database on start (--no-migrate: refuse to start "
        "instead; with several nodes run 'gateway migrate' once before restarting)",
    ),
]


@app.command()
def serve(
    config: ConfigOption = DEFAULT_CONFIG,
    with_daemon: Annotated[
        bool,
        typer.Option("--with-daemon/--no-daemon", help="also dispatch and poll in this process"),
    ] = True,
    host: Annotated[str | None, typer.Option(help="override [gateway.api] host")] = None,
    port: Annotated[int | None, typer.Option(help="override [gateway.api] port")] = None,
    migrate: MigrateOption = True,
) -> None:
    """Run the HTTP API (and, by default, the daemon loops: the embedded setup).

    SIGHUP (or 'gateway reload') re-reads the configuration; SIGTERM stops gracefully."""
    stopping.hold()  # first: a SIGTERM while starting stops it once started
    from gateway.service import serve_until_signalled

    cfg = load(config)
    configure()
    run(
        serve_until_signalled(
            cfg,
            api=True,
            daemon=with_daemon,
            host=host,
            port=port,
            migrate=migrate,
            config_path=config,
        )
    )


@app.command()
def daemon(
    config: ConfigOption = DEFAULT_CONFIG,
    migrate: MigrateOption = True,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            envvar="GATEWAY_METRICS_PORT",
            help="serve /metrics and /healthz on this port (Prometheus scrapes daemons here)",
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(envvar="GATEWAY_METRICS_HOST", help="address for --metrics-port")
    ] = "127.0.0.1",
) -> None:
    """Run the dispatcher and status polling; any number may share one PostgreSQL.

    SIGHUP (or 'gateway reload') re-reads the configuration; SIGTERM stops gracefully."""
    stopping.hold()  # first: a SIGTERM while starting stops it once started
    from gateway.service import serve_until_signalled

    cfg = load(config)
    configure()
    run(
        serve_until_signalled(
            cfg,
            api=False,
            daemon=True,
            migrate=migrate,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
            config_path=config,
        )
    )


@app.command("reload")
def reload_cmd(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Check the configuration, then tell this host's running gateway processes (serve,
    daemon) to re-read it (SIGHUP). A refused reload is logged by each process with the reason;
    under systemd, 'systemctl reload gateway-api gateway-daemon@*' does the same."""
    from gateway.config.loader import check_connector_options
    from gateway.plugin_manager import load_plugins
    from gateway.reload import signal_running

    cfg = load(config)
    settings = cfg.gateway.plugins
    plugins = load_plugins(
        load=settings.load, block=settings.block, enable=settings.enable, trace=settings.trace
    )
    problems = check_connector_options(cfg, plugins.connectors())
    if problems:
        for problem in problems:
            err.print(str(problem), markup=False, highlight=False)
        err.print("not reloaded: fix these first ('gateway check-config' lists every problem)")
        raise typer.Exit(1)
    told, notes = signal_running(cfg.gateway.data_dir)
    for note in notes:
        err.print(note, markup=False, highlight=False)
    if not told:
        err.print(
            f"no running gateway process of this host is noted under "
            f"{cfg.gateway.data_dir / 'run'} (is it running with this config's data_dir?)",
            markup=False,
            highlight=False,
        )
        raise typer.Exit(1)
    typer.echo(
        f"configuration is valid; asked {len(told)} process(es) to reload: "
        + ", ".join(str(p) for p in told)
        + " (each logs 'configuration reloaded' or why it refused)"
    )


@app.command("migrate")
def migrate_cmd(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Create or upgrade the database schema, and say which it did."""
    from gateway.store.db import create_engine, migrate, revisions

    cfg = load(config)

    async def go() -> tuple[str | None, str | None]:
        engine = create_engine(cfg.gateway.database_url, **cfg.gateway.database.engine_options())
        try:
            before, _head = await revisions(engine)
            await migrate(engine)
            after, _head = await revisions(engine)
            return before, after
        finally:
            await engine.dispose()

    before, after = run(go())
    where = _safe_url(cfg.gateway.database_url)
    if before is None:
        typer.echo(f"created the schema in {where} (revision {after})")
    elif before != after:
        typer.echo(f"upgraded {where} from revision {before} to {after}")
    else:
        typer.echo(f"{where} is already at the newest schema ({after}): nothing to do")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
