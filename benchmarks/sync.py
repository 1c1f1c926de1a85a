"""Status sync at scale (issue 19): what the gateway pays to learn of decisions, with a change
feed and with adaptive per-case polling, while a department holds many open cases.

The department (the REST simulator, ``amr``, in its own process) holds N open cases (default
100,000, all "in review") and decides ``--per-hour`` percent of them per simulated hour (default
1 %: 1,000 decisions an hour, one every 3.6 s). Simulated time runs at wall speed (1 simulated
second = 1 wall second): the decisions, the daemon's intervals and the figures are all real
time, so the figures are what a deployment would see. The state the run starts from is the
steady state of a department that has held its cases for a while: the gateway database and the
simulator's store are filled in bulk (no HTTP), each case opened up to ``--open-days`` ago, its
next poll spread over its current polling gap.

The gateway (``gateway.daemon.Daemon`` on SQLite, as ``gateway daemon`` runs it, only ``amr``
configured) runs in a third process. Per mode, after a warm-up, the run measures over
``--seconds``:

* gateway CPU: the daemon process's user + system time over the window, as % of one core;
* department requests/s: every HTTP request the simulator answered in the window;
* decision -> known: from the department deciding a case to the gateway recording it (the
  ``approved`` event). A polled decision not yet known when the window ends is counted at its
  scheduled poll (``next_poll_at``), so its figure is what it will be.

Modes: ``feed`` (the time-based change feed every ``--interval`` s), ``seq`` (the sequence
feed: ``since_seq``), ``poll`` (no feed; adaptive polling, floor ``--interval``, ceiling
``--ceiling``). Targets (issue 19): a feed under 5 % of a core and under 1 request/s with every
decision known within 2 intervals; adaptive polling under 25 % of a core.

    .venv/bin/python benchmarks/sync.py                   # 100,000 cases, 120 s per mode
    .venv/bin/python benchmarks/sync.py --modes feed,poll --seconds 300
    .venv/bin/python benchmarks/sync.py --quick           # smoke: 2,000 cases, a few seconds
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import multiprocessing
import os
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

DEPT = "amr"
FEED_CPU, FEED_RPS, POLL_CPU = 5.0, 1.0, 25.0  # targets: % of a core, requests/s, % of a core
TICKS = os.sysconf("SC_CLK_TCK")


def app_id(i: int) -> str:
    return f"{i + 1:024x}"


def case_id(i: int) -> str:
    return f"AMR-B{i:07d}"


def opened_ago(i: int, n: int, open_days: float) -> float:
    """Seconds since case ``i`` was opened (spread evenly over ``open_days``)."""
    return (i + 0.5) / n * open_days * 86400


# -- the department ------------------------------------------------------------------------------


def _department_process(args: dict[str, Any], conn: Any) -> None:
    """Child: the REST simulator holding ``n`` open cases, deciding them at the given rate."""
    from gateway.simulators import SIMULATORS, serve_asgi
    from gateway.simulators.rest_department import STATUS_APPROVED, STATUS_IN_REVIEW, SimCase

    c.quiet_logs()
    n, per_hour = args["n"], args["per_hour"]

    async def serve() -> None:
        table = {
            "kind": "rest",
            "port": 0,
            "decision_delay_seconds": 0,
            "callbacks": False,
            "auth_token": os.environ["AMR_API_TOKEN"],  # as the gateway's config reads it
            "case_prefix": "AMR",
        }
        _settings, app, state = SIMULATORS["rest"].build(table)
        at = dt.datetime.now(dt.UTC)
        for i in range(n):
            opened = at - dt.timedelta(seconds=opened_ago(i, n, args["open_days"]))
            case = SimCase(
                seq=i + 1,
                id=case_id(i),
                idempotency_key=f"ow-{app_id(i)}-v1",
                outcome="approve",
                body={},
                created_at=opened,
                forced=(STATUS_IN_REVIEW, opened),
            )
            state.cases[case.id] = case
            state.by_key[case.idempotency_key] = case.id
            state.by_lineage[f"ow-{app_id(i)}"] = case.id
        state.last_seq = n
        requests = 0

        async def counted(scope: Any, receive: Any, send: Any) -> None:
            nonlocal requests
            if scope["type"] == "http":
                requests += 1
            await app(scope, receive, send)

        decided: list[tuple[str, float]] = []
        order = list(range(n))
        random.Random(7).shuffle(order)  # decisions fall on cases of every age

        async def decide() -> None:
            every = 3600 / (n * per_hour / 100)
            started = time.monotonic()
            for k, i in enumerate(order):
                wait = started + k * every - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                state.force_status(case_id(i), STATUS_APPROVED)
                decided.append((case_id(i), time.time()))

        async with serve_asgi(counted, host="127.0.0.1", port=0) as url:
            conn.send(url)
            deciding = asyncio.create_task(decide())
            loop = asyncio.get_running_loop()
            while True:
                msg = await loop.run_in_executor(None, conn.recv)
                if msg == "mark":
                    conn.send({"requests": requests, "at": time.time()})
                elif msg == "decided":
                    conn.send(decided)
                else:
                    break
            deciding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await deciding

    with contextlib.suppress(EOFError, KeyboardInterrupt):
        asyncio.run(serve())


# -- the gateway ---------------------------------------------------------------------------------


def department_overrides(mode: str, args: dict[str, Any], base_url: str) -> dict[str, Any]:
    from gateway.config.loader import load_config

    dept = load_config(c.EXAMPLE).departments[DEPT]
    options = {**dept.options, "base_url": base_url + "/api/v1"}
    if mode == "poll":
        options["changes"] = None
    elif mode == "seq":
        options["changes"] = {"by": "sequence", "path": "/changes"}
    return {
        "options": options,
        "poll_interval_seconds": args["interval"],
        "rate_limit_per_second": None,
        "sync": {
            "changes_interval_seconds": args["interval"],
            "changes_overlap_seconds": 120,
            "poll_ceiling_seconds": args["ceiling"],
        },
    }


def gateway_config(tmp: Path, mode: str, args: dict[str, Any], base_url: str) -> Any:
    config = c.example_config(tmp)
    dept = config.departments[DEPT]
    update = department_overrides(mode, args, base_url)
    depts = {DEPT: type(dept).model_validate({**dict(dept), **update})}
    return dataclasses.replace(config, departments=depts)


def _gateway_process(tmp: str, mode: str, args: dict[str, Any], base_url: str, conn: Any) -> None:
    """Child: the sync daemon (dispatch, polls, feed, deadlines...) until the pipe closes."""

    async def run() -> None:
        from gateway.daemon import Daemon
        from gateway.runtime import Runtime

        c.quiet_logs()
        runtime = Runtime(gateway_config(Path(tmp), mode, args, base_url))
        await runtime.prepare_database()
        daemon = Daemon(runtime)
        await daemon.start()
        conn.send("started")
        try:
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        except EOFError:
            pass
        finally:
            await daemon.stop(grace_seconds=5)
            await runtime.aclose()

    profile_to = os.environ.get("SYNC_BENCH_PROFILE")  # a file: where the gateway's time goes
    if not profile_to:
        asyncio.run(run())
        return
    import cProfile
    import pstats

    with cProfile.Profile() as prof:
        asyncio.run(run())
    with open(profile_to, "w") as out:
        pstats.Stats(prof, stream=out).sort_stats(
            os.environ.get("SYNC_BENCH_SORT", "cumulative")
        ).print_stats(60)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


# -- the gateway database, in bulk --------------------------------------------------------------


async def build_database(tmp: Path, mode: str, args: dict[str, Any], base_url: str) -> Path:
    from gateway.runtime import Runtime

    config = gateway_config(tmp, mode, args, base_url)
    runtime = Runtime(config)
    await runtime.prepare_database()
    link = runtime.link(DEPT)
    await runtime.aclose()
    assert link is not None
    from gateway.poller import next_poll_in

    db = Path(str(config.gateway.database_url).split("///", 1)[1])
    n, at = args["n"], dt.datetime.now(dt.UTC)
    rng = random.Random(11)

    def naive(t: dt.datetime) -> str:
        return t.astimezone(dt.UTC).replace(tzinfo=None).isoformat(sep=" ")

    rows = []
    for i in range(n):
        opened = at - dt.timedelta(seconds=opened_ago(i, n, args["open_days"]))
        promised = (opened + dt.timedelta(days=28)).date()
        gap = next_poll_in(
            link,
            since_change=(at - opened).total_seconds(),
            until_due=(dt.datetime.combine(promised, dt.time(), dt.UTC) - at).total_seconds(),
            changed=False,
        )
        rows.append(
            (
                app_id(i),
                f"B{i:09d}",
                "bench",
                "C01",
                c.MATTER,
                "benchmark matter",
                c.REGION,
                DEPT,
                "in_review",
                1,
                json.dumps({"kind": "person", "name": "x", "id_number": "x"}),
                "{}",
                "[]",
                json.dumps({"method": "pickup", "centre": "C01"}),
                f"bench-{i}",
                case_id(i),
                promised.isoformat(),
                naive(at + dt.timedelta(seconds=rng.uniform(0, gap))),
                naive(opened),
                naive(opened),
            )
        )
    with contextlib.closing(sqlite3.connect(db)) as con, con:
        con.executemany(
            "INSERT INTO applications (id, receipt_number, client_id, centre, matter_code,"
            " matter_name, region, department, status, version, applicant, form, materials,"
            " delivery, idempotency_key, department_case_id, promised_by, next_poll_at,"
            " created_at, updated_at) VALUES (" + ",".join("?" * 20) + ")",
            rows,
        )
        if mode != "poll":  # the feed has been keeping up: its first question is the next one
            con.execute(
                "INSERT INTO sync_watermarks (department, watermark, applied, synced_at,"
                " sequence) VALUES (?, ?, 0, ?, ?)",
                (DEPT, naive(at), naive(at), 0 if mode == "seq" else None),
            )
    # the console's figures have been kept up too (the daemon's figures task): a first
    # refresh reads every case once, which is set-up, not the steady state measured
    from gateway import clocks

    runtime = Runtime(config)
    try:
        while not await clocks.refresh(runtime):
            pass
    finally:
        await runtime.aclose()
    return db


# -- one mode -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Figures:
    mode: str
    cpu_pct: float
    rps: float
    decided: int
    known: int
    lag_p50: float
    lag_max: float
    scheduled_max: float
    load: str


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def decision_lags(
    db: Path, decided: list[tuple[str, float]], since: float, until: float
) -> tuple[list[float], list[float]]:
    """(lags of decisions made in [since, until) the gateway knows, waits for the rest: from
    decision to their scheduled poll, or to ``until`` when no poll is due)."""
    wanted = {cid: t for cid, t in decided if since <= t < until}
    known: list[float] = []
    waiting: list[float] = []
    with contextlib.closing(sqlite3.connect(db)) as con:
        q = (
            "SELECT a.department_case_id, min(e.at), a.next_poll_at FROM applications a"
            " LEFT JOIN events e ON e.application_id = a.id AND e.to_status = 'approved'"
            " WHERE a.department_case_id = ? GROUP BY a.id"
        )
        for cid, t in wanted.items():
            row = con.execute(q, (cid,)).fetchone()
            if row is None:
                continue
            if row[1] is not None:
                known.append(_ts(row[1]) - t)
            else:
                nxt = _ts(row[2]) if row[2] else until
                waiting.append(max(nxt, until) - t)
    return known, waiting


def _ts(value: str) -> float:
    return dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC).timestamp()


async def run_mode(mode: str, args: dict[str, Any]) -> Figures:
    ctx = multiprocessing.get_context("spawn")
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory(prefix=f"bench-sync-{mode}-") as tmp_name:
        tmp = Path(tmp_name)
        dept_end, dept_child = ctx.Pipe()
        department = ctx.Process(target=_department_process, args=(args, dept_child), daemon=True)
        department.start()
        dept_child.close()
        gateway = None
        try:
            c.check(await loop.run_in_executor(None, dept_end.poll, 300), "no department")
            base_url = dept_end.recv()
            started = time.perf_counter()
            db = await build_database(tmp, mode, args, base_url)
            print(f"  {mode}: {args['n']:,} cases in bulk in {time.perf_counter() - started:.1f} s")
            gw_end, gw_child = ctx.Pipe()
            gateway = ctx.Process(
                target=_gateway_process, args=(tmp_name, mode, args, base_url, gw_child)
            )
            gateway.start()
            gw_child.close()
            c.check(await loop.run_in_executor(None, gw_end.poll, 120), "no gateway")
            gw_end.recv()
            pid = gateway.pid
            assert pid is not None
            await asyncio.sleep(args["warmup"])

            def mark() -> dict[str, Any]:
                dept_end.send("mark")
                got: dict[str, Any] = dept_end.recv()
                return got

            first, cpu0 = await loop.run_in_executor(None, mark), cpu_seconds(pid)
            await asyncio.sleep(args["seconds"])
            last, cpu1 = await loop.run_in_executor(None, mark), cpu_seconds(pid)
            load = c.load_average()
            # decisions near the window's end get two intervals to arrive (feeds); polled ones
            # not known are counted at their scheduled poll
            await asyncio.sleep(2 * args["interval"] + 2)
            dept_end.send("decided")
            decided = await loop.run_in_executor(None, dept_end.recv)
            gw_end.send("stop")
            await loop.run_in_executor(None, gateway.join, 60)
            wall = last["at"] - first["at"]
            known, waiting = decision_lags(db, decided, first["at"], last["at"])
        finally:
            dept_end.close()
            department.join(10)
            for proc in (department, gateway):
                if proc is not None and proc.is_alive():
                    proc.terminate()
    return Figures(
        mode=mode,
        cpu_pct=100 * (cpu1 - cpu0) / wall,
        rps=(last["requests"] - first["requests"]) / wall,
        decided=len(known) + len(waiting),
        known=len(known),
        lag_p50=_percentile(known + waiting, 0.5),
        lag_max=max(known + waiting, default=float("nan")),
        scheduled_max=max(waiting, default=0.0),
        load=load,
    )


def report(f: Figures, args: dict[str, Any]) -> None:
    feed = f.mode in ("feed", "seq")
    print(
        f"{f.mode:>5}: gateway CPU {f.cpu_pct:5.1f} % of a core, department "
        f"{f.rps:7.2f} requests/s; decisions {f.decided} (known in the window {f.known}), "
        f"decision -> known p50 {f.lag_p50:7.1f} s, max {f.lag_max:7.1f} s  [{f.load}]"
    )
    if feed:
        bound = 2 * args["interval"]
        ok = f.cpu_pct < FEED_CPU and f.rps < FEED_RPS and f.lag_max <= bound
        ok = ok and f.known == f.decided and f.decided > 0
        print(
            f"  target {f.mode}: < {FEED_CPU:.0f} % CPU, < {FEED_RPS:.0f} request/s, every "
            f"decision known within {bound:.0f} s (2 intervals): {'meets' if ok else 'MISSES'}"
        )
    else:
        ok = f.cpu_pct < POLL_CPU
        print(
            f"  target poll: < {POLL_CPU:.0f} % CPU: {'meets' if ok else 'MISSES'} "
            f"(latest decision waits for its poll: up to {f.scheduled_max:.0f} s, ceiling "
            f"{args['ceiling']:.0f} s)"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=100_000, help="open cases at the department")
    p.add_argument("--per-hour", type=float, default=1.0, help="%% of them decided per hour")
    p.add_argument("--seconds", type=float, default=120.0, help="measured window per mode")
    p.add_argument("--warmup", type=float, default=15.0)
    p.add_argument("--interval", type=float, default=30.0, help="feed interval / poll floor (s)")
    p.add_argument("--ceiling", type=float, default=3600.0, help="adaptive polling ceiling (s)")
    p.add_argument("--open-days", type=float, default=20.0, help="cases opened up to this ago")
    p.add_argument("--modes", default="feed,seq,poll")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny N, seconds")
    ns = p.parse_args()
    if ns.quick:
        ns.n, ns.per_hour, ns.seconds, ns.warmup, ns.interval = 2000, 360.0, 4.0, 2.0, 1.0
    args = {k: v for k, v in vars(ns).items() if k not in ("quick", "modes")}
    print(f"machine: {c.machine()}")
    print(
        f"{ns.n:,} open cases, {ns.per_hour:g} % decided per hour "
        f"({ns.n * ns.per_hour / 100 / 3600:.2f} decisions/s); simulated time = wall time; "
        f"interval {ns.interval:g} s, poll ceiling {ns.ceiling:g} s, window {ns.seconds:g} s"
    )
    for mode in ns.modes.split(","):
        report(asyncio.run(run_mode(mode, args)), args)


if __name__ == "__main__":
    main()
