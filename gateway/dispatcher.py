"""The dispatcher: claims due jobs with leases and delivers them through the department links.

Per department: take free slots from its link (cap, rate limit, breaker), claim as many due
jobs and up to the department's concurrency more, ask the link to submit each (the extra ones
wait in a local queue for the slot a call frees), record the outcome. Retry state lives in the
database (attempts, next_attempt_at, last_error): the link retries only briefly inside one call;
across calls the job waits with exponential backoff and jitter (at least Retry-After), and after the
department's budget the case goes to ``failed`` with the reason.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import Row, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import metrics, tracing
from gateway.cancelling import cancel_and_wait
from gateway.clock import new_id, now
from gateway.config.models import DepartmentConfig
from gateway.connector import Envelope, Receipt
from gateway.departments import RECORD_MARGIN_SECONDS, DepartmentLink, backoff
from gateway.envelopes import envelope_for
from gateway.errors import (
    DepartmentRejected,
    InfrastructureError,
    PermanentError,
    TransientError,
)
from gateway.events import Source, StatusChange
from gateway.notifications import with_contacts
from gateway.runtime import Runtime
from gateway.states import State
from gateway.store import cases, jobs
from gateway.store.group import GroupCommit
from gateway.store.tables import applications
from gateway.updates import Move, announce, move, move_many

log = structlog.get_logger("gateway.dispatcher")


@dataclass(frozen=True)
class _Work:
    """A failure or retry to record for one case (its own statements, run in the batch)."""

    app_id: str
    run: Callable[[AsyncConnection], Awaitable[list[StatusChange]]]


@dataclass(frozen=True)
class _Outcome:
    """A delivery's answer to record (a receipt or a rejection): recorded with the rest of its
    group-commit batch, one statement per table."""

    job: Row[Any]
    move: Move


@dataclass(frozen=True)
class _Release:
    """Claimed jobs never called, handed back (due again at once): the breaker opened while
    they were queued."""

    ids: list[int]


@dataclass(frozen=True)
class _Queued:
    """A claimed job waiting in its department's queue for a slot. ``start_by`` (the
    dispatcher's clock): the latest its call may start so that the call and the recording of
    its answer end within the lease (:meth:`Dispatcher._start_by`)."""

    job: Any
    envelope: Envelope
    start_by: float


@dataclass
class _Claim:
    """A sweep's claims for some departments, each with its reserved slots and how many more
    it may queue. On SQLite it is stored in the recorder's batch (:meth:`Dispatcher._claim`);
    what was claimed is left here for the sweep, which reads it after the commit."""

    group: list[tuple[DepartmentLink, int, int]]
    rows: list[Any] = field(default_factory=list)
    ready: list[tuple[Any, Envelope]] = field(default_factory=list)
    changes: list[StatusChange] = field(default_factory=list)
    #: departments whose claim came back short: nothing more is due there now
    short: list[str] = field(default_factory=list)


_DISPATCHABLE = (State.RECEIVED.value, State.DISPATCHING.value)


class Dispatcher:
    def __init__(
        self,
        runtime: Runtime,
        *,
        owner: str | None = None,
        seed: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.runtime = runtime
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{new_id()[-6:]}"
        self.settings = runtime.config.gateway.dispatch
        #: monotonic seconds (tests steer it): the queued jobs' start-by times, the empty pauses
        self.clock = clock
        self.inflight: dict[str, int] = {}
        #: department -> claimed jobs waiting for a slot, oldest first (at most its concurrency)
        self._queues: dict[str, deque[_Queued]] = {}
        #: department -> queued jobs dropped past their start-by time (their leases ran out)
        self.late: dict[str, int] = {}
        #: department -> jobs being claimed for its queue (a sweep's claim under way)
        self._claiming: dict[str, int] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = asyncio.Event()
        self._rng = random.Random(seed)
        #: department -> until when (monotonic) it is taken to have nothing due: its last claim
        #: came back short. A freed slot does not ask it again before then (each ask is a
        #: transaction); new local work (runtime.work_added) or the time running out does.
        self._empty_until: dict[str, float] = {}
        self._work_seen = runtime.work_added
        # outcomes of finished deliveries are committed together (one transaction per batch)
        self._recorder: GroupCommit[_Work | _Outcome | _Claim | _Release, list[StatusChange]] = (
            GroupCommit(runtime.engine, self._store)
        )
        runtime.on_close.append(self._recorder.aclose)
        #: more lines for the process snapshot (the daemon driving this dispatcher: its ticks)
        self.more_to_tell: Callable[[], list[str]] | None = None

    def queued(self) -> dict[str, int]:
        """Claimed jobs waiting for a slot, per department (only those with some)."""
        return {code: len(q) for code, q in self._queues.items() if q}

    def skipping_empty(self) -> dict[str, float]:
        """Departments skipped as having nothing due, with until when (``time.monotonic()``)."""
        return dict(self._empty_until)

    def breaker_open(self, department: str) -> bool:
        link = self.runtime.link(department)
        return bool(link and link.breaker_open())

    async def sweep(self, *, skip_empty: bool = False) -> int:
        """Start queued jobs in the free slots, claim what every available department can take
        now (and up to its concurrency more, queued) and start delivering it. Returns how many
        jobs were claimed.

        ``skip_empty`` (the loops): do not claim again from a department whose last claim came
        back short until new local work is committed or, after half a sweep interval, one
        read for all such departments says it has work due."""
        clock = self.clock()
        if self._work_seen != self.runtime.work_added:
            self._work_seen = self.runtime.work_added
            self._empty_until.clear()
        if skip_empty:
            await self._recheck_empty(clock)
        wanted: list[tuple[DepartmentLink, int, int]] = []
        for link in self.runtime.links():
            # Slots first: a claimed job is called only in a slot taken for it, and only by its
            # start-by time (the lease less one call and the recording margin), so a job waits
            # in the queue at most as long as the lease rule allows a wait for a slot; past it,
            # it is dropped and its lease runs out (DepartmentLink.lease_seconds)
            slots = link.reserve(self.settings.batch_size)
            if self._queues.get(link.code):
                slots = self._start_queued(link, slots)
            if skip_empty and self._empty_until.get(link.code, 0.0) > clock:
                link.unreserve(slots)
                continue
            more = self._room(link, clock)
            if slots > 0 or more * 2 >= link.dept.concurrency > 0:
                # a free slot, or a queue at most half full: a call ending finds one waiting
                wanted.append((link, slots, more))
            else:
                link.unreserve(slots)
        # On SQLite every transaction holds the one write lock, so the departments' claims
        # are one item of the recorder's batch (a sweep of four departments was four
        # transactions one after the other, each queued behind the recorder's and the API's);
        # PostgreSQL claims each department in its own (row locks, in id order per transaction)
        each = self.runtime.engine.dialect.name == "postgresql"
        groups = [[w] for w in wanted] if each else [wanted]
        claimed = 0
        for group in groups:
            if self.stopping.is_set():
                for link, slots, _more in group:
                    link.unreserve(slots)
                continue
            claimed += await self._claim(group, clock)
        return claimed

    def _room(self, link: DepartmentLink, clock: float) -> int:
        """How many more claimed jobs the department's queue may take: up to its concurrency
        (so a queued job waits for at most one call per slot), none while the breaker is not
        closed or anything waits for a slot, and no more than its rate limit can start before
        their start-by time."""
        if link.breaker.tripped or link.slots.waiting:
            return 0
        room = link.dept.concurrency
        if link.bucket is not None:
            room = min(room, int(link.bucket.rate * (self._start_by(link, clock) - clock)))
        queued = len(self._queues.get(link.code, ())) + self._claiming.get(link.code, 0)
        return max(0, room - queued)

    def _start_by(self, link: DepartmentLink, clock: float) -> float:
        """The latest a job claimed at ``clock`` (taken before the claim's transaction) may
        be called: its lease runs until at least ``clock + lease``, and the call (at most
        ``call_seconds``) and the recording of its answer (``RECORD_MARGIN_SECONDS``) must end
        within it, so no other worker can have taken the job when it is called or answered."""
        lease = link.lease_seconds(self.settings.lease_seconds)
        return clock + lease - link.call_seconds - RECORD_MARGIN_SECONDS

    async def _claim(self, group: list[tuple[DepartmentLink, int, int]], clock: float) -> int:
        """Claim for each department of ``group`` (with its reserved slots, and how many more
        it may queue) in one transaction; start delivering what was claimed in the reserved
        slots and queue the rest."""
        if not group:
            return 0
        claim = _Claim(group)
        for link, _slots, more in group:
            self._claiming[link.code] = self._claiming.get(link.code, 0) + more
        try:
            if self.runtime.engine.dialect.name == "postgresql":
                async with self.runtime.engine.begin() as conn:
                    await self._claim_in(conn, claim)
            else:
                # SQLite: the claim joins the recorder's batch. The slots it fills were freed
                # by calls whose answers are being recorded, and SQLite's one connection and
                # write lock would take the two transactions one after the other; now the
                # answers and the next claim are often one. Read after the commit: submit
                # returns once the batch is committed (a retried batch claims again).
                await self._recorder.submit(claim)
        except BaseException:
            for link, slots, _more in group:
                link.unreserve(slots)
            raise
        finally:
            for link, _slots, more in group:
                self._claiming[link.code] -= more
        for code in claim.short:
            self._empty_until[code] = clock + self.settings.sweep_interval_seconds / 2
        announce(self.runtime, claim.changes)
        links = {link.code: (link, slots) for link, slots, _more in group}
        free = {code: slots for code, (_link, slots) in links.items()}
        for job, envelope in claim.ready:
            link, _slots = links[job.department]
            if free[link.code] > 0:
                free[link.code] -= 1
                self._start(link, job, envelope)
            elif not self.stopping.is_set():  # stop(): the leases are released (or run out)
                start_by = self._start_by(link, clock)
                self._queues.setdefault(link.code, deque()).append(_Queued(job, envelope, start_by))
        for link, _slots in links.values():
            link.unreserve(free[link.code])
            if self._queues.get(link.code):
                # calls that ended during the claim found the queue empty: their slots now
                self._start_queued(link)
        return len(claim.rows)

    def _start(
        self,
        link: DepartmentLink,
        job: Any,
        envelope: Envelope,
        start_by: float | None = None,
    ) -> None:
        """Deliver ``job`` in a slot already taken for it."""
        self.inflight[link.code] = self.inflight.get(link.code, 0) + 1
        task = asyncio.create_task(self._deliver(job, envelope, link, start_by))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _start_queued(self, link: DepartmentLink, reserved: int = 0) -> int:
        """Start the department's queued jobs, oldest first: in ``reserved`` slots already
        taken, then in any the link gives now (slot and rate token, as any start takes).
        Jobs past their start-by time are dropped (their leases run out: another sweep
        claims them again); with the breaker open the queue is handed back. Returns the
        reserved slots left unused."""
        queue = self._queues.get(link.code)
        if not queue:
            return reserved
        if link.breaker_open():
            self._hand_back(link)
            return reserved
        clock = self.clock()
        while queue:
            if queue[0].start_by < clock:
                self._drop_late(link, queue.popleft())
                continue
            if reserved > 0:
                reserved -= 1
            elif self.stopping.is_set() or not link.reserve(1):
                break
            entry = queue.popleft()
            self._start(link, entry.job, entry.envelope, entry.start_by)
        return reserved

    def _drop_late(self, link: DepartmentLink, entry: _Queued) -> None:
        self.late[link.code] = self.late.get(link.code, 0) + 1
        log.info(
            "queued job not called: past its start-by time; its lease runs out",
            department=link.code,
            application=entry.job.application_id,
        )

    def _hand_back(self, link: DepartmentLink) -> None:
        """The breaker is open: the department's queued jobs are released (due again at
        once, for whichever worker's breaker lets a call through first), never called here."""
        queue = self._queues.pop(link.code, None)
        if not queue:
            return
        ids = [entry.job.id for entry in queue]
        log.info("breaker open: queued jobs handed back", department=link.code, count=len(ids))
        task = asyncio.create_task(self._release(ids))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _release(self, ids: list[int]) -> None:
        try:
            await self._recorder.submit(_Release(ids))
        except Exception:  # the leases run out instead
            log.warning("queued jobs not handed back; their leases run out", count=len(ids))

    async def _claim_in(self, conn: AsyncConnection, claim: _Claim) -> None:
        """The claims of ``claim`` in ``conn``'s transaction, its received -> dispatching
        writes and envelopes; the outcome left in ``claim``."""
        rows: list[Any] = []
        apps: list[Row[Any]] = []
        short: list[str] = []
        for link, slots, more in claim.group:
            got, locked = await jobs.claim_cases(
                conn,
                link.code,
                self.owner,
                slots + more,
                link.lease_seconds(self.settings.lease_seconds),
            )
            if len(got) < slots + more:
                short.append(link.code)
            rows += got
            apps += locked
        ready, changes = await self._prepare(conn, rows, apps) if rows else ([], [])
        claim.rows, claim.ready, claim.changes, claim.short = rows, ready, changes, short

    async def _recheck_empty(self, clock: float) -> None:
        """Departments found empty whose pause ran out: one read says which have work due
        now; the others stay skipped for another half interval (a claim transaction each, on
        every timed sweep of every daemon, cost more CPU per delivery as daemons were added)."""
        expired = [code for code, until in self._empty_until.items() if until <= clock]
        if not expired:
            return
        async with self.runtime.engine.connect() as conn:
            due = await jobs.due_departments(conn, expired)
        for code in expired:
            if code in due:
                del self._empty_until[code]
            else:
                self._empty_until[code] = clock + self.settings.sweep_interval_seconds / 2

    async def run(self) -> None:
        """Sweep until stopped; new local work (``runtime.wakeup``) starts a sweep at once."""
        wakeup = self.runtime.wakeup
        while not self.stopping.is_set():
            wakeup.clear()
            try:
                claimed = await self.sweep(skip_empty=True)
            except Exception:
                log.exception("dispatch sweep failed")
                claimed = 0
            if claimed:
                continue
            waiter = asyncio.create_task(wakeup.wait())
            stopper = asyncio.create_task(self.stopping.wait())
            await asyncio.wait(
                {waiter, stopper},
                timeout=self.settings.sweep_interval_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
            waiter.cancel()
            stopper.cancel()

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop claiming, drop the queued jobs, let in-flight calls finish for
        ``grace_seconds``, release the rest (the queued jobs' leases with them)."""
        self.stopping.set()
        self._queues.clear()
        if self.tasks:
            _done, pending = await asyncio.wait(set(self.tasks), timeout=grace_seconds)
            await cancel_and_wait(pending)
        async with self.runtime.engine.begin() as conn:
            released = await jobs.release(conn, self.owner)
        if released:
            log.info("released leased jobs", count=released)

    async def drain(self) -> None:
        """Wait for the deliveries started so far (tests and the benchmark use this)."""
        while self.tasks:
            await asyncio.gather(*set(self.tasks), return_exceptions=True)

    async def _store(
        self, conn: AsyncConnection, items: list[_Work | _Outcome | _Claim | _Release]
    ) -> list[list[StatusChange]]:
        """The recorder's store: answers (receipts, rejections) of the batch together; other
        work (failures, retries) one by one; then the sweeps' claims (on SQLite)."""
        results: list[list[StatusChange]] = [[] for _ in items]
        answers = [(i, o) for i, o in enumerate(items) if isinstance(o, _Outcome)]
        work = [(i, w) for i, w in enumerate(items) if isinstance(w, _Work)]
        claims = [c for c in items if isinstance(c, _Claim)]
        if work and len(items) > 1:
            # every case of the batch locked first, in id order, as every multi-case write
            # does: the work's own updates would lock in arrival order (answers alone need not:
            # move_many locks them in id order; the hot path of all answers pays nothing)
            ids = {w.app_id for _i, w in work} | {o.job.application_id for _i, o in answers}
            await cases.lock_applications(conn, sorted(ids))
        if answers:
            # the fence: only jobs this worker still holds are recorded (a lost lease: the new
            # holder records the same answer); their cases locked with it, in id order
            held, locked = await jobs.finish_delivered_locked(
                conn, [o.job.id for _i, o in answers], self.owner
            )
            live = [(i, o) for i, o in answers if o.job.id in held]
            moved = await move_many(
                conn,
                [o.move for _i, o in live],
                source=Source.DISPATCH,
                actor=self.owner,
                locked=locked,
            )
            for (i, _o), changes in zip(live, moved, strict=True):
                results[i] = changes
        for i, w in work:
            results[i] = await w.run(conn)
        for release in (r for r in items if isinstance(r, _Release)):
            await jobs.release(conn, self.owner, ids=release.ids)
        for claim in claims:  # last: the slots the answers freed (SQLite only; see _claim)
            await self._claim_in(conn, claim)
        return results

    # -- one delivery ----------------------------------------------------------------------------

    async def _prepare(
        self, conn: AsyncConnection, rows: Sequence[Any], locked: Sequence[Row[Any]]
    ) -> tuple[list[tuple[Any, Envelope]], list[StatusChange]]:
        """In the claim's transaction, with the claimed jobs' cases locked: settle superseded
        jobs, move the rest to dispatching and build their envelopes: a few statements per
        batch instead of several per job."""
        apps = {a.id: a for a in locked}
        ready: list[tuple[Any, Envelope]] = []
        writes: list[cases.Write] = []
        for job in rows:
            app = apps.get(job.application_id)
            if app is None or app.version != job.version or app.status not in _DISPATCHABLE:
                why = f"superseded: case is {app.status if app else 'gone'}"
                await jobs.finish(conn, job.id, self.owner, state=jobs.DONE, error=why)
                continue
            if app.status == State.RECEIVED:
                # locked above; one job per case and version in a batch
                detail = {"attempt": job.attempts + 1}
                writes.append(cases.Write(app, [(State.RECEIVED, State.DISPATCHING, detail)]))
            ready.append((job, envelope_for(app)))
        changes: list[StatusChange] = []
        if writes:
            written = await cases.write_many(conn, writes, source=Source.DISPATCH, actor=self.owner)
            for w, steps in zip(writes, written, strict=True):
                changes += with_contacts(steps, w.app.applicant)
        return ready, changes

    async def _deliver(
        self, job: Row[Any], envelope: Envelope, link: DepartmentLink, start_by: float | None
    ) -> None:
        code = link.code
        try:
            if start_by is not None and start_by < self.clock():
                # a queued job whose task started too late (a busy loop): not called
                link.unreserve(1)
                self._drop_late(link, _Queued(job, envelope, start_by))
                self._start_queued(link)
                return
            await self._deliver_job(job, envelope, link)
        except asyncio.CancelledError:
            raise
        except InfrastructureError:
            pass  # the lease runs out and another sweep retries; gateway.outage logs it once
        except Exception:
            # a bug: the lease runs out and another sweep retries the job
            log.exception("delivery crashed", department=code, application=job.application_id)
        finally:
            self.inflight[code] -= 1

    async def _deliver_job(self, job: Row[Any], envelope: Envelope, link: DepartmentLink) -> None:
        dept = link.dept
        started = time.perf_counter()
        outcome = "delivered"
        try:
            try:
                with tracing.case(envelope.application_id):
                    receipt = await link.submit(envelope, reserved=True)
            finally:
                # the call's slot is free: the next queued job starts in it now, and the next
                # claim need not wait for this answer's transaction (on SQLite, behind the
                # daemon's other transactions)
                if self._queues.get(link.code):
                    self._start_queued(link)
                self.runtime.wakeup.set()
        except DepartmentRejected as exc:
            outcome = "rejected"
            await self._record_rejection(job, dept, exc)
        except (PermanentError, NotImplementedError) as exc:
            outcome = "permanent"
            await self._record_failure(job, dept, f"permanent: {exc}", final=True)
        except TransientError as exc:
            outcome = "transient"
            await self._record_failure(
                job, dept, f"{type(exc).__name__}: {exc}", retry_after=exc.retry_after
            )
        else:
            await self._record_receipt(job, dept, receipt)
        finally:
            metrics.child(metrics.DISPATCH_SECONDS, dept.code).observe(
                time.perf_counter() - started
            )
            metrics.child(metrics.DISPATCH, dept.code, outcome).inc()

    async def _record_receipt(
        self, job: Row[Any], dept: DepartmentConfig, receipt: Receipt
    ) -> None:
        targets = [State.DELIVERED]
        mapped = dept.map_status(receipt.status) if receipt.status else None
        if mapped and mapped is not State.DELIVERED:
            targets.append(mapped)
        next_poll = (
            now() + dt.timedelta(seconds=dept.poll_interval_seconds)
            if dept.poll_interval_seconds
            else None
        )

        detail: dict[str, Any] = {"case_id": receipt.case_id}
        if receipt.resent:
            # the department already held this case: an earlier delivery reached it and its
            # answer was lost (a crash, a timeout); worth seeing, not an error
            detail["resent"] = True
            metrics.RESENDS.labels(dept.code).inc()
            log.info(
                "re-sent: the department already held the case",
                department=dept.code,
                application=job.application_id,
                case=receipt.case_id,
            )

        # this version's receipt names the case (a re-sent version may be a new case at the
        # department); kept even if a callback already moved the case past delivered
        extra = {
            "department_case_id": receipt.case_id,
            "last_error": None,
            "next_poll_at": next_poll,
        }
        move = Move(job.application_id, targets, detail, job.version, extra, keep_extra=True)
        announce(self.runtime, await self._recorder.submit(_Outcome(job, move)))

    async def _record_rejection(
        self, job: Row[Any], dept: DepartmentConfig, exc: DepartmentRejected
    ) -> None:
        state = dept.map_status(exc.status) or State.NOT_ACCEPTED

        move = Move(
            job.application_id, [State.DELIVERED, state], {"reason": exc.reason}, job.version
        )
        announce(self.runtime, await self._recorder.submit(_Outcome(job, move)))

    async def _record_failure(
        self,
        job: Row[Any],
        dept: DepartmentConfig,
        error: str,
        *,
        final: bool = False,
        retry_after: float | None = None,
    ) -> None:
        attempts = job.attempts + 1
        final = final or attempts >= dept.retry.max_attempts
        if final:
            reason = (
                error if "permanent" in error else f"gave up after {attempts} attempts: {error}"
            )

            async def give_up(conn: AsyncConnection) -> list[StatusChange]:
                if not await jobs.finish(
                    conn, job.id, self.owner, state=jobs.DEAD, error=error, attempts=attempts
                ):
                    return []
                return await move(
                    conn,
                    job.application_id,
                    [State.FAILED],
                    source=Source.DISPATCH,
                    actor=self.owner,
                    version=job.version,
                    detail={"reason": reason},
                    extra={"last_error": reason},
                )

            changes = await self._recorder.submit(_Work(job.application_id, give_up))
            announce(self.runtime, changes)
            if changes:  # an operator is needed: say so where ops look
                log.warning(
                    "delivery failed for good",
                    department=dept.code,
                    application=job.application_id,
                    attempts=attempts,
                    reason=reason,
                )
            return
        delay = backoff(dept.retry, attempts, retry_after, self._rng)

        async def retry_later(conn: AsyncConnection) -> list[StatusChange]:
            if await jobs.finish(
                conn,
                job.id,
                self.owner,
                state=jobs.PENDING,
                error=error,
                attempts=attempts,
                next_attempt_at=now() + dt.timedelta(seconds=delay),
            ):
                # visible on the case while it waits, so the front desk can see why
                await conn.execute(
                    update(applications)
                    .where(applications.c.id == job.application_id)
                    .values(last_error=f"retrying (attempt {attempts}): {error}")
                )
            return []

        await self._recorder.submit(_Work(job.application_id, retry_later))
        log.info(
            "delivery will be retried",
            department=dept.code,
            application=job.application_id,
            attempt=attempts,
            in_seconds=round(delay, 2),
            error=error,
        )
