"""Running CLI commands inside a test process: a plain module, not a conftest."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import structlog


@contextlib.contextmanager
def isolated_logging() -> Iterator[None]:
    """Commands configure logging for the terminal they run in (CliRunner's captured streams,
    closed when it returns): put the test process's configuration back afterwards, or later
    tests log to a closed file at a command's level."""
    saved = structlog.get_config()
    try:
        yield
    finally:
        structlog.configure(**saved)
