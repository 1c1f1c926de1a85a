"""The per-department guards the link holds: concurrency slots, a token bucket, a breaker.

They live in this process's memory (one link per department per process); what several
daemons share lives in the database (leases), not here.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

import structlog

from gateway import metrics
from gateway.config.models import BreakerSettings

log = structlog.get_logger("gateway.departments")


class Slots:
    """The department's one concurrency cap, shared by every operation.

    ``try_take(n)`` takes what is free now without waiting (a worker that claims leased work
    takes its slots first, so a claimed job never waits for one); ``take()`` waits its turn.
    """

    def __init__(self, department: str, cap: int) -> None:
        self.department = department
        self.cap = cap
        self.used = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        """Callers queued for a slot (while any wait, ``try_take`` takes none)."""
        return len(self._waiters)

    def try_take(self, want: int) -> int:
        got = max(0, min(want, self.cap - self.used)) if not self._waiters else 0
        self._add(got)
        return got

    async def take(self) -> None:
        if self.used < self.cap and not self._waiters:
            self._add(1)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # the releaser hands its slot over (``used`` stays counted)
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.give(1)  # handed over just as we gave up: pass it on
            elif waiter in self._waiters:  # give() may have dropped it already
                self._waiters.remove(waiter)
            raise

    def give(self, n: int = 1) -> None:
        for _ in range(n):
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    break
            else:
                self._add(-1)

    def _add(self, n: int) -> None:
        if n:
            self.used += n
            metrics.child(metrics.INFLIGHT, self.department).inc(n)


class Bucket:
    """Token bucket: ``rate`` calls per second, bursts up to ``max(1, rate)``."""

    def __init__(self, rate: float) -> None:
        self.rate, self.capacity = rate, max(1.0, rate)
        self.tokens, self.at = self.capacity, time.monotonic()

    def _refill(self) -> None:
        t = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (t - self.at) * self.rate)
        self.at = t

    def take(self, want: int) -> int:
        """Up to ``want`` tokens available now."""
        self._refill()
        got = max(0, min(want, int(self.tokens)))
        self.tokens -= got
        return got

    def put_back(self, n: int) -> None:
        self.tokens = min(self.capacity, self.tokens + n)

    def wait_seconds(self) -> float:
        """How long until one token is there."""
        self._refill()
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate


class Breaker:
    """Opens after ``threshold`` transient failures in a row, for ``cooldown_seconds``; then
    half-open: one probe call at a time until a success closes it (a failure reopens it).

    Opening and closing are logged at WARNING and shown in ``gateway_breaker_open``.
    """

    def __init__(self, department: str, settings: BreakerSettings) -> None:
        self.department = department
        self.threshold = settings.threshold
        self.cooldown = settings.cooldown_seconds
        self.failures = 0
        self.open_until = 0.0
        #: the breaker's clock (tests steer it instead of waiting out a cool-down)
        self.clock: Callable[[], float] = time.monotonic
        #: told when the breaker opens (again) or closes (the runtime records it for others)
        self.on_change: Callable[[Breaker], None] | None = None
        metrics.BREAKER_OPEN.labels(department).set(0)

    @property
    def tripped(self) -> bool:
        """Open or half-open: not closed."""
        return self.failures >= self.threshold

    def is_open(self) -> bool:
        """In its cool-down: no call goes out."""
        return self.clock() < self.open_until

    def open_for(self) -> float:
        return max(0.0, self.open_until - self.clock())

    def record(self, ok: bool) -> None:
        if ok:
            was_tripped = self.tripped
            self.failures, self.open_until = 0, 0.0
            if was_tripped:
                log.warning("breaker closed", department=self.department)
                metrics.BREAKER_OPEN.labels(self.department).set(0)
                self._changed()
            return
        self.failures += 1
        if self.failures >= self.threshold:
            reopened = self.failures > self.threshold
            self.open_until = self.clock() + self.cooldown
            metrics.BREAKER_OPEN.labels(self.department).set(1)
            log.warning(
                "breaker reopened" if reopened else "breaker opened",
                department=self.department,
                failures=self.failures,
                cooldown_seconds=self.cooldown,
            )
            self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change(self)
            except Exception:  # telling others must never break a call
                log.exception("breaker change not recorded", department=self.department)


class StepDeadline:
    """Each step of a paged read (``start()`` .. ``stop()``) ends within ``seconds``, or the
    task is cancelled and the step raises :class:`TimeoutError` (see :meth:`expired`).

    One timer serves the whole read: it is armed at a step's start when none is pending and,
    when it fires, re-armed for the running step's own deadline if that is later. A listing of
    a million cases is a million steps; a timer each (``asyncio.timeout``) was a fifth of a
    reconciliation's time.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._loop = asyncio.get_running_loop()
        #: the reading task (a paged read belongs to the task that started it)
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._in_step = False
        self._started = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._fired = False

    def start(self) -> None:
        self._started = self._loop.time()
        self._in_step = True
        if self._handle is None:
            self._task = asyncio.current_task()
            self._cancelling = self._task.cancelling() if self._task else 0
            self._handle = self._loop.call_at(self._started + self.seconds, self._check)

    def stop(self) -> None:
        self._in_step = False

    def expired(self) -> bool:
        """After a ``CancelledError`` in a step: was it this deadline's? (Then the
        cancellation is taken back and the caller raises ``TimeoutError``.)"""
        if not self._fired or self._task is None:
            return False
        self._fired = False
        return self._task.uncancel() <= self._cancelling

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._in_step = False

    def _check(self) -> None:
        self._handle = None
        if not self._in_step or self._task is None:
            return  # between steps: the next step arms the timer again
        due = self._started + self.seconds
        if self._loop.time() + 0.001 < due:
            self._handle = self._loop.call_at(due, self._check)
            return
        self._fired = True
        self._task.cancel()


__all__ = ["Breaker", "Bucket", "Slots", "StepDeadline"]
