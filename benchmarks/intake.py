"""Intake throughput: the real gateway API vs a bare FastAPI endpoint validating the same model.

Both servers are uvicorn on loopback (``serve_asgi``) in this process; the load generator is
aiohttp, by default in a separate process so it does not share the servers' core and event loop.
Same client, concurrency and N for both; rounds alternate bare / gateway and the medians are
compared::

    .venv/bin/python benchmarks/intake.py                 # SQLite (the embedded default)
    .venv/bin/python benchmarks/intake.py --pg postgresql+asyncpg://postgres@127.0.0.1:5432/test
    .venv/bin/python benchmarks/intake.py --quick         # smoke run, figures meaningless
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

from gateway.intake import ApplicationIn  # module level, so FastAPI can resolve the annotation

TARGET = 0.3


def bare_app() -> Any:
    """Validates the same ``ApplicationIn`` model and answers 201; nothing else."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/v1/applications", status_code=201)
    async def submit(body: ApplicationIn) -> dict[str, Any]:
        return {
            "id": "a0",
            "receipt_number": "C01-20250101-00001",
            "status": "received",
            "department": "amr",
            "promised_by": None,
        }

    return app


async def measure(args: argparse.Namespace, database_url: str | None, label: str) -> float:
    from sqlalchemy import func, select

    from gateway.api.app import create_app
    from gateway.runtime import Runtime
    from gateway.simulators.server import serve_asgi
    from gateway.store.tables import applications

    body = json.dumps(c.application_body(), ensure_ascii=False).encode()
    load = c.LoadClient(args.client)
    with tempfile.TemporaryDirectory(prefix="bench-intake-") as tmp:
        runtime = Runtime(c.example_config(Path(tmp), database_url))
        try:
            await runtime.prepare_database()
            key = await c.centre_key(runtime)
            auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
            async with (
                serve_asgi(bare_app()) as bare_url,
                serve_asgi(create_app(runtime)) as gw_url,
            ):
                targets = {
                    "bare": (f"{bare_url}/v1/applications", {"Content-Type": "application/json"}),
                    "gateway": (f"{gw_url}/v1/applications", auth),
                }
                if args.only:
                    targets = {args.only: targets[args.only]}
                rates: dict[str, list[float]] = {"bare": [], "gateway": []}
                cpu: dict[str, list[float]] = {"bare": [], "gateway": []}
                for r in range(-1, args.rounds):  # round -1 warms up both servers
                    for name, (url, headers) in targets.items():
                        n = args.warmup if r < 0 else args.n
                        cpu0 = time.thread_time()  # this thread serves both apps
                        result = await load.run(
                            url,
                            n=n,
                            concurrency=args.concurrency,
                            body=body,
                            headers=headers,
                            key_prefix=f"{label}-{name}-{r}",
                        )
                        c.check(
                            result.statuses == {201: n},
                            f"{name}: expected {n} x 201, got {result.statuses}",
                        )
                        if r >= 0:
                            rates[name].append(result.rate)
                            cpu[name].append((time.thread_time() - cpu0) / n * 1000)
                            print(
                                f"[{label}] round {r + 1} {name}: {result.rate:,.0f}/s",
                                file=sys.stderr,
                            )
            async with runtime.engine.connect() as conn:
                stored = (
                    await conn.execute(select(func.count()).select_from(applications))
                ).scalar_one()
            expected = args.warmup + args.n * args.rounds if "gateway" in targets else 0
            c.check(stored == expected, f"gateway stored {stored} applications, not {expected}")
        finally:
            await runtime.aclose()
            load.close()
    if args.only:  # profiling aid: one side only, no ratio
        print(f"[{label}] {args.only}: {c.fmt_rates(rates[args.only])}")
        return 0.0
    bare, gateway = c.median(rates["bare"]), c.median(rates["gateway"])
    print(f"[{label}] load: {load.describe()}")
    print(
        f"[{label}] N={args.n} per round, concurrency={args.concurrency}, "
        f"{args.rounds} round(s) after a warm-up of {args.warmup}"
    )
    print(f"[{label}] bare FastAPI (validate ApplicationIn, 201): {c.fmt_rates(rates['bare'])}")
    print(f"[{label}] gateway POST /v1/applications (durable):   {c.fmt_rates(rates['gateway'])}")
    if args.client == "process":
        print(
            f"[{label}] server event-loop CPU per request: bare "
            f"{c.median(cpu['bare']):.2f} ms, gateway {c.median(cpu['gateway']):.2f} ms"
        )
    print(f"[{label}] {c.ratio_line('gateway/bare', gateway, bare, TARGET)}")
    return gateway / bare


async def main(args: argparse.Namespace) -> None:
    c.quiet_logs()
    print(f"machine: {c.machine()}")
    await measure(args, None, "sqlite")
    if args.pg:
        async with c.pg_schema(args.pg) as url:
            await measure(args, url, "postgresql")
    print(f"after: {c.load_average()}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=2000, help="requests per round and server")
    p.add_argument("-c", "--concurrency", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument(
        "--client",
        choices=["process", "inline"],
        default="process",
        help="load generator in a separate process (default) or in the server's loop",
    )
    p.add_argument(
        "--only",
        choices=["bare", "gateway"],
        help="measure one side only (to run under a profiler); prints no ratio",
    )
    p.add_argument(
        "--pg",
        metavar="URL",
        help="also measure on PostgreSQL (a schema is created "
        "and dropped), e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/test",
    )
    p.add_argument("--quick", action="store_true", help="tiny run for smoke tests")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.rounds, args.warmup = min(args.n, 40), 1, 8
    return args


if __name__ == "__main__":
    asyncio.run(main(parse()))
