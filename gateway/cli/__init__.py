"""The ``gateway`` command line. Each group of commands lives in its own module.

Start-up cost matters (``gateway --help`` answers in well under a second on a busy machine): the
command modules import their heavy parts (database, connectors, the API) inside the commands,
and plugins' extra commands are loaded only when they are run. Help lists the built-in
plugins' command groups from :data:`BUILTIN_PLUGIN_COMMANDS` without importing them, and
imports only plugins of other distributions.
Help is plain text: rich markup would swallow ``[gateway.api]`` in option help.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from gateway.logs import FORMAT_ENV, FORMATS, LEVEL_ENV, LogSettingError, resolve

if TYPE_CHECKING:  # typer vendors click (0.2x); the group's methods take its types
    from typer._click import Command, Context

#: the distribution whose own plugins (rest, soap, filedrop, ...) help does not import
OWN_DISTRIBUTION = "onewindow-gateway"
#: command groups the built-in plugins register, with their help line (help lists them from
#: here; tests/test_cli.py checks this table against what the plugins register)
BUILTIN_PLUGIN_COMMANDS = {"filedrop": "File-drop departments: quarantined files."}


class _Group(TyperGroup):
    _plugins_loaded = False
    _listing = False

    def list_commands(self, ctx: Context) -> list[str]:
        self._load_plugin_commands(third_party_only=True)
        names = super().list_commands(ctx)
        return names + [n for n in BUILTIN_PLUGIN_COMMANDS if n not in names]

    def format_commands(self, ctx: Context, formatter: Any) -> None:
        self._listing = True  # help needs names and help lines, not the commands themselves
        try:
            super().format_commands(ctx, formatter)
        finally:
            self._listing = False

    def get_command(self, ctx: Context, cmd_name: str) -> Command | None:
        found = super().get_command(ctx, cmd_name)
        if found is None and self._listing and cmd_name in BUILTIN_PLUGIN_COMMANDS:
            return _stub(cmd_name)
        if found is None and not self._plugins_loaded:
            self._load_plugin_commands(third_party_only=False)
            found = super().get_command(ctx, cmd_name)
        return found

    def _load_plugin_commands(self, *, third_party_only: bool) -> None:
        if self._plugins_loaded:
            return
        import contextlib
        import importlib.metadata as md

        names = None
        if third_party_only:
            names = [
                ep.name
                for ep in md.entry_points(group="gateway")  # gateway.plugin_manager.GROUP
                if ep.dist is None or ep.dist.name != OWN_DISTRIBUTION
            ]
            if not names:
                return  # nothing but built-ins: nothing to import for help
        from gateway.plugin_manager import load_plugins

        self._plugins_loaded = True
        extra = typer.Typer()
        # a broken plugin must not take the CLI down; `gateway plugins` reports it
        with contextlib.suppress(Exception):
            load_plugins(load=names or ()).register_commands(extra)
        if not extra.registered_commands and not extra.registered_groups:
            return
        group = typer.main.get_group(extra)
        for name, command in group.commands.items():
            if name not in self.commands:  # a plugin cannot replace a built-in command
                self.add_command(command, name)


def _stub(name: str) -> Command:
    """A stand-in listed by help (never run: running the name loads the real command)."""
    return TyperGroup(name=name, help=BUILTIN_PLUGIN_COMMANDS[name])


app = typer.Typer(
    name="gateway",
    help="OneWindow Gateway: one window in, one window out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    cls=_Group,
)


@app.callback()
def _root(
    log_format: Annotated[
        str | None,
        typer.Option(
            "--log-format",
            envvar=FORMAT_ENV,
            help=f"log format: {' or '.join(FORMATS)} (default console)",
            show_envvar=True,
        ),
    ] = None,
    log_level: Annotated[
        str | None,
        typer.Option(
            "--log-level",
            envvar=LEVEL_ENV,
            help="DEBUG, INFO, WARNING or ERROR (default INFO for serve and daemon)",
            show_envvar=True,
        ),
    ] = None,
) -> None:
    """OneWindow Gateway: one window in, one window out."""
    try:
        resolve(log_level, log_format)
    except LogSettingError as exc:
        raise typer.BadParameter(str(exc)) from exc
    # every command configures logging from these (and child processes inherit them)
    if log_format:
        os.environ[FORMAT_ENV] = log_format
    if log_level:
        os.environ[LEVEL_ENV] = log_level


def _register() -> Any:
    from gateway.cli import commands

    return commands


_register()
