"""Tables as plain text: what a command prints when its output is piped or written to a file.

No dependencies (``gateway --help`` imports the CLI's output helpers)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["tsv"]


def tsv(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None) -> str:
    """``# title``, a header row, one tab-separated line per row (None is empty; tabs and
    newlines inside a cell become spaces), for ``cut``/``awk``."""
    lines = [f"# {title}"] if title else []
    for line in [list(columns), *rows]:
        cells = ("" if c is None else str(c) for c in line)
        lines.append("\t".join(c.replace("\t", " ").replace("\n", " ") for c in cells))
    return "\n".join(lines) + "\n"
