"""The ops console at scale: each page's answer time on a database of N cases.

Builds a SQLite gateway database (migrated to head) holding N cases of the example city's four
departments, spread over the last 180 days: most decided and handed out, about 10 % open (some
past their promised date), about 2 % failed, each with its events (received, dispatching,
delivered, and the decision). Then signs in to the console with an ops key (in process, over
ASGI: no network) and times every page, best and median of a few requests. The issue's target
is 300 ms per page at N = 1,000,000.

    python benchmarks/console.py              # N = 1,000,000 (building takes minutes)
    python benchmarks/console.py --n 100000
    python benchmarks/console.py --quick      # smoke (tiny N)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import random
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks._common import EXAMPLE, machine  # noqa: E402

DEPARTMENTS = ("amr", "civil", "hrss", "nrp")
TARGET_MS = 300.0
NOW = dt.datetime.now(dt.UTC)


def _stamp(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).replace(tzinfo=None).isoformat(sep=" ")


def _cases(n: int, rng: random.Random) -> Iterator[tuple[tuple[Any, ...], list[tuple[Any, ...]]]]:
    for i in range(n):
        created = NOW - dt.timedelta(seconds=rng.uniform(0, 180 * 86400))
        dept = DEPARTMENTS[i % len(DEPARTMENTS)]
        roll = rng.random()
        promised = (created + dt.timedelta(days=rng.choice((5, 10, 20, 30)))).date()
        delivered = created + dt.timedelta(seconds=rng.uniform(1, 600))
        steps = [(created, None, "received"), (created, "received", "dispatching")]
        decided = None
        if roll < 0.02:
            status = "failed"
            steps.append((delivered, "dispatching", "failed"))
        else:
            steps.append((delivered, "dispatching", "delivered"))
            if roll < 0.12 and created > NOW - dt.timedelta(days=40):
                status = "in_review"
                steps.append((delivered, "delivered", "in_review"))
            else:
                status = "collected"
                decided = delivered + dt.timedelta(days=rng.uniform(0.5, 25))
                decided = min(decided, NOW)
                steps.append((decided, "delivered", "approved"))
        app_id = f"b{i:023x}"
        updated = steps[-1][0]
        row = (
            app_id,
            f"C01-BENCH-{i:08d}",
            "bench",
            "C01",
            "GG00301000",
            "matter",
            "339900",
            dept,
            status,
            1,
            json.dumps({"name": "张三", "id_number": "110101199003074514"}),
            "{}",
            "[]",
            json.dumps({"method": "pickup"}),
            f"k{i}",
            promised.isoformat(),
            _stamp(created),
            _stamp(updated),
            _stamp(decided) if decided else None,
            "HTTP 503" if status == "failed" else None,
        )
        events = [
            (app_id, 1, _stamp(at), "dispatch", "bench", frm, to, "{}") for at, frm, to in steps
        ]
        yield row, events


async def _migrated(db: Path) -> None:
    from gateway.store.db import create_engine, migrate

    engine = create_engine(f"sqlite+aiosqlite:///{db}")
    try:
        await migrate(engine)
    finally:
        await engine.dispose()


def build(db: Path, n: int) -> float:
    started = time.perf_counter()
    asyncio.run(_migrated(db))
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    rng = random.Random(14)
    batch_apps: list[tuple[Any, ...]] = []
    batch_events: list[tuple[Any, ...]] = []

    def flush() -> None:
        con.executemany(
            "INSERT INTO applications (id, receipt_number, client_id, centre, matter_code,"
            " matter_name, region, department, status, version, applicant, form, materials,"
            " delivery, idempotency_key, promised_by, created_at, updated_at, decided_at,"
            " last_error) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            batch_apps,
        )
        con.executemany(
            "INSERT INTO events (application_id, version, at, source, actor, from_status,"
            " to_status, detail) VALUES (?,?,?,?,?,?,?,?)",
            batch_events,
        )
        batch_apps.clear()
        batch_events.clear()

    for row, events in _cases(n, rng):
        batch_apps.append(row)
        batch_events.extend(events)
        if len(batch_apps) >= 20_000:
            flush()
    flush()
    con.commit()
    con.execute("ANALYZE")
    con.close()
    return time.perf_counter() - started


PAGES = (
    "/console/overview",
    "/console/overview/table",
    "/console/failures",
    "/console/cases?q=C01-BENCH-00000042",
    "/console/departments/amr",
    "/console/board",
    "/console/board.csv",
    "/console/keys",
    "/console/plugins",
)


async def measure(db: Path, rounds: int) -> dict[str, list[float]]:
    import httpx

    from gateway.api.app import create_app
    from gateway.config.loader import load_config
    from gateway.runtime import Runtime
    from gateway.store.clients import create_client

    config = load_config(EXAMPLE)
    settings = config.gateway.model_copy(
        update={"database_url": f"sqlite+aiosqlite:///{db}", "data_dir": db.parent / "var"}
    )
    runtime = Runtime(dataclasses.replace(config, gateway=settings))
    await runtime.prepare_database()
    times: dict[str, list[float]] = {}
    try:
        async with runtime.engine.begin() as conn:
            _c, key = await create_client(conn, name="bench", centre=None, ops=True)
        transport = httpx.ASGITransport(app=create_app(runtime))
        async with httpx.AsyncClient(transport=transport, base_url="http://console") as client:
            form = await client.get("/console/signin")
            csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
            assert csrf
            signed = await client.post("/console/signin", data={"key": key, "csrf": csrf[1]})
            assert signed.status_code == 303, signed.text
            for page in PAGES:
                for _ in range(rounds):
                    started = time.perf_counter()
                    r = await client.get(page)
                    times.setdefault(page, []).append((time.perf_counter() - started) * 1000)
                    assert r.status_code == 200, (page, r.status_code)
    finally:
        await runtime.aclose()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny N: does it still run")
    parser.add_argument("--db", type=Path, help="reuse (or keep) the database at this path")
    args = parser.parse_args()
    n = 2_000 if args.quick else args.n
    folder = Path(tempfile.mkdtemp(prefix="gateway-console-bench-"))
    db = args.db or folder / "gateway.db"
    if not db.exists():
        print(f"building {n:,} cases in {db} ...", flush=True)
        print(f"built in {build(db, n):.1f} s", flush=True)
    times = asyncio.run(measure(db, 1 if args.quick else args.rounds))
    print(f"machine: {machine()}")
    print(f"cases: {n:,}; target {TARGET_MS:.0f} ms per page")
    worst = 0.0
    for page, ms in times.items():
        best, median = min(ms), statistics.median(ms)
        worst = max(worst, median)
        flag = "ok" if median <= TARGET_MS else "SLOW"
        print(f"{page:42s} best {best:8.1f} ms  median {median:8.1f} ms  {flag}")
    print(f"slowest page median = {worst:.1f} ms (target {TARGET_MS:.0f} ms)")


if __name__ == "__main__":
    main()
