"""Who follows a case, through the store's write path: every event written is queued for the
active subscriptions of the case's centre or its handover centre, a key-scoped one only for
the cases its key submitted. On PostgreSQL the write is one statement (UPDATEs, events INSERT
and fan-out together); on SQLite the fan-out is a statement of its own: both select through
``outbox.followers``, and this test holds each engine to the same rules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import event

from gateway.config.loader import Config
from gateway.events import Source
from gateway.intake import ApplicationIn, submit
from gateway.runtime import Runtime
from gateway.states import State
from gateway.store import cases, driver_pg
from gateway.store.clients import Client, create_client
from gateway.webhooks import SubscriptionIn, deliveries, disable, subscribe
from tests.conftest import application
from tests.handout_fixtures import quiet_runtime


@pytest.fixture
async def runtime(example_config: Config) -> AsyncIterator[Runtime]:
    async with quiet_runtime(example_config) as rt:
        yield rt


async def _client(runtime: Runtime, name: str, centre: str) -> Client:
    async with runtime.engine.begin() as conn:
        client, _key = await create_client(conn, name=name, centre=centre, ops=False)
    return client


def _to(url: str, scope: str) -> SubscriptionIn:
    return SubscriptionIn.model_validate({"url": url, "scope": scope})


async def test_a_batch_write_queues_each_event_for_exactly_the_cases_followers(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    desk = await _client(runtime, "desk", "C01")
    other_desk = await _client(runtime, "other desk", "C01")
    pickup_desk = await _client(runtime, "pickup desk", "C02")
    elsewhere = await _client(runtime, "elsewhere", "C03")
    subscribers = {
        "centre": (desk, "centre"),
        "own key": (desk, "key"),
        "handover centre": (pickup_desk, "centre"),
        "another key": (other_desk, "key"),
        "disabled": (desk, "centre"),
        "another centre": (elsewhere, "centre"),
    }
    subs = {
        name: (await subscribe(runtime, client, _to("http://a.test/h", scope))).id
        for name, (client, scope) in subscribers.items()
    }
    await disable(runtime, desk, subs["disabled"])

    handed_over = ApplicationIn.model_validate(
        application(delivery={"method": "pickup", "centre": "C02"})
    )
    ours = (await submit(runtime, desk, "k-ours", handed_over)).accepted.id
    theirs = (
        await submit(runtime, other_desk, "k-theirs", ApplicationIn.model_validate(application()))
    ).accepted.id

    # both cases in one batch: on PostgreSQL, one statement writes them and fans them out
    async with runtime.engine.begin() as conn:
        locked = await cases.lock_applications(conn, [ours, theirs])
        writes = [cases.Write(app, [(State(app.status), State.DISPATCHING, {})]) for app in locked]
        sent: list[str] = []

        def spy(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
            sent.append(statement)

        # and those sent straight through asyncpg (gateway.store.driver_pg)
        for name in ("fetch", "run"):
            original = getattr(driver_pg.Statement, name)

            async def noted(self: Any, *args: Any, _original: Any = original) -> Any:
                sent.append(str(self.stmt))
                return await _original(self, *args)

            monkeypatch.setattr(driver_pg.Statement, name, noted)
        event.listen(runtime.engine.sync_engine, "before_cursor_execute", spy)
        try:
            await cases.write_many(conn, writes, source=Source.DISPATCH, actor="test")
        finally:
            event.remove(runtime.engine.sync_engine, "before_cursor_execute", spy)
        written = {app_id: (await cases.history(conn, app_id))[-1] for app_id in (ours, theirs)}
    assert {e.to_status for e in written.values()} == {State.DISPATCHING.value}
    if runtime.engine.dialect.name == "postgresql":
        assert len(sent) == 1, sent  # one round trip: the hot path counts them

    queued: dict[str, set[str]] = {ours: set(), theirs: set()}
    for name, sub_id in subs.items():
        client = subscribers[name][0]
        for d in await deliveries(runtime, client, sub_id, state=None, limit=100, after=None):
            if d.event_id == written[d.application_id].id:
                queued[d.application_id].add(name)
    assert queued == {
        ours: {"centre", "own key", "handover centre"},
        theirs: {"centre", "another key"},
    }
