"""``gateway new-plugin NAME``: scaffold a connector plugin package."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gateway.cli import app
from gateway.cli.common import console, err


@app.command("new-plugin")
def new_plugin(
    name: Annotated[str, typer.Argument(help="plugin name, e.g. land-registry")],
    directory: Annotated[
        Path | None,
        typer.Option("--directory", "-d", help="where to write it (default: ./gateway-NAME)"),
    ] = None,
) -> None:
    """Write a ready-to-install connector plugin: pyproject with the entry point, a connector
    skeleton with TODOs, conformance tests and a README."""
    from gateway.scaffold import gateway_install_command, names_for, write_plugin

    try:
        names = names_for(name)
        files = write_plugin(name, directory)
    except (ValueError, FileExistsError) as exc:
        err.print(str(exc), style="red", markup=False, highlight=False)
        raise typer.Exit(2) from exc
    root = directory if directory is not None else Path(names.distribution)
    for path in files:
        console.print(f"  wrote {path}", highlight=False, markup=False)
    typer.echo(
        f"\nNext: fill in the TODOs, then, in the environment the plugin is for\n"
        f"  {gateway_install_command()}\n  cd {root}\n  pip install -e '.[test]'\n  pytest\n"
        f"  gateway plugins        # lists {names.kind}"
    )
