"""How commands print: one table helper and one rule for unknown names.

Tables: on a terminal a rich table as wide as the terminal whose cells fold instead of being
cut (receipt numbers, ids stay whole); piped or redirected, plain tab-separated lines with a
header row, nothing cut or decorated, for ``cut``/``awk``; a title and the lines beside the
table (counts, "configuration OK") are ``# `` comment lines. Every command that prints a table
also has ``--json``.

Times are shown in the configured time zone (``[gateway] timezone``, default Asia/Shanghai).

A name that does not exist (a department, a centre) is an error: exit 1, the known names and
a "did you mean" when one is close.
"""

from __future__ import annotations

import datetime as dt
import difflib
import sys
import zoneinfo
from collections.abc import Iterable, Sequence
from typing import Any

import typer

from gateway.cli.common import console, err
from gateway.tables import tsv

__all__ = ["local_time", "print_note", "print_table", "tsv", "unknown_name"]


def local_time(value: dt.datetime | None, zone: str) -> str:
    """``value`` in ``zone``, to the second, with its offset (``2026-12-01T18:03:07+08:00``)."""
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(zoneinfo.ZoneInfo(zone)).isoformat(timespec="seconds")


def print_table(
    columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None
) -> None:
    cells = [["" if c is None else str(c) for c in row] for row in rows]
    if not sys.stdout.isatty():
        sys.stdout.write(tsv(columns, cells, title=title))
        return
    from rich.table import Table

    table = Table(title=title, expand=False)
    for name in columns:
        table.add_column(name, overflow="fold")
    for row in cells:
        table.add_row(*row)
    console.print(table, markup=False, highlight=False, soft_wrap=False)


def print_note(text: str, *, style: str | None = None) -> None:
    """A line for people beside a table: as is on a terminal, a ``# `` comment line when piped
    (scripts reading the table skip it like the title)."""
    if not sys.stdout.isatty():
        sys.stdout.write(f"# {text}\n")
        return
    console.print(text, style=style, markup=False, highlight=False)


def unknown_name(
    kind: str, name: str, known: Iterable[str], *, see: str | None = None
) -> typer.Exit:
    """Print why ``name`` is not a ``kind`` (with a suggestion); the caller raises the result.
    ``see`` names the command that lists them, instead of listing them all (for kinds that
    can be many, such as key ids)."""
    names = sorted(known)
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    if see is not None:
        where = f"see '{see}'"
    else:
        where = "known: " + (", ".join(names) if names else "none")
    err.print(f"unknown {kind} '{name}'.{hint} ({where})", markup=False, highlight=False)
    return typer.Exit(1)
