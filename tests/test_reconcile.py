"""Reconciliation against the simulated REST department with drift injected: every class,
the repairs (events with source ``reconcile``), the stored run, the API and the CLI formats."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from gateway.clock import now
from gateway.config.loader import Config, load_config
from gateway.connector import CaseSummary, CaseUpdate
from gateway.dispatcher import Dispatcher
from gateway.envelopes import idempotency_key
from gateway.events import Source
from gateway.intake import ApplicationIn, submit
from gateway.reconcile import Kind, compare, get_run, reconcile_department
from gateway.reconcile.merge import DeptCase, GatewayCase, pair, sorted_department
from gateway.runtime import Runtime
from gateway.simulators.city import SimulatedCity, simulated_city
from gateway.store.clients import Client
from gateway.store.tables import applications, dispatch_jobs, events
from gateway.updates import apply_case_update
from tests.conftest import FAST, TEST_SECRETS, application
from tests.test_crash_recovery import write_config

CLIENT = Client(id="c-rec", name="reconcile test", centre="C01", ops=False)


@pytest.fixture
async def city(example_config: Config) -> AsyncIterator[SimulatedCity]:
    """The city with amr deciding slowly: statuses change only by injected drift."""
    slow = {"decision_delay_seconds": 3600, "callbacks": False}
    async with simulated_city(example_config, simulator_overrides={"amr": slow, "hrss": FAST}) as c:
        yield c


async def _submit(runtime: Runtime, key: str) -> str:
    result = await submit(runtime, CLIENT, key, ApplicationIn.model_validate(application()))
    return result.accepted.id


async def _row(runtime: Runtime, app_id: str) -> Any:
    async with runtime.engine.connect() as conn:
        return (await conn.execute(select(applications).where(applications.c.id == app_id))).one()


async def _reconcile_events(runtime: Runtime, app_id: str) -> list[Any]:
    async with runtime.engine.connect() as conn:
        q = select(events).where(
            events.c.application_id == app_id, events.c.source == Source.RECONCILE.value
        )
        return list((await conn.execute(q)).all())


def test_compare_classes() -> None:
    from gateway.config.models import DepartmentConfig

    dept = DepartmentConfig(code="amr", name="x", connector="rest", status_map={"9": "approved"})
    assert compare(dept, "delivered", "delivered") is Kind.MATCHED
    assert compare(dept, "delivered", "9") is Kind.DEPARTMENT_AHEAD
    assert compare(dept, "approved", "in_review") is Kind.DEPARTMENT_BEHIND
    assert compare(dept, "collected", "9") is Kind.MATCHED  # handed out after the decision
    assert compare(dept, "delivered", "77") is Kind.UNKNOWN_STATUS


async def test_external_sort_and_merge_in_bounded_chunks() -> None:
    keys = [f"{i:06d}" for i in range(0, 50, 2)]  # gateway: even ids

    async def dept_stream() -> Any:
        for i in reversed(range(0, 50, 3)):  # department: every third id, its own order
            yield CaseSummary(case_id=f"D{i}", idempotency_key=f"ow-{i:06d}-v1", status="1")
        yield CaseSummary(case_id="HAND-1", status="1")  # no key of ours

    async def gw() -> Any:
        for k in keys:
            yield GatewayCase(k, 1, "delivered", f"D{int(k)}", True)

    got: list[tuple[str | None, list[str]]] = []
    async with sorted_department(dept_stream(), chunk=4) as dside:  # several spilled runs
        async for g, ds in pair(gw(), dside):
            got.append((g.app_id if g else None, [d.case_id for d in ds]))
    both = [g for g, ds in got if g and ds]
    assert both == [f"{i:06d}" for i in range(0, 50, 6)]
    assert got[0] == (None, ["HAND-1"])
    assert sum(1 for g, _ in got if g) == len(keys)
    assert sorted(c for g, ds in got if g is None for c in ds) == sorted(
        ["HAND-1"] + [f"D{i}" for i in range(0, 50, 3) if i % 2]
    )
    d = DeptCase.of(CaseSummary(case_id="x", idempotency_key="ow-abc-v2", status="1"))
    assert (d.app_id, d.version) == ("abc", 2)


async def test_every_class_with_drift_injected(
    runtime: Runtime, city: SimulatedCity, api: httpx.AsyncClient, ops_headers: dict[str, str]
) -> None:
    sim = city.states["amr"]
    ids = {name: await _submit(runtime, f"rec-{name}") for name in "ABCDEF"}
    dispatcher = Dispatcher(runtime)
    await dispatcher.sweep()
    await dispatcher.drain()
    case = {name: (await _row(runtime, app_id)).department_case_id for name, app_id in ids.items()}
    assert all(case.values())
    # G: the department took it, the gateway crashed before recording the answer
    ids["G"] = await _submit(runtime, "rec-G")
    sim.create(idempotency_key(ids["G"], 1), {})
    # H: still on its way (nothing at the department): not a discrepancy
    ids["H"] = await _submit(runtime, "rec-H")

    sim.force_status(case["B"], "9")  # B: decided at the department, no callback came
    await apply_case_update(  # C: the gateway is further along than the department says
        runtime,
        ids["C"],
        CaseUpdate(case_id=case["C"], status="9"),
        source=Source.POLL,
        actor="test",
    )
    sim.drop_case(case["D"])  # D: the department lost it
    stranger = sim.add_case("their-own-key")  # E: a case the gateway never sent
    twin = sim.duplicate_case(case["F"])  # F: a second department case for one key
    submissions_before = sim.submissions

    result = await reconcile_department(runtime, "amr", trigger="test")
    assert result.state == "done", result.error
    counts = result.counts
    assert counts["matched"] == 3, counts  # A, E and F's own case (its twin is flagged)
    assert counts[Kind.DEPARTMENT_AHEAD] == 1
    assert counts[Kind.DEPARTMENT_BEHIND] == 1
    assert counts[Kind.MISSING_AT_DEPARTMENT] == 1
    assert counts[Kind.UNKNOWN_AT_GATEWAY] == 1
    assert counts[Kind.DUPLICATED_AT_DEPARTMENT] == 1
    assert counts[Kind.NEVER_ACKNOWLEDGED] == 1
    assert counts["in_flight"] == 1

    run, found = await get_run(runtime, result.id)
    assert run is not None and run.state == "done"
    by_kind = {d.kind: d for d in found}
    assert by_kind[Kind.DEPARTMENT_AHEAD].application_id == ids["B"]
    assert by_kind[Kind.DEPARTMENT_AHEAD].action == "applied"
    assert by_kind[Kind.DEPARTMENT_BEHIND].application_id == ids["C"]
    assert by_kind[Kind.DEPARTMENT_BEHIND].action == "flagged"
    assert by_kind[Kind.UNKNOWN_AT_GATEWAY].department_case_id == stranger.id
    assert by_kind[Kind.DUPLICATED_AT_DEPARTMENT].department_case_id == twin.id
    assert by_kind[Kind.MISSING_AT_DEPARTMENT].action == "resent"
    assert by_kind[Kind.NEVER_ACKNOWLEDGED].action == "adopted"

    # repairs: B applied, D re-sent with the same key, G adopted; all as reconcile events
    assert (await _row(runtime, ids["B"])).status == "approved"
    assert [e.to_status for e in await _reconcile_events(runtime, ids["B"])] == ["approved"]
    new_d = (await _row(runtime, ids["D"])).department_case_id
    assert new_d != case["D"] and sim.cases[new_d].idempotency_key == idempotency_key(ids["D"], 1)
    assert sim.submissions == submissions_before + 1
    assert [e.detail["action"] for e in await _reconcile_events(runtime, ids["D"])] == ["resend"]
    g = await _row(runtime, ids["G"])
    assert (
        g.status == "delivered" and g.department_case_id == sim.by_key[idempotency_key(ids["G"], 1)]
    )
    async with runtime.engine.connect() as conn:
        job = (
            await conn.execute(
                select(dispatch_jobs).where(dispatch_jobs.c.application_id == ids["G"])
            )
        ).one()
    assert job.state == "done"
    # nothing flagged was touched: C stays approved, E and F's twin stay the department's business
    assert (await _row(runtime, ids["C"])).status == "approved"
    assert await _reconcile_events(runtime, ids["C"]) == []

    # the adopted case is not sent again
    await dispatcher.sweep()
    await dispatcher.drain()
    assert Counter(c.idempotency_key for c in sim.cases.values())[idempotency_key(ids["G"], 1)] == 1

    # a second run: the repaired cases now match; flags remain for what ops must fix
    again = await reconcile_department(runtime, "amr", since=result.since, trigger="test")
    assert Kind.DEPARTMENT_AHEAD not in again.counts
    assert Kind.NEVER_ACKNOWLEDGED not in again.counts
    assert Kind.MISSING_AT_DEPARTMENT not in again.counts
    assert again.counts[Kind.UNKNOWN_AT_GATEWAY] == 1
    assert again.counts[Kind.DEPARTMENT_BEHIND] == 1
    assert again.counts["matched"] == 7  # A B D E F G H

    # the API serves the runs (ops key only)
    listed = await api.get("/v1/ops/reconciliations", headers=ops_headers)
    assert listed.status_code == 200
    assert [r["id"] for r in listed.json()["items"]] == [again.id, result.id]
    one = await api.get(f"/v1/ops/reconciliations/{result.id}", headers=ops_headers)
    assert one.status_code == 200
    assert {d["kind"] for d in one.json()["discrepancies"]} >= {
        "department_ahead",
        "missing_at_department",
        "never_acknowledged",
    }
    assert (await api.get("/v1/ops/reconciliations/nope", headers=ops_headers)).status_code == 404
    assert (await api.get("/v1/ops/reconciliations")).status_code == 401


async def test_missing_case_only_flagged_when_configured(
    runtime: Runtime, city: SimulatedCity
) -> None:
    runtime.config.departments["amr"] = runtime.config.departments["amr"].model_copy(
        update={"reconcile_missing": "flag"}
    )
    sim = city.states["amr"]
    app_id = await _submit(runtime, "flag-me")
    dispatcher = Dispatcher(runtime)
    await dispatcher.sweep()
    await dispatcher.drain()
    lost = (await _row(runtime, app_id)).department_case_id
    sim.drop_case(lost)
    before = sim.submissions
    result = await reconcile_department(
        runtime, "amr", since=now() - dt.timedelta(hours=1), trigger="test"
    )
    assert result.counts[Kind.MISSING_AT_DEPARTMENT] == 1 and result.counts["flagged"] == 1
    assert sim.submissions == before  # nothing re-sent
    assert (await _row(runtime, app_id)).department_case_id == lost


async def test_failed_listing_is_a_failed_run(runtime: Runtime, city: SimulatedCity) -> None:
    city.states["amr"].mode = "fail503"
    runtime.config.departments["amr"] = runtime.config.departments["amr"].model_copy(
        update={"retry": runtime.config.departments["amr"].retry}
    )
    result = await reconcile_department(runtime, "amr", trigger="test")
    assert result.state == "failed" and result.error
    run, _ = await get_run(runtime, result.id)
    assert run is not None and run.state == "failed" and run.finished_at is not None


async def test_cli_writes_json_and_csv(tmp_path: Path, db_url: str, city: SimulatedCity) -> None:
    """``gateway reconcile`` as ops run it: a real process, the report as JSON and CSV."""
    config_path = write_config(tmp_path / "config", db_url, city.urls)
    runtime = Runtime(load_config(config_path))
    await runtime.prepare_database()
    try:
        app_id = await _submit(runtime, "cli-1")
        dispatcher = Dispatcher(runtime)
        await dispatcher.sweep()
        await dispatcher.drain()
        city.states["amr"].add_case("hand-made")  # one discrepancy: unknown at the gateway
    finally:
        await runtime.aclose()

    async def cli(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "reconcile",
            "--config",
            str(config_path),
            "-d",
            "amr",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **TEST_SECRETS},
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        return proc.returncode or 0, out.decode(), err.decode()

    code, out, err = await cli("--format", "json")
    assert code == 0, err
    report = json.loads(out)
    assert report["runs"][0]["counts"]["matched"] == 1
    assert [d["kind"] for d in report["discrepancies"]] == ["unknown_at_gateway"]
    target = tmp_path / "amr.csv"
    code, out, err = await cli("--format", "csv", "--output", str(target))
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(target.read_text(encoding="utf-8"))))
    assert [(r["kind"], r["action"]) for r in rows] == [("unknown_at_gateway", "flagged")]
    assert app_id not in target.read_text()  # matched cases are counted, not listed
