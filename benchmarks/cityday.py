"""A city's busy day: 25,000 applications through the HTTP API, dispatched and decided.

The example city (config/) as deployed, each part its own process: ``gateway simulate`` (the
four simulated departments: amr REST with callbacks, hrss REST with a change feed, nrp SOAP
polled, civil file drop), ``gateway serve --no-daemon`` (the API) and ``gateway daemon``, on a
fresh SQLite database (the example's default). The example's department settings are kept
(concurrency, poll and feed intervals, batch size, API quotas); only the ports, the folders,
the simulators' decision delay (0) and their mix (no supplements: every case ends decided,
approved 80 %, rejected 15 %, not accepted 5 %) differ.

The script (a separate process too) submits the applications round-robin over the four
departments and the three centres with ``--concurrency`` requests in flight (aiohttp), while
the daemon dispatches them and the decisions come back; it watches the database read-only.
It prints the wall time from the first submit to the last decision (the cases' ``decided_at``)
against the 60 s target, the submit and dispatch rates, when each department's last case was
delivered and decided, and every process's CPU.

    python benchmarks/cityday.py                 # 25,000 applications
    python benchmarks/cityday.py --n 2000        # quicker
    python benchmarks/cityday.py --quick         # smoke (200)
    python benchmarks/cityday.py --pg postgresql+asyncpg://postgres@127.0.0.1:5432/test --daemons 2
                                                 # on PostgreSQL (a throw-away schema), as the
                                                 # deployment guide runs it, with two daemons
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import os
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (  # type: ignore[import-not-found]
    BENCH_SECRETS,
    ROOT,
    add_stack_option,
    machine,
    pg_schema,
    run,
)

from gateway.testing.ports import free_port

TARGET_SECONDS = 60.0
CENTRES = ("C01", "C02", "C03")
#: one matter without a form schema per department, offered city-wide (region 339900)
MATTERS = {
    "amr": "GG00301000",
    "hrss": "GF00101000",
    "nrp": "XK00301000",
    "civil": "QR00403000",
}
REGION = "339900"
MIX = "{ approve = 0.8, reject = 0.15, not_accept = 0.05 }"
#: the example's simulator ports, replaced by free ones
SIM_PORTS = {"amr": 18081, "hrss": 18082, "nrp": 18083, "civil": 18084}
UNDECIDED = ("received", "dispatching", "delivered", "accepted", "in_review", "suspended")


def write_config(folder: Path, database_url: str | None) -> tuple[Path, int, dict[str, str]]:
    """The example config in ``folder`` with free ports, decision delay 0, the mix above, a key
    per centre (``${CITYDAY_KEY_<centre>}``) and ``database_url`` (None: the example's SQLite
    file); returns (gateway.toml, API port, env)."""
    config = folder / "config"
    shutil.copytree(ROOT / "config", config)
    api_port = free_port()
    ports = {old: free_port() for old in SIM_PORTS.values()}
    main = config / "gateway.toml"
    text = main.read_text()
    text = text.replace("port = 8080", f"port = {api_port}", 1)
    if database_url is not None:
        text, count = re.subn(
            r"^database_url = .*$", f'database_url = "{database_url}"', text, count=1, flags=re.M
        )
        assert count == 1, "the example config has no database_url line"
    env = {f"CITYDAY_KEY_{c}": secrets.token_urlsafe(24) for c in CENTRES}
    for centre in CENTRES:
        text += (
            f'\n[[gateway.api_keys]]\nname = "cityday-{centre}"\ncentre = "{centre}"\n'
            f'key = "${{CITYDAY_KEY_{centre}}}"\n'
        )
    main.write_text(text)
    for file in (config / "departments").glob("*.toml"):
        text = file.read_text()
        for old, new in ports.items():
            text = text.replace(f":{old}/", f":{new}/").replace(f"port = {old}", f"port = {new}")
        text = re.sub(
            r"^decision_delay_seconds = .*$", "decision_delay_seconds = 0", text, flags=re.M
        )
        assert text.rstrip().splitlines()[-1].strip() and "[simulator]" in text
        text = text.rstrip() + f"\nmix = {MIX}\n"  # [simulator] is each file's last table
        file.write_text(text)
    return main, api_port, env


class Processes:
    """The gateway's processes, started with the same config and environment; stopped with
    SIGTERM (each by its own id)."""

    def __init__(self, folder: Path, config: Path, env: dict[str, str]) -> None:
        self.folder, self.config, self.env = folder, config, env
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def run(self, *args: str) -> None:
        done = subprocess.run(
            [sys.executable, "-m", "gateway", *args, "-c", str(self.config)],
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            raise SystemExit(f"gateway {' '.join(args)} failed:\n{done.stderr.decode()[-3000:]}")

    def start(self, name: str, *args: str) -> None:
        log = (self.folder / f"{name}.log").open("wb")
        self.running[name] = subprocess.Popen(
            [sys.executable, "-m", "gateway", *args, "-c", str(self.config)],
            cwd=self.folder,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def check(self) -> None:
        for name, proc in self.running.items():
            if proc.poll() is not None:
                tail = (self.folder / f"{name}.log").read_text(errors="replace")[-3000:]
                raise SystemExit(f"{name} exited with {proc.returncode}:\n{tail}")

    def cpu(self) -> dict[str, float]:
        """CPU seconds (user + system) each process has used so far."""
        tick = os.sysconf("SC_CLK_TCK")
        out = {}
        for name, proc in self.running.items():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
                out[name] = (int(fields[11]) + int(fields[12])) / tick
        return out

    def stop(self) -> None:
        for proc in self.running.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.running.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _body(i: int, department: str) -> bytes:
    import json

    return json.dumps(
        {
            "matter_code": MATTERS[department],
            "region": REGION,
            "applicant": {
                "name": "张三",
                "id_number": "110101199003074514",
                "phone": "13800138000",
            },
            "form": {"note": f"city day {i}"},
            "window": "W01",
            "clerk": "cityday",
        },
        ensure_ascii=False,
    ).encode()


async def _wait_ready(api: str, procs: Processes, ports: list[int], timeout: float) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            procs.check()
            ready = False
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(f"{api}/readyz") as response:
                    ready = response.status == 200
            for port in ports:
                with contextlib.suppress(OSError):
                    _r, w = await asyncio.open_connection("127.0.0.1", port)
                    w.close()
                    continue
                ready = False
            if ready:
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"the gateway was not ready within {timeout:.0f} s")
            await asyncio.sleep(0.2)


async def submit_all(
    api: str, n: int, concurrency: int, keys: dict[str, str]
) -> tuple[float, float, collections.Counter[int], int]:
    """POST ``n`` applications; (first submit, last answer) as epoch seconds, statuses, 429s
    retried."""
    import aiohttp

    departments = list(MATTERS)
    statuses: collections.Counter[int] = collections.Counter()
    retried = 0
    counter = iter(range(n))
    run = secrets.token_hex(4)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal retried
            for i in counter:
                centre = CENTRES[i % len(CENTRES)]
                headers = {
                    "Authorization": f"Bearer {keys[centre]}",
                    "Content-Type": "application/json",
                    "Idempotency-Key": f"cityday-{run}-{i}",
                }
                body = _body(i, departments[i % len(departments)])
                while True:
                    async with session.post(
                        f"{api}/v1/applications", data=body, headers=headers
                    ) as response:
                        await response.read()
                        if response.status != 429:
                            statuses[response.status] += 1
                            break
                        retried += 1
                        wait = float(response.headers.get("Retry-After", "0.2") or 0.2)
                    await asyncio.sleep(min(wait, 1.0))

        first = time.time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        last = time.time()
    return first, last, statuses, retried


class Watch:
    """Reads the gateway's database (read-only on SQLite) for how many cases are past dispatch
    and decided."""

    def __init__(self, folder: Path, database_url: str | None) -> None:
        self.path = folder / "var" / "gateway.db"
        self.engine: Any = None
        if database_url is not None:
            from gateway.store.db import create_engine

            self.engine = create_engine(database_url, pool_size=1, max_overflow=0, watch=False)

    def _sqlite(self, sql: str) -> list[tuple[Any, ...]]:
        con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()

    async def query(self, sql: str) -> list[tuple[Any, ...]]:
        if self.engine is None:
            return await asyncio.to_thread(self._sqlite, sql)
        from sqlalchemy import text

        async with self.engine.connect() as conn:
            return [tuple(r) for r in (await conn.execute(text(sql))).all()]

    async def aclose(self) -> None:
        if self.engine is not None:
            await self.engine.dispose()

    async def counts(self) -> tuple[int, int, int]:
        undecided = ", ".join(f"'{s}'" for s in UNDECIDED)
        rows = await self.query(
            "SELECT count(*),"
            " sum(CASE WHEN department_case_id IS NOT NULL THEN 1 ELSE 0 END),"
            " sum(CASE WHEN decided_at IS NOT NULL THEN 1 ELSE 0 END),"
            f" sum(CASE WHEN status NOT IN ({undecided}) AND decided_at IS NULL THEN 1 ELSE 0"
            " END) FROM applications"
        )
        total, delivered, decided, other = (int(v or 0) for v in rows[0])
        return total, delivered, decided + other

    async def per_department(self) -> list[tuple[Any, ...]]:
        return await self.query(
            "SELECT department, count(*), max(decided_at), min(created_at), max(created_at)"
            " FROM applications GROUP BY department ORDER BY department"
        )

    async def statuses(self) -> dict[str, int]:
        rows = await self.query("SELECT status, count(*) FROM applications GROUP BY status")
        return {str(s): int(c) for s, c in rows}

    async def delivered_at(self) -> dict[str, Any]:
        """When each department's last case was delivered (its first event past dispatching)."""
        rows = await self.query(
            "SELECT a.department, max(e.at) FROM events e JOIN applications a"
            " ON a.id = e.application_id WHERE e.to_status = 'delivered' GROUP BY a.department"
        )
        return {str(d): at for d, at in rows}


def _epoch(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return float(value.timestamp())


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min), {five:.2f} (5 min)"


async def main(args: argparse.Namespace) -> int:
    if args.pg is None:
        return await city_day(args, None)
    async with pg_schema(args.pg) as url:
        return await city_day(args, url)


async def city_day(args: argparse.Namespace, database_url: str | None) -> int:
    n = 200 if args.quick else args.n
    print(f"machine: {machine()}")
    where = "SQLite" if database_url is None else "PostgreSQL"
    print(
        f"database: {where}; daemons: {args.daemons}"
        + ("" if database_url is None else " (PostgreSQL's own CPU is not counted below)")
    )
    folder = Path(tempfile.mkdtemp(prefix="cityday-"))
    config, api_port, keys = write_config(folder, database_url)
    env = {**os.environ, **BENCH_SECRETS, **keys, "PYTHONWARNINGS": "ignore"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    procs = Processes(folder, config, env)
    watch = Watch(folder, database_url)
    api = f"http://127.0.0.1:{api_port}"
    try:
        procs.run("migrate")
        procs.start("simulators", "simulate")
        procs.start("api", "serve", "--no-daemon", "--no-migrate")
        for i in range(args.daemons):
            procs.start("daemon" if i == 0 else f"daemon{i + 1}", "daemon", "--no-migrate")
        sim_ports = [int(p) for p in re.findall(r"port = (\d+)", _simulator_ports(config))]
        await _wait_ready(api, procs, sim_ports, timeout=120)
        cpu_before = procs.cpu()
        client_before = time.process_time()
        print(f"load before: {_load()}; {n:,} applications, {args.concurrency} in flight")
        submitting = asyncio.create_task(
            submit_all(api, n, args.concurrency, {c: keys[f"CITYDAY_KEY_{c}"] for c in CENTRES})
        )
        started = time.time()
        dispatched_at = decided_at = None
        deadline = time.monotonic() + args.timeout
        last = (0, 0, 0)
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            procs.check()
            if not submitting.done():
                # the wall time comes from the cases' own times, not from when this loop sees
                # them: no need to scan the table (CPU taken from the gateway) before the end
                continue
            submitting.result()  # a failed load generator fails the run
            with contextlib.suppress(sqlite3.OperationalError):  # the file is being made
                last = await watch.counts()
            total, delivered, decided = last
            if total >= n:
                if dispatched_at is None and delivered >= n:
                    dispatched_at = time.time()
                if decided >= n:
                    decided_at = time.time()
                    break
        first, last_submit, statuses, retried = await submitting
        client_cpu = time.process_time() - client_before
        cpu = {k: v - cpu_before.get(k, 0.0) for k, v in procs.cpu().items()}
        rows = await watch.per_department()
        delivered_by = await watch.delivered_at()
        states = await watch.statuses()
        load_after = _load()
    finally:
        procs.stop()
        await watch.aclose()
    del started
    last_decision = max((_epoch(r[2]) or 0.0) for r in rows) if rows else 0.0
    print(f"load after: {load_after}")
    print(
        f"submitted {sum(statuses.values()):,} in {last_submit - first:.1f} s "
        f"({sum(statuses.values()) / max(last_submit - first, 1e-9):.0f}/s); answers "
        f"{dict(statuses)}; 429 retried {retried}"
    )
    if statuses.get(201, 0) != n:
        print("not every application was accepted (201)")
        return 1
    if dispatched_at is not None:
        last_delivery = max((_epoch(v) or 0.0) for v in delivered_by.values())
        print(
            f"dispatched: last delivery {last_delivery - first:.1f} s after the first submit "
            f"({n / max(last_delivery - first, 1e-9):.0f}/s)"
        )
    for department, count, decided, _c0, _c1 in rows:
        at = _epoch(decided)
        delivered = _epoch(delivered_by.get(department))
        print(
            f"  {department:>6}: {count:,} cases, last delivered "
            f"{'-' if delivered is None else f'{delivered - first:.1f} s'}, last decided "
            f"{'-' if at is None else f'{at - first:.1f} s'}"
        )
    print(f"statuses: {states}")
    total_cpu = sum(cpu.values()) + client_cpu
    print(
        "CPU seconds: "
        + ", ".join(f"{k} {v:.1f}" for k, v in sorted(cpu.items()))
        + f", load generator {client_cpu:.1f}; per application "
        + ", ".join(f"{k} {v / n * 1e3:.2f} ms" for k, v in sorted(cpu.items()))
        + f" (all {total_cpu / n * 1e3:.2f} ms)"
    )
    if decided_at is None:
        print(f"not every case was decided within {args.timeout:.0f} s: {last}")
        print(f"logs in {folder}")
        return 1
    wall = last_decision - first
    if n >= 25_000:
        verdict = f"target {TARGET_SECONDS:.0f} s: {'met' if wall <= TARGET_SECONDS else 'NOT met'}"
    else:
        verdict = f"the {TARGET_SECONDS:.0f} s target is for 25,000"
    print(
        f"city day: {n:,} applications, first submit to last decision {wall:.1f} s ({verdict}; "
        f"{n / wall:.0f} decided/s, 25,000 would need {25_000 / TARGET_SECONDS:.0f}/s)"
    )
    if args.keep:
        print(f"kept: {folder} (config, logs, var/gateway.db)")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


def _simulator_ports(config: Path) -> str:
    return "\n".join(
        f.read_text().split("[simulator]", 1)[1]
        for f in (config.parent / "departments").glob("*.toml")
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=25_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait")
    parser.add_argument("--quick", action="store_true", help="200 applications (smoke test)")
    parser.add_argument(
        "--pg",
        metavar="URL",
        help="run on this PostgreSQL (a throw-away schema) instead of the example's SQLite file",
    )
    parser.add_argument(
        "--daemons",
        type=int,
        default=1,
        help="daemon processes (default 1; several belong on --pg)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the run's folder (database, logs) to study it"
    )
    add_stack_option(parser, default="standard")
    args = parser.parse_args()
    sys.exit(run(main(args), args.stack))
