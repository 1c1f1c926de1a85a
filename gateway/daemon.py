"""The sync daemon: APScheduler (3.x, asyncio) runs the gateway's periodic work.

Tasks, and how several daemons sharing one database stay out of each other's way::

    dispatch              every sweep_interval_seconds  item leases (dispatch_jobs, SKIP LOCKED)
    withdrawals           every sweep_interval_seconds  item leases (withdrawals, SKIP LOCKED)
    webhooks              every sweep_interval_seconds  item leases (webhook deliveries, in order)
    poll:<dept>           the department's poll interval item leases (next_poll_at, SKIP LOCKED)
    changes:<dept>        [sync] changes_interval_seconds one lease row per tick (feed departments)
    results:<dept>        [gateway.schedule] results_seconds      one lease row per tick
    reconcile:<dept>      the department's reconcile_cron          one lease row per tick
    deadlines             deadlines_seconds                        one lease row per tick
    figures               figures_seconds                          one lease row per tick
    refetch               refetch_seconds                          one lease row per tick
    housekeeping          housekeeping_seconds                     one lease row per tick

The scheduler's job store is in memory, one per daemon; the database decides who runs what.
Interval triggers start at the epoch, so every daemon's ticks fall on the same instants and a
tick has the same key everywhere: ``task_leases`` (task, tick) is inserted with ON CONFLICT DO
NOTHING and the daemon whose insert lands runs the tick. A tick that starts while an earlier tick
of the same task still runs somewhere (unfinished, lease not expired) is skipped. Misfires
coalesce into one run; runs later than ``misfire_grace_seconds`` are dropped (the next tick
comes).

A running tick renews its lease every third of it, so a lease can be short: a daemon killed
mid-tick (SIGKILL, power, on any host) blocks its task for at most one lease (result pulls:
one ``results_seconds``, at least 1 s). A tick that finds an earlier one holding a lease that
ends before its own next tick waits for it: if the holder stops renewing, the tick runs as
soon as the lease runs out (the row is marked ``abandoned``, WARNING "the earlier tick's lease
ran out"). An earlier tick whose owner names a process of this host that no longer exists
(owner ``host:pid:...``), or this very daemon (its end was not recorded), is taken as
abandoned at once. A tick held up by a live holder says so: one WARNING per holder
(department, holder host and pid, lease end), and ops see the holder in the department's
health (``GET /v1/ops/departments``).

While the database (or data_dir) is out, a tick that meets an
:class:`~gateway.errors.InfrastructureError` pauses every task of this daemon: ticks are skipped
quietly for a backoff (0.5 s doubling to ``MAX_PAUSE_SECONDS``) and the next tick after it is
the probe; it ends early once anything in the process reaches the database again. The outage
itself is logged once (:mod:`gateway.outage`), not once per tick; so is a task whose department
keeps failing (a connector error: "task results:civil failing since ...", then "back after").

Stopping (SIGTERM): the scheduler is paused, the dispatcher stops claiming, running ticks get
``grace_seconds`` to finish, the rest are cancelled and their lease rows marked ``released``;
the dispatcher hands its leased jobs back.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
import time
import zoneinfo
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import and_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.cancelling import cancel_and_wait
from gateway.clock import new_id, now
from gateway.connector import Connector
from gateway.dispatcher import Dispatcher
from gateway.errors import ConnectorError, InfrastructureError
from gateway.outage import Outage
from gateway.runtime import Runtime
from gateway.store.db import outage_of
from gateway.store.tables import task_leases

log = structlog.get_logger("gateway.daemon")
# "skipped: maximum number of running instances reached" is how a long tick looks: not news
logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)

EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)

TaskFunc = Callable[[], Awaitable[dict[str, Any] | None]]

MIN_PAUSE_SECONDS = 0.5
#: the longest a daemon waits before trying the database again (bounds recovery time)
MAX_PAUSE_SECONDS = 4.0


@dataclass(frozen=True)
class Task:
    """One periodic task. ``leased``: at most one daemon runs each tick (a task_leases row);
    otherwise every daemon runs it and item leases share the work."""

    name: str
    trigger: BaseTrigger
    run: TaskFunc
    leased: bool
    lease_seconds: float = 300.0


# -- tick leases -----------------------------------------------------------------------------------


def tick_of(trigger: BaseTrigger, at: dt.datetime, grace: float) -> dt.datetime:
    """The scheduled instant a run at ``at`` belongs to: the trigger's last fire time <= at."""
    if isinstance(trigger, IntervalTrigger):
        step: float = trigger.interval_length
        start: dt.datetime = trigger.start_date
        n = int((at - start).total_seconds() // step)
        return (start + dt.timedelta(seconds=n * step)).astimezone(dt.UTC)
    # cron: walk the fire times from a little before the grace window up to ``at``
    fire = trigger.get_next_fire_time(None, at - dt.timedelta(seconds=grace + 1))
    last = fire
    while fire is not None and fire <= at:
        last = fire
        fire = trigger.get_next_fire_time(fire, fire + dt.timedelta(microseconds=1))
    assert isinstance(last, dt.datetime)
    return min(last, at).astimezone(dt.UTC).replace(microsecond=0)


def _insert_ignore(conn: AsyncConnection) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(task_leases).on_conflict_do_nothing()
    return sqlite.insert(task_leases).on_conflict_do_nothing()


async def claim_tick(
    conn: AsyncConnection, task: str, tick: dt.datetime, owner: str, lease_seconds: float
) -> bool:
    """Insert the (task, tick) lease row; True if this owner got it."""
    t = now()
    q = _insert_ignore(conn).values(
        task=task,
        tick=tick,
        owner=owner,
        started_at=t,
        expires_at=t + dt.timedelta(seconds=lease_seconds),
    )
    return bool((await conn.execute(q)).rowcount)


async def earlier_tick_running(conn: AsyncConnection, task: str, tick: dt.datetime) -> bool:
    return await earlier_tick_holder(conn, task, tick) is not None


async def earlier_tick_holder(
    conn: AsyncConnection, task: str, tick: dt.datetime
) -> tuple[dt.datetime, str, dt.datetime] | None:
    """(tick, owner, lease end) of the latest earlier tick of ``task`` still running somewhere
    (unfinished, lease not expired), or None."""
    q = (
        select(task_leases.c.tick, task_leases.c.owner, task_leases.c.expires_at)
        .where(
            and_(
                task_leases.c.task == task,
                task_leases.c.tick < tick,
                task_leases.c.finished_at.is_(None),
                task_leases.c.expires_at > now(),
            )
        )
        .order_by(task_leases.c.tick.desc())
        .limit(1)
    )
    row = (await conn.execute(q)).first()
    return (row[0], row[1], row[2]) if row else None


def owner_gone(owner: str) -> bool:
    """Whether ``owner`` (``host:pid:suffix``, as :class:`Daemon` names itself) is a process of
    this host that no longer exists. Anything else (another host, another naming) is alive as
    far as this daemon can tell: its lease must run out."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, another user's
        return False
    return False


#: a leased tick's lease is never shorter than this (renewed every third of it)
MIN_LEASE_SECONDS = 1.0
#: how often a tick waiting for an earlier tick's lease looks whether it finished
RECHECK_SECONDS = 0.5


def _holder_fields(task: str, owner: str) -> dict[str, str]:
    host, _, rest = owner.partition(":")
    return {
        "task": task,
        "department": task.partition(":")[2],
        "held_by": owner,
        "holder_host": host,
        "holder_pid": rest.partition(":")[0],
    }


async def _clear_way(
    conn: AsyncConnection,
    task: Task,
    tick: dt.datetime,
    owner: str,
    reported: dict[str, dt.datetime] | None,
) -> dict[str, str] | None:
    """None if this tick may run; else why not (an earlier tick still running elsewhere).

    An earlier tick does not count, and is marked abandoned, when its daemon is a dead process
    of this host, or when it is this very daemon's: a daemon runs one tick of a task at a time,
    so its own unfinished earlier tick is one whose end could not be written (the database
    refused the write: a full disk, an outage) and would otherwise block the task until its
    lease ran out. ``reported``: the holder tick last named per task (a long holder is named
    once, not every tick)."""
    while (held := await earlier_tick_holder(conn, task.name, tick)) is not None:
        held_tick, holder, until = held
        if holder == owner:
            why = "its end was not recorded"
        elif owner_gone(holder):
            why = f"{holder} is gone"
        else:
            if reported is None or reported.get(task.name) != held_tick:
                if reported is not None:
                    reported[task.name] = held_tick
                log.warning(
                    "task held: an earlier tick still holds its lease",
                    **_holder_fields(task.name, holder),
                    held_tick=held_tick.isoformat(),
                    until=until.isoformat(),
                )
            return {
                "why": "overlap",
                "held_by": holder,
                "held_tick": held_tick.isoformat(),
                "until": until.isoformat(),
            }
        await _abandon(conn, task, held_tick, why)
        log.warning(
            f"task resumes: the earlier tick is over ({why})",
            **_holder_fields(task.name, holder),
            owner=holder,
            held_tick=held_tick.isoformat(),
        )
    return None


async def _abandon(conn: AsyncConnection, task: Task, held_tick: dt.datetime, why: str) -> bool:
    """Close an earlier tick that will never finish; False if it had finished after all."""
    done = await conn.execute(
        update(task_leases)
        .where(
            and_(
                task_leases.c.task == task.name,
                task_leases.c.tick == held_tick,
                task_leases.c.finished_at.is_(None),
            )
        )
        .values(finished_at=now(), outcome="abandoned", detail={"why": why})
    )
    return bool(done.rowcount)


def _interval_of(trigger: BaseTrigger) -> float | None:
    return float(trigger.interval_length) if isinstance(trigger, IntervalTrigger) else None


async def _wait_turn(
    runtime: Runtime,
    task: Task,
    tick: dt.datetime,
    owner: str,
    reported: dict[str, dt.datetime],
    why: dict[str, str] | None,
) -> dict[str, str] | None:
    """None once this tick may run, else why not; ``why``: the first look's answer
    (:func:`_clear_way`, in the claim's transaction). A holder whose lease ends before this
    task's next tick is waited for: a live holder renews its lease while it works, so a
    lease that runs out means its daemon stopped (killed, on any host), and the task resumes
    then, within one interval of the holder's last renewal, saying so."""
    step = _interval_of(task.trigger)
    waited = time.monotonic()
    while why is not None and step is not None:
        until = dt.datetime.fromisoformat(why["until"])
        if until >= tick + dt.timedelta(seconds=step):
            break  # held past this tick: the next one asks again
        # until the lease runs out, looking again now and then (the holder may finish)
        left = (until - now()).total_seconds()
        await asyncio.sleep(min(max(0.0, left) + 0.05, RECHECK_SECONDS))
        held_by, held_tick = why["held_by"], dt.datetime.fromisoformat(why["held_tick"])
        async with runtime.engine.begin() as conn:
            why = await _clear_way(conn, task, tick, owner, reported)
            if why is None:
                await _lapsed(conn, task, held_tick, held_by, until, time.monotonic() - waited)
    return why


async def _lapsed(
    conn: AsyncConnection,
    task: Task,
    held_tick: dt.datetime,
    owner: str,
    until: dt.datetime,
    waited: float,
) -> None:
    """The tick waited for stopped renewing its lease: record it as abandoned and say so
    (unless it finished after all)."""
    why = f"{owner} stopped renewing its lease (ran out {until.isoformat()})"
    if not await _abandon(conn, task, held_tick, why):
        return  # it finished in time: nothing to tell
    log.warning(
        "task resumes: the earlier tick's lease ran out (its daemon stopped renewing it)",
        **_holder_fields(task.name, owner),
        held_tick=held_tick.isoformat(),
        until=until.isoformat(),
        waited_seconds=round(waited, 3),
    )


async def _keep_lease(runtime: Runtime, task: Task, tick: dt.datetime, owner: str) -> None:
    """Renew a running tick's lease every third of it (a short lease then only outlives a
    daemon that died, never a slow tick). Ended with :func:`cancel_and_wait`: a renewal whose
    cancellation was lost (Python 3.11, while it waited for SQLite's one connection) renewed
    and slept on, and the tick waiting for it never ended (its task stopped for good)."""
    every = task.lease_seconds / 3
    while True:
        await asyncio.sleep(every)
        try:
            async with runtime.engine.begin() as conn:
                await conn.execute(
                    update(task_leases)
                    .where(
                        and_(
                            task_leases.c.task == task.name,
                            task_leases.c.tick == tick,
                            task_leases.c.owner == owner,
                            task_leases.c.finished_at.is_(None),
                        )
                    )
                    .values(expires_at=now() + dt.timedelta(seconds=task.lease_seconds))
                )
        except Exception as exc:  # the database is out: the outage is reported elsewhere
            log.debug("lease renewal failed", task=task.name, error=type(exc).__name__)


async def finish_tick(
    conn: AsyncConnection,
    task: str,
    tick: dt.datetime,
    owner: str,
    outcome: str,
    detail: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        update(task_leases)
        .where(
            and_(
                task_leases.c.task == task,
                task_leases.c.tick == tick,
                task_leases.c.owner == owner,
            )
        )
        .values(finished_at=now(), outcome=outcome, detail=detail)
    )


async def run_leased(
    runtime: Runtime,
    task: Task,
    owner: str,
    tick: dt.datetime,
    *,
    reported: dict[str, dt.datetime] | None = None,
) -> dict[str, Any] | None:
    """Run one tick of a leased task if this owner wins it; the outcome lands on the row.
    ``reported``: the caller's memory of holders already named (see :func:`_clear_way`).

    The claim and the first look for an earlier tick still running are one transaction (a
    tick is two write transactions with its end, not three: the result pulls and change feeds
    tick every few seconds, nearly always finding the way clear)."""
    reported = {} if reported is None else reported  # named once while this tick waits
    async with runtime.engine.begin() as conn:
        if not await claim_tick(conn, task.name, tick, owner, task.lease_seconds):
            return None
        why = await _clear_way(conn, task, tick, owner, reported)
    outcome, detail = "failed", None
    renewing = asyncio.create_task(_keep_lease(runtime, task, tick, owner))
    try:
        if why := await _wait_turn(runtime, task, tick, owner, reported, why):
            outcome, detail = "skipped", why
            return None
        log.debug("tick won", task=task.name, tick=tick.isoformat(), owner=owner)
        detail = await task.run()
        outcome = "done"
        return detail
    except asyncio.CancelledError:
        outcome = "released"
        raise
    except Exception as exc:
        detail = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        raise
    finally:
        await cancel_and_wait([renewing])
        async with runtime.engine.begin() as conn:
            await finish_tick(conn, task.name, tick, owner, outcome, detail)


# -- the daemon ------------------------------------------------------------------------------------


async def _caught_up(refresh: Awaitable[bool]) -> dict[str, Any]:
    return {"caught_up": await refresh}


def _interval(seconds: float) -> IntervalTrigger:
    # starting at the epoch puts every daemon's ticks on the same instants
    return IntervalTrigger(seconds=seconds, start_date=EPOCH, timezone=dt.UTC)


def _pulls_updates(connector: Connector) -> bool:
    return type(connector).pull_updates is not Connector.pull_updates


class Daemon:
    """The scheduler and its tasks for one runtime. ``start()`` then ``stop()``."""

    def __init__(self, runtime: Runtime, *, owner: str | None = None) -> None:
        self.runtime = runtime
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{new_id()[-6:]}"
        self.schedule = runtime.config.gateway.schedule
        self.dispatcher = Dispatcher(runtime, owner=self.owner)
        self.dispatcher.more_to_tell = self.schedule_lines
        self.scheduler = AsyncIOScheduler(
            timezone=dt.UTC,
            job_defaults={
                "coalesce": True,  # a backlog of missed ticks runs once
                "max_instances": 1,  # a slow tick is not overlapped in this process
                "misfire_grace_time": max(1, int(self.schedule.misfire_grace_seconds)),
            },
        )
        self.tasks: dict[str, Task] = {t.name: t for t in self._tasks()}
        self._running: set[asyncio.Task[Any]] = set()
        self._wakeup_watch: asyncio.Task[None] | None = None
        #: a wake-up came while a dispatch tick ran: that tick sweeps once more
        self._sweep_again = False
        self._stopping = False
        self._paused_until = 0.0  # time.monotonic(); ticks before it are skipped
        self._pause = 0.0  # the current backoff (0: not paused)
        #: tasks whose department keeps failing (told once per stretch, not every tick)
        self._failing: dict[str, Outage] = {}
        #: per task, the earlier tick whose live holder was last named (named once, not per tick)
        self._reported_holders: dict[str, dt.datetime] = {}

    def _tasks(self) -> list[Task]:
        from gateway import (
            changes,
            clocks,
            deadlines,
            housekeeping,
            reconcile,
            refetch,
            webhooks,
            withdrawals,
        )
        from gateway.poller import poll_department
        from gateway.results import pull_department

        rt, sched = self.runtime, self.schedule
        tasks = [
            Task(
                "dispatch",
                _interval(rt.config.gateway.dispatch.sweep_interval_seconds),
                self._dispatch,
                leased=False,
            ),
            Task(
                "withdrawals",
                _interval(rt.config.gateway.dispatch.sweep_interval_seconds),
                lambda: withdrawals.sweep(rt, self.owner),
                leased=False,
            ),
            Task(
                "webhooks",
                _interval(rt.config.gateway.dispatch.sweep_interval_seconds),
                lambda: webhooks.sweep(rt, self.owner),
                leased=False,
            ),
            Task(
                "deadlines",
                _interval(sched.deadlines_seconds),
                lambda: deadlines.watch(rt),
                leased=True,
            ),
            Task(
                "figures",
                _interval(sched.figures_seconds),
                lambda: _caught_up(clocks.refresh(rt)),
                leased=True,
            ),
            Task(
                "refetch",
                _interval(sched.refetch_seconds),
                lambda: refetch.sweep(rt),
                leased=True,
            ),
            Task(
                "housekeeping",
                _interval(sched.housekeeping_seconds),
                lambda: housekeeping.run(rt),
                leased=True,
                lease_seconds=3600.0,
            ),
        ]
        tz = zoneinfo.ZoneInfo(sched.timezone)
        for code, connector in sorted(rt.connectors.items()):
            dept = rt.config.departments[code]
            if dept.poll_interval_seconds:

                async def poll(code: str = code) -> None:
                    await poll_department(rt, code)
                    return None

                tasks.append(
                    Task(f"poll:{code}", _interval(dept.poll_interval_seconds), poll, leased=False)
                )
            if connector.offers_changes():

                async def feed(code: str = code) -> dict[str, Any]:
                    return await changes.sync_department(rt, code)

                every = dept.sync.changes_interval_seconds
                tasks.append(
                    Task(
                        f"changes:{code}",
                        _interval(every),
                        feed,
                        leased=True,
                        lease_seconds=max(3 * every, 60.0),
                    )
                )
            if _pulls_updates(connector):

                async def pull(code: str = code) -> dict[str, Any]:
                    return {"applied": await pull_department(rt, code)}

                # renewed every third of it while it runs: a daemon that died mid-tick (on
                # any host) holds result reading for at most one tick interval
                lease = max(sched.results_seconds, MIN_LEASE_SECONDS)
                tasks.append(
                    Task(
                        f"results:{code}",
                        _interval(sched.results_seconds),
                        pull,
                        leased=True,
                        lease_seconds=lease,
                    )
                )
            try:
                cron = CronTrigger.from_crontab(dept.reconcile_cron, timezone=tz)
            except ValueError as exc:
                raise ValueError(
                    f"department {code}: reconcile_cron {dept.reconcile_cron!r} is not a "
                    f"crontab expression ({exc})"
                ) from exc

            async def rec(code: str = code) -> dict[str, Any]:
                run = await reconcile.reconcile_department(rt, code, trigger="schedule")
                return {"run": run.id, "counts": run.counts}

            tasks.append(
                Task(f"reconcile:{code}", cron, rec, leased=True, lease_seconds=6 * 3600.0)
            )
        return tasks

    async def _dispatch(self) -> None:
        # keep sweeping while sweeps find work (a burst of intake), as the old loop did, or a
        # wake-up came during the sweep (a freed slot): APScheduler drops the run_soon of a
        # tick that is still running, so that wake-up would wait for the next interval
        for _ in range(100):
            self._sweep_again = False
            if self._stopping:
                break
            if not await self.dispatcher.sweep(skip_empty=True) and not self._sweep_again:
                break
        return None

    async def _run(self, name: str) -> None:
        task = self.tasks[name]
        me = asyncio.current_task()
        assert me is not None
        self._running.add(me)
        try:
            if self._stopping or self._paused():
                return
            if task.leased:
                tick = tick_of(task.trigger, now(), self.schedule.misfire_grace_seconds)
                await run_leased(
                    self.runtime, task, self.owner, tick, reported=self._reported_holders
                )
            else:
                await task.run()
            self._pause = 0.0
            if name in self._failing:
                self._failing[name].ok()
        except asyncio.CancelledError:
            raise
        except ConnectorError as exc:  # the department, not the gateway: retried next tick
            failing = self._failing.setdefault(name, Outage(f"task {name}", what="failing"))
            failing.failed(f"{type(exc).__name__}: {exc}"[:300])
        except InfrastructureError:
            # logged once per outage by gateway.outage; a traceback per tick would bury it
            self._pause = min(MAX_PAUSE_SECONDS, max(MIN_PAUSE_SECONDS, self._pause * 2))
            self._paused_until = time.monotonic() + self._pause
        except Exception:
            log.exception("task failed", task=name)
        finally:
            self._running.discard(me)

    def _paused(self) -> bool:
        """Skip this tick: the infrastructure is out and the backoff has not run out (it ends
        early when another part of this process reached the database again)."""
        if not self._pause:
            return False
        if outage_of(self.runtime.engine).answering:
            self._pause = 0.0
            return False
        return time.monotonic() < self._paused_until

    def schedule_lines(self) -> list[str]:
        """For the process snapshot: when the scheduler wakes next, each tick's next run and
        running instances (APScheduler skips a due tick silently while one still runs), and the
        daemon's own pause. APScheduler's private state, read defensively: diagnostics only."""
        loop = asyncio.get_running_loop()
        timer = getattr(self.scheduler, "_timeout", None)
        wakes = "no timer"
        if timer is not None and not timer.cancelled():
            wakes = f"wakes in {timer.when() - loop.time():.1f} s"
        executors = getattr(self.scheduler, "_executors", {})
        instances = getattr(executors.get("default"), "_instances", {})
        pause = max(0.0, self._paused_until - time.monotonic()) if self._pause else 0.0
        lines = [
            f"scheduler {'running' if self.scheduler.running else 'stopped'}: {wakes}; "
            f"ticks under way {len(self._running)}; paused {pause:.1f} s"
            f"{'; stopping' if self._stopping else ''}"
        ]
        at = dt.datetime.now(dt.UTC)
        for job in sorted(self.scheduler.get_jobs(), key=lambda j: j.id):
            due = job.next_run_time
            when = "no next run" if due is None else f"next in {(due - at).total_seconds():.1f} s"
            lines.append(f"tick {job.id}: {when}, running {instances.get(job.id, 0)}")
        return lines

    def run_soon(self, name: str) -> None:
        """Bring a task's next run forward to now (new local work, tests)."""
        job = self.scheduler.get_job(name)
        if job is not None:
            job.modify(next_run_time=dt.datetime.now(dt.UTC))

    async def _watch_wakeup(self) -> None:
        wakeup = self.runtime.wakeup
        while True:
            await wakeup.wait()
            wakeup.clear()
            self._sweep_again = True
            self.run_soon("dispatch")

    async def start(self) -> None:
        for task in self.tasks.values():
            first: dict[str, Any] = {}
            if not task.leased:  # the first dispatch sweep and polls run at once
                first["next_run_time"] = dt.datetime.now(dt.UTC)
            self.scheduler.add_job(
                self._run, task.trigger, args=[task.name], id=task.name, name=task.name, **first
            )
        self.scheduler.start()
        self._wakeup_watch = asyncio.create_task(self._watch_wakeup(), name="daemon-wakeup")
        log.info("daemon started", owner=self.owner, tasks=sorted(self.tasks))

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop scheduling, let running ticks finish for ``grace_seconds``, release the rest."""
        self._stopping = True
        if self.scheduler.running:
            self.scheduler.pause()
        if self._wakeup_watch is not None:
            await cancel_and_wait([self._wakeup_watch])
        self.dispatcher.stopping.set()  # a sweep under way claims nothing more
        if self._running:
            _done, pending = await asyncio.wait(set(self._running), timeout=grace_seconds)
            await cancel_and_wait(pending)
        await self.dispatcher.stop(grace_seconds)
        from gateway import webhooks

        await webhooks.release(self.runtime, self.owner)
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        log.info("daemon stopped", owner=self.owner)


__all__ = [
    "MIN_LEASE_SECONDS",
    "Daemon",
    "Task",
    "claim_tick",
    "earlier_tick_holder",
    "finish_tick",
    "owner_gone",
    "run_leased",
    "tick_of",
]
