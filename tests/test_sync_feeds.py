"""Change feeds beyond the time-based one (issue 19): a department that numbers its changes
(``since_seq``), a feed that stops syncing handing its cases back to polling, and
reconciliation repairing what both the feed and the polls missed. Against the example city's
``amr`` and its real REST simulator, which decides nothing by itself (the tests decide)."""

from __future__ import annotations

import contextlib
import datetime as dt
import pickle
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from gateway import changes, reconcile
from gateway.config.loader import Config
from gateway.poller import feed_keeps_up, poll_department, poll_every
from gateway.runtime import Runtime
from gateway.simulators.city import SimulatedCity, simulated_city
from gateway.store import watermarks
from gateway.store.tables import sync_watermarks
from tests.conftest import wait_for
from tests.test_changes import SLOW, _make_due, delivered, status_of

#: amr's feed numbered by the department, two changes a page (so a sync reads several pages)
BY_SEQUENCE = {"changes": {"by": "sequence", "path": "/changes", "page_size": 2}}
DECIDED = ("approved", "ready_for_pickup")


@pytest.fixture
async def city(example_config: Config) -> AsyncIterator[SimulatedCity]:
    async with simulated_city(
        example_config,
        simulator_overrides={"amr": SLOW, "hrss": SLOW},
        department_overrides={"amr": {"poll_interval_seconds": 0.2, "options": BY_SEQUENCE}},
    ) as c:
        yield c


async def _mark(runtime: Runtime) -> watermarks.Watermark:
    async with runtime.engine.connect() as conn:
        mark = await watermarks.get(conn, "amr")
    assert mark is not None
    return mark


def _decisions(view: dict[str, Any]) -> int:
    return sum(1 for e in view["history"] if e["to_status"] == "approved")


async def test_a_numbered_feed_brings_each_change_once_page_by_page(
    runtime: Runtime, city: SimulatedCity, api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    link = runtime.link("amr")
    assert link is not None and link.offers_changes() and link.changes_by_sequence()
    sim = city.states["amr"]
    cases = [await delivered(runtime, city, api, centre_headers, f"seq-{i}") for i in range(3)]
    first = await changes.sync_department(runtime, "amr")
    assert first["after"] == 0 and first["last"] == len(sim.change_log) == 3
    assert (await _mark(runtime)).sequence == 3

    for _app_id, case in cases:
        sim.force_status(case.id, "9")
    out = await changes.sync_department(runtime, "amr")
    assert out == {"after": 3, "last": 6, "seen": 3, "applied": out["applied"], "unmatched": 0}
    assert out["applied"] >= 3
    for app_id, _case in cases:
        view = await status_of(api, centre_headers, app_id)
        assert view["status"] in DECIDED and _decisions(view) == 1
        assert any(e["actor"] == "changes/amr" for e in view["history"])
    mark = await _mark(runtime)
    assert mark.sequence == 6 and mark.applied == out["applied"]

    # nothing new: the next question starts after 6 and reads nothing (no overlap to re-read)
    again = await changes.sync_department(runtime, "amr")
    assert again["after"] == 6 and again["seen"] == 0


async def test_a_numbered_watermark_survives_a_restart(
    runtime: Runtime, city: SimulatedCity, api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    app_id, case = await delivered(runtime, city, api, centre_headers, "seq-restart")
    await changes.sync_department(runtime, "amr")
    city.states["amr"].force_status(case.id, "9")

    restarted = Runtime(city.config)
    await restarted.prepare_database()
    try:
        out = await changes.sync_department(restarted, "amr")
        assert out["after"] == 1 and out["last"] == 2 and out["seen"] == 1
    finally:
        await restarted.aclose()
    assert (await status_of(api, centre_headers, app_id))["status"] in DECIDED


async def test_a_crash_before_a_page_commits_applies_it_once(
    runtime: Runtime,
    city: SimulatedCity,
    api: httpx.AsyncClient,
    centre_headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The page's changes and its watermark commit together: a crash before the commit leaves
    neither, and the next sync applies the page once."""
    app_id, case = await delivered(runtime, city, api, centre_headers, "seq-crash")
    await changes.sync_department(runtime, "amr")
    before = await _mark(runtime)
    city.states["amr"].force_status(case.id, "9")

    async def crash(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("killed before the commit")

    monkeypatch.setattr(watermarks, "advance", crash)
    with pytest.raises(RuntimeError):
        await changes.sync_department(runtime, "amr")
    monkeypatch.undo()
    assert await _mark(runtime) == before
    assert (await status_of(api, centre_headers, app_id))["status"] == "delivered"

    out = await changes.sync_department(runtime, "amr")
    assert out["seen"] == 1 and out["applied"] >= 1
    view = await status_of(api, centre_headers, app_id)
    assert view["status"] in DECIDED and _decisions(view) == 1


async def test_a_feed_that_stops_syncing_hands_its_cases_back_to_polling(
    runtime: Runtime, city: SimulatedCity, api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    link = runtime.link("amr")
    assert link is not None
    app_id, case = await delivered(runtime, city, api, centre_headers, "seq-stalled")
    assert not await feed_keeps_up(runtime, link)  # never synced: polled as any department
    await changes.sync_department(runtime, "amr")
    assert await feed_keeps_up(runtime, link)
    assert poll_every(link, feed_ok=True) == 7 * 86400  # the safety net only

    # the feed's last sync was 10 minutes ago (it keeps failing): the cases are polled again
    async with runtime.engine.begin() as conn:
        stale = (await watermarks.get(conn, "amr")).synced_at - dt.timedelta(minutes=10)  # type: ignore[union-attr]
        await conn.execute(
            update(sync_watermarks)
            .where(sync_watermarks.c.department == "amr")
            .values(synced_at=stale)
        )
    assert not await feed_keeps_up(runtime, link)
    assert poll_every(link, feed_ok=False) == 0.2
    city.states["amr"].feed_drops.add(case.id)  # and the feed would not tell anyway
    city.states["amr"].force_status(case.id, "9")
    await _make_due(runtime, app_id)
    assert await poll_department(runtime, "amr") >= 1
    view = await status_of(api, centre_headers, app_id)
    assert view["status"] in DECIDED
    assert any(e["actor"] == "poll/amr" for e in view["history"])


async def test_reconciliation_repairs_a_change_both_paths_missed(
    runtime: Runtime, city: SimulatedCity, api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    """The department's feed leaves a decision out and the case's poll has backed off to the
    safety net: neither path learns of it; the next reconciliation does."""
    app_id, case = await delivered(runtime, city, api, centre_headers, "seq-missed")
    await changes.sync_department(runtime, "amr")
    await _make_due(runtime, app_id)
    await poll_department(runtime, "amr")  # polled once: the next poll is a week away

    sim = city.states["amr"]
    sim.feed_drops.add(case.id)
    sim.force_status(case.id, "9")
    assert (await changes.sync_department(runtime, "amr"))["seen"] == 0
    assert await poll_department(runtime, "amr") == 0
    assert (await status_of(api, centre_headers, app_id))["status"] == "delivered"

    run = await reconcile.reconcile_department(runtime, "amr", trigger="schedule")
    assert run.counts.get("department_ahead") == 1, run.counts
    view = await status_of(api, centre_headers, app_id)
    assert view["status"] in DECIDED and _decisions(view) == 1
    assert any(e["source"] == "reconcile" for e in view["history"])


#: a daemon (the real Daemon, its change-feed task every 0.2 s) that stops for good at the
#: watermark's commit: it writes ``stopped`` and waits there to be killed
_DAEMON = """
import asyncio, pathlib, pickle, sys
from gateway.daemon import Daemon
from gateway.logs import configure
from gateway.runtime import Runtime
from gateway.store import watermarks

config = pickle.loads(pathlib.Path(sys.argv[1]).read_bytes())
stopped = pathlib.Path(sys.argv[2])

advance = watermarks.advance

async def hold(conn, code, *args, **kwargs):
    # only amr's round: hrss has a feed too, and its round reaching the commit first (the
    # order of ticks on a busy machine) would stop the daemon before amr's changes were read
    if code != "amr":
        return await advance(conn, code, *args, **kwargs)
    stopped.write_text("between fetch and commit")
    await asyncio.sleep(3600)

watermarks.advance = hold

async def main():
    configure(level="WARNING")
    runtime = Runtime(config)
    await runtime.prepare_database()
    await Daemon(runtime).start()
    await asyncio.sleep(3600)

asyncio.run(main())
"""


@pytest.mark.slow  # a real process, killed
@pytest.mark.parametrize("by", ["time", "sequence"])
async def test_a_daemon_killed_between_fetch_and_commit_applies_nothing_twice(
    by: str, example_config: Config, tmp_path: Path
) -> None:
    """SIGKILL while the feed's watermark is being committed: a time feed has committed the
    window's changes (the watermark not), a numbered feed neither; either way the next sync
    leaves each decision recorded exactly once."""
    feed = (
        BY_SEQUENCE
        if by == "sequence"
        else {"changes": {"path": "/cases", "params": {"view": "full"}}}
    )
    async with simulated_city(
        example_config,
        simulator_overrides={"amr": SLOW, "hrss": SLOW},
        # no polls: the feed is the only way the daemon learns of the decisions
        department_overrides={
            "amr": {
                "poll_interval_seconds": None,
                "options": feed,
                "sync": {"changes_interval_seconds": 0.2},
            }
        },
    ) as city:
        runtime = Runtime(city.config)
        await runtime.prepare_database()
        try:
            async with _api(runtime) as (api, headers):
                decided = [
                    await delivered(runtime, city, api, headers, f"kill-{i}") for i in range(3)
                ]
                await changes.sync_department(runtime, "amr")
                before = await _mark(runtime)
                for _app_id, case in decided:
                    city.states["amr"].force_status(case.id, "9")

                config_file, stopped = tmp_path / "config.pickle", tmp_path / "stopped"
                config_file.write_bytes(pickle.dumps(city.config))
                log = tmp_path / "daemon.log"
                with log.open("wb") as out:
                    daemon = subprocess.Popen(
                        [sys.executable, "-c", _DAEMON, str(config_file), str(stopped)],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                try:
                    await wait_for(lambda: stopped.exists() or daemon.poll() is not None, 90)
                finally:
                    daemon.send_signal(signal.SIGKILL)
                    daemon.wait(30)
                assert daemon.returncode == -signal.SIGKILL, log.read_text()[-3000:]
                assert stopped.exists(), log.read_text()[-3000:]  # killed where it was meant to be
                assert await _mark(runtime) == before  # the watermark never moved

                views = [await status_of(api, headers, a) for a, _c in decided]
                if by == "time":  # applied and committed before the watermark
                    assert all(v["status"] in DECIDED for v in views)
                else:  # the page and its watermark commit together: neither did
                    assert all(v["status"] == "delivered" for v in views)
                events = {a: len(v["history"]) for (a, _c), v in zip(decided, views, strict=True)}

                out = await changes.sync_department(runtime, "amr")  # the restarted daemon
                assert out["seen"] >= 3
                for app_id, _case in decided:
                    view = await status_of(api, headers, app_id)
                    assert view["status"] in DECIDED and _decisions(view) == 1
                    if by == "time":
                        assert len(view["history"]) == events[app_id]  # nothing re-applied
        finally:
            await runtime.aclose()


@contextlib.asynccontextmanager
async def _api(runtime: Runtime) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    from gateway.api.app import create_app
    from gateway.store.clients import create_client

    async with runtime.engine.begin() as conn:
        _c, key = await create_client(conn, name="C01", centre="C01", ops=False)
    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        yield client, {"Authorization": f"Bearer {key}", "Accept-Language": "en"}


def test_cli_check_makes_a_case_due_at_once(tmp_path: Path) -> None:
    """``gateway check <receipt number>``: the case's next poll is now (it was a week away);
    an unknown number and a case its department does not hold exit 1 saying why."""
    import asyncio

    from typer.testing import CliRunner

    from gateway.cli import app as cli
    from gateway.clock import now
    from gateway.config.loader import load_config
    from gateway.events import Source
    from gateway.intake import ApplicationIn, submit
    from gateway.states import State
    from gateway.store import cases
    from gateway.store.clients import Client
    from gateway.store.tables import applications
    from gateway.updates import move
    from tests.conftest import application
    from tests.test_crash_recovery import write_config

    config = write_config(tmp_path / "c", f"sqlite+aiosqlite:///{tmp_path / 'g.db'}", {})
    week = now() + dt.timedelta(days=7)

    async def two_cases() -> list[Any]:
        runtime = Runtime(load_config(config))
        try:
            await runtime.prepare_database()
            client = Client(id="c-cli", name="cli", centre="C01", ops=False)
            made = [
                (await submit(runtime, client, k, ApplicationIn.model_validate(application())))
                for k in ("held", "not-yet")
            ]
            held = made[0].accepted.id
            async with runtime.engine.begin() as conn:  # delivered, its next poll a week away
                targets = [State.DISPATCHING, State.DELIVERED]
                await move(conn, held, targets, source=Source.DISPATCH, actor="test")
                await conn.execute(
                    update(applications)
                    .where(applications.c.id == held)
                    .values(department_case_id="AMR-1", next_poll_at=week)
                )
            return [m.accepted for m in made]
        finally:
            await runtime.aclose()

    async def next_poll(app_id: str) -> dt.datetime:
        runtime = Runtime(load_config(config))
        try:
            async with runtime.engine.connect() as conn:
                row = await cases.get_application(conn, app_id)
            assert row is not None
            return row.next_poll_at  # type: ignore[no-any-return]
        finally:
            await runtime.aclose()

    held, not_yet = asyncio.run(two_cases())
    asked = now()
    result = CliRunner().invoke(cli, ["check", held.receipt_number, "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert f"{held.receipt_number} ({held.id}) due for a status poll at" in result.output
    assert "the daemon asks amr within 30 s" in result.output
    assert asked - dt.timedelta(seconds=1) <= asyncio.run(next_poll(held.id)) <= now()

    as_json = CliRunner().invoke(cli, ["check", held.id, "--json", "--config", str(config)])
    assert as_json.exit_code == 0 and '"poll_interval_seconds": 30' in as_json.output

    unknown = CliRunner().invoke(cli, ["check", "C01-NOPE", "--config", str(config)])
    assert unknown.exit_code == 1
    assert "no application with id or receipt number 'C01-NOPE'" in unknown.output
    early = CliRunner().invoke(cli, ["check", not_yet.id, "--config", str(config)])
    assert early.exit_code == 1
    assert f"{not_yet.receipt_number} is received, not held by its department" in early.output


async def test_a_held_case_without_a_poll_time_is_polled(
    runtime: Runtime, city: SimulatedCity, api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    """A case delivered while its department had no poll interval has no poll time; the claim
    never reads such cases (it is a range over the poll index), so the daemon's first poll
    round of the department makes them due, once."""
    from gateway.store.tables import applications

    app_id, case = await delivered(runtime, city, api, centre_headers, "seq-unset")
    async with runtime.engine.begin() as conn:
        await conn.execute(
            update(applications).where(applications.c.id == app_id).values(next_poll_at=None)
        )
    city.states["amr"].force_status(case.id, "9")
    link = runtime.link("amr")
    assert link is not None and not link.polls_scheduled
    assert await poll_department(runtime, "amr") >= 1
    assert link.polls_scheduled
    view = await status_of(api, centre_headers, app_id)
    assert view["status"] in DECIDED and any(e["actor"] == "poll/amr" for e in view["history"])
