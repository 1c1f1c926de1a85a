"""Dispatch throughput: the gateway's Dispatcher delivering to the simulated REST department
(``amr``, no decision delay, no callbacks) vs a raw ``httpx.AsyncClient`` loop POSTing the same
JSON payloads, with Idempotency-Key headers, to the same endpoint at the same concurrency.

N applications are stored first with ``gateway.intake.submit`` (not timed). The gateway is timed
from starting ``Dispatcher.run()`` (the daemon's loop) until every dispatch job is done. For
context it also reports httpx over the aiohttp transport (the gateway's ``make_client``) and raw
aiohttp. By default the simulated department runs in a separate process (its own core), so the
figures are about the sending side::

    .venv/bin/python benchmarks/dispatch.py
    .venv/bin/python benchmarks/dispatch.py --simulator inprocess   # all in one event loop
    .venv/bin/python benchmarks/dispatch.py --quick                 # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

TARGET = 0.6  # issue 2: against raw httpx
TARGET_TRANSPORT = 0.5  # issue 16: against httpx over the aiohttp transport (the gateway's client)
TARGET_CPU_MS = 1.5  # issue 16: sender CPU per delivery
DEPT = "amr"


def overrides(concurrency: int) -> dict[str, Any]:
    return {
        "simulator_overrides": {DEPT: {"decision_delay_seconds": 0, "callbacks": False}},
        "department_overrides": {DEPT: {"concurrency": concurrency, "rate_limit_per_second": None}},
    }


# -- the simulated department, here or in a child process ---------------------------------------


def _simulator_process(concurrency: int, conn: Any) -> None:
    """Child: run the example city's simulators until the parent closes the pipe."""

    async def serve() -> None:
        from gateway.simulators.city import simulated_city

        c.quiet_logs()
        with tempfile.TemporaryDirectory(prefix="bench-sim-") as tmp:
            config = c.example_config(Path(tmp))
            async with simulated_city(config, **overrides(concurrency)) as city:
                conn.send(city.config.departments[DEPT].options["base_url"])
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, conn.recv)  # EOF when the parent is done

    with contextlib.suppress(EOFError):
        c.run(serve())


def pointed_at(config: Any, base_url: str, concurrency: int) -> Any:
    """The config with ``amr`` pointed at a simulator running elsewhere (same overrides)."""
    dept = config.departments[DEPT]
    update = dict(overrides(concurrency)["department_overrides"][DEPT])
    update["options"] = {**dept.options, "base_url": base_url}
    departments = dict(config.departments)
    departments[DEPT] = type(dept).model_validate({**dict(dept), **update})
    return dataclasses.replace(config, departments=departments)


@contextlib.asynccontextmanager
async def department(args: argparse.Namespace, config: Any) -> AsyncIterator[Any]:
    """Yields the config with ``amr`` pointed at its simulator (and raised concurrency)."""
    from gateway.simulators.city import simulated_city

    if args.simulator == "inprocess":
        async with simulated_city(config, **overrides(args.concurrency)) as city:
            yield city.config
        return
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_simulator_process, args=(args.concurrency, child), daemon=True)
    proc.start()
    child.close()
    try:
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, parent.poll, 60):
            raise RuntimeError("the simulator process did not start")
        base_url = parent.recv()
        # no simulator runs in this process (their background work would be charged to the
        # sender)
        yield pointed_at(config, base_url, args.concurrency)
    finally:
        parent.close()
        proc.join(10)
        if proc.is_alive():
            proc.terminate()


# -- the clients ---------------------------------------------------------------------------------


async def fan_out(n: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> float:
    it = iter(range(n))

    async def worker() -> None:
        for i in it:
            await one(i)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


async def httpx_loop(
    client: Any,
    url: str,
    payloads: list[bytes],
    headers: dict[str, str],
    prefix: str,
    concurrency: int,
) -> float:
    async def one(i: int) -> None:
        r = await client.post(
            url, content=payloads[i], headers={**headers, "Idempotency-Key": f"{prefix}-{i}"}
        )
        c.check(r.status_code == 201, f"{prefix}: HTTP {r.status_code}")
        r.json()

    return await fan_out(len(payloads), concurrency, one)


async def aiohttp_loop(
    url: str, payloads: list[bytes], headers: dict[str, str], prefix: str, concurrency: int
) -> float:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> None:
            h = {**headers, "Idempotency-Key": f"{prefix}-{i}"}
            async with session.post(url, data=payloads[i], headers=h) as r:
                c.check(r.status == 201, f"{prefix}: HTTP {r.status}")
                await r.json()

        return await fan_out(len(payloads), concurrency, one)


# -- one measurement ------------------------------------------------------------------------------


async def preload(runtime: Any, n: int, offset: int) -> list[str]:
    from gateway import intake
    from gateway.store.clients import Client

    client = Client(id="bench", name="bench", centre="C01", ops=False)

    async def one(i: int) -> str:
        body = intake.ApplicationIn.model_validate(c.application_body(i))
        result = await intake.submit(runtime, client, f"bench-{i}", body)
        return result.accepted.id

    ids: list[str] = []
    for start in range(offset, offset + n, 64):  # 64 at a time: group commit stores them together
        chunk = range(start, min(start + 64, offset + n))
        ids += await asyncio.gather(*(one(i) for i in chunk))
    return ids


async def payloads_for(runtime: Any, ids: list[str]) -> list[bytes]:
    """Exactly what the rest connector sends for these applications."""
    from gateway.envelopes import envelope_for
    from gateway.store import cases

    connector = runtime.connectors[DEPT]
    out = []
    async with runtime.engine.connect() as conn:
        for app_id in ids:
            envelope = envelope_for(await cases.get_application(conn, app_id))
            payload = await connector._payload(envelope)  # the connector's own mapping
            out.append(json.dumps(payload, ensure_ascii=False).encode())
    return out


async def jobs_done(runtime: Any) -> int:
    from sqlalchemy import func, select

    from gateway.store.jobs import DONE
    from gateway.store.tables import dispatch_jobs

    async with runtime.engine.connect() as conn:
        q = select(func.count()).select_from(dispatch_jobs).where(dispatch_jobs.c.state == DONE)
        return int((await conn.execute(q)).scalar_one())


async def time_dispatcher(runtime: Any, target_done: int, poll: float) -> float:
    from gateway.dispatcher import Dispatcher

    dispatcher = Dispatcher(runtime, seed=1)
    started = time.perf_counter()
    task = asyncio.create_task(dispatcher.run())
    try:
        async with done_poll(runtime) as done:
            while await done() < target_done:
                c.check(not task.done(), "the dispatcher stopped")
                await asyncio.sleep(poll)
        return time.perf_counter() - started
    finally:
        await dispatcher.stop()
        await task


@contextlib.asynccontextmanager
async def done_poll(runtime: Any) -> AsyncIterator[Callable[[], Awaitable[int]]]:
    """How many jobs are done, asked every poll. The poll runs in the gateway's process and its
    CPU is counted with the gateway's: on PostgreSQL one connection for the run, without a
    transaction (a round trip a poll instead of a checkout, BEGIN, SELECT and ROLLBACK);
    SQLite's one pooled connection is the dispatcher's between polls."""
    from sqlalchemy import func, select

    from gateway.store.jobs import DONE
    from gateway.store.tables import dispatch_jobs

    if runtime.engine.dialect.name != "postgresql":
        yield lambda: jobs_done(runtime)
        return
    count = select(func.count()).select_from(dispatch_jobs).where(dispatch_jobs.c.state == DONE)
    async with runtime.engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")

        async def done() -> int:
            return int((await conn.execute(count)).scalar_one())

        yield done


async def measure(args: argparse.Namespace, database_url: str | None, label: str) -> None:
    import httpx

    from gateway.http import make_client
    from gateway.runtime import Runtime
    from gateway.service import settle_heap

    token = os.environ["AMR_API_TOKEN"]  # the simulator requires the department's token
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    rates: dict[str, list[float]] = {
        k: [] for k in ("gateway", "httpx", "httpx_aiohttp", "aiohttp")
    }
    cpu: dict[str, list[float]] = {
        "gateway": [],
        "gateway_process": [],  # with the database driver's thread (aiosqlite)
        "httpx": [],
        "httpx_aiohttp": [],
        "aiohttp": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-dispatch-") as tmp:
        config = c.example_config(Path(tmp), database_url)
        async with department(args, config) as cfg:
            runtime = Runtime(cfg)
            try:
                await runtime.prepare_database()
                url = cfg.departments[DEPT].options["base_url"] + "/cases"
                limits = httpx.Limits(
                    max_connections=args.concurrency, max_keepalive_connections=args.concurrency
                )
                raw = httpx.AsyncClient(limits=limits, timeout=30)
                via_aiohttp = make_client(max_connections=args.concurrency)
                if args.settle_heap:
                    # as `gateway daemon` / `serve` do once started (every client measured
                    # here runs in this process after it)
                    settle_heap()
                done = 0
                for r in range(-1, args.rounds):  # round -1 warms everything up
                    n = args.warmup if r < 0 else args.n
                    ids = await preload(runtime, n, offset=done)
                    payloads = await payloads_for(runtime, ids)
                    cpu0 = time.thread_time()  # the clients and the dispatcher run here
                    t_httpx = t_hx_aio = t_aiohttp = 1.0
                    if not args.only:
                        t_httpx = await httpx_loop(
                            raw, url, payloads, headers, f"raw-{r}", args.concurrency
                        )
                    cpu1 = time.thread_time()
                    if not args.only:
                        t_hx_aio = await httpx_loop(
                            via_aiohttp, url, payloads, headers, f"hxaio-{r}", args.concurrency
                        )
                    cpu2 = time.thread_time()
                    if not args.only:
                        t_aiohttp = await aiohttp_loop(
                            url, payloads, headers, f"aio-{r}", args.concurrency
                        )
                    cpu3, proc3 = time.thread_time(), time.process_time()
                    done += n
                    t_gateway = await time_dispatcher(runtime, done, args.poll)
                    cpu4, proc4 = time.thread_time(), time.process_time()
                    if r >= 0:
                        cpu["httpx"].append((cpu1 - cpu0) / n * 1000)
                        cpu["httpx_aiohttp"].append((cpu2 - cpu1) / n * 1000)
                        cpu["aiohttp"].append((cpu3 - cpu2) / n * 1000)
                        cpu["gateway"].append((cpu4 - cpu3) / n * 1000)
                        cpu["gateway_process"].append((proc4 - proc3) / n * 1000)
                    if r >= 0:
                        for k, t in (
                            ("gateway", t_gateway),
                            ("httpx", t_httpx),
                            ("httpx_aiohttp", t_hx_aio),
                            ("aiohttp", t_aiohttp),
                        ):
                            rates[k].append(n / t)
                        print(
                            f"[{label}] round {r + 1}: gateway {n / t_gateway:,.0f}/s, "
                            f"raw httpx {n / t_httpx:,.0f}/s",
                            file=sys.stderr,
                        )
                await raw.aclose()
                await via_aiohttp.aclose()
                c.check(await jobs_done(runtime) == done, "not every job is done")
            finally:
                await runtime.aclose()
    where = (
        "simulated department in a separate process (its own core and loop); clients in "
        "this process"
        if args.simulator == "process"
        else "simulated department and clients in one process and event loop"
    )
    print(f"[{label}] setup: {where}")
    print(
        f"[{label}] N={args.n} per round, concurrency={args.concurrency}, {args.rounds} "
        f"round(s) after a warm-up of {args.warmup}; amr decision delay 0, callbacks off; "
        + ("start-up heap frozen (--settle-heap)" if args.settle_heap else "collector as started")
    )
    print(f"[{label}] gateway Dispatcher.run() -> amr:   {c.fmt_rates(rates['gateway'])}")
    if args.only:  # profiling aid: the gateway only, no ratio
        print(
            f"[{label}] gateway CPU per delivery: event loop {c.median(cpu['gateway']):.2f} ms, "
            f"process {c.median(cpu['gateway_process']):.2f} ms"
        )
        return
    print(f"[{label}] raw httpx.AsyncClient loop:        {c.fmt_rates(rates['httpx'])}")
    print(f"[{label}] httpx + aiohttp transport loop:    {c.fmt_rates(rates['httpx_aiohttp'])}")
    print(f"[{label}] raw aiohttp loop (context):        {c.fmt_rates(rates['aiohttp'])}")
    if args.simulator == "process":
        print(
            f"[{label}] sender event-loop CPU per delivery: gateway "
            f"{c.median(cpu['gateway']):.2f} ms, raw httpx {c.median(cpu['httpx']):.2f} ms, "
            f"httpx + aiohttp transport {c.median(cpu['httpx_aiohttp']):.2f} ms, "
            f"raw aiohttp {c.median(cpu['aiohttp']):.2f} ms; gateway with the database "
            f"driver's thread {c.median(cpu['gateway_process']):.2f} ms"
        )
    gateway, httpx_rate = c.median(rates["gateway"]), c.median(rates["httpx"])
    print(f"[{label}] {c.ratio_line('gateway/raw_httpx', gateway, httpx_rate, TARGET)}")
    transport = c.median(rates["httpx_aiohttp"])
    line = c.ratio_line("gateway/httpx_aiohttp", gateway, transport, TARGET_TRANSPORT)
    print(f"[{label}] {line}")
    if args.simulator == "process":
        ms = c.median(cpu["gateway"])
        verdict = "meets" if ms <= TARGET_CPU_MS else "MISSES"
        print(
            f"[{label}] gateway CPU per delivery {ms:.2f} ms (target <= {TARGET_CPU_MS}: {verdict})"
        )


# -- scale-out: several daemon processes on one PostgreSQL ---------------------------------------


def _daemon_process(
    database_url: str, base_url: str, concurrency: int, tmp: str, conn: Any
) -> None:
    """Child: one dispatcher (the daemon's dispatch loop) with its own runtime, started and
    stopped by the parent; reports its CPU time and how many deliveries it made."""

    async def run() -> None:
        from sqlalchemy import event, func, select

        from gateway.dispatcher import Dispatcher
        from gateway.runtime import Runtime
        from gateway.store import driver_pg
        from gateway.store.tables import events

        c.quiet_logs()
        config = pointed_at(c.example_config(Path(tmp), database_url), base_url, concurrency)
        runtime = Runtime(config)
        statements = [0]

        def count(*_args: Any) -> None:
            statements[0] += 1

        event.listen(runtime.engine.sync_engine, "before_cursor_execute", count)
        # statements sent straight through asyncpg (gateway.store.driver_pg) are no cursor
        # executes SQLAlchemy sees: counted here (rows() sends through fetch())
        for name in ("fetch", "run"):
            original = getattr(driver_pg.Statement, name)

            def counted(self: Any, *args: Any, _original: Any = original) -> Any:
                statements[0] += 1
                return _original(self, *args)

            setattr(driver_pg.Statement, name, counted)
        try:
            dispatcher = Dispatcher(runtime)
            loop = asyncio.get_running_loop()
            conn.send("ready")
            await loop.run_in_executor(None, conn.recv)  # go
            cpu0, statements[0] = time.process_time(), 0
            task = asyncio.create_task(dispatcher.run())
            await loop.run_in_executor(None, conn.recv)  # stop
            cpu, sent = time.process_time() - cpu0, statements[0]
            await dispatcher.stop()
            await task
            async with runtime.engine.connect() as db:
                q = select(func.count()).where(
                    events.c.actor == dispatcher.owner, events.c.to_status == "delivered"
                )
                delivered = int((await db.execute(q)).scalar_one())
            conn.send((cpu, delivered, sent))
        finally:
            await runtime.aclose()

    c.run(run())


@contextlib.asynccontextmanager
async def pg_database(url: str) -> AsyncIterator[tuple[str, str]]:
    """A throw-away database beside the one in ``url`` (lock waits are then counted for this
    run alone); yields (its URL, its name)."""
    import secrets

    from sqlalchemy import text
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    name = f"bench_{secrets.token_hex(5)}"
    admin = create_async_engine(url, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False), name
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
        await admin.dispose()


async def scale_out(args: argparse.Namespace, daemons: int) -> dict[str, Any]:
    """N deliveries by ``daemons`` dispatcher processes sharing one PostgreSQL database."""
    from sqlalchemy import text

    from gateway.runtime import Runtime

    ctx = multiprocessing.get_context("spawn")
    async with pg_database(args.pg) as (url, name):
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
            config = c.example_config(Path(tmp), url)
            async with department(args, config) as cfg:
                base_url = cfg.departments[DEPT].options["base_url"]
                runtime = Runtime(cfg)
                pipes, procs = [], []
                try:
                    await runtime.prepare_database()
                    await preload(runtime, args.n, offset=0)
                    for _ in range(daemons):
                        parent, child = ctx.Pipe()
                        proc = ctx.Process(
                            target=_daemon_process,
                            args=(url, base_url, args.concurrency, tmp, child),
                            daemon=True,
                        )
                        proc.start()
                        child.close()
                        pipes.append(parent)
                        procs.append(proc)
                    loop = asyncio.get_running_loop()
                    for pipe in pipes:
                        c.check(
                            await loop.run_in_executor(None, pipe.poll, 120),
                            "a daemon process did not start",
                        )
                        pipe.recv()
                    waits = text(
                        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                        "WHERE NOT l.granted AND a.datname = :db"
                    )
                    stats = text(
                        "SELECT deadlocks, xact_commit FROM pg_stat_database WHERE datname = :db"
                    )
                    async with runtime.engine.connect() as db:
                        before = (await db.execute(stats, {"db": name})).one()
                    samples = waiting = most = 0
                    started = time.perf_counter()
                    for pipe in pipes:
                        pipe.send("go")
                    while await jobs_done(runtime) < args.n:
                        c.check(all(p.is_alive() for p in procs), "a daemon process died")
                        async with runtime.engine.connect() as db:
                            n_waiting = int((await db.execute(waits, {"db": name})).scalar_one())
                        samples += 1
                        waiting += n_waiting > 0
                        most = max(most, n_waiting)
                        await asyncio.sleep(args.poll)
                    seconds = time.perf_counter() - started
                    for pipe in pipes:
                        pipe.send("stop")
                    reports = []
                    for pipe in pipes:
                        c.check(
                            await loop.run_in_executor(None, pipe.poll, 120),
                            "a daemon process did not report",
                        )
                        reports.append(pipe.recv())
                    async with runtime.engine.connect() as db:
                        after = (await db.execute(stats, {"db": name})).one()
                finally:
                    for pipe in pipes:
                        pipe.close()
                    for proc in procs:
                        proc.join(30)
                        if proc.is_alive():
                            proc.terminate()
                    await runtime.aclose()
    delivered = [d for _cpu, d, _s in reports]
    c.check(sum(delivered) == args.n, f"deliveries {delivered} do not add up to {args.n}")
    return {
        "daemons": daemons,
        "rate": args.n / seconds,
        "cpu_ms": sum(cpu for cpu, _d, _s in reports) / args.n * 1000,
        "statements": sum(sent for _c, _d, sent in reports) / args.n,
        "delivered": delivered,
        "lock_samples": (waiting, samples),
        "most_waiting": most,
        "deadlocks": after.deadlocks - before.deadlocks,
        "commits_per_delivery": (after.xact_commit - before.xact_commit) / args.n,
    }


async def scale_main(args: argparse.Namespace) -> None:
    c.check(bool(args.pg), "--daemons needs --pg (several daemons share one PostgreSQL)")
    print(
        f"[scale-out] PostgreSQL; N={args.n} per run, concurrency {args.concurrency} per daemon; "
        "each daemon a separate process (Dispatcher.run, its own runtime), the simulated "
        "department in another; the database is created for each run"
    )
    for k in args.daemons:
        r = await scale_out(args, k)
        waiting, samples = r["lock_samples"]
        print(
            f"[scale-out] {k} daemon(s): {r['rate']:,.0f}/s, CPU per delivery "
            f"{r['cpu_ms']:.2f} ms (sum over the daemons), deliveries per daemon "
            f"{r['delivered']}; lock waits: {waiting} of {samples} samples saw a waiting lock "
            f"(most {r['most_waiting']} at once), deadlocks {r['deadlocks']}, commits per delivery "
            f"{r['commits_per_delivery']:.2f}, statements per delivery {r['statements']:.2f}; "
            f"{c.load_average()}"
        )


async def main(args: argparse.Namespace) -> None:
    c.quiet_logs()
    print(f"machine: {c.machine()}")
    if args.daemons:
        await scale_main(args)
        print(f"after: {c.load_average()}")
        return
    if not args.pg_only:
        await measure(args, None, "sqlite")
    if args.pg:
        async with c.pg_schema(args.pg) as url:
            await measure(args, url, "postgresql")
    print(f"after: {c.load_average()}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=1000, help="deliveries per round and client")
    p.add_argument("-c", "--concurrency", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--simulator", choices=["process", "inprocess"], default="process")
    p.add_argument(
        "--poll", type=float, default=0.02, help="seconds between checks that every job is done"
    )
    p.add_argument(
        "--pg",
        metavar="URL",
        help="also measure on PostgreSQL (a schema is created "
        "and dropped), e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/test",
    )
    p.add_argument(
        "--pg-only", action="store_true", help="with --pg: PostgreSQL only (no SQLite run)"
    )
    p.add_argument(
        "--only",
        choices=["gateway"],
        help="measure the gateway only (to run under a profiler); prints no ratio",
    )
    p.add_argument(
        "--daemons",
        type=lambda v: [int(x) for x in v.split(",")],
        metavar="1,2,3",
        help="scale-out instead: N deliveries by this many daemon processes on one PostgreSQL "
        "(--pg), one run per count",
    )
    p.add_argument(
        "--settle-heap",
        action="store_true",
        help="freeze the start-up heap out of the garbage collector before measuring, as "
        "`gateway daemon` does once started (gateway.service.settle_heap); off by default, so "
        "figures stay comparable with earlier runs",
    )
    c.add_stack_option(p, default="plain")
    p.add_argument("--quick", action="store_true", help="tiny run for smoke tests")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.rounds, args.warmup = min(args.n, 40), 1, 8
    return args


if __name__ == "__main__":
    args = parse()
    c.run(main(args), args.stack)
