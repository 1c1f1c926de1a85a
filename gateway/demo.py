"""The end-to-end demo: the example city's simulated departments, the gateway (API + daemon)
on a fresh SQLite database, ~200 applications through the real HTTP API; supplements asked for
are handed in (the case is re-sent as the next version), a few applications are withdrawn, and
every decided result is handed out at its centre (collected with the applicant's ID number or
pickup code) or mailed (manual post or the example courier). Then a summary.

Withdrawals: a few applications are withdrawn right after intake (usually before they reach the
department), a few once the department holds them (the daemon then asks the department, which
may confirm, refuse, or decide first; departments whose connector cannot withdraw are flagged for
ops). The summary counts what each withdrawal came to: only cases actually withdrawn are
"withdrawn".

The outage: one department's simulated system (the first REST one, ``amr``) answers 503 from
the start for ``outage_seconds`` (and at least until every application is in). Its cases wait in
the gateway (queued, retried with backoff behind the department's breaker); once it is back the
backlog drains. The demo prints the backlog at its worst and then checks that nothing was lost:
every case of that department reached it (the department holds exactly as many cases as the
gateway delivered, no duplicates), none failed.

Departments whose connector is not available are shown as such and get no applications;
nothing is counted as a success that did not happen.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import statistics
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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
from gateway.store import jobs
from gateway.store.clients import create_client
from gateway.store.tables import applications, events, withdrawals
from gateway.tables import tsv

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
    # real county codes: intake checks the region at the birth date (GB 11643, python-stdnum)
    region = rng.choice(("110101", "110102", "310101", "310104"))  # valid for any birth year
    body = (
        f"{region}{rng.randint(1960, 2005)}{rng.randint(1, 12):02d}"
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
    decisions: dict[str, int] = field(default_factory=dict)
    supplemented: int = 0
    decision_seconds: list[float] = field(default_factory=list)


@dataclass
class Outage:
    """One department taken down and brought back, as the demo saw it."""

    department: str
    name: str
    down_seconds: float = 0.0
    worst_backlog: int = 0  # unfinished jobs (queued, retrying, in flight) at worst
    worst_retrying: int = 0
    drain_seconds: float | None = None  # from back up until no job was left
    delivered: int = 0  # cases the gateway holds a department case id for
    failed: int = 0
    stuck: int = 0  # not yet delivered when the demo ended (received, dispatching)
    held: int = 0  # cases the department's system holds
    duplicates: int = 0

    @property
    def nothing_lost(self) -> bool:
        return (
            self.drain_seconds is not None
            and not self.failed
            and not self.stuck
            and not self.duplicates
            and self.held == self.delivered
        )


def _left(o: Outcome) -> int:
    """Decided or in progress but not handed out (0 at the end of a good run)."""
    handed = {"collected", "mailed", "withdrawn", "failed", "supplement_required"}
    return sum(n for k, n in o.statuses.items() if k not in handed)


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
    keep: bool = False,
    outage_seconds: float = 10.0,
    as_json: bool = False,
) -> bool:
    """Run the demo; True if every application reached a final or explained state and the
    department taken down for ``outage_seconds`` (0: none) lost nothing. With ``keep`` the
    gateway, the simulators and the console stay up afterwards (until Ctrl-C)."""
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
    # the example plugins write where the demo's files are
    os.environ.setdefault("GATEWAY_SMS_OUTBOX", str(data_dir / "sms-outbox.jsonl"))
    os.environ.setdefault("GATEWAY_COURIER_MANIFEST", str(data_dir / "courier-manifest.jsonl"))
    async with simulated_city(config) as city:
        runtime = Runtime(city.config)
        try:
            async with running(runtime, api=True, daemon=True, port=0) as (_d, url):
                assert url is not None
                city.set_callback_url(url)
                console.print(f"gateway API at {url}; database {data_dir / 'gateway.db'}")
                down = _outage_target(city.states) if outage_seconds > 0 else None
                ok = await _drive(
                    runtime,
                    city.urls,
                    url,
                    count,
                    rng,
                    timeout,
                    console,
                    down,
                    outage_seconds,
                    as_json=as_json,
                )
                if keep:
                    await _keep_running(runtime, url, console)
                return ok
        finally:
            await runtime.aclose()


async def _keep_running(runtime: Runtime, url: str, console: Console) -> None:
    """Print the console's address and a new ops key (shown this once), then serve until
    interrupted."""
    async with runtime.engine.begin() as conn:
        _client, key = await create_client(conn, name="demo console", centre=None, ops=True)
    console.print(f"ops console: {url}/console  (sign in with this ops key, shown once)")
    console.print(key, markup=False, highlight=False)
    console.print(
        "the gateway, the simulated departments and the console keep running: Ctrl-C stops"
    )
    await asyncio.Event().wait()


async def _drive(
    runtime: Runtime,
    sim_urls: dict[str, str],
    url: str,
    count: int,
    rng: random.Random,
    timeout: float,
    console: Console,
    down: tuple[str, Any] | None = None,
    outage_seconds: float = 0.0,
    *,
    as_json: bool = False,
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
    console.print("departments:")
    for o in outcomes.values():
        state = "" if o.available else f"  [yellow](not available: {o.reason})[/yellow]"
        console.print(f"  {o.department:8s} {o.name} ({o.connector}){state}")
    outage: Outage | None = None
    watching: asyncio.Task[None] | None = None
    submitted = asyncio.Event()
    if down is not None and outcomes[down[0]].available:
        code, sim = down
        outage = Outage(code, config.departments[code].name)
        sim.mode = "fail503"
        console.print(
            f"taking {code} ({outage.name}) down: its system answers 503 for "
            f"{outage_seconds:.0f} s (and until every application is in)"
        )
        watching = asyncio.create_task(
            _watch_outage(runtime, sim, outage, outage_seconds, submitted, timeout, console)
        )
    keys: dict[str, str] = {}
    async with runtime.engine.begin() as conn:
        for centre in config.gateway.centres:
            _c, keys[centre.code] = await create_client(
                conn, name=f"demo {centre.code}", centre=centre.code, ops=False
            )
    ids: list[str] = []
    people: dict[str, Applicant] = {}
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        with _progress(console) as progress:
            task = progress.add_task("submitting applications", total=count)
            sem = asyncio.Semaphore(16)

            async def one(i: int) -> None:
                matter = rng.choice(matters)
                centre = rng.choice(config.gateway.centres).code
                async with sem:
                    resp, id_number = await _submit(
                        http, keys[centre], matter, rng, with_material=i % 10 == 0, mail=i % 5 == 4
                    )
                    if i % 50 == 7:  # the applicant changes their mind at once
                        await _withdraw(http, keys[centre], resp["id"])
                if i % 50 == 32:  # ... or once the department holds the case
                    await _withdraw_when_held(http, keys[centre], resp["id"])
                ids.append(resp["id"])
                people[resp["id"]] = Applicant(keys[centre], id_number, resp["pickup_code"])
                outcomes[matter.department].submitted += 1
                progress.advance(task)

            await asyncio.gather(*(one(i) for i in range(count)))
        submitted.set()
        if watching is not None:
            await watching
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        rounds = 0
        while True:  # a re-sent case may be asked for more: answer up to three rounds
            settled = await _wait_settled(runtime, ids, deadline, console)
            if not settled or rounds == 3:
                break
            if not await _supplement(http, runtime, ids, people, outcomes, rng):
                break
            rounds += 1
        handed = await _hand_out(http, runtime, ids, people, console)
    await _collect(runtime, ids, outcomes)
    if outage is not None and down is not None:
        await _count_outage(runtime, ids, outage, down[1])
    _print_summary(console, outcomes, as_json, outage)
    if outage is not None and down is not None:
        _print_outage(console, outage)
    asked = await _withdrawal_outcomes(runtime, ids)
    pending = asked.get("pending", 0)
    _print_withdrawals(console, asked)
    if pending:
        console.print(f"[red]{pending} withdrawals are still waiting on the department[/red]")
    if not settled:
        console.print(f"[red]not every application settled within {timeout:.0f}s[/red]")
    waiting = sum(
        n for o in outcomes.values() for s, n in o.statuses.items() if s in _NOT_HANDED_OUT
    )
    if waiting:
        console.print(f"[red]{waiting} decided applications were not handed out[/red]")
    console.print(f"handed out now: {handed}; SMS outbox {os.environ['GATEWAY_SMS_OUTBOX']}")
    return settled and not waiting and not pending and (outage is None or outage.nothing_lost)


def _outage_target(states: dict[str, Any]) -> tuple[str, Any] | None:
    """The department the demo takes down: the first whose simulator can be told to fail."""
    for code, state in sorted(states.items()):
        if hasattr(state, "mode") and hasattr(state, "cases"):
            return code, state
    return None


async def _backlog(runtime: Runtime, code: str) -> tuple[int, int]:
    """(unfinished jobs, of which retrying) of one department."""
    async with runtime.engine.connect() as conn:
        q = (await jobs.queues(conn, code)).get(code, {})
    return sum(q.values()), q.get("retrying", 0)


async def _watch_outage(
    runtime: Runtime,
    sim: Any,
    outage: Outage,
    seconds: float,
    submitted: asyncio.Event,
    timeout: float,
    console: Console,
) -> None:
    """Keep the department down for ``seconds`` (and until every application is in), noting
    its backlog; bring it back; wait until the backlog is gone (at most ``timeout``)."""
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def sample() -> int:
        n, retrying = await _backlog(runtime, outage.department)
        outage.worst_backlog = max(outage.worst_backlog, n)
        outage.worst_retrying = max(outage.worst_retrying, retrying)
        return n

    while loop.time() - started < seconds or not submitted.is_set():
        await sample()
        await asyncio.sleep(0.25)
    sim.mode = "ok"
    up = loop.time()
    outage.down_seconds = up - started
    console.print(
        f"{outage.department} is back after {outage.down_seconds:.1f} s; "
        f"{outage.worst_backlog} of its cases were waiting in the gateway at worst"
    )
    while loop.time() - up < timeout:
        if not await sample():
            outage.drain_seconds = loop.time() - up
            return
        await asyncio.sleep(0.25)


async def _count_outage(runtime: Runtime, ids: list[str], outage: Outage, sim: Any) -> None:
    """What became of the department's cases: delivered (the gateway holds the department's
    case id), failed, or still not delivered; and what the department's system holds."""
    async with runtime.engine.connect() as conn:
        for chunk in range(0, len(ids), 500):
            q = select(applications.c.status, applications.c.department_case_id).where(
                applications.c.id.in_(ids[chunk : chunk + 500]),
                applications.c.department == outage.department,
            )
            for status, case_id in (await conn.execute(q)).all():
                outage.delivered += case_id is not None
                outage.failed += status == State.FAILED.value
                outage.stuck += status in (State.RECEIVED.value, State.DISPATCHING.value)
    stats = sim.stats()
    outage.held, outage.duplicates = stats["cases"], stats["duplicates"]


def _print_outage(console: Console, o: Outage) -> None:
    drained = "never" if o.drain_seconds is None else f"{o.drain_seconds:.1f} s after it was back"
    console.print(
        f"outage of {o.department} ({o.name}): down {o.down_seconds:.1f} s; backlog at worst "
        f"{o.worst_backlog} cases ({o.worst_retrying} retrying); drained {drained}; "
        f"after: {o.delivered} delivered, {o.failed} failed, {o.stuck} not delivered; "
        f"the department holds {o.held} cases ({o.duplicates} duplicates)"
    )
    if o.nothing_lost:
        console.print(
            f"[green]nothing lost: every case of {o.department} reached it once the outage "
            "ended, and the backlog drained[/green]"
        )
    else:
        console.print(f"[red]the outage of {o.department} cost cases: see above[/red]")


async def _withdraw(http: httpx.AsyncClient, key: str, app_id: str) -> None:
    resp = await http.post(
        f"/v1/applications/{app_id}/withdraw",
        json={"reason": "申请人撤回", "clerk": "demo"},
        headers={"Authorization": f"Bearer {key}"},
    )
    resp.raise_for_status()  # 200 withdrawn at once, 202 the department is being asked


async def _withdraw_when_held(
    http: httpx.AsyncClient, key: str, app_id: str, timeout: float = 30.0
) -> None:
    """Withdraw once the department has the case, unless it decided (or failed) first."""
    auth = {"Authorization": f"Bearer {key}"}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        resp = await http.get(f"/v1/applications/{app_id}", headers=auth)
        resp.raise_for_status()
        case = resp.json()
        if case["status"] in SETTLED:
            return
        if case["department_case_id"] is not None:
            await _withdraw(http, key, app_id)
            return
        await asyncio.sleep(0.1)


async def _withdrawal_outcomes(runtime: Runtime, ids: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    async with runtime.engine.connect() as conn:
        for chunk in range(0, len(ids), 500):
            q = select(withdrawals.c.outcome).where(
                withdrawals.c.application_id.in_(ids[chunk : chunk + 500])
            )
            for outcome in (await conn.execute(q)).scalars():
                counts[outcome] = counts.get(outcome, 0) + 1
    return counts


def _print_withdrawals(console: Console, asked: dict[str, int]) -> None:
    if not asked:
        return
    made = ("not_sent", "withdrawn", "unsupported", "unknown", "error")
    flagged = sum(asked.get(k, 0) for k in made[2:])
    console.print(
        f"withdrawals asked for: {sum(asked.values())}; made: {sum(asked.get(k, 0) for k in made)} "
        f"(before reaching the department {asked.get('not_sent', 0)}, confirmed by the "
        f"department {asked.get('withdrawn', 0)}, department not told, flagged for ops "
        f"{flagged}); refused by the department {asked.get('refused', 0)}; too late (decided "
        f"first) {asked.get('too_late', 0)}; still pending {asked.get('pending', 0)}"
    )


@dataclass(frozen=True)
class Applicant:
    key: str  # the receiving centre's API key
    id_number: str
    pickup_code: str


#: Decided but not handed out: what the demo must not end with.
_NOT_HANDED_OUT = {s.value for s in DECIDED} | {State.READY_FOR_PICKUP.value}


async def _supplement(
    http: httpx.AsyncClient,
    runtime: Runtime,
    ids: list[str],
    people: dict[str, Applicant],
    outcomes: dict[str, Outcome],
    rng: random.Random,
) -> int:
    """Hand in what departments asked for; returns how many cases were re-sent."""
    waiting = await _ids_in(runtime, ids, State.SUPPLEMENT_REQUIRED)
    for app_id, dept in waiting:
        auth = {"Authorization": f"Bearer {people[app_id].key}"}
        case = (await http.get(f"/v1/applications/{app_id}", headers=auth)).json()
        up = await http.post(
            "/v1/materials",
            headers=auth,
            files={"file": ("补正材料.pdf", b"%PDF-1.4 " + os.urandom(16), "application/pdf")},
        )
        up.raise_for_status()
        resp = await http.post(
            f"/v1/applications/{app_id}/supplements",
            json={"materials": [up.json()["id"]], "note": "; ".join(case["supplement_items"])},
            headers=auth,
        )
        resp.raise_for_status()
        outcomes[dept].supplemented += 1
    return len(waiting)


async def _every_pickup(http: httpx.AsyncClient, auth: dict[str, str]) -> list[dict[str, Any]]:
    """Every page of the centre's pickup list (handing out does not move the pages: a
    handed-out case leaves the list behind the cursor)."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = {"limit": "500", **({"cursor": cursor} if cursor else {})}
        listed = await http.get("/v1/pickups", params=params, headers=auth)
        listed.raise_for_status()
        page = listed.json()
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items


async def _hand_out(
    http: httpx.AsyncClient,
    runtime: Runtime,
    ids: list[str],
    people: dict[str, Applicant],
    console: Console,
) -> int:
    """Every result ready at a centre is collected there or mailed from there."""
    ready = await _ids_in(runtime, ids, State.READY_FOR_PICKUP)
    handed = 0
    with _progress(console) as progress:
        task = progress.add_task("handing out results", total=len(ready))
        for key in {p.key for p in people.values()}:
            auth = {"Authorization": f"Bearer {key}"}
            for n, item in enumerate(await _every_pickup(http, auth)):
                person = people.get(item["id"])
                if person is None:
                    continue
                url = f"/v1/applications/{item['id']}"
                clerk = {"clerk": f"clerk{n % 30 + 1:02d}", "window": "W01"}
                if item["method"] == "mail":
                    body: dict[str, Any] = (
                        {"method": "courier"}
                        if n % 2
                        else {"method": "manual", "tracking_number": f"EMS{n:09d}CN"}
                    )
                    resp = await http.post(f"{url}/mail", json=body | clerk, headers=auth)
                else:
                    proof = (
                        {"pickup_code": person.pickup_code}
                        if n % 2
                        else {"id_number": person.id_number}
                    )
                    resp = await http.post(f"{url}/collect", json=proof | clerk, headers=auth)
                if resp.status_code != 200:
                    raise RuntimeError(f"handing out {item['id']} failed: {resp.text}")
                handed += 1
                progress.advance(task)
    return handed


async def _ids_in(runtime: Runtime, ids: list[str], state: State) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    async with runtime.engine.connect() as conn:
        for chunk in range(0, len(ids), 500):
            q = select(applications.c.id, applications.c.department).where(
                applications.c.id.in_(ids[chunk : chunk + 500]),
                applications.c.status == state.value,
            )
            out.extend((r.id, r.department) for r in (await conn.execute(q)).all())
    return out


async def _submit(
    http: httpx.AsyncClient,
    key: str,
    matter: Matter,
    rng: random.Random,
    *,
    with_material: bool,
    mail: bool,
) -> tuple[dict[str, Any], str]:
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
    id_number = fake_id_number(rng)
    body = {
        "matter_code": matter.code,
        "region": rng.choice(matter.regions),
        "delivery": {"method": "mail", "address": "示范市东城区青石路88号"}
        if mail
        else {"method": "pickup"},
        "applicant": {
            "name": rng.choice(["张伟", "王芳", "李娜", "刘洋", "陈静"]),
            "id_number": id_number,
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
    return result, id_number


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


async def _wait_settled(
    runtime: Runtime, ids: list[str], deadline: float, console: Console
) -> bool:
    loop = asyncio.get_running_loop()
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
                if decided is not None:
                    o.decision_seconds.append((decided - created).total_seconds())
            q = (
                select(applications.c.department, events.c.application_id, events.c.to_status)
                .join(applications, applications.c.id == events.c.application_id)
                .where(
                    events.c.application_id.in_(ids[chunk : chunk + 500]),
                    events.c.to_status.in_([s.value for s in DECIDED]),
                )
                .order_by(events.c.id)
            )
            last: dict[str, tuple[str, str]] = {}
            for row in (await conn.execute(q)).all():
                last[row.application_id] = (row.department, row.to_status)
            for code, decision in last.values():
                d = outcomes[code].decisions
                d[decision] = d.get(decision, 0) + 1


def _print_summary(
    console: Console,
    outcomes: dict[str, Outcome],
    as_json: bool,
    outage: Outage | None = None,
) -> None:
    if as_json:  # the one thing on stdout; the narrative went to stderr
        summary = {
            "departments": [{**dataclasses.asdict(o), "left": _left(o)} for o in outcomes.values()],
            "outage": None
            if outage is None
            else {**dataclasses.asdict(outage), "nothing_lost": outage.nothing_lost},
        }
        sys.stdout.write(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        return
    cols = (
        "dept",
        "kind",
        "sent",
        "appr",
        "rej",
        "n/acc",
        "supp",
        "wait",
        "wdrn",
        "fail",
        "coll",
        "mail",
        "left",
        "p50",
        "p95",
    )
    rows: list[list[str]] = []
    notes = []
    for o in outcomes.values():
        if not o.available:
            rows.append([o.department, o.connector, "n/a", *[""] * 12])
            notes.append(f"{o.department} ({o.name}): not available: {o.reason}")
            continue
        s, d = o.statuses, o.decisions
        rows.append(
            [
                o.department,
                o.connector,
                str(o.submitted),
                str(d.get("approved", 0)),
                str(d.get("rejected", 0)),
                str(d.get("not_accepted", 0)),
                str(o.supplemented),
                str(s.get("supplement_required", 0)),
                str(s.get("withdrawn", 0)),
                str(s.get("failed", 0)),
                str(s.get("collected", 0)),
                str(s.get("mailed", 0)),
                str(_left(o)),
                _percentile(o.decision_seconds, 50),
                _percentile(o.decision_seconds, 95),
            ]
        )
    title = "Demo summary per department"
    if not console.is_terminal:  # piped: plain tab-separated lines
        console.file.write(tsv(cols, rows, title=title))  # console.out would expand the tabs
    else:
        table = Table(title=title)
        for col in cols:
            justify: Literal["left", "right"] = "left" if col in ("dept", "kind") else "right"
            table.add_column(col, justify=justify, overflow="fold")
        for row in rows:
            table.add_row(*row, style="red" if row[12] not in ("0", "") else None)
        console.print(table, markup=False, highlight=False)
    console.print(
        "appr/rej/n/acc: the departments' decisions. supp: supplements handed in (补正; the case "
        "was re-sent as the next version); wait: still asked for more after three rounds. "
        "coll/mail: results collected at the centre or mailed. left: decided or in progress but "
        "not handed out (should be 0). p50/p95: intake to the last decision."
    )
    for note in notes:
        console.print(note, style="yellow", markup=False, highlight=False)
