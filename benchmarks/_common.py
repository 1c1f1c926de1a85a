"""Shared helpers for the benchmark scripts (not a test module, not part of the package).

Each benchmark prints its figures and one ``ratio = ...`` line measured in the same run; see
docs/performance.md for what they mean and how to rerun them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import os
import platform
import secrets
import statistics
import sys
import time
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` from anywhere
    sys.path.insert(0, str(ROOT))

from gateway.eventloop import STACK_ENV, loop_factory  # noqa: E402  (once ROOT is on the path)
from gateway.eventloop import http_parser as stack_parser  # noqa: E402
from gateway.eventloop import run as run_on_stack  # noqa: E402

EXAMPLE = ROOT / "config" / "gateway.toml"
# The example config refers to these secrets; benchmarks only need *some* value.
BENCH_SECRETS = {
    "AMR_CALLBACK_SECRET": "amr-callback-secret-for-benchmarks",
    "AMR_API_TOKEN": "amr-token-for-benchmarks",
    "HRSS_API_KEY": "hrss-key-for-benchmarks",
}
for _name, _value in BENCH_SECRETS.items():
    os.environ.setdefault(_name, _value)

#: a matter without a form schema, routed to the REST department ``amr``
MATTER, REGION = "GG00301000", "339900"


def application_body(i: int = 0) -> dict[str, Any]:
    """A valid application for the example city (the same shape the tests use)."""
    return {
        "matter_code": MATTER,
        "region": REGION,
        "applicant": {"name": "张三", "id_number": "110101199003074514", "phone": "13800138000"},
        "form": {"note": f"benchmark {i}"},
        "window": "W01",
        "clerk": "bench",
    }


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    return (
        f"{os.cpu_count()} CPU ({cpu}){mem}; Python {platform.python_version()}, "
        f"{loop_name()} event loop, {http_parser()}; {load_average()}; {yardstick()}"
    )


def yardstick() -> str:
    """The CPU time of a fixed pure-Python workload (dicts, strings, JSON), the best of three:
    each session runs on a machine of its own, and the same code's CPU per item differs
    between them by up to 2.6x; this figure, printed with every run, says by how much."""
    payload = {"id": "A" * 20, "fields": {f"k{i}": i for i in range(20)}, "ok": True}
    best = float("inf")
    for _ in range(3):
        started = time.thread_time()
        for i in range(2_000):
            data = json.loads(json.dumps(payload))
            data["id"] = f"{data['id'][:10]}-{i:06d}"
            sorted(data["fields"].items(), key=lambda kv: -kv[1])
        best = min(best, time.thread_time() - started)
    return f"yardstick {best * 1000:.0f} ms CPU (smaller is a faster machine)"


def load_average() -> str:
    """Other work on the machine skews absolute figures (ratios less so): print it."""
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "load average unknown"
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


def loop_name() -> str:
    return "asyncio" if loop_factory() is None else "uvloop"


def http_parser() -> str:
    return f"uvicorn {stack_parser()} parser ({STACK_ENV}={os.environ.get(STACK_ENV, 'standard')})"


def add_stack_option(parser: Any, default: str) -> None:
    """``--stack``: the event loop and HTTP parser of every process of the run, both sides."""
    parser.add_argument(
        "--stack",
        choices=["standard", "plain"],
        default=default,
        help="standard: uvloop + httptools (the gateway's default); plain: asyncio + h11 "
        f"(the stack of the figures before session 7). Default {default}",
    )


def run(coro: Any, stack: str | None = None) -> Any:
    """``asyncio.run`` on the stack ``stack`` chooses (set for the processes started later too)."""
    if stack is not None:
        os.environ[STACK_ENV] = stack
    return run_on_stack(coro)


def example_config(tmp: Path, database_url: str | None = None) -> Any:
    """The example city's config on a fresh database in ``tmp`` (or ``database_url``)."""
    from gateway.config.loader import load_config

    config = load_config(EXAMPLE)
    settings = config.gateway.model_copy(
        update={
            "database_url": database_url or f"sqlite+aiosqlite:///{tmp / 'gateway.db'}",
            "data_dir": tmp / "var",
            "api": config.gateway.api.model_copy(update={"port": 0}),
        }
    )
    return dataclasses.replace(config, gateway=settings)


@contextlib.asynccontextmanager
async def pg_schema(url: str) -> AsyncIterator[str]:
    """A throw-away schema in the PostgreSQL at ``url``; yields a URL that uses it."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    schema = f"bench_{secrets.token_hex(5)}"
    admin = create_async_engine(url)
    async with admin.begin() as conn:
        await conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{url}{'&' if '?' in url else '?'}search_path={schema}"
    finally:
        async with admin.begin() as conn:
            await conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        await admin.dispose()


async def centre_key(runtime: Any, centre: str = "C01") -> str:
    from gateway.store.clients import create_client

    async with runtime.engine.begin() as conn:
        _client, key = await create_client(conn, name=f"bench-{centre}", centre=centre, ops=False)
    return str(key)


# -- the load generator -------------------------------------------------------------------------


@dataclasses.dataclass
class LoadResult:
    n: int
    seconds: float
    statuses: dict[int, int]

    @property
    def rate(self) -> float:
        return self.n / self.seconds


async def aiohttp_load(
    url: str,
    *,
    n: int,
    concurrency: int,
    body: bytes,
    headers: dict[str, str],
    key_prefix: str | None,
) -> LoadResult:
    """POST ``body`` ``n`` times with ``concurrency`` workers on keep-alive connections; each
    request gets ``Idempotency-Key: {key_prefix}-{i}`` when ``key_prefix`` is given."""
    import aiohttp

    statuses: collections.Counter[int] = collections.Counter()
    counter = iter(range(n))
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for i in counter:
                h = dict(headers)
                if key_prefix is not None:
                    h["Idempotency-Key"] = f"{key_prefix}-{i}"
                async with session.post(url, data=body, headers=h) as response:
                    await response.read()
                    statuses[response.status] += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
    return LoadResult(n, seconds, dict(statuses))


def _load_in_process(kwargs: dict[str, Any]) -> LoadResult:
    return run(aiohttp_load(**kwargs))


class LoadClient:
    """Runs :func:`aiohttp_load` in a separate process (default: server and client then each
    have their own core and event loop) or inline in the server's own loop."""

    def __init__(self, mode: str) -> None:
        assert mode in ("process", "inline")
        self.mode = mode
        self._pool: ProcessPoolExecutor | None = None

    def describe(self) -> str:
        if self.mode == "process":
            return "aiohttp load generator in a separate process (its own core and event loop)"
        return "aiohttp load generator in the server's process and event loop"

    async def run(self, url: str, **kwargs: Any) -> LoadResult:
        kwargs["url"] = url
        if self.mode == "inline":
            return await aiohttp_load(**kwargs)
        if self._pool is None:
            import multiprocessing

            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, _load_in_process, kwargs
        )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()


# -- reporting ----------------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values)


def fmt_rates(values: list[float]) -> str:
    runs = ", ".join(f"{v:,.0f}" for v in values)
    return f"{median(values):8,.0f}/s  (median of {len(values)}: {runs})"


def ratio_line(name: str, num: float, den: float, target: float) -> str:
    ratio = num / den if den else 0.0
    verdict = "meets" if ratio >= target else "MISSES"
    return f"ratio = {name} = {ratio:.2f}  (target >= {target}: {verdict})"


def quiet_logs() -> None:
    """Keep the gateway's warnings, drop its info chatter (it would dominate the output)."""
    from gateway.logs import configure

    configure(level="WARNING")


def check(condition: bool, message: str) -> None:
    """Refuse to report a figure measured on a run that did not do what it claims."""
    if not condition:
        print(f"benchmark invalid: {message}", file=sys.stderr)
        raise SystemExit(2)
