"""The department link: the only code that calls a connector.

Every call, whichever worker makes it (dispatch, polls, withdrawals, result pulls,
reconciliation, the ops health check), goes through :class:`DepartmentLink`, which holds the
department's guards in one place::

    cap        one concurrency cap shared by every operation (``concurrency``)
    rate       one token bucket (``rate_limit_per_second``)
    breaker    after ``[breaker] threshold`` transient failures in a row, no calls for
               ``cooldown_seconds``, then one probe at a time (WARNING log, gateway_breaker_open)
    deadline   every attempt ends within ``timeout_seconds``; a whole call, the short in-call
               retries of ``submit`` included, within :attr:`DepartmentLink.call_seconds`
    retries    across calls one rule (``backoff``: persisted, exponential with jitter, at least
               Retry-After) used by dispatch and withdrawals; inside a call only ``submit``
               retries briefly (``[retry] in_call_attempts``): polls come round again anyway
    size       every HTTP answer is capped at ``max_answer_bytes``, decompressed bytes counted
               (:mod:`gateway.departments.answers`)
    errors     one mapping (:func:`classify`): what a connector raises becomes a
               ``TransientError``, ``PermanentError`` or ``DepartmentRejected``
    metrics    gateway_department_call_seconds / gateway_department_calls_total per operation
    reach      every answer or failure feeds gateway.reachability (one WARNING when the
               department goes down, one when it is back; gateway_department_up)

Workers are then claim -> ask the link -> record. Work leased in the database is leased for
:meth:`DepartmentLink.lease_seconds`, which outlives the worst case of a guarded call.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Literal, TypeVar

import structlog

from gateway import metrics, reachability
from gateway.config.models import DepartmentConfig, RetryPolicy
from gateway.connector import (
    Ack,
    CaseSummary,
    CaseUpdate,
    Connector,
    Envelope,
    Health,
    Receipt,
    UpdateOutcome,
)
from gateway.departments.guards import Breaker, Bucket, Slots, StepDeadline
from gateway.errors import (
    ConnectorError,
    DepartmentRejected,
    PermanentError,
    TransientError,
)
from gateway.pii import scrub

log = structlog.get_logger("gateway.departments")

Operation = Literal[
    "submit",
    "poll",
    "withdraw",
    "list_cases",
    "changes",
    "pull_updates",
    "ack_update",
    "ack_updates",
    "health",
]
T = TypeVar("T")

#: time a worker needs after the call to record its outcome, on top of the call itself
RECORD_MARGIN_SECONDS = 5.0
#: longest department case id kept (a department answering more is misbehaving)
MAX_CASE_ID = 256
#: deterministic local errors: the same input fails the same way every time, so retrying
#: cannot help and the department is not to blame (the breaker never hears of them)
_LOCAL = (ValueError, TypeError, RecursionError, ArithmeticError)


def backoff(
    policy: RetryPolicy, attempts: int, retry_after: float | None, rng: random.Random
) -> float:
    """Seconds to wait before attempt ``attempts + 1``."""
    delay = min(policy.max_seconds, policy.base_seconds * 2.0 ** max(attempts - 1, 0))
    delay *= 1 - policy.jitter + 2 * policy.jitter * rng.random()
    return max(delay, retry_after or 0.0)


def classify(department: str, op: str, exc: BaseException) -> tuple[ConnectorError, bool]:
    """What a connector's exception means: the error to handle, and whether it says the
    department is unwell (feeds the breaker). ``DepartmentRejected`` and ``PermanentError`` pass
    as they are; a deadline or an untranslated ``OSError`` is transient; a deterministic local
    error is permanent; anything else is transient (a plugin bug, logged with its name)."""
    if isinstance(exc, TransientError):
        return exc, True
    if isinstance(exc, ConnectorError):
        return exc, False
    if isinstance(exc, TimeoutError):
        return TransientError(f"{department}: {op}: no answer within the deadline"), True
    if isinstance(exc, OSError):
        return TransientError(f"{department}: {op}: {type(exc).__name__}: {exc}"[:400]), True
    what = scrub(f"{type(exc).__name__}: {exc}")[:300]
    if isinstance(exc, _LOCAL):
        return PermanentError(f"{department}: {op}: cannot be done as asked ({what})"), False
    return TransientError(f"{department}: {op}: {what}"), False


class DepartmentLink:
    """One department's connector behind its guards (one per department per process)."""

    def __init__(
        self,
        dept: DepartmentConfig,
        connector: Connector,
        *,
        on_breaker: Callable[[Breaker], None] | None = None,
    ) -> None:
        self.dept = dept
        self.code = dept.code
        self.connector = connector
        self.plugin = dept.connector
        self.slots = Slots(dept.code, dept.concurrency)
        self.bucket = Bucket(dept.rate_limit_per_second) if dept.rate_limit_per_second else None
        self.breaker = Breaker(dept.code, dept.breaker)
        #: the poller has made this department's held cases without a poll time due (once)
        self.polls_scheduled = False
        self.breaker.on_change = on_breaker

    # -- the rules ---------------------------------------------------------------------------------

    @property
    def call_seconds(self) -> float:
        """Deadline of one guarded call: every short in-call attempt and the waits between."""
        retry = self.dept.retry
        attempts = retry.in_call_attempts
        return attempts * self.dept.timeout_seconds + (attempts - 1) * retry.in_call_wait_seconds

    def lease_seconds(self, configured: float) -> float:
        """The one lease rule: long enough for a wait for a slot (bounded by the call deadline),
        the call itself and recording its outcome, so no other worker retakes live work."""
        return max(configured, 2 * self.call_seconds + RECORD_MARGIN_SECONDS)

    def breaker_open(self) -> bool:
        return self.breaker.is_open()

    def offers_changes(self) -> bool:
        """Whether the department has a change feed (the connector says so)."""
        return self.connector.offers_changes()

    # -- slots for leased work ---------------------------------------------------------------------

    def reserve(self, want: int) -> int:
        """Take up to ``want`` slots (and rate tokens) free now, without waiting: a worker takes
        them before claiming leased work, so what it claims never waits. 0 while the breaker is
        open; one probe at a time while it is half-open. Pass the slots to calls with
        ``reserved=True``; give back what is not used with :meth:`unreserve`."""
        if want <= 0 or self.breaker.is_open():
            return 0
        if self.breaker.tripped:  # half-open: one probe, and only when nothing is in flight
            want = min(want, 1 if self.slots.used == 0 else 0)
        got = self.slots.try_take(want)
        if got and self.bucket is not None:
            tokens = self.bucket.take(got)
            self.slots.give(got - tokens)
            got = tokens
        return got

    def unreserve(self, n: int) -> None:
        if n > 0:
            self.slots.give(n)
            if self.bucket is not None:
                self.bucket.put_back(n)

    # -- the operations ----------------------------------------------------------------------------

    async def submit(self, envelope: Envelope, *, reserved: bool = False) -> Receipt:
        receipt = await self._call(
            "submit", lambda: self.connector.submit(envelope), reserved=reserved, retry=True
        )
        if len(receipt.case_id) > MAX_CASE_ID or (
            receipt.status is not None and len(receipt.status) > MAX_CASE_ID
        ):
            raise PermanentError(
                f"{self.code}: submit: the department's case id or status is longer than "
                f"{MAX_CASE_ID} characters"
            )
        return receipt

    async def poll(self, receipt: Receipt, *, reserved: bool = False) -> CaseUpdate | None:
        return await self._call("poll", lambda: self.connector.poll(receipt), reserved=reserved)

    async def withdraw(self, receipt: Receipt, *, reserved: bool = False) -> None:
        await self._call("withdraw", lambda: self.connector.withdraw(receipt), reserved=reserved)

    async def pull_updates(self, limit: int) -> list[CaseUpdate]:
        return await self._call("pull_updates", lambda: self.connector.pull_updates(limit))

    async def ack_update(
        self, update: CaseUpdate, outcome: UpdateOutcome, reason: str = ""
    ) -> None:
        await self._call("ack_update", lambda: self.connector.ack_update(update, outcome, reason))

    async def ack_updates(self, acks: Sequence[Ack]) -> None:
        """Settle a committed batch: one call (``ack_updates``) where the connector settles
        many at once, else :meth:`ack_update` for each, one call each, as before the batch
        method existed (a connector not derived from :class:`Connector` included)."""
        if not acks:
            return
        batched = getattr(type(self.connector), "ack_updates", Connector.ack_updates)
        if batched is Connector.ack_updates:
            for ack in acks:
                await self.ack_update(ack.update, ack.outcome, ack.reason)
            return
        await self._call("ack_updates", lambda: self.connector.ack_updates(acks))

    async def health(self) -> Health:
        """The department's health; a failure or the deadline is an unhealthy answer, never an
        exception. The breaker is not consulted (ops want to see the department itself)."""
        try:
            return await self._call("health", self.connector.health, breaker=False)
        except ConnectorError as exc:
            return Health(ok=False, detail=str(exc)[:300])

    def list_cases(self, since: dt.datetime, until: dt.datetime) -> AsyncIterator[CaseSummary]:
        """The department's cases in ``[since, until)``; one slot for the whole listing, each
        step (a page fetch, in practice) within ``timeout_seconds``."""
        return self._listing("list_cases", lambda: self.connector.list_cases(since, until))

    def changes(self, since: dt.datetime, until: dt.datetime) -> AsyncIterator[CaseUpdate]:
        """The department's change feed over ``[since, until)``, guarded as a listing is."""
        return self._listing("changes", lambda: self.connector.changes(since, until))

    def changes_by_sequence(self) -> bool:
        """Whether the department's feed is numbered (:meth:`changes_after`)."""
        return self.connector.changes_by_sequence()

    def changes_after(self, sequence: int) -> AsyncIterator[CaseUpdate]:
        """The department's numbered change feed after ``sequence``, guarded as a listing is."""
        return self._listing("changes", lambda: self.connector.changes_after(sequence))

    async def _listing(
        self, op: Operation, start: Callable[[], AsyncIterator[T]]
    ) -> AsyncIterator[T]:
        """A paged read under the guards: one slot for all of it, each step within
        ``timeout_seconds``."""
        started = time.perf_counter()
        try:
            await self._enter(op)
        except TransientError:
            self._observe(op, "refused", started)
            raise
        outcome = "ok"
        items = None
        deadline = StepDeadline(self.dept.timeout_seconds)
        try:
            items = start()
            while True:
                deadline.start()
                try:
                    item = await anext(items)
                except StopAsyncIteration:
                    break
                except asyncio.CancelledError:
                    if deadline.expired():
                        raise TimeoutError from None
                    raise
                finally:
                    deadline.stop()
                yield item
        except NotImplementedError:
            outcome = "unsupported"
            raise
        except GeneratorExit:
            raise
        except Exception as exc:
            error, unwell = classify(self.code, op, exc)
            outcome = self._outcome(error)
            self._log_unexpected(op, exc, error)
            if unwell:
                self.breaker.record(False)
                reachability.failed(self.code, op, str(error))
            raise error from exc
        finally:
            deadline.close()
            if items is not None:
                await _aclose(items)
            self.slots.give(1)
            if outcome == "ok":
                self.breaker.record(True)
                reachability.succeeded(self.code, op)
            self._observe(op, outcome, started)

    # -- the guarded call --------------------------------------------------------------------------

    async def _enter(self, op: Operation, *, breaker: bool = True) -> None:
        """Wait for a slot (bounded by the call deadline) and a rate token; refuse fast while
        the breaker is open."""
        if breaker and self.breaker.is_open():
            raise TransientError(
                f"{self.code}: breaker open (not calling for {self.breaker.open_for():.0f} s more)",
                retry_after=self.breaker.open_for(),
            )
        try:
            async with asyncio.timeout(self.call_seconds):
                await self.slots.take()
        except TimeoutError as exc:
            raise TransientError(
                f"{self.code}: {op}: all {self.slots.cap} slots stayed busy for "
                f"{self.call_seconds:.0f} s"
            ) from exc
        try:
            if breaker and self.breaker.tripped and self.slots.used > 1:
                raise TransientError(f"{self.code}: breaker half-open: a probe call is out")
            if self.bucket is not None:
                while (wait := self.bucket.wait_seconds()) > 0:
                    await asyncio.sleep(wait)
                self.bucket.take(1)
        except BaseException:
            self.slots.give(1)
            raise

    async def _call(
        self,
        op: Operation,
        fn: Callable[[], Awaitable[T]],
        *,
        reserved: bool = False,
        retry: bool = False,
        breaker: bool = True,
    ) -> T:
        started = time.perf_counter()
        if not reserved:
            try:
                await self._enter(op, breaker=breaker)
            except TransientError:
                self._observe(op, "refused", started)
                raise
        outcome = "ok"
        try:
            return await self._attempts(op, fn, retry)
        except DepartmentRejected:
            outcome = "rejected"  # a business answer: the department is well
            raise
        except NotImplementedError:
            outcome = "unsupported"
            raise
        except Exception as exc:
            error, unwell = classify(self.code, op, exc)
            outcome = self._outcome(error)
            self._log_unexpected(op, exc, error)
            if unwell and breaker:
                self.breaker.record(False)
            if unwell:
                reachability.failed(self.code, op, str(error))
            if error is exc:
                raise
            raise error from exc
        finally:
            self.slots.give(1)
            if outcome in ("ok", "rejected"):
                reachability.succeeded(self.code, op)
                if breaker:
                    self.breaker.record(True)
            self._observe(op, outcome, started)

    async def _attempts(self, op: Operation, fn: Callable[[], Awaitable[T]], retry: bool) -> T:
        """The call, and with ``retry`` up to ``[retry] in_call_attempts`` in all: a plain loop
        (no retry machinery on the path of a call that succeeds, which is nearly every call)."""
        policy = self.dept.retry
        attempts = policy.in_call_attempts if retry else 1
        timeout = self.dept.timeout_seconds
        attempt = 1
        while True:
            try:
                async with asyncio.timeout(timeout):
                    return await fn()
            except TimeoutError as exc:
                if attempt >= attempts:
                    raise TransientError(
                        f"no answer from {self.code} within {timeout}s ({op})"
                    ) from exc
            except TransientError as exc:
                # only a transient error that asks for no long wait is tried again in the call
                if attempt >= attempts or (exc.retry_after is not None and exc.retry_after > 1.0):
                    raise
            attempt += 1
            await asyncio.sleep(policy.in_call_wait_seconds)

    # -- bookkeeping -------------------------------------------------------------------------------

    def _outcome(self, error: ConnectorError) -> str:
        if isinstance(error, DepartmentRejected):
            return "rejected"
        return "permanent" if isinstance(error, PermanentError) else "transient"

    def _log_unexpected(self, op: str, exc: BaseException, error: ConnectorError) -> None:
        if isinstance(exc, ConnectorError | TimeoutError):
            return
        log.error(
            "connector raised an unexpected error",
            plugin=self.plugin,
            department=self.code,
            operation=op,
            error=scrub(f"{type(exc).__name__}: {exc}")[:300],
            treated_as="permanent" if isinstance(error, PermanentError) else "transient",
        )

    def _observe(self, op: str, outcome: str, started: float) -> None:
        metrics.child(metrics.CALL_SECONDS, self.code, op).observe(time.perf_counter() - started)
        metrics.child(metrics.CALLS, self.code, op, outcome).inc()


async def _aclose(items: AsyncIterator[object]) -> None:
    close = getattr(items, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:
            log.debug("closing a case listing failed", exc_info=True)


__all__ = ["RECORD_MARGIN_SECONDS", "DepartmentLink", "Operation", "backoff", "classify"]
