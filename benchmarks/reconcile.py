"""Reconciliation at scale: the streaming merge against a plain in-memory dict diff.

Builds a SQLite gateway database with N cases of one department and a generator for the
department's list of the same cases (in the department's own order, with a little drift:
cases behind, missing, unknown), then runs, each in its own process so peak memory is its own:

* ``stream``: ``gateway.reconcile.reconcile_department`` (pages from the database, external
  sort of the department's list, merge; discrepancies stored);
* ``dict``: load both sides into dicts and diff them (the obvious way, everything in memory).

Both report wall time and peak RSS; the classes they find must agree.

    python benchmarks/reconcile.py                 # N = 1,000,000
    python benchmarks/reconcile.py --n 20000       # quicker
    python benchmarks/reconcile.py --quick         # smoke (tiny N)
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import os
import platform
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
for _name in ("AMR_CALLBACK_SECRET", "AMR_API_TOKEN", "HRSS_API_KEY"):
    os.environ.setdefault(_name, "benchmark")

DEPT = "amr"
DRIFT_EVERY = 10_000  # one case in this many is behind, one missing, plus as many unknown
UNTIL = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
TARGET_TIME, TARGET_RSS = 1.5, 0.2
SINCE = UNTIL - dt.timedelta(days=1)


def app_id(i: int) -> str:
    return f"{i:024x}"


def _drift(i: int) -> str:
    if i % DRIFT_EVERY == 1:
        return "behind"  # gateway approved, the department still says accepted
    if i % DRIFT_EVERY == 2:
        return "missing"  # the department does not list it
    return ""


def department_side(n: int) -> Iterator[tuple[str, str, str]]:
    """(case id, our idempotency key, status) in the department's order (a permutation)."""
    step = 7_919  # prime: i -> i * step mod n visits every case once, far from id order
    while n > 1 and n % step == 0:
        step += 2
    for j in range(n):
        i = (j * step) % n
        if _drift(i) == "missing":
            continue
        yield f"C{i:09d}", f"ow-{app_id(i)}-v1", "1"
    for k in range(max(1, n // DRIFT_EVERY)):
        yield f"X{k:09d}", f"ow-{'f' * 20}{k:04x}-v1", "1"  # unknown at the gateway


def build(db: Path, n: int) -> None:
    from sqlalchemy import create_engine

    from gateway.store.tables import metadata

    engine = create_engine(f"sqlite:///{db}")
    metadata.create_all(engine)
    engine.dispose()
    con = sqlite3.connect(db)
    stamp = (UNTIL - dt.timedelta(hours=1)).replace(tzinfo=None).isoformat(sep=" ")
    rows = (
        (
            app_id(i),
            f"R{i:010d}",
            "bench",
            "C01",
            "GG00301000",
            "matter",
            "339900",
            DEPT,
            "approved" if _drift(i) == "behind" else "accepted",
            1,
            "{}",
            "{}",
            "[]",
            "{}",
            f"k{i}",
            f"C{i:09d}",
            stamp,
            stamp,
        )
        for i in range(n)
    )
    con.executemany(
        "INSERT INTO applications (id, receipt_number, client_id, centre, matter_code,"
        " matter_name, region, department, status, version, applicant, form, materials,"
        " delivery, idempotency_key, department_case_id, created_at, updated_at)"
        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        rows,
    )
    con.commit()
    con.close()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


async def _stream(db: Path, n: int) -> dict[str, int]:
    from gateway.config.loader import load_config
    from gateway.connector import CaseSummary, Connector, Receipt
    from gateway.reconcile import reconcile_department
    from gateway.runtime import Runtime

    class ListOnly(Connector):
        kind = "bench"

        def __init__(self) -> None:  # no context: it only lists
            pass

        async def poll(self, receipt: Receipt) -> None:
            return None

        async def list_cases(
            self, since: dt.datetime, until: dt.datetime
        ) -> AsyncIterator[CaseSummary]:
            for i, (case_id, key, status) in enumerate(department_side(n)):
                if i % 5000 == 0:
                    await asyncio.sleep(0)
                yield CaseSummary(case_id=case_id, idempotency_key=key, status=status)

    config = load_config(ROOT / "config" / "gateway.toml")
    settings = config.gateway.model_copy(
        update={"database_url": f"sqlite+aiosqlite:///{db}", "data_dir": db.parent / "var"}
    )
    runtime = Runtime(dataclasses.replace(config, gateway=settings))
    try:
        result = await reconcile_department(
            runtime, DEPT, since=SINCE, until=UNTIL, connector=ListOnly(), trigger="bench"
        )
    finally:
        await runtime.aclose()
    assert result.state == "done", result.error
    return result.counts


def _dict_diff(db: Path, n: int) -> dict[str, int]:
    from gateway.reconcile import compare
    from gateway.results import parse_idempotency_key

    config_dept = _dept_config()
    con = sqlite3.connect(db)
    gateway = {
        row[0]: (row[1], row[2], row[3])
        for row in con.execute(
            "SELECT id, version, status, department_case_id FROM applications WHERE department = ?",
            (DEPT,),
        )
    }
    con.close()
    department: dict[tuple[str, int], list[tuple[str, str]]] = {}
    for case_id, key, status in department_side(n):
        parsed = parse_idempotency_key(key) or ("", 0)
        department.setdefault(parsed, []).append((case_id, status))
    counts: dict[str, int] = {}

    def bump(k: str) -> None:
        counts[k] = counts.get(k, 0) + 1

    for app, (version, status, _case) in gateway.items():
        theirs = department.get((app, version))
        if not theirs:
            bump("missing_at_department")
            continue
        bump(compare(config_dept, status, theirs[0][1]).value)
    for (app, _version), _cases in department.items():
        if app not in gateway:
            bump("unknown_at_gateway")
    return counts


def _dept_config() -> Any:
    from gateway.config.loader import load_config

    return load_config(ROOT / "config" / "gateway.toml").departments[DEPT]


def run_phase(phase: str, db: Path, n: int) -> dict[str, Any]:
    """Run one side of the comparison in this process; returns figures and class counts."""
    import gateway.config.loader
    import gateway.reconcile
    import gateway.runtime  # noqa: F401 (imports are not part of the measurement)

    before = _rss_mb()
    started, cpu = time.perf_counter(), time.process_time()
    counts = asyncio.run(_stream(db, n)) if phase == "stream" else _dict_diff(db, n)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    classes = {
        k: v
        for k, v in counts.items()
        if k in ("matched", "department_behind", "missing_at_department", "unknown_at_gateway")
    }
    return {
        "phase": phase,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 2),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "rss_before_mb": round(before, 1),
        "classes": classes,
    }


def _child(phase: str, db: Path, n: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--phase", phase, "--db", str(db), "--n", str(n)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"{phase} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="tiny N (smoke test)")
    parser.add_argument("--phase", choices=["stream", "dict"], help=argparse.SUPPRESS)
    parser.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(run_phase(args.phase, args.db, args.n)))
        return
    n = 3_000 if args.quick else args.n
    print(f"load before: {_load()}")
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "gateway.db"
        t = time.perf_counter()
        build(db, n)
        print(f"built {n:,} gateway cases in {time.perf_counter() - t:.1f}s")
        stream = _child("stream", db, n)
        plain = _child("dict", db, n)
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}"
        f"; load after: {_load()}"
    )
    for r in (stream, plain):
        print(
            f"{r['phase']:>6}: {r['seconds']:8.2f} s (CPU {r['cpu_seconds']:.2f} s)"
            f"   peak RSS {r['peak_rss_mb']:8.1f} MB"
            f"   (at start {r['rss_before_mb']:.1f} MB)   {r['classes']}"
        )
    if stream["classes"] != plain["classes"]:
        raise SystemExit("the two methods disagree")
    time_ratio = stream["seconds"] / max(plain["seconds"], 1e-9)
    cpu_ratio = stream["cpu_seconds"] / max(plain["cpu_seconds"], 1e-9)
    rss_ratio = stream["peak_rss_mb"] / plain["peak_rss_mb"]
    print(
        f"ratio = stream/dict time {time_ratio:.2f} (CPU {cpu_ratio:.2f}), peak RSS {rss_ratio:.2f}"
    )
    met = time_ratio <= TARGET_TIME and rss_ratio <= TARGET_RSS
    print(
        f"target (issue 16): time <= {TARGET_TIME}x at peak RSS <= {TARGET_RSS}x of the dict "
        f"diff: {'met' if met else 'NOT met'}"
    )


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min), {five:.2f} (5 min)"


if __name__ == "__main__":
    main()
