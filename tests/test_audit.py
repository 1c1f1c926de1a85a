"""The audit trail (issue 12 item 13): reads of personal data are recorded (API and CLI), the
events and the audit rows are hash-chained and `gateway audit verify` finds a single altered or
deleted row; a permanent delivery failure is logged at WARNING with its reason."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, func, select, update
from structlog.testing import capture_logs
from typer.testing import CliRunner

from gateway.cli import app as cli
from gateway.config.loader import Config
from gateway.dispatcher import Dispatcher
from gateway.runtime import Runtime
from gateway.simulators.city import simulated_city
from gateway.store.chain import Break, verify_audit, verify_events
from gateway.store.clients import create_client
from gateway.store.tables import audit_log, events
from tests.cli_support import isolated_logging
from tests.conftest import EXAMPLE, FAST, application
from tests.handout_fixtures import decide, quiet_runtime, submit


@pytest.fixture
async def runtime(example_config: Config) -> AsyncIterator[Runtime]:
    async with quiet_runtime(example_config) as rt:
        yield rt


async def breaks(runtime: Runtime) -> list[str]:
    async with runtime.engine.connect() as conn:
        found, _rows, _head = await verify_audit(conn)
        async for item in verify_events(conn):
            if isinstance(item, Break):
                found.append(item)
    return [str(b) for b in found]


async def audit_of(
    api: httpx.AsyncClient, ops: dict[str, str], app_id: str | None = None
) -> list[dict[str, Any]]:
    params = {"application": app_id} if app_id else {}
    resp = await api.get("/v1/ops/audit", params=params, headers=ops)
    assert resp.status_code == 200, resp.text
    rows: list[dict[str, Any]] = resp.json()["items"]
    return rows


async def test_every_read_of_personal_data_is_recorded(
    api: httpx.AsyncClient,
    runtime: Runtime,
    centre_headers: dict[str, str],
    ops_headers: dict[str, str],
) -> None:
    app = await submit(api, centre_headers)
    await decide(runtime, app["id"])
    assert await audit_of(api, ops_headers) == []  # submitting shows nothing back
    case = (await api.get(f"/v1/applications/{app['id']}", headers=centre_headers)).json()
    await api.get("/v1/applications", headers=centre_headers)
    await api.get("/v1/pickups", headers=centre_headers)
    await api.get(case["documents"][0]["download"], headers=centre_headers)
    await api.get("/v1/ops/failures", headers=ops_headers)  # shows no case: nothing to record
    rows = await audit_of(api, ops_headers, app["id"])
    assert [r["action"] for r in reversed(rows)] == [
        "GET /v1/applications/{id}",
        "GET /v1/applications",
        "GET /v1/pickups",
        "GET /v1/applications/{id}/documents",
    ]
    assert {(r["channel"], r["centre"], r["applications"][0]) for r in rows} == {
        ("api", "C01", app["id"])
    }
    assert all(r["actor"].split()[0].startswith("c") for r in rows)  # the key's id
    # a key that may not see the case leaves no record of it
    other = await api.get(f"/v1/applications/{app['id']}", headers=ops_headers)
    assert other.status_code == 200
    assert len(await audit_of(api, ops_headers, app["id"])) == 5
    assert await breaks(runtime) == []


def cli_config(tmp_path: Path, runtime: Runtime) -> Path:
    cfg = tmp_path / "config"
    shutil.copytree(EXAMPLE.parent, cfg)
    toml = cfg / "gateway.toml"
    text, n = re.subn(
        r'^database_url = "[^"]*"',
        f'database_url = "{runtime.config.gateway.database_url}"',
        toml.read_text("utf-8"),
        flags=re.M,
    )
    assert n == 1
    toml.write_text(text, encoding="utf-8")
    return toml


@pytest.fixture
def _logging() -> Iterator[None]:
    with isolated_logging():
        yield


@pytest.mark.usefixtures("_logging")
async def test_cli_reads_are_recorded_and_verify_finds_tampering(
    api: httpx.AsyncClient,
    runtime: Runtime,
    centre_headers: dict[str, str],
    ops_headers: dict[str, str],
    tmp_path: Path,
) -> None:
    toml = cli_config(tmp_path, runtime)
    runner = CliRunner()
    apps = [await submit(api, centre_headers) for _ in range(3)]
    for a in apps:
        await decide(runtime, a["id"])
        await api.get(f"/v1/applications/{a['id']}", headers=centre_headers)
    # (in a thread: the CLI runs its own event loop, as it does in a shell)
    shown = await asyncio.to_thread(
        runner.invoke, cli, ["status", apps[0]["id"], "--json", "--config", str(toml)]
    )
    assert shown.exit_code == 0, shown.output
    [by_cli] = [r for r in await audit_of(api, ops_headers, apps[0]["id"]) if r["channel"] == "cli"]
    assert by_cli["action"] == "gateway status" and by_cli["actor"].startswith("os:")

    async def verify() -> tuple[int, dict[str, Any]]:
        args = ["audit", "verify", "--json", "--config", str(toml)]
        result = await asyncio.to_thread(runner.invoke, cli, args)
        return result.exit_code, json.loads(result.output)

    code, report = await verify()
    assert code == 0 and report["ok"] and report["audit_rows"] == 4 and report["cases"] == 3

    async with runtime.engine.begin() as conn:  # the tampering: one event altered
        victim = (
            await conn.execute(
                select(events.c.id).where(events.c.application_id == apps[1]["id"]).limit(1)
            )
        ).scalar_one()
        await conn.execute(update(events).where(events.c.id == victim).values(actor="someone-else"))
    code, report = await verify()
    assert code == 1
    assert [(b["chain"], b["row"]) for b in report["breaks"]] == [
        (f"events of {apps[1]['id']}", victim)
    ]


async def alter(runtime: Runtime, statement: Any) -> None:
    async with runtime.engine.begin() as conn:
        await conn.execute(statement)


async def test_one_deleted_or_altered_row_is_found(
    api: httpx.AsyncClient,
    runtime: Runtime,
    centre_headers: dict[str, str],
    ops_headers: dict[str, str],
) -> None:
    app = await submit(api, centre_headers)
    await decide(runtime, app["id"])  # received, ..., approved, ready_for_pickup
    for _ in range(4):
        await api.get(f"/v1/applications/{app['id']}", headers=centre_headers)
    assert await breaks(runtime) == []
    async with runtime.engine.connect() as conn:
        ids = (
            (
                await conn.execute(
                    select(events.c.id)
                    .where(events.c.application_id == app["id"])
                    .order_by(events.c.id)
                )
            )
            .scalars()
            .all()
        )
        audit_ids = (await conn.execute(select(audit_log.c.id).order_by(audit_log.c.id))).all()
    assert len(ids) >= 3 and len(audit_ids) == 4

    # a deleted event in the middle: the next one no longer follows
    await alter(runtime, delete(events).where(events.c.id == ids[1]))
    assert await breaks(runtime) == [
        f"events of {app['id']}: row {ids[2]}: does not match its hash: it was altered, or a "
        "row before it was deleted"
    ]
    # (a fresh case for the next checks: the first one stays broken)
    app2 = await submit(api, centre_headers)
    await decide(runtime, app2["id"])
    async with runtime.engine.connect() as conn:
        last = (
            await conn.execute(
                select(func.max(events.c.id)).where(events.c.application_id == app2["id"])
            )
        ).scalar_one()
    await alter(runtime, delete(events).where(events.c.id == last))  # the latest event
    assert f"events of {app2['id']}: head: the latest row is not the recorded head (deleted?)" in (
        await breaks(runtime)
    )
    # the audit log: an altered row, then a deleted last row
    await alter(
        runtime, update(audit_log).where(audit_log.c.id == audit_ids[1][0]).values(actor="x")
    )
    assert f"audit: row {audit_ids[1][0]}: does not match its hash" in " ".join(
        await breaks(runtime)
    )
    await alter(
        runtime, update(audit_log).where(audit_log.c.id == audit_ids[1][0]).values(actor="y")
    )
    await alter(runtime, delete(audit_log).where(audit_log.c.id == audit_ids[1][0]))
    assert f"audit: row {audit_ids[2][0]}:" in " ".join(await breaks(runtime))


async def test_a_permanent_delivery_failure_is_logged_at_warning(example_config: Config) -> None:
    wrong = FAST | {"auth_token": "not-the-configured-token"}
    async with simulated_city(example_config, simulator_overrides={"amr": wrong}) as city:
        runtime = Runtime(city.config)
        await runtime.prepare_database()
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(
                    app=__import__("gateway.api.app").api.app.create_app(runtime)
                ),
                base_url="http://gateway.test",
            ) as api:
                async with runtime.engine.begin() as conn:
                    _c, key = await create_client(conn, name="c", centre="C01", ops=False)
                resp = await api.post(
                    "/v1/applications",
                    json=application(),
                    headers={"Authorization": f"Bearer {key}", "Idempotency-Key": "w-1"},
                )
                assert resp.status_code == 201
            dispatcher = Dispatcher(runtime)
            with capture_logs() as logs:
                await dispatcher.sweep()
                await dispatcher.drain()
        finally:
            await runtime.aclose()
    [failed] = [e for e in logs if e["event"] == "delivery failed for good"]
    assert failed["log_level"] == "warning"
    assert failed["application"] == resp.json()["id"] and failed["department"] == "amr"
    assert "401" in failed["reason"]


def test_an_event_hash_is_the_canonical_json_of_the_row_as_stored() -> None:
    """The hash of a row with a flat detail (the shortcut that skips the JSON round trip)
    equals the one over the detail as the database gives it back, and a detail that does
    change on the way (dates, number keys, tuples, nesting) is hashed as given back."""
    import datetime as dt
    import enum
    import hashlib
    import json

    from gateway.store.chain import event_hash

    class Kind(enum.StrEnum):
        A = "a"

    FIELDS = ("application_id", "version", "at", "source", "actor", "from_status", "to_status")

    def reference(prev: str, row: dict[str, Any]) -> str:  # the definition, spelled out
        body: dict[str, Any] = {
            f: row[f].astimezone(dt.UTC).isoformat(timespec="microseconds")
            if isinstance(row[f], dt.datetime)
            else row[f]
            for f in FIELDS
        }
        body["detail"] = json.loads(json.dumps(row["detail"], default=str))
        text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(prev.encode() + b"\n" + text.encode()).hexdigest()

    at = dt.datetime(2026, 12, 1, 9, 30, 1, 5, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    details: list[Any] = [
        {"receipt_number": "C01-20261201-00001"},
        {"b": 1, "a": 2.5, "c": None, "d": True, "e": '王\n"x"\u2028'},
        {"kind": Kind.A},
        {"on": dt.date(2026, 12, 1)},
        {1: "number key"},
        {"nested": {"z": [1, (2, 3)]}},
        {"n": float("nan")},
        {},
    ]
    for detail in details:
        row = {
            "application_id": "a1",
            "version": 2,
            "at": at,
            "source": "api",
            "actor": "C01/王",
            "from_status": None,
            "to_status": "received",
            "detail": detail,
        }
        assert event_hash("prev", row) == reference("prev", row), detail


def test_a_new_cases_event_is_sealed_as_the_general_way_seals_it() -> None:
    """``seal_first_event`` (intake's one event per new case, written straight) gives the hash
    ``seal_events`` gives, whatever the strings hold, and falls back to it for any row that
    is not of its plain shape."""
    import datetime as dt

    from gateway.store.chain import canonical_time, seal_events, seal_first_event

    at = dt.datetime(2026, 12, 1, 9, 30, 1, 5, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    odd = '王\n"x"\\\u2028\x00\x7f\ud7ff😀</script>'
    plain: dict[str, Any] = {
        "application_id": "a1",
        "version": 1,
        "at": at,
        "source": "api",
        "actor": "C01/王",
        "from_status": None,
        "to_status": "received",
        "detail": {"receipt_number": "C01-20261201-00001"},
    }
    rows: list[dict[str, Any]] = [
        plain,
        {**plain, "actor": odd, "application_id": odd, "source": odd, "to_status": odd},
        {**plain, "detail": {"z": odd, "a": "", odd: "k"}},
        {**plain, "detail": {}},
        {**plain, "version": 12345678901234567890},
        # not the plain shape: sealed the general way
        {**plain, "from_status": "received"},
        {**plain, "version": True},
        {**plain, "detail": {"n": 1}},
        {**plain, "detail": {"nested": {"a": "b"}}},
        {**plain, "at": at.isoformat()},
    ]
    for row in rows:
        expected = seal_events(None, [dict(row)])
        for given in (None, canonical_time(at) if type(row["at"]) is dt.datetime else None):
            copy = dict(row)
            assert seal_first_event(copy, given) == expected, row
            assert copy["hash"] == expected
