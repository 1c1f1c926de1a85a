"""Multi-case writes lock their cases in id order first: locked one by one in another order, a
change-feed page deadlocked on PostgreSQL with a poll round's id-ordered lock (the fault suite
in CI: 'deadlock detected', a traceback in the log)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from sqlalchemy import event

from gateway.config.loader import Config
from gateway.connector import CaseUpdate
from gateway.events import Source
from gateway.runtime import Runtime
from gateway.updates import apply_case_updates
from tests.handout_fixtures import quiet_runtime
from tests.test_dispatch import submit_many


@pytest.fixture
async def runtime(example_config: Config) -> AsyncIterator[Runtime]:
    async with quiet_runtime(example_config) as rt:
        yield rt


def _spy_on_the_driver(monkeypatch: pytest.MonkeyPatch, sent: list[tuple[str, Any]]) -> None:
    """Statements sent straight through the driver (gateway.store.driver: SQLite's hot paths;
    gateway.store.driver_pg: PostgreSQL's) are no cursor executes SQLAlchemy sees: note them in
    ``sent`` too, in order."""
    from gateway.store import driver, driver_pg

    def noting(name: str, original: Any, *, method: bool) -> Any:
        async def call(*args: Any) -> Any:
            sent.append((name, args[2] if method else args[1:]))
            return await original(*args)

        return call

    for name in ("all", "rows", "run"):
        monkeypatch.setattr(
            driver.Query, name, noting(name, getattr(driver.Query, name), method=True)
        )
    for name in ("execute_many", "insert_many"):
        monkeypatch.setattr(driver, name, noting(name, getattr(driver, name), method=False))
    for name in ("fetch", "run"):
        original = getattr(driver_pg.Statement, name)
        monkeypatch.setattr(driver_pg.Statement, name, noting(name, original, method=True))


def _flat(value: Any) -> Iterator[Any]:
    if isinstance(value, list | tuple):
        for item in value:
            yield from _flat(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _flat(item)
    else:
        yield value


async def test_a_feed_page_locks_its_cases_in_id_order_before_applying_any(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = await submit_many(runtime, 4)
    page = [(i, CaseUpdate(case_id=f"AMR-{i}", status="5"), None) for i in sorted(ids)[::-1]]
    sent: list[tuple[str, Any]] = []

    def spy(_c: Any, _cur: Any, statement: str, parameters: Any, *_rest: Any) -> None:
        sent.append((statement, parameters))

    _spy_on_the_driver(monkeypatch, sent)
    event.listen(runtime.engine.sync_engine, "before_cursor_execute", spy)
    try:
        await apply_case_updates(runtime, page, source=Source.POLL, actor="poll/amr")
    finally:
        event.remove(runtime.engine.sync_engine, "before_cursor_execute", spy)
    naming = [[v for v in _flat(params) if v in ids] for _s, params in sent]
    first = next(names for names in naming if names)
    assert first == sorted(ids)  # the whole page at once, in id order, before any one case


async def test_a_recorder_batch_with_failures_locks_its_cases_in_id_order_first(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy import update

    from gateway.dispatcher import Dispatcher, _Work
    from gateway.store.tables import applications

    ids = await submit_many(runtime, 3)

    def retry(app_id: str) -> _Work:
        async def run(conn: Any) -> list[Any]:  # as a retry records: the case's last error
            q = update(applications).where(applications.c.id == app_id)
            await conn.execute(q.values(last_error="retrying"))
            return []

        return _Work(app_id, run)

    sent: list[tuple[str, Any]] = []

    def spy(_c: Any, _cur: Any, statement: str, parameters: Any, *_rest: Any) -> None:
        sent.append((statement, parameters))

    dispatcher = Dispatcher(runtime, owner="me")
    _spy_on_the_driver(monkeypatch, sent)
    event.listen(runtime.engine.sync_engine, "before_cursor_execute", spy)
    try:
        async with runtime.engine.begin() as conn:
            await dispatcher._store(conn, [retry(i) for i in sorted(ids)[::-1]])
    finally:
        event.remove(runtime.engine.sync_engine, "before_cursor_execute", spy)
    naming = [[v for v in _flat(params) if v in ids] for _s, params in sent]
    assert next(names for names in naming if names) == sorted(ids)
