"""Outages of the gateway's own infrastructure (database, data_dir), told once, not per request.

During an outage every request and every daemon tick fails the same way; logging each one
buries everything else (a 30 s database outage once wrote 59 MB of tracebacks). An
:class:`Outage` turns that stream into a few lines::

    WARNING  database unavailable since 2026-12-01T10:00:00Z   (once, when it starts)
    WARNING  database still unavailable                      (at most every remind_seconds)
    INFO     database back after 31.2 s                       (once, when it ends)

An outage ends at the first success ``SETTLE_SECONDS`` after its last failure: while a database
is slow, some statements time out and others work, and each success is not the end of it. Its
length is told from the first failure to the last.

and into metrics: ``gateway_outage{component}`` is 1 while it lasts,
``gateway_outage_seconds_total{component}`` adds its length when it ends. A dependency that
flaps (fails again within ``FLAP_SECONDS`` of coming back) is not announced again each time:
at most one WARNING per ``remind_seconds`` tells it is still failing.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

import structlog

from gateway import metrics

log = structlog.get_logger("gateway.outage")

REMIND_SECONDS = 300.0
FLAP_SECONDS = 60.0
SETTLE_SECONDS = 5.0


class Outage:
    """One dependency's availability as this process sees it. ``failed`` / ``ok`` are cheap and
    may be called on every operation."""

    def __init__(
        self,
        component: str,
        *,
        what: str = "unavailable",
        remind_seconds: float = REMIND_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.component = component
        self.what = what
        self.remind_seconds = remind_seconds
        self._clock = clock
        self.down = False
        #: wall-clock start of the current outage (None while up)
        self.since: dt.datetime | None = None
        self.failures = 0
        self._started = 0.0
        self._last_failure = 0.0
        self._last_ok = 0.0
        self._announced = False  # the current outage was logged (so its end is too)
        self._last_said = -float("inf")  # monotonic time of the last WARNING
        self._last_end = -float("inf")  # monotonic time the last outage ended

    def failed(self, reason: str) -> None:
        """An operation failed because the dependency is out; logs only as the class says."""
        t = self._clock()
        self.failures += 1
        self._last_failure = t
        if not self.down:
            self.down = True
            self.since = dt.datetime.now(dt.UTC)
            self._started = t
            self._announced = False
            metrics.OUTAGE.labels(self.component).set(1)
            flapping = t - self._last_end < FLAP_SECONDS
            if not flapping or t - self._last_said >= self.remind_seconds:
                self._say(
                    f"{self.component} {self.what} since {_iso(self.since)}", t, reason=reason
                )
            return
        if t - self._last_said >= self.remind_seconds:
            self._say(
                f"{self.component} still {self.what}",
                t,
                reason=reason,
                since=_iso(self.since),
                for_seconds=round(t - self._started, 1),
                failures=self.failures,
            )

    def ok(self) -> None:
        """An operation worked: the outage, if any, is over once nothing failed for
        ``SETTLE_SECONDS``."""
        if not self.down:
            return
        t = self._last_ok = self._clock()
        if t - self._last_failure < SETTLE_SECONDS:
            return
        seconds = self._last_failure - self._started
        self.down = False
        self._last_end = t
        metrics.OUTAGE.labels(self.component).set(0)
        metrics.OUTAGE_SECONDS.labels(self.component).inc(seconds)
        if self._announced:
            log.info(
                f"{self.component} back after {seconds:.1f} s",
                since=_iso(self.since),
                failures=self.failures,
            )
        self.since = None
        self.failures = 0

    @property
    def answering(self) -> bool:
        """Up, or it worked again since its last failure (the outage may not be over yet)."""
        return not self.down or self._last_ok > self._last_failure

    def _say(self, event: str, t: float, **kw: object) -> None:
        self._last_said = t
        self._announced = True
        log.warning(event, **kw)


def _iso(at: dt.datetime | None) -> str:
    return at.isoformat(timespec="seconds").replace("+00:00", "Z") if at else ""


__all__ = ["FLAP_SECONDS", "REMIND_SECONDS", "SETTLE_SECONDS", "Outage"]
