"""A page of department reports (a change-feed page, a pull of result files) is applied with a
statement per table, not per report, and its documents' files are written before the
transaction: one report at a time, a 100-report page held SQLite's write lock for 200-280 ms
in the city-day run while the API's intake waited on it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import event, func, select

from gateway.config.loader import Config
from gateway.connector import CaseUpdate, ResultDocument
from gateway.events import Source
from gateway.runtime import Runtime
from gateway.store import driver_pg
from gateway.store.tables import applications, events, result_documents
from gateway.updates import Ended, apply_case_updates, changing_nothing
from tests.handout_fixtures import quiet_runtime
from tests.test_dispatch import statuses, submit_many


@pytest.fixture
async def runtime(example_config: Config) -> AsyncIterator[Runtime]:
    async with quiet_runtime(example_config) as rt:
        yield rt


def _approval(i: int, content: bytes) -> CaseUpdate:
    doc = ResultDocument(name="licence.pdf", content=content)
    return CaseUpdate(case_id=f"AMR-{i}", status="9", documents=[doc])


async def _statements(runtime: Runtime, page: list[tuple[str, CaseUpdate, int | None]]) -> int:
    sent: list[str] = []

    def spy(_c: Any, _cur: Any, statement: str, *_rest: Any) -> None:
        sent.append(statement)

    # and those sent straight through asyncpg (gateway.store.driver_pg)
    originals = {name: getattr(driver_pg.Statement, name) for name in ("fetch", "run")}

    def noting(original: Any) -> Any:
        async def noted(self: driver_pg.Statement, *args: Any) -> Any:
            sent.append(str(self.stmt))
            return await original(self, *args)

        return noted

    event.listen(runtime.engine.sync_engine, "before_cursor_execute", spy)
    for name, original in originals.items():
        setattr(driver_pg.Statement, name, noting(original))
    try:
        await apply_case_updates(runtime, page, source=Source.POLL, actor="poll/amr")
    finally:
        event.remove(runtime.engine.sync_engine, "before_cursor_execute", spy)
        for name, original in originals.items():
            setattr(driver_pg.Statement, name, original)
    return len(sent)


async def test_a_page_costs_the_same_statements_whatever_its_length(runtime: Runtime) -> None:
    ids = await submit_many(runtime, 24)
    small = [(i, _approval(n, f"licence {n}".encode()), None) for n, i in enumerate(ids[:4])]
    large = [(i, _approval(n, f"licence {n}".encode()), None) for n, i in enumerate(ids[4:])]
    few, many = await _statements(runtime, small), await _statements(runtime, large)
    assert few == many, (few, many)  # one report at a time: ~8 statements more per report
    assert set((await statuses(runtime, ids)).values()) == {"ready_for_pickup"}


async def test_a_case_reported_twice_in_a_page_is_judged_again_after_its_first_report(
    runtime: Runtime,
) -> None:
    [one, other] = await submit_many(runtime, 2)
    page: list[tuple[str, CaseUpdate, int | None]] = [
        (one, CaseUpdate(case_id="AMR-1", status="5"), None),  # in review
        (other, _approval(2, b"other's licence"), None),
        (one, _approval(1, b"licence"), None),  # approved, from in review
        (one, _approval(1, b"licence"), None),  # the same again: a duplicate
    ]
    ended: list[Ended | None] = []
    done = await apply_case_updates(
        runtime, page, source=Source.POLL, actor="poll/amr", ended=ended
    )
    assert [[c.to_status.value for c in changes] for changes in done] == [
        ["in_review"],
        ["approved", "ready_for_pickup"],
        ["approved", "ready_for_pickup"],
        [],
    ]
    assert [e.status if e else None for e in ended] == [
        "in_review",
        "ready_for_pickup",
        "ready_for_pickup",
        "ready_for_pickup",
    ]
    async with runtime.engine.connect() as conn:
        listed = await conn.execute(
            select(result_documents.c.application_id, func.count()).group_by(
                result_documents.c.application_id
            )
        )
        assert dict(listed.all()) == {one: 1, other: 1}  # the same licence listed once


async def test_documents_are_written_before_the_transaction_begins(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = await submit_many(runtime, 3)
    order: list[str] = []
    put_many = runtime.blobs.put_many

    async def spy_put(items: Any) -> list[str]:
        order.append(f"put {len(items)}")
        return await put_many(items)

    def spy_begin(_conn: Any) -> None:
        order.append("begin")

    monkeypatch.setattr(runtime.blobs, "put_many", spy_put)
    event.listen(runtime.engine.sync_engine, "begin", spy_begin)
    try:
        page = [(i, _approval(n, f"licence {n}".encode()), None) for n, i in enumerate(ids)]
        await apply_case_updates(runtime, page, source=Source.POLL, actor="poll/amr")
    finally:
        event.remove(runtime.engine.sync_engine, "begin", spy_begin)
    assert order == ["put 3", "begin"]  # all three files in one trip, none under the lock


async def _where(runtime: Runtime, app_id: str) -> tuple[Any, ...]:
    """A case's row and what is listed and written for it (to see that nothing was)."""
    async with runtime.engine.connect() as conn:
        row = (await conn.execute(select(applications).where(applications.c.id == app_id))).one()
        docs = (
            await conn.execute(
                select(func.count()).where(result_documents.c.application_id == app_id)
            )
        ).scalar()
        written = (
            await conn.execute(select(func.count()).where(events.c.application_id == app_id))
        ).scalar()
    return tuple(row), docs, written


async def test_a_report_that_changes_nothing_is_known_from_one_read_as_the_state_machine_finds(
    runtime: Runtime,
) -> None:
    """``changing_nothing`` (a change feed's re-read of what another process applied) calls a
    report a no-op only where applying it changes and writes nothing, and says where its case
    stands as applying it would (``Ended``); a new document, a step the state machine takes,
    documents completing a decided case, an approval warned about as undocumented, an unknown
    status code, a report about an older version with a new document: all go to be applied."""
    ready, review, approved, keyed = await submit_many(runtime, 4)
    await apply_case_updates(
        runtime,
        [
            (ready, _approval(1, b"licence"), None),
            (keyed, CaseUpdate(case_id=f"ow-{keyed}-v1", status="4"), None),  # our key for now
            (review, CaseUpdate(case_id="AMR-2", status="5"), None),
            (approved, CaseUpdate(case_id="AMR-3", status="9"), None),  # nothing to hand out
        ],
        source=Source.POLL,
        actor="poll/amr",
    )
    link = ResultDocument(name="letter.pdf", url="https://amr.example/letter/1")
    reports: list[tuple[str, CaseUpdate, int | None, bool]] = [
        (ready, _approval(1, b"licence"), None, True),  # the same again
        (ready, _approval(1, b"licence"), 1, True),
        (ready, CaseUpdate(case_id="AMR-1", status="9"), None, True),  # stale: handed out
        (ready, CaseUpdate(case_id="AMR-1", status="5"), None, True),
        (ready, CaseUpdate(case_id="AMR-9", status="9"), None, True),  # its number kept
        (ready, _approval(1, b"a second licence"), None, False),  # a document to list
        (ready, CaseUpdate(case_id="AMR-1", status="9", documents=[link]), None, False),
        (ready, _approval(1, b"a second licence"), 0, False),  # an older version's: listed
        (review, CaseUpdate(case_id="AMR-2", status="5"), None, True),  # a duplicate
        (review, CaseUpdate(case_id="AMR-2", status="9"), None, False),  # a step to take
        (review, CaseUpdate(case_id="AMR-2", status="77"), None, False),  # an unknown code
        (approved, CaseUpdate(case_id="AMR-3", status="9"), None, False),  # warned about
        (approved, _approval(3, b"licence"), None, False),  # hands the case out
        (approved, CaseUpdate(case_id="AMR-3", status="4"), None, True),  # stale: decided
        (review, CaseUpdate(case_id="AMR-2", status="2"), None, False),  # illegal: logged
        (keyed, CaseUpdate(case_id=f"ow-{keyed}-v1", status="4"), None, True),
        # the department's own number at last, kept in place of our key
        (
            keyed,
            CaseUpdate(case_id="AMR-4", idempotency_key=f"ow-{keyed}-v1", status="4"),
            1,
            False,
        ),
    ]
    async with runtime.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(applications.c.id, applications.c.status, applications.c.version)
            )
        ).all()
    read = {app_id: Ended(status, version) for app_id, status, version in rows}
    verdicts = await changing_nothing(
        runtime, "amr", [(a, upd, version, read[a]) for a, upd, version, _n in reports]
    )
    assert [v is not None for v in verdicts] == [nothing for *_r, nothing in reports]
    for (app_id, upd, version, _n), verdict in zip(reports, verdicts, strict=True):
        if verdict is None:
            continue
        before = await _where(runtime, app_id)
        ended: list[Ended | None] = []
        done = await apply_case_updates(
            runtime, [(app_id, upd, version)], source=Source.POLL, actor="poll/amr", ended=ended
        )
        assert done == [[]] and ended == [verdict], upd
        assert await _where(runtime, app_id) == before, upd  # nothing written
