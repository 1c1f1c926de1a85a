"""Structured logging setup (structlog), with PII scrubbed from every event."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from gateway.pii import scrub_event

_configured = False


def _stderr_logger(*_args: Any) -> structlog.PrintLogger:
    # sys.stderr as it is when a line is written, not as it was at configure(): whoever swapped
    # it in between (a test runner capturing output, a CLI test harness) may have closed that one
    return structlog.PrintLogger(sys.stderr)


def ensure_configured() -> None:
    """Configure with defaults unless the program already did (structlog's own default prints
    rich tracebacks with local variables, which would carry PII)."""
    if not _configured:
        configure()


def configure(level: str = "INFO", *, json: bool = False) -> None:
    global _configured
    _configured = True
    logging.basicConfig(stream=sys.stderr, level=level, format="%(message)s")
    # libraries that log every request or migration step at INFO: their noise, and its cost on
    # the dispatch path, is not what ops need; warnings still show
    for noisy in ("httpx", "httpcore", "alembic", "aiosqlite", "asyncssh"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            scrub_event,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
