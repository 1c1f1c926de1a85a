"""The promised-time clock: working days on the State Council calendar, the pause during
supplement and suspension (from the event history), overdue and due-soon lists."""

from __future__ import annotations

import datetime as dt

import httpx
from sqlalchemy import insert, update

from gateway.deadlines import CHINA, listing, paused_workdays
from gateway.intake import ApplicationIn, submit
from gateway.runtime import Runtime
from gateway.store.clients import Client
from gateway.store.tables import applications, events
from gateway.workdays import add_workdays, workdays_between
from tests.conftest import application

CLIENT = Client(id="c-dl", name="deadline test", centre="C01", ops=False)
ON = dt.date(2025, 3, 12)  # a Wednesday


def at(day: str, hour: int = 10) -> dt.datetime:
    return dt.datetime.fromisoformat(day).replace(hour=hour, tzinfo=CHINA)


def test_working_days_follow_the_holiday_calendar() -> None:
    # National Day 2025: 1-8 October off; Sunday 28 September and Saturday 11 October worked
    assert add_workdays(dt.date(2025, 9, 30), 1) == (dt.date(2025, 10, 9), True)
    assert add_workdays(dt.date(2025, 9, 26), 1) == (dt.date(2025, 9, 28), True)
    assert workdays_between(dt.date(2025, 9, 30), dt.date(2025, 10, 11)) == 3  # 9th, 10th, 11th


def test_pause_counts_the_working_days_it_covered() -> None:
    supplement = [
        (at("2025-03-03"), "in_review", "supplement_required"),
        (at("2025-03-06"), "supplement_required", "dispatching"),
    ]
    assert paused_workdays(supplement, ON) == (3, False)  # Tue, Wed, Thu
    same_day = [
        (at("2025-03-03", 9), "in_review", "suspended"),
        (at("2025-03-03", 15), "suspended", "in_review"),
    ]
    assert paused_workdays(same_day, ON) == (0, False)
    holiday = [
        (at("2025-09-30"), "in_review", "suspended"),
        (at("2025-10-09"), "suspended", "in_review"),
    ]
    assert paused_workdays(holiday, ON) == (1, False)  # the holiday was no working time anyway
    running = [(at("2025-03-10"), "accepted", "supplement_required")]
    assert paused_workdays(running, ON) == (2, True)  # Tue 11 and Wed 12, still paused


async def _case(runtime: Runtime, key: str, promised: dt.date) -> str:
    app_id = (
        await submit(runtime, CLIENT, key, ApplicationIn.model_validate(application()))
    ).accepted.id
    async with runtime.engine.begin() as conn:
        await conn.execute(
            update(applications).where(applications.c.id == app_id).values(promised_by=promised)
        )
    return app_id


async def _event(runtime: Runtime, app_id: str, when: dt.datetime, frm: str, to: str) -> None:
    async with runtime.engine.begin() as conn:
        await conn.execute(
            insert(events).values(
                application_id=app_id,
                version=1,
                at=when,
                source="poll",
                actor="test",
                from_status=frm,
                to_status=to,
                detail={},
            )
        )


async def test_overdue_and_due_soon_lists(
    runtime: Runtime, api: httpx.AsyncClient, ops_headers: dict[str, str]
) -> None:
    late = await _case(runtime, "late", dt.date(2025, 3, 7))
    soon = await _case(runtime, "soon", dt.date(2025, 3, 13))
    extended = await _case(runtime, "extended", dt.date(2025, 3, 10))
    await _event(runtime, extended, at("2025-03-03"), "in_review", "supplement_required")
    await _event(runtime, extended, at("2025-03-06"), "supplement_required", "dispatching")
    waiting = await _case(runtime, "waiting", dt.date(2025, 3, 11))
    await _event(runtime, waiting, at("2025-03-10"), "accepted", "supplement_required")
    far = await _case(runtime, "far", dt.date(2025, 4, 30))

    overdue, due_soon = await listing(runtime, department="amr", within_days=1, on=ON)
    assert [(d.application_id, d.days_left) for d in overdue] == [(late, -3)]
    assert {d.application_id: d.due_by for d in due_soon} == {
        soon: dt.date(2025, 3, 13),
        extended: dt.date(2025, 3, 13),  # 10 March + 3 paused working days
    }
    listed = {d.application_id for d in overdue + due_soon}
    assert waiting not in listed and far not in listed  # paused: its clock does not run
    assert (await listing(runtime, department="hrss", on=ON)) == ([], [])

    resp = await api.get("/v1/ops/deadlines", params={"department": "amr"}, headers=ops_headers)
    assert resp.status_code == 200
    assert late in {d["application_id"] for d in resp.json()["overdue"]}  # 2025 is long past
    bad = await api.get("/v1/ops/deadlines", params={"department": "x"}, headers=ops_headers)
    assert bad.status_code == 404
    assert (await api.get("/v1/ops/deadlines")).status_code == 401
    depts = (await api.get("/v1/ops/departments", headers=ops_headers)).json()["items"]
    assert {d["code"]: d["overdue"] for d in depts}["amr"] >= 1


async def test_watch_recomputes_a_promise_made_without_the_calendar(runtime: Runtime) -> None:
    from gateway.deadlines import refresh_promised_dates

    body = ApplicationIn.model_validate(application(matter_code="QR00202000"))
    accepted = (await submit(runtime, Client("c", "t", "C01", False), "promise", body)).accepted
    right = accepted.promised_by
    assert right is not None
    # as if intake had counted weekends only for a year the old calendar did not know
    async with runtime.engine.begin() as conn:
        await conn.execute(
            update(applications)
            .where(applications.c.id == accepted.id)
            .values(promised_by=right - dt.timedelta(days=3), promised_final=False)
        )
    assert await refresh_promised_dates(runtime) == 1
    assert await refresh_promised_dates(runtime) == 0  # settled: nothing more to do
    overdue, soon = await listing(runtime, within_days=100)
    [mine] = [d for d in overdue + soon if d.application_id == accepted.id]
    assert mine.promised_by == right


def test_counted_working_days_equal_a_day_by_day_walk() -> None:
    import random

    from gateway.workdays import _walk, is_workday

    rng = random.Random(14)
    for _ in range(3000):  # the calendar's years, years beyond it, and spans across years
        start = dt.date(2019, 12, 20) + dt.timedelta(days=rng.randint(0, 365 * 14))
        days = rng.choice((0, 1, 2, 5, 20, 60, 400))
        assert add_workdays(start, days) == _walk(start, days), (start, days)
        end = start + dt.timedelta(days=rng.randint(-3, 500))
        walked, day = 0, start
        while day < end:
            day += dt.timedelta(days=1)
            walked += is_workday(day)[0]
        assert workdays_between(start, end) == walked, (start, end)
