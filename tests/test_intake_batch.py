"""Intake's group commit reads a batch's API keys and their idempotency records in one
statement (``_keys_and_records``): a revoked key is still refused, a used Idempotency-Key still
replays its stored answer or is a 409 with another body, on SQLite and PostgreSQL. On
PostgreSQL the batch's INSERTs are one statement, storing what SQLAlchemy's would."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway import intake
from gateway.errors import IntakeProblem
from gateway.runtime import Runtime
from gateway.store import jobs
from gateway.store.clients import Client, create_client, hash_key, revoke
from gateway.store.db import create_engine
from gateway.store.lists import is_postgresql
from gateway.store.tables import (
    applications,
    dispatch_jobs,
    events,
    handovers,
    idempotency_records,
)
from tests.conftest import application
from tests.test_store_driver import AT, _application, _record


def _refuse_unknown(found: Client | None) -> Client:
    if found is None:
        raise IntakeProblem(401, "Unknown key", "this API key is not known or was revoked")
    return found


def _refuse_unknown_or_unprintable(key: str) -> Any:
    def admit(found: Client | None) -> Client:
        if not key.isprintable():  # as the API's Idempotency-Key check
            raise IntakeProblem(400, "Bad Idempotency-Key", "not printable")
        return _refuse_unknown(found)

    return admit


def _submit(runtime: Runtime, secret: str, key: str, **changes: Any) -> Any:
    body = intake.ApplicationIn.model_validate(application(**changes))
    check = intake.KeyCheck(hash_key(secret), _refuse_unknown_or_unprintable(key))
    return intake.submit_keyed(runtime, check, key, body, intake.check_body(runtime, body))


@pytest.fixture
def batches(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every batch intake's group commit stores (patched before its first use)."""
    sizes: list[int] = []
    store = intake._store_in_order

    async def counted(conn: Any, batch: list[Any]) -> list[Any]:
        sizes.append(len(batch))
        return await store(conn, batch)

    monkeypatch.setattr(intake, "_store_in_order", counted)
    return sizes


async def _count(runtime: Runtime) -> int:
    async with runtime.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(applications))).scalar())


async def test_one_lookup_judges_keys_and_replays_in_one_batch(
    runtime: Runtime, batches: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    async with runtime.engine.begin() as conn:
        _desk, secret = await create_client(conn, name="desk", centre="C01", ops=False)
        gone, revoked_secret = await create_client(conn, name="old", centre="C01", ops=False)
        assert await revoke(conn, gone.id) is not None
    first = await _submit(runtime, secret, "used")
    assert not first.replayed and await _count(runtime) == 1

    async def no_second_read(*_args: Any) -> Any:
        raise AssertionError("the idempotency records were read by a statement of their own")

    monkeypatch.setattr(intake, "_records", no_second_read)
    answers = await asyncio.gather(
        _submit(runtime, secret, "used"),  # the same body again: its stored answer
        _submit(runtime, secret, "used", form={"other": "body"}),  # 409
        _submit(runtime, secret, "used", matter_code="NO0000000"),  # refused body, used key: 409
        _submit(runtime, revoked_secret, "used"),  # revoked: 401, whatever the key did before
        _submit(runtime, revoked_secret, "new"),
        _submit(runtime, secret, "fresh"),  # a new application
        _submit(runtime, secret, "fresh"),  # the same key twice in one batch: the first's answer
        _submit(runtime, secret, "nul\x00key"),  # a key PostgreSQL cannot take: 400, alone
        return_exceptions=True,
    )
    assert batches == [1, 8]  # one batch, one look-up, no item stored again on its own
    replay, other, refused, revoked_used, revoked_new, fresh, fresh_again, bad_key = answers
    assert isinstance(bad_key, IntakeProblem) and bad_key.status == 400, bad_key
    assert isinstance(replay, intake.IntakeResult) and replay.replayed
    assert replay.accepted == first.accepted
    for conflict in (other, refused):
        assert isinstance(conflict, IntakeProblem) and conflict.status == 409, conflict
    for problem in (revoked_used, revoked_new):
        assert isinstance(problem, IntakeProblem) and problem.status == 401, problem
    assert isinstance(fresh, intake.IntakeResult) and not fresh.replayed
    assert isinstance(fresh_again, intake.IntakeResult) and fresh_again.replayed
    assert fresh_again.accepted == fresh.accepted
    assert await _count(runtime) == 2


async def test_a_client_known_before_the_batch_still_gets_its_records_read(
    runtime: Runtime, batches: list[int]
) -> None:
    """A submission whose client is known already (a config key, ``intake.submit``) is not in
    the key look-up: its records are read for it, in the same batch as a looked-up key's."""
    async with runtime.engine.begin() as conn:
        desk, secret = await create_client(conn, name="desk", centre="C01", ops=False)
        _other, other_secret = await create_client(conn, name="desk 2", centre="C01", ops=False)
    first = await _submit(runtime, secret, "used")
    body = intake.ApplicationIn.model_validate(application())
    conflicting = intake.ApplicationIn.model_validate(application(form={"other": "body"}))
    replay, conflict, looked_up = await asyncio.gather(
        intake.submit(runtime, desk, "used", body),
        intake.submit(runtime, desk, "used", conflicting),
        _submit(runtime, other_secret, "used"),  # another client's key "used": its own
        return_exceptions=True,
    )
    assert batches[-1] == 3
    assert isinstance(replay, intake.IntakeResult) and replay.replayed
    assert replay.accepted == first.accepted
    assert isinstance(conflict, IntakeProblem) and conflict.status == 409
    assert isinstance(looked_up, intake.IntakeResult) and not looked_up.replayed
    assert looked_up.accepted.id != first.accepted.id
    assert await _count(runtime) == 2


def _rows(app_id: str) -> tuple[tuple[Any, list[dict[str, Any]]], ...]:
    """One application's rows in every table intake writes, as intake builds them."""
    event = {
        "application_id": app_id,
        "version": 1,
        "at": AT,
        "source": "api",
        "actor": "C01/王",
        "from_status": None,
        "to_status": "received",
        "detail": {"receipt_number": f"C01-20261201-{app_id}", "list": [1, "二"]},
    }
    handover = {
        "application_id": app_id,
        "centre": "C01",
        "method": "pickup",
        "pickup_code": "12345678",
        "code_failures": 0,
    }
    return (
        (applications, [_application(app_id)]),
        (events, [event]),
        (dispatch_jobs, [jobs.new_job_row(app_id, 1, "amr", AT)]),
        (handovers, [handover]),
        (idempotency_records, [_record(f"k-{app_id}")]),
    )


async def _stored(engine: AsyncEngine, table: str, app_id: str) -> tuple[Any, ...]:
    # the columns as the database holds them, but the ids a sequence gives
    column = (
        "key"
        if table == "idempotency_records"
        else ("id" if table == "applications" else "application_id")
    )
    value = f"k-{app_id}" if table == "idempotency_records" else app_id
    async with engine.connect() as conn:
        [row] = (
            await conn.execute(text(f'SELECT * FROM {table} WHERE "{column}" = :v'), {"v": value})
        ).all()
    return tuple(v for k, v in row._mapping.items() if k != "id" or table == "applications")


async def test_one_statement_stores_what_one_insert_a_table_stores(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        async with engine.begin() as conn:
            if not is_postgresql(conn):
                pytest.skip("PostgreSQL's one-statement INSERT; SQLite goes through the driver")
            batch = _rows("a1")
            pairs = zip(batch, _rows("a2"), strict=True)
            both = tuple((table, rows + other) for (table, rows), (_t, other) in pairs)
            await intake._insert_at_once(conn, both)
            for table, rows in _rows("b1"):
                await conn.execute(insert(table), rows)
        for table, _ in batch:
            # the same but for the application's id (in its receipt number and keys too)
            fast = repr(await _stored(engine, table.name, "a2")).replace("a2", "*")
            core = repr(await _stored(engine, table.name, "b1")).replace("b1", "*")
            assert fast == core, table.name
        async with engine.connect() as conn:
            read = (await conn.execute(select(applications).where(applications.c.id == "a1"))).one()
        expected = _application("a1")
        assert {k: read._mapping[k] for k in expected} == expected
    finally:
        await engine.dispose()
