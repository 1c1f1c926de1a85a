"""The summary tables behind deadlines and the console's figures (gateway/clocks.py): what they
answer equals what the event history says, on every day, and a refresh picks up what changed."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select, update

from gateway import clocks, deadlines
from gateway.deadlines import CHINA, deadline_of, listing, pause_history
from gateway.runtime import Runtime
from gateway.states import FINAL
from gateway.store.tables import applications, case_clocks, daily_figures
from tests.test_deadlines import _case, _event, at


async def _from_history(
    runtime: Runtime, on: dt.date, within: int
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Overdue and due-soon (id, days left) computed straight from every open case's events."""
    async with runtime.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(applications).where(
                    applications.c.status.not_in([s.value for s in FINAL]),
                    applications.c.promised_by.is_not(None),
                )
            )
        ).all()
        hist = await pause_history(conn, [r.id for r in rows])
    items = [deadline_of(r, hist.get(r.id, []), on) for r in rows]
    overdue = sorted((d.application_id, d.days_left) for d in items if d.days_left < 0)
    soon = sorted(
        (d.application_id, d.days_left)
        for d in items
        if 0 <= d.days_left <= within and not d.paused
    )
    return overdue, soon


async def test_lists_and_counts_equal_the_event_history_on_every_day(runtime: Runtime) -> None:
    # promised dates around a weekend and the Qingming holiday (4-6 April 2025)
    for i, day in enumerate(("2025-03-28", "2025-03-31", "2025-04-03", "2025-04-07", "2025-04-09")):
        await _case(runtime, f"plain{i}", dt.date.fromisoformat(day))
    paused = await _case(runtime, "paused", dt.date(2025, 4, 2))
    await _event(runtime, paused, at("2025-03-27"), "in_review", "supplement_required")
    resumed = await _case(runtime, "resumed", dt.date(2025, 3, 31))
    await _event(runtime, resumed, at("2025-03-24"), "in_review", "suspended")
    await _event(runtime, resumed, at("2025-03-27"), "suspended", "in_review")
    for offset in range(24):
        on = dt.date(2025, 3, 25) + dt.timedelta(days=offset)
        for within in (0, 2, 3):
            overdue, soon = await listing(runtime, within_days=within, on=on)
            got = (
                sorted((d.application_id, d.days_left) for d in overdue),
                sorted((d.application_id, d.days_left) for d in soon),
            )
            assert got == await _from_history(runtime, on, within), (on, within)
            counted = await deadlines.counts(runtime, within_days=within, on=on)
            assert sum(c.overdue for c in counted.values()) == len(overdue), (on, within)
            assert sum(c.due_soon for c in counted.values()) == len(soon), (on, within)
            late = await deadlines.most_overdue(runtime, "amr", 2, on=on)
            assert late == overdue[:2], on


async def test_a_refresh_picks_up_decisions_and_pauses(runtime: Runtime) -> None:
    app_id = await _case(runtime, "late", dt.date(2025, 3, 7))
    on = dt.date(2025, 3, 12)
    assert (await deadlines.counts(runtime, within_days=2, on=on))["amr"].overdue == 1
    # a supplement: the clock stops (the event is written as the store writes it: with the
    # case's updated_at moved, which is what the refresh follows)
    await _event(runtime, app_id, at("2025-03-05"), "in_review", "supplement_required")
    async with runtime.engine.begin() as conn:
        await conn.execute(
            update(applications)
            .where(applications.c.id == app_id)
            .values(status="supplement_required", updated_at=dt.datetime.now(dt.UTC))
        )
    assert "amr" not in await deadlines.counts(runtime, within_days=2, on=on)
    # decided on 12 March after a pause of 5 working days (6-12 March): due 14 March, on time
    decided = dt.datetime(2025, 3, 12, 10, tzinfo=CHINA)
    await _event(runtime, app_id, decided, "supplement_required", "approved")
    async with runtime.engine.begin() as conn:
        await conn.execute(
            update(applications)
            .where(applications.c.id == app_id)
            .values(status="approved", decided_at=decided, updated_at=dt.datetime.now(dt.UTC))
        )
    assert await clocks.refresh(runtime)
    async with runtime.engine.connect() as conn:
        rows = (await conn.execute(select(daily_figures))).all()
        assert [(r.department, r.day, r.decided, r.on_time) for r in rows] == [
            ("amr", dt.date(2025, 3, 12), 1, 1)
        ]
        assert await clocks.decided_per_department(conn, on, on) == {"amr": (1, 1)}
    assert "amr" not in await deadlines.counts(runtime, within_days=2, on=on)


async def test_the_same_hour_recounted_at_once_is_not_an_error(runtime: Runtime) -> None:
    # the daemon's deadlines task and a console page refresh at the same time: both recount
    # the hour of a delivery (a delete-then-insert failed the second on the primary key)
    import asyncio

    app_id = await _case(runtime, "delivered", dt.date(2025, 3, 7))
    hour = dt.datetime(2025, 3, 3, 9, tzinfo=dt.UTC)
    await _event(runtime, app_id, hour + dt.timedelta(minutes=5), "dispatching", "delivered")

    async def recount() -> None:
        async with runtime.engine.begin() as conn:
            await clocks._recount(conn, hour)

    await asyncio.gather(recount(), recount(), recount())
    async with runtime.engine.connect() as conn:
        assert await clocks.deliveries_since(conn, hour) == [("amr", hour, 1)]


async def test_refreshes_at_once_agree_and_fail_nothing(runtime: Runtime) -> None:
    # the figures task, the deadline watch and a console page refresh together: each finds
    # the same cases new and the same days to recount (on PostgreSQL they overlap for real)
    import asyncio

    for i in range(5):
        app_id = await _case(runtime, f"decided{i}", dt.date(2025, 3, 7))
        decided = dt.datetime(2025, 3, 6 + i % 2, 10, tzinfo=CHINA)
        async with runtime.engine.begin() as conn:
            await conn.execute(
                update(applications)
                .where(applications.c.id == app_id)
                .values(status="approved", decided_at=decided, updated_at=dt.datetime.now(dt.UTC))
            )
    assert all(await asyncio.gather(*(clocks.refresh(runtime) for _ in range(4))))
    async with runtime.engine.connect() as conn:
        assert await clocks.decided_per_department(
            conn, dt.date(2025, 3, 6), dt.date(2025, 3, 7)
        ) == {"amr": (5, 5)}
        assert (await conn.execute(select(func.count()).select_from(case_clocks))).scalar() == 5
