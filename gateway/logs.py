"""Logging: one setup for the gateway's own (structlog) and its libraries' (stdlib) records.

Policy (docs/ops.md, "Logs"):

* INFO: what an operator wants to read: start and stop, migrations, reconciliation runs,
  retries, API requests (the access log, ``gateway.access``);
* DEBUG: routine ticks and every outbound call;
* WARNING, always with the reason: a department goes down or comes back, a breaker opens or
  closes, a case turns ``failed``, a result is quarantined, overdue cases;
* ERROR: a bug or an outage the gateway cannot work around (with the traceback).

Two formats, chosen by ``--log-format`` or ``GATEWAY_LOG_FORMAT``: ``console`` (default; one
readable line) and ``json`` (one object per line with the stable fields :data:`JSON_FIELDS`
plus the event's own). PII (ID numbers, phone numbers) is masked in every record.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any, Literal, cast

from gateway.pii import scrub_event

if TYPE_CHECKING:
    from structlog.typing import Processor

LogFormat = Literal["console", "json"]
FORMATS: tuple[LogFormat, ...] = ("console", "json")
FORMAT_ENV = "GATEWAY_LOG_FORMAT"
LEVEL_ENV = "GATEWAY_LOG_LEVEL"
#: Every JSON line has these; event-specific fields (department, application, trace_id, ...)
#: come after them. Renaming one breaks ops' queries: they are a contract.
JSON_FIELDS = ("ts", "level", "logger", "event")

_configured = False

# libraries that log every request or migration step at INFO: their noise, and its cost on the
# dispatch path, is not what ops need; their warnings still show
_NOISY = (
    "httpx",
    "httpcore",
    "alembic",
    "aiosqlite",
    "asyncssh",
    "uvicorn.access",
    "apscheduler",  # "Running job ..." / "executed successfully" for every tick
    "sqlalchemy",
    "gateway.store.db",  # the connection pool's own INFO lines (it logs under its class)
    "spyne",
    "zeep",
)


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (test capture, a replaced stream)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


class LogSettingError(ValueError):
    """A log level or format that does not exist (named in the message)."""


def resolve(level: str | None = None, fmt: str | None = None) -> tuple[int, LogFormat]:
    """The level and format to use: the arguments, else the environment, else INFO/console."""
    level_name = (level or os.environ.get(LEVEL_ENV) or "INFO").upper()
    numeric = logging.getLevelName(level_name)
    if not isinstance(numeric, int):
        raise LogSettingError(
            f"log level {level_name!r} does not exist (DEBUG, INFO, WARNING, ERROR)"
        )
    chosen = (fmt or os.environ.get(FORMAT_ENV) or "console").lower()
    if chosen not in FORMATS:
        raise LogSettingError(
            f"log format {chosen!r} does not exist ({FORMAT_ENV} or --log-format: "
            f"{' or '.join(FORMATS)})"
        )
    return numeric, chosen


def ensure_configured() -> None:
    """Configure with defaults unless the program already did (structlog's own default prints
    rich tracebacks with local variables, which would carry PII)."""
    if not _configured:
        configure()


def _fields_first(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    # the stable fields lead every line, so a person reading raw JSON finds them in one place
    head = {key: event.pop(key) for key in JSON_FIELDS if key in event}
    return {**head, **event}


def configure(level: str | None = None, *, fmt: str | None = None) -> None:
    """Route structlog and stdlib logging through one handler on stderr.

    :param level: DEBUG, INFO, WARNING or ERROR (default: ``GATEWAY_LOG_LEVEL`` or INFO).
    :param fmt: ``console`` or ``json`` (default: ``GATEWAY_LOG_FORMAT`` or console).
    :raises LogSettingError: an unknown level or format.
    """
    import structlog  # here, not at the top: the CLI's help must not pay for it

    global _configured, _direct
    numeric, chosen = resolve(level, fmt)
    _configured = True
    _direct = None
    stamper = structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts")
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        stamper,
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer(ensure_ascii=False, default=str)
        if chosen == "json"
        else structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback, timestamp_key="ts"
        )
    )
    handler = _Stderr()
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            scrub_event,
            _fields_first,
            renderer,
        ],
    )
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, numeric))
    processors: list[Processor] = [*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    _direct = _Direct(numeric, processors, handler, formatter, stamper, renderer)


class _Direct:
    """What :func:`configure` set up, for :func:`info_line`: the line a structlog INFO record
    becomes, written by the same processors (time stamp, PII scrub, field order, renderer)
    straight to the one handler, while the set-up is still exactly this one."""

    def __init__(
        self,
        numeric: int,
        processors: list[Processor],
        handler: _Stderr,
        formatter: logging.Formatter,
        stamper: Processor,
        renderer: Processor,
    ) -> None:
        self.numeric, self.processors = numeric, list(processors)  # a copy: compared
        self.handler, self.formatter = handler, formatter
        self.stamper, self.renderer = stamper, renderer

    def applies(self, logger: logging.Logger) -> bool:
        import structlog

        if self.numeric > logging.INFO or structlog.get_config()["processors"] != self.processors:
            return False  # structlog set up otherwise since (capture_logs changes the list)
        handler = self.handler
        if handler.filters or handler.formatter is not self.formatter or handler.level > 20:
            return False
        node: logging.Logger | None = logger
        while node is not None:  # only the root's one handler on the way, and no filter
            if node.filters or (node.handlers and node is not logging.root):
                return False
            if node is logging.root:
                return node.handlers == [handler]
            if not node.propagate:
                return False
            node = node.parent
        return False


_direct: _Direct | None = None


def info_line(logger: logging.Logger, event: str, fields: dict[str, Any]) -> bool:
    """Write ``structlog.get_logger(logger.name).info(event, **fields)``'s line, byte for byte,
    without structlog's bound logger, the stdlib record (its caller look-up, its copy in
    ProcessorFormatter) and the formatter's chain: the access log writes one per request, and
    that way cost ~60-90 us a line. The caller has checked ``logger`` is enabled for INFO.
    False (nothing written): the set-up is not :func:`configure`'s any more (another handler,
    a filter, structlog's processors replaced); the caller logs the usual way."""
    import structlog

    direct = _direct
    if direct is None or not direct.applies(logger):
        return False
    record: MutableMapping[str, Any] = {**fields, "event": event}
    record = structlog.contextvars.merge_contextvars(None, "info", record)
    record["level"] = "info"
    record["logger"] = logger.name
    record = cast("MutableMapping[str, Any]", direct.stamper(None, "info", record))
    record = _fields_first(None, "info", scrub_event(None, "info", record))
    line = cast(str, direct.renderer(None, "info", record))  # both renderers give text
    handler = direct.handler
    handler.acquire()
    try:  # as StreamHandler.emit writes a formatted record
        handler.stream.write(f"{line}{handler.terminator}")
        handler.flush()
    except Exception:
        handler.handleError(logging.makeLogRecord({"name": logger.name, "msg": line}))
    finally:
        handler.release()
    return True
