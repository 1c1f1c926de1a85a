"""The end-to-end demo: the example city's simulated departments, the gateway (API + daemon)
on a fresh SQLite database, ~200 applications through the real HTTP API, then a summary.

Departments whose connector is not available are shown as such and get no applications;
nothing is counted as a success that did not happen.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import statistics
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import select

from gateway.config.loader import Config
from gateway.config.models import Matter
from gateway.runtime import Runtime
from gateway.service import running
from gateway.simulators.city import simulated_city
from gateway.states import DECIDED, FINAL, State
from gateway.store.clients import create_client
from gateway.store.tables import applications

#: Secrets the example config references; the demo supplies throwaway values if unset.
DEMO_SECRETS = {
    "AMR_CALLBACK_SECRET": "demo-amr-callback-secret",
    "AMR_API_TOKEN": "demo-amr-token",
    "HRSS_API_KEY": "demo-hrss-key",
}
#: States in which a case is settled for the demo: final, or waiting on the applicant.
SETTLED = {s.value for s in FINAL} | {State.SUPPLEMENT_REQUIRED.value}

FORMS: dict[str, dict[str, Any]] = {
    "XK00123000": {
        "business_name": "示范小吃店",
        "premises_address": "东城区青石路1号",
        "business_type": "餐饮服务经营者",
        "food_categories": ["热食类食品制售"],
    },
}


def use_demo_secrets() -> None:
    for name, value in DEMO_SECRETS.items():
        os.environ.setdefault(name, value)


def fake_id_number(rng: random.Random) -> str:
    body = (
        f"3399{rng.randint(0, 99):02d}{rng.randint(1960, 2005)}{rng.randint(1, 12):02d}"
        f"{rng.randint(1, 28):02d}{rng.randint(0, 999):03d}"
    )
    weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    check = "10X98765432"[sum(int(d) * w for d, w in zip(body, weights, strict=True)) % 11]
    return body + check


@dataclass
class Outcome:
    department: str
    name: str
    connector: str
    available: bool
    reason: str = ""
    submitted: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    decision_seconds: list[float] = field(default_factory=list)


def _percentile(values: list[float], q: int) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}s"
    return f"{statistics.quantiles(values, n=100, method='inclusive')[q - 1]:.1f}s"


async def run_demo(
    config: Config,
    *,
    count: int = 200,
    seed: int = 7,
    data_dir: Path,
    timeout: float = 180.0,
    console: Console | None = None,
) -> bool:
    """Run the demo; True if every application reached a final or explained state."""
    console = console or Console()
    rng = random.Random(seed)
    settings = config.gateway.model_copy(
        update={
            "database_url": f"sqlite+aiosqlite:///{data_dir / 'gateway.db'}",
            "data_dir": data_dir,
            "api": config.gateway.api.model_copy(update={"port": 0}),
        }
    )
    config = dataclasses.replace(config, gateway=settings)
    async with simulated_city(config) as city:
        runtime = Runtime(city.config)
        try:
            async with running(runtime, api=True, daemon=True, port=0) as (_d, url):
                assert url is not None
                city.set_callback_url(url)
                console.print(f"gateway API at {url}; database {data_dir / 'gateway.db'}")
                return await _drive(runtime, city.urls, url, count, rng, timeout, console)
        finally:
            await runtime.aclose()


async def _drive(
    runtime: Runtime,
    sim_urls: dict[str, str],
    url: str,
    count: int,
    rng: random.Random,
    timeout: float,
    console: Console,
) -> bool:
    config = runtime.config
    outcomes = {
        code: Outcome(
            code, d.name, d.connector, code in runtime.connectors, runtime.unavailable.get(code, "")
        )
        for code, d in sorted(config.departments.items())
    }
    for code, o in outcomes.items():
        if o.available and code not in sim_urls:
            o.available, o.reason = False, "no simulated department for this connector"
    matters = [m for m in config.catalog.all() if outcomes[m.department].available]
    if not matters:
        console.print("[red]no department can take applications[/red]")
        return False
    keys: dict[str, str] = {}
    async with runtime.engine.begin() as conn:
        for centre in config.gateway.centres:
            _c, keys[centre.code] = await create_client(
                conn, name=f"demo {centre.code}", centre=centre.code, ops=False
            )
    ids: list[str] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        with _progress(console) as progress:
            task = progress.add_task("submitting applications", total=count)
            sem = asyncio.Semaphore(16)

            async def one(i: int) -> None:
                matter = rng.choice(matters)
                centre = rng.choice(config.gateway.centres).code
                async with sem:
                    resp = await _submit(http, keys[centre], matter, rng, with_material=i % 10 == 0)
                ids.append(resp["id"])
                outcomes[matter.department].submitted += 1
                progress.advance(task)

            await asyncio.gather(*(one(i) for i in range(count)))
        settled = await _wait_settled(runtime, ids, timeout, console)
    await _collect(runtime, ids, outcomes)
    _print_summary(console, outcomes)
    if not settled:
        console.print(f"[red]not every application settled within {timeout:.0f}s[/red]")
    return settled


async def _submit(
    http: httpx.AsyncClient, key: str, matter: Matter, rng: random.Random, *, with_material: bool
) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {key}"}
    materials = []
    if with_material:
        up = await http.post(
            "/v1/materials",
            headers=auth,
            files={
                "file": (
                    "申请书.pdf",
                    b"%PDF-1.4 demo material " + os.urandom(16),
                    "application/pdf",
                )
            },
        )
        up.raise_for_status()
        materials.append(up.json()["id"])
    body = {
        "matter_code": matter.code,
        "region": rng.choice(matter.regions),
        "applicant": {
            "name": rng.choice(["张伟", "王芳", "李娜", "刘洋", "陈静"]),
            "id_number": fake_id_number(rng),
            "phone": f"13{rng.randint(0, 9)}{rng.randint(0, 99_999_999):08d}",
        },
        "form": FORMS.get(matter.code, {}),
        "materials": materials,
        "window": f"W{rng.randint(1, 12):02d}",
        "clerk": f"clerk{rng.randint(1, 30):02d}",
    }
    resp = await http.post(
        "/v1/applications", json=body, headers={**auth, "Idempotency-Key": str(uuid.uuid4())}
    )
    if resp.status_code != 201:
        raise RuntimeError(f"submission refused: {resp.status_code} {resp.text}")
    result: dict[str, Any] = resp.json()
    return result


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )


async def _status_counts(runtime: Runtime, ids: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    async with runtime.engine.connect() as conn:
        for chunk in range(0, len(ids), 500):
            q = select(applications.c.status).where(applications.c.id.in_(ids[chunk : chunk + 500]))
            for status in (await conn.execute(q)).scalars():
                counts[status] = counts.get(status, 0) + 1
    return counts


async def _wait_settled(runtime: Runtime, ids: list[str], timeout: float, console: Console) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    with _progress(console) as progress:
        task = progress.add_task("waiting for decisions", total=len(ids))
        while True:
            counts = await _status_counts(runtime, ids)
            done = sum(n for s, n in counts.items() if s in SETTLED)
            progress.update(task, completed=done)
            if done == len(ids):
                return True
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.25)


async def _collect(runtime: Runtime, ids: list[str], outcomes: dict[str, Outcome]) -> None:
    async with runtime.engine.connect() as conn:
        for chunk in range(0, len(ids), 500):
            q = select(
                applications.c.department,
                applications.c.status,
                applications.c.created_at,
                applications.c.decided_at,
            ).where(applications.c.id.in_(ids[chunk : chunk + 500]))
            for dept, status, created, decided in (await conn.execute(q)).all():
                o = outcomes[dept]
                o.statuses[status] = o.statuses.get(status, 0) + 1
                if decided is not None and status in {s.value for s in DECIDED}:
                    o.decision_seconds.append((decided - created).total_seconds())


def _print_summary(console: Console, outcomes: dict[str, Outcome]) -> None:
    table = Table(title="Demo summary per department")
    cols = (
        "dept",
        "kind",
        "sent",
        "deliv",
        "appr",
        "rej",
        "n/acc",
        "suppl",
        "fail",
        "other",
        "p50",
        "p95",
    )
    for col in cols:
        table.add_column(col, justify="left" if col in ("dept", "kind") else "right")
    notes = []
    for o in outcomes.values():
        if not o.available:
            table.add_row(o.department, o.connector, "[yellow]n/a[/yellow]", *[""] * 9)
            notes.append(f"{o.department} ({o.name}): not available: {o.reason}")
            continue
        s = o.statuses
        known = {"approved", "rejected", "not_accepted", "supplement_required", "failed"}
        other = sum(n for k, n in s.items() if k not in known)
        delivered = (
            o.submitted - s.get("failed", 0) - s.get("received", 0) - s.get("dispatching", 0)
        )
        table.add_row(
            o.department,
            o.connector,
            str(o.submitted),
            str(delivered),
            str(s.get("approved", 0)),
            str(s.get("rejected", 0)),
            str(s.get("not_accepted", 0)),
            str(s.get("supplement_required", 0)),
            str(s.get("failed", 0)),
            str(other),
            _percentile(o.decision_seconds, 50),
            _percentile(o.decision_seconds, 95),
        )
    console.print(table)
    console.print(
        "p50/p95: time from intake to the department's decision. "
        "suppl: waiting on the applicant (补正)."
    )
    for note in notes:
        console.print(f"[yellow]{note}[/yellow]")
