"""The ``gateway`` command line. Each group of commands lives in its own module."""

from __future__ import annotations

import contextlib

import typer

app = typer.Typer(
    name="gateway",
    help="OneWindow Gateway: one window in, one window out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    from gateway.cli import commands  # noqa: F401  (registers on import)
    from gateway.plugin_manager import load_plugins

    # a broken plugin must not take the CLI down; `gateway plugins` reports it
    with contextlib.suppress(Exception):
        load_plugins().register_commands(app)


_register()
