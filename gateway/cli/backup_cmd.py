"""``gateway backup``: the SQLite database and the data folder in one archive."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer

from gateway.cli import app
from gateway.cli.common import DEFAULT_CONFIG, ConfigOption, err, load


@app.command()
def backup(
    config: ConfigOption = DEFAULT_CONFIG,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="archive to write (default: gateway-backup-<time>.tar.gz)"
        ),
    ] = None,
) -> None:
    """Archive the SQLite database (a consistent online copy) and the data folder; safe while
    the gateway runs. With PostgreSQL, back the database up with pg_dump (docs/deploy.md):
    the archive then holds the data folder only."""
    from gateway.backup import make_backup

    cfg = load(config)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    target = output or Path(f"gateway-backup-{stamp}.tar.gz")
    try:
        result = make_backup(cfg.gateway.database_url, cfg.gateway.data_dir, target)
    except (OSError, RuntimeError) as exc:
        err.print(f"backup failed: {exc}", markup=False, highlight=False)
        raise typer.Exit(1) from exc
    typer.echo(
        f"wrote {result.archive}: database {result.database}, {result.files} data file(s), "
        f"{result.bytes / 2**20:.1f} MiB before compression"
    )
