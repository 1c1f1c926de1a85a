"""Change-feed sync (issue 19) against the example city's REST department ``amr`` and its real
simulator: the department decides slowly (an hour), the test makes it decide a case and the
feed, not a poll, brings the decision."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import BaseModel
from sqlalchemy import update

from gateway import changes
from gateway.clock import now
from gateway.config.loader import Config
from gateway.config.models import DepartmentConfig, SyncSettings
from gateway.connector import Connector
from gateway.daemon import Daemon
from gateway.departments import DepartmentLink
from gateway.dispatcher import Dispatcher
from gateway.poller import next_poll_in, poll_department, poll_every
from gateway.runtime import Runtime
from gateway.simulators.city import SimulatedCity, simulated_city
from gateway.simulators.rest_department import SimCase
from gateway.store import watermarks
from gateway.store.tables import applications
from tests.conftest import application

SLOW = {"decision_delay_seconds": 3600, "callbacks": False}


@pytest.fixture
async def city(example_config: Config) -> AsyncIterator[SimulatedCity]:
    """The example city as configured (amr has a change feed), deciding nothing by itself."""
    async with simulated_city(
        example_config,
        simulator_overrides={"amr": SLOW, "hrss": SLOW},
        department_overrides={"amr": {"poll_interval_seconds": 0.2}},
    ) as c:
        yield c


async def delivered(
    runtime: Runtime, city: SimulatedCity, api: httpx.AsyncClient, headers: dict[str, str], key: str
) -> tuple[str, SimCase]:
    resp = await api.post(
        "/v1/applications", json=application(), headers={**headers, "Idempotency-Key": key}
    )
    assert resp.status_code == 201, resp.text
    assert resp.json()["department"] == "amr"
    dispatcher = Dispatcher(runtime)
    await dispatcher.sweep()
    await dispatcher.drain()
    app_id: str = resp.json()["id"]
    key = f"ow-{app_id}-v1"
    [case] = [c for c in city.states["amr"].cases.values() if c.idempotency_key == key]
    return app_id, case


async def status_of(api: httpx.AsyncClient, headers: dict[str, str], app_id: str) -> Any:
    return (await api.get(f"/v1/applications/{app_id}", headers=headers)).json()


async def test_feed_brings_a_decision_once_and_polls_wait_for_the_ceiling(
    runtime: Runtime, city: SimulatedCity, api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    app_id, case = await delivered(runtime, city, api, centre_headers, "feed-1")
    link = runtime.link("amr")
    assert link is not None and link.offers_changes()
    assert poll_every(link) == 604800  # [sync] feed_poll_seconds of config/departments/amr.toml
    assert "changes:amr" in Daemon(runtime).tasks

    city.states["amr"].force_status(case.id, "9")  # approved, certificate issued
    first = await changes.sync_department(runtime, "amr")
    assert first["applied"] >= 1 and first["unmatched"] == 0
    view = await status_of(api, centre_headers, app_id)
    assert view["status"] in ("approved", "ready_for_pickup")
    events = len(view["history"])
    assert any(e["actor"] == "changes/amr" for e in view["history"])

    # the next window overlaps the last: the same change comes again and changes nothing
    again = await changes.sync_department(runtime, "amr")
    assert again["seen"] >= 1 and again["applied"] == 0
    assert len((await status_of(api, centre_headers, app_id))["history"]) == events


async def test_watermark_survives_a_restart(
    runtime: Runtime, city: SimulatedCity, api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    await delivered(runtime, city, api, centre_headers, "feed-restart")
    done = await changes.sync_department(runtime, "amr")
    until = dt.datetime.fromisoformat(done["until"])

    restarted = Runtime(city.config)
    await restarted.prepare_database()
    try:
        async with restarted.engine.connect() as conn:
            mark = await watermarks.get(conn, "amr")
        assert mark is not None and mark.watermark == until
        nxt = await changes.sync_department(restarted, "amr")
        assert dt.datetime.fromisoformat(nxt["since"]) == until - dt.timedelta(seconds=120)
    finally:
        await restarted.aclose()


async def test_a_change_committed_late_is_caught_by_the_overlap(
    runtime: Runtime, city: SimulatedCity, api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    """The department stamps a decision with a time the gateway's watermark has already passed
    (its clock is behind, or it committed late): within the overlap it is still read, by the
    next tick that reaches back the whole overlap; a stamp older than the overlap is left to
    the safety-net poll and reconciliation."""
    late_id, late = await delivered(runtime, city, api, centre_headers, "feed-late")
    old_id, old = await delivered(runtime, city, api, centre_headers, "feed-too-old")
    await changes.sync_department(runtime, "amr")
    async with runtime.engine.connect() as conn:
        mark = await watermarks.get(conn, "amr")
    assert mark is not None

    late.forced = ("9", mark.watermark - dt.timedelta(seconds=60))
    old.forced = ("9", mark.watermark - dt.timedelta(seconds=600))
    # a tick between two full ones reaches back one interval (each change is read about four
    # times, not once per tick of the overlap): the late stamp waits for the next full tick
    out = await changes.sync_department(runtime, "amr")
    assert out["full"] is False and out["applied"] == 0
    assert (await status_of(api, centre_headers, late_id))["status"] == "delivered"
    overlap = city.config.departments["amr"].sync.changes_overlap_seconds
    changes._memory(runtime, "amr").full_at -= overlap  # an overlap has passed since
    out = await changes.sync_department(runtime, "amr")
    assert out["full"] is True and out["applied"] >= 1
    assert (await status_of(api, centre_headers, late_id))["status"] in (
        "approved",
        "ready_for_pickup",
    )
    assert (await status_of(api, centre_headers, old_id))["status"] not in (
        "approved",
        "ready_for_pickup",
    )


async def test_a_crash_between_apply_and_watermark_applies_nothing_twice(
    runtime: Runtime,
    city: SimulatedCity,
    api: httpx.AsyncClient,
    centre_headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app_id, case = await delivered(runtime, city, api, centre_headers, "feed-crash")
    await changes.sync_department(runtime, "amr")
    async with runtime.engine.connect() as conn:
        before = await watermarks.get(conn, "amr")
    city.states["amr"].force_status(case.id, "9")

    async def crash(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("killed before the watermark commit")

    monkeypatch.setattr(watermarks, "advance", crash)
    with pytest.raises(RuntimeError):
        await changes.sync_department(runtime, "amr")
    monkeypatch.undo()
    async with runtime.engine.connect() as conn:
        assert await watermarks.get(conn, "amr") == before  # the watermark did not move
    events = len((await status_of(api, centre_headers, app_id))["history"])

    out = await changes.sync_department(runtime, "amr")  # the same question again
    assert out["seen"] >= 1 and out["applied"] == 0
    assert len((await status_of(api, centre_headers, app_id))["history"]) == events


async def test_a_department_without_a_feed_is_polled(example_config: Config) -> None:
    async with simulated_city(
        example_config,
        simulator_overrides={"amr": SLOW},
        department_overrides={
            "amr": {"poll_interval_seconds": 0.2, "options": {"changes": None}},
        },
    ) as plain:
        rt = Runtime(plain.config)
        await rt.prepare_database()
        try:
            link = rt.link("amr")
            assert link is not None and not link.offers_changes()
            assert poll_every(link) == 0.2
            assert "changes:amr" not in Daemon(rt).tasks
            assert (await changes.sync_department(rt, "amr")) == {"skipped": True}
            transport = httpx.ASGITransport(app=_app(rt))
            async with httpx.AsyncClient(
                transport=transport, base_url="http://gateway.test"
            ) as client:
                headers = await _centre_headers(rt)
                app_id, case = await delivered(rt, plain, client, headers, "no-feed")
                plain.states["amr"].force_status(case.id, "9")
                await _make_due(rt, app_id)
                assert await poll_department(rt, "amr") >= 1
                view = await status_of(client, headers, app_id)
                assert view["status"] in ("approved", "ready_for_pickup")
                assert any(e["actor"] == "poll/amr" for e in view["history"])
        finally:
            await rt.aclose()


def _app(rt: Runtime) -> Any:
    from gateway.api.app import create_app

    return create_app(rt)


async def _centre_headers(rt: Runtime) -> dict[str, str]:
    from gateway.store.clients import create_client

    async with rt.engine.begin() as conn:
        _c, key = await create_client(conn, name="C01", centre="C01", ops=False)
    return {"Authorization": f"Bearer {key}", "Accept-Language": "en"}


async def _make_due(rt: Runtime, app_id: str) -> None:
    from sqlalchemy import update

    from gateway.store.tables import applications

    async with rt.engine.begin() as conn:
        await conn.execute(
            update(applications).where(applications.c.id == app_id).values(next_poll_at=now())
        )


class _Quiet(Connector):
    kind = "quiet"
    Options = BaseModel


class _Fed(_Quiet):
    def offers_changes(self) -> bool:
        return True


def _link(connector: type[Connector]) -> DepartmentLink:
    dept = DepartmentConfig(
        code="x1",
        name="x",
        connector="rest",
        poll_interval_seconds=10,
        sync=SyncSettings(poll_ceiling_seconds=3600),
    )
    return DepartmentLink(dept, connector.__new__(connector))


def test_adaptive_poll_intervals() -> None:
    link = _link(_Quiet)

    def gap(since: float, due: float | None = None, changed: bool = False) -> float:
        return next_poll_in(link, since_change=since, until_due=due, changed=changed)

    assert gap(5) == 10  # soon after delivery: the floor
    assert gap(100) == 100 and gap(200) == 200  # each poll twice as far from the last change
    assert gap(50_000) == 3600  # the ceiling
    assert gap(50_000, changed=True) == 10  # a change starts again from the floor
    assert gap(50_000, due=4000) == 1000  # a quarter of the time left before the promise
    assert gap(50_000, due=20) == 10  # never below the floor
    assert gap(50_000, due=-100) == 3600  # overdue: backs off again (deadline watch reports it)
    fed = _link(_Fed)
    assert next_poll_in(fed, since_change=5, until_due=20, changed=True) == 7 * 86400
    # a feed that stopped syncing: its cases are polled as any others
    assert next_poll_in(fed, since_change=100, until_due=None, changed=False, feed_ok=False) == 100


async def test_ops_check_polls_a_case_at_once(
    runtime: Runtime,
    city: SimulatedCity,
    api: httpx.AsyncClient,
    centre_headers: dict[str, str],
    ops_headers: dict[str, str],
) -> None:
    """A feed department polls a case weekly while its feed keeps up; ops asking for a check
    makes the next poll round ask about it at once."""
    app_id, case = await delivered(runtime, city, api, centre_headers, "check-now")
    await changes.sync_department(runtime, "amr")  # the feed keeps up
    await _make_due(runtime, app_id)
    await poll_department(runtime, "amr")  # the safety-net poll: next one in a week
    city.states["amr"].force_status(case.id, "9")
    assert await poll_department(runtime, "amr") == 0  # not due: nothing asked

    resp = await api.post(f"/v1/ops/applications/{app_id}/check", headers=ops_headers)
    assert resp.status_code == 202, resp.text
    assert resp.json()["id"] == app_id
    assert await poll_department(runtime, "amr") >= 1
    view = await status_of(api, centre_headers, app_id)
    assert view["status"] in ("approved", "ready_for_pickup")
    assert any(e["actor"] == "poll/amr" for e in view["history"])

    again = await api.post(f"/v1/ops/applications/{app_id}/check", headers=ops_headers)
    assert again.status_code == 409
    assert again.json()["code"] == "not_at_department"
    denied = await api.post(f"/v1/ops/applications/{app_id}/check", headers=centre_headers)
    assert denied.status_code == 403


async def test_a_department_clock_ahead_is_read_once_ours_passes_its_stamp(
    runtime: Runtime,
    city: SimulatedCity,
    api: httpx.AsyncClient,
    centre_headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The department's clock runs a minute ahead: its stamp lies after the window the gateway
    asks for now ([.., now)), and inside the next window once the gateway's clock has passed
    it (the window's start is the watermark less the overlap, so nothing between is skipped)."""
    app_id, case = await delivered(runtime, city, api, centre_headers, "feed-ahead")
    await changes.sync_department(runtime, "amr")
    case.forced = ("9", now() + dt.timedelta(seconds=60))
    assert (await changes.sync_department(runtime, "amr"))["applied"] == 0
    assert (await status_of(api, centre_headers, app_id))["status"] == "delivered"

    later = now() + dt.timedelta(seconds=90)
    monkeypatch.setattr(changes, "now", lambda: later)  # our clock, 90 s on
    out = await changes.sync_department(runtime, "amr")
    assert out["applied"] >= 1
    assert (await status_of(api, centre_headers, app_id))["status"] in (
        "approved",
        "ready_for_pickup",
    )


async def test_a_change_judged_before_is_skipped_while_its_case_stays_where_it_left_it(
    runtime: Runtime, city: SimulatedCity, api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    """Every tick re-reads the overlap: a change this process judged before costs one read
    (no lock, no write) as long as its case has the status and version the change left it at;
    once something else has moved the case, the same change goes to the state machine again."""
    app_id, case = await delivered(runtime, city, api, centre_headers, "feed-judged")
    city.states["amr"].force_status(case.id, "5")  # in review
    first = await changes.sync_department(runtime, "amr")
    assert first["applied"] == 1 and first["judged_before"] == 0
    assert (await status_of(api, centre_headers, app_id))["status"] == "in_review"

    again = await changes.sync_department(runtime, "amr")
    assert again["seen"] >= 1 and again["judged_before"] == again["seen"]
    assert again["applied"] == 0

    # the case moved since (by hand here; a retry or a re-send in life): judged again
    async with runtime.engine.begin() as conn:
        await conn.execute(
            update(applications).where(applications.c.id == app_id).values(status="accepted")
        )
    third = await changes.sync_department(runtime, "amr")
    assert third["judged_before"] == 0 and third["applied"] == 1
    assert (await status_of(api, centre_headers, app_id))["status"] == "in_review"
    fourth = await changes.sync_department(runtime, "amr")
    assert fourth["judged_before"] == fourth["seen"] and fourth["applied"] == 0

    # another process (or this one restarted) remembers nothing: it judges the change once more
    other = Runtime(city.config)
    await other.prepare_database()
    try:
        fresh = await changes.sync_department(other, "amr")
        assert fresh["judged_before"] == 0 and fresh["seen"] >= 1 and fresh["applied"] == 0
    finally:
        await other.aclose()


async def test_a_change_another_process_applied_is_judged_from_one_read_without_a_write(
    runtime: Runtime,
    city: SimulatedCity,
    api: httpx.AsyncClient,
    centre_headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """amr's callbacks are applied in the API process: the daemon's feed then reads changes
    it never judged whose cases already stand where they leave them. Such a change is found
    to change nothing from one read (no write transaction, nothing applied), counted
    ``unchanged``, and remembered as judged like one this process applied."""
    app_id, case = await delivered(runtime, city, api, centre_headers, "feed-elsewhere")
    city.states["amr"].force_status(case.id, "5")  # in review
    other = Runtime(city.config)  # the process that applied it
    await other.prepare_database()
    try:
        assert (await changes.sync_department(other, "amr"))["applied"] == 1
    finally:
        await other.aclose()
    assert (await status_of(api, centre_headers, app_id))["status"] == "in_review"

    applied: list[int] = []
    real = changes.apply_case_updates

    async def spy(rt: Runtime, batch: Any, **kw: Any) -> Any:
        applied.append(len(batch))
        return await real(rt, batch, **kw)

    monkeypatch.setattr(changes, "apply_case_updates", spy)
    first = await changes.sync_department(runtime, "amr")
    assert first["seen"] >= 1 and first["unchanged"] == first["seen"]
    assert first["applied"] == 0 and first["judged_before"] == 0
    assert applied == []  # no write transaction for them
    again = await changes.sync_department(runtime, "amr")
    assert again["judged_before"] == again["seen"] and applied == []


async def test_a_poll_round_with_nothing_due_reads_once(
    runtime: Runtime, city: SimulatedCity, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A poll round runs every poll interval (hrss: 2 s) and nearly always finds nothing due:
    it looks once, and reads nothing else (not the feed's watermark)."""
    from gateway import poller

    looked: list[str] = []
    real_any_due, real_keeps_up = poller._any_due, poller.feed_keeps_up

    async def any_due(rt: Runtime, link: DepartmentLink) -> bool:
        looked.append("due")
        return await real_any_due(rt, link)

    async def keeps_up(rt: Runtime, link: DepartmentLink) -> bool:
        looked.append("watermark")
        return await real_keeps_up(rt, link)

    monkeypatch.setattr(poller, "_any_due", any_due)
    monkeypatch.setattr(poller, "feed_keeps_up", keeps_up)
    assert runtime.link("amr") is not None and runtime.link("amr").offers_changes()  # type: ignore[union-attr]
    assert await poll_department(runtime, "amr") == 0
    assert looked == ["due"]
