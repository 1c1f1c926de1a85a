"""The fault suite's real parts: a throwaway PostgreSQL cluster that can be stopped, a gateway
running as its own process (``gateway serve``: API and daemon), and a front desk that keeps
submitting and retrying with the same Idempotency-Key, counting every answer.

Each fault test prints one line of figures (:func:`report`), e.g.::

    FAULT database stopped 30 s: requests=1210 201=300 503=905 500=0 conn_errors=5 lost=0
    doubled=0 recovery_s=1.4 log_lines=3
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.testing.ports import free_port
from tests.conftest import EXAMPLE, TEST_SECRETS, application, wait_for

FRONT_DESK_KEY = "faults-front-desk-key-c01"
OPS_KEY = "faults-ops-key"
KEY_ENV = {"GATEWAY_FAULTS_KEY": FRONT_DESK_KEY, "GATEWAY_FAULTS_OPS_KEY": OPS_KEY}


# -- PostgreSQL of our own -------------------------------------------------------------------------


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _version(path: str) -> int:
    m = re.search(r"/postgresql/(\d+)/", path)
    return int(m.group(1)) if m else 0


class ThrowawayPostgres:
    """A PostgreSQL cluster in a temporary folder on a free port: ours to stop and start (the
    machine's shared cluster is never touched). As root it runs as the ``postgres`` user."""

    def __init__(self) -> None:
        bin_dir = _pg_bin()
        if bin_dir is None:
            pytest.skip("the fault suite's PostgreSQL faults need initdb/pg_ctl installed")
        self.bin = bin_dir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="gw-faults-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.running = False
        self._as: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root
            self._as = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.root, "postgres")

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(
            [*self._as, str(self.bin / tool), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            tail = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} failed: {done.stdout}{done.stderr}\n{tail}")

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    async def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off "
            "-c max_connections=100"
        )
        args = ["-D", str(self.data), "-l", str(self.log), "-w", "-t", "120", "-o", options]
        await asyncio.to_thread(self._run, "pg_ctl", *args, "start")
        self.running = True

    async def stop(self) -> None:
        """A fast shutdown: every connection is cut, as in a restart or a failover."""
        await asyncio.to_thread(
            self._run, "pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "120", "stop"
        )
        self.running = False

    async def sql(self, statement: str) -> Any:
        import asyncpg

        conn = await asyncpg.connect(self.dsn, timeout=30)
        try:
            return await conn.fetch(statement)
        finally:
            await conn.close()

    async def cleanup(self) -> None:
        if self.running:
            with contextlib.suppress(Exception):
                await self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.asynccontextmanager
async def throwaway_postgres() -> AsyncIterator[ThrowawayPostgres]:
    pg = ThrowawayPostgres()
    try:
        await asyncio.to_thread(pg.init)
        await pg.start()
        yield pg
    finally:
        await pg.cleanup()


# -- the gateway as a process ----------------------------------------------------------------------


def write_config(
    dest: Path,
    *,
    db_url: str,
    data_dir: Path,
    sim_urls: dict[str, str],
    departments: tuple[str, ...] = ("amr",),
    department_toml: dict[str, str] | None = None,
) -> Path:
    """The example config, pointed at this test's database, data_dir and simulators; only
    ``departments`` enabled; a static front-desk key (C01) and an ops key from the env."""
    shutil.copytree(EXAMPLE.parent, dest)
    main = dest / "gateway.toml"
    text = main.read_text()
    text = re.sub(r"(?m)^database_url = .*$", f'database_url = "{db_url}"', text)
    text = re.sub(r"(?m)^data_dir = .*$", f'data_dir = "{data_dir}"', text)
    text = re.sub(r"(?m)^data_dir_min_free_mb = .*$", "data_dir_min_free_mb = 0", text)
    text = re.sub(r"(?m)^lease_seconds = .*$", "lease_seconds = 5.0", text)
    text = re.sub(r"(?m)^sweep_interval_seconds = .*$", "sweep_interval_seconds = 0.2", text)
    text += (
        '\n[[gateway.api_keys]]\nname = "faults-front-desk"\ncentre = "C01"\n'
        'key = "${GATEWAY_FAULTS_KEY}"\n'
        '\n[[gateway.api_keys]]\nname = "faults-ops"\nops = true\n'
        'key = "${GATEWAY_FAULTS_OPS_KEY}"\n'
    )
    main.write_text(text)
    for path in (dest / "departments").glob("*.toml"):
        code = path.stem
        dept = path.read_text()
        if code not in departments:
            dept = re.sub(r"(?m)^connector = (.*)$", r"connector = \1\nenabled = false", dept)
        else:
            if code in sim_urls:
                dept = re.sub(
                    r'(?m)^base_url = "http://[^/"]+', f'base_url = "{sim_urls[code]}', dept
                )
            dept = re.sub(r"(?m)^poll_interval_seconds = .*$", "poll_interval_seconds = 1", dept)
            dept = re.sub(r"(?m)^timeout_seconds = .*$", "timeout_seconds = 2", dept)
            dept = re.sub(r"(?m)^base_seconds = .*$", "base_seconds = 0.2", dept)
            dept = re.sub(r"(?m)^max_seconds = .*$", "max_seconds = 2.0", dept)
            dept = re.sub(r"(?m)^max_attempts = .*$", "max_attempts = 1000", dept)
            dept += (department_toml or {}).get(code, "")
        path.write_text(dept)
    return main


@dataclass
class GatewayProcess:
    """``gateway serve`` (API + daemon) as a child process, its log in a file."""

    config: Path
    log: Path
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        env = {**os.environ, **TEST_SECRETS, **KEY_ENV, **self.env}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gateway",
                    "serve",
                    "--config",
                    str(self.config),
                    "--port",
                    str(self.port),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )

        async def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited: {self.log.read_text()[-3000:]}")
            try:
                async with httpx.AsyncClient(timeout=2) as client:
                    return (await client.get(f"{self.url}/healthz")).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_for(up, timeout=90, interval=0.2)

    def lines(self) -> int:
        """Lines the gateway has logged so far."""
        with self.log.open("rb") as fh:
            return sum(1 for _ in fh)

    def text_since(self, line: int) -> str:
        """What the gateway logged after ``line``, without the access log (one INFO line per
        request by design: its volume is the traffic's, not the fault's)."""
        return "".join(x for x in self._since(line) if "[gateway.access]" not in x)

    def access_lines_since(self, line: int) -> int:
        return sum(1 for x in self._since(line) if "[gateway.access]" in x)

    def _since(self, line: int) -> list[str]:
        return self.log.read_text(errors="replace").splitlines(keepends=True)[line:]

    async def snapshot(self) -> None:
        """Ask the gateway what it is doing (SIGUSR1) and print it: a failing test's captured
        output then shows every link's guards and every task's stack at the failure."""
        if self.proc is None or self.proc.poll() is not None:
            return
        before = self.lines()
        self.proc.send_signal(signal.SIGUSR1)
        with contextlib.suppress(AssertionError):
            await wait_for(lambda: "process snapshot" in "".join(self._since(before)), 30)
        print("".join(self._since(before)))

    async def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.proc.wait, 60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            await asyncio.to_thread(self.proc.wait, 10)


@contextlib.asynccontextmanager
async def gateway_process(
    config: Path, log: Path, env: dict[str, str] | None = None
) -> AsyncIterator[GatewayProcess]:
    gw = GatewayProcess(config, log, env=env or {})
    try:
        await gw.start()
        yield gw
    except BaseException:
        await gw.snapshot()  # the test failed: what the gateway was doing, in the report
        raise
    finally:
        await gw.stop()


# -- the front desk --------------------------------------------------------------------------------


@dataclass
class FrontDesk:
    """Submits applications at ``rate`` per second; each one is retried every ``retry_every``
    seconds with the same Idempotency-Key until it gets its 201 (as front desks do)."""

    base_url: str
    prefix: str
    retry_every: float = 1.0
    body: dict[str, Any] = field(default_factory=application)
    answers: Counter[str] = field(default_factory=Counter)
    accepted: dict[str, str] = field(default_factory=dict)  # key -> application id
    #: monotonic times of every 201
    accepted_at: list[float] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # unexpected answers, with their bodies
    slowest: float = 0.0  # seconds, the longest any one answer took
    _client: httpx.AsyncClient | None = None

    def headers(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {FRONT_DESK_KEY}", "Idempotency-Key": key}

    async def __aenter__(self) -> FrontDesk:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        self._client = httpx.AsyncClient(base_url=self.base_url, timeout=30, limits=limits)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._client is not None
        await self._client.aclose()

    @property
    def requests(self) -> int:
        return sum(self.answers.values())

    async def submit(self, key: str, deadline: float) -> None:
        assert self._client is not None
        while time.monotonic() < deadline:
            started = time.monotonic()
            try:
                r = await self._client.post(
                    "/v1/applications", json=self.body, headers=self.headers(key)
                )
            except httpx.HTTPError as exc:
                self.answers["conn_error"] += 1
                self.answers[f"conn_error:{type(exc).__name__}"] += 0
            else:
                self.slowest = max(self.slowest, time.monotonic() - started)
                self.answers[str(r.status_code)] += 1
                if r.status_code == 201:
                    self.accepted[key] = r.json()["id"]
                    self.accepted_at.append(time.monotonic())
                    return
                if r.status_code not in (500, 503, 507):
                    self.refused.append(f"{r.status_code} {r.text[:300]}")
                    return
                if r.status_code in (503, 507):
                    assert r.headers.get("retry-after"), r.headers
                    assert r.headers["content-type"] == "application/problem+json"
            await asyncio.sleep(self.retry_every)

    async def run(self, n: int, rate: float, deadline: float) -> None:
        tasks = []
        for i in range(n):
            tasks.append(asyncio.create_task(self.submit(f"{self.prefix}-{i}", deadline)))
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*tasks)

    async def replayed_ids(self) -> dict[str, str]:
        """Every accepted key sent once more: the answer must be the same application."""
        assert self._client is not None
        out = {}
        for key in self.accepted:
            r = await self._client.post(
                "/v1/applications", json=self.body, headers=self.headers(key)
            )
            assert r.status_code in (200, 201), r.text
            out[key] = r.json()["id"]
        return out

    async def statuses(self) -> Counter[str]:
        assert self._client is not None
        out: Counter[str] = Counter()
        for app_id in self.accepted.values():
            r = await self._client.get(f"/v1/applications/{app_id}", headers=self.headers("unused"))
            if r.status_code in (503, 507):  # e.g. its read cannot be audited on a full disk
                out["unreadable"] += 1
                continue
            assert r.status_code == 200, r.text
            out[r.json()["status"]] += 1
        return out


# -- a network in between -------------------------------------------------------------------------


class FlakyProxy:
    """A TCP proxy on loopback in front of a department. ``mode``:

    ``forward``    pass bytes both ways
    ``hang``       accept, read, never answer (a blackholed host behind a firewall that accepts)
    ``no_accept``  a listener that never accepts: connects hang in the SYN queue
    ``cut``        forward, but abort each connection after a number of bytes from the client
                   drawn from ``cut_after`` (min, max): in a handshake, or mid-transfer
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.mode = "forward"
        self.cut_after = (2048, 16384)
        self._rng = random.Random(7)
        self.connections = 0
        self.open = 0
        self.max_open = 0
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._parked: socket.socket | None = None
        self._streams: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )

    async def set_mode(self, mode: str) -> None:
        if mode == "no_accept" and self.mode != "no_accept":
            await self._close_server()
            parked = socket.socket()
            parked.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            parked.bind(("127.0.0.1", self.port))
            parked.listen(0)  # the queue fills at once; nothing is ever accepted
            self._parked = parked
        elif mode != "no_accept" and self.mode == "no_accept":
            assert self._parked is not None
            self._parked.close()
            self._parked = None
            await self.start()
        if mode == "forward":  # whatever hung before is cut now, as when a route comes back
            for writer in list(self._streams):
                writer.close()
        self.mode = mode

    async def _close_server(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._streams):
                writer.close()
            await self._server.wait_closed()
            self._server = None

    async def aclose(self) -> None:
        await self._close_server()
        if self._parked is not None:
            self._parked.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        self._streams.add(writer)
        try:
            if self.mode == "hang":
                while await reader.read(65536):
                    pass
                return
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            self._streams.add(up_writer)
            budget = self._rng.randint(*self.cut_after) if self.mode == "cut" else None
            try:
                await asyncio.gather(
                    self._pipe(reader, up_writer, budget, writer),
                    self._pipe(up_reader, writer, None, up_writer),
                )
            finally:
                self._streams.discard(up_writer)
                up_writer.close()
        except (ConnectionError, OSError):
            pass
        finally:
            self.open -= 1
            self._streams.discard(writer)
            writer.close()

    async def _pipe(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        budget: int | None,
        other: asyncio.StreamWriter,
    ) -> None:
        try:
            while data := await src.read(65536):
                if budget is not None:
                    if len(data) >= budget:
                        dst.write(data[:budget])
                        self.cuts += 1
                        dst.transport.abort()
                        other.transport.abort()
                        return
                    budget -= len(data)
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                dst.write_eof()


@contextlib.asynccontextmanager
async def flaky_proxy(host: str, port: int) -> AsyncIterator[FlakyProxy]:
    proxy = FlakyProxy(host, port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.aclose()


def report(name: str, **figures: object) -> str:
    line = f"FAULT {name}: " + " ".join(f"{k}={v}" for k, v in figures.items())
    print(line)
    return line


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    box = [time.monotonic()]
    yield box
    box.append(time.monotonic())
