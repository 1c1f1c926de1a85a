"""The state machine: unit properties, and a hypothesis stateful test against the real store
showing that no illegal transition is ever stored and late or duplicate updates are no-ops."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from sqlalchemy import insert, select

from gateway.clock import now
from gateway.events import Source
from gateway.states import FORWARD, RESTART, State, Verdict, judge, reachable
from gateway.store import cases
from gateway.store.db import create_engine
from gateway.store.tables import applications, events
from tests.databases import migrated_sqlite

states = st.sampled_from(list(State))


@given(states, states)
def test_judge_is_consistent_with_the_graph(current: State, target: State) -> None:
    verdict = judge(current, target)
    if current == target:
        assert verdict is Verdict.DUPLICATE
    elif target in reachable(current):
        assert verdict is Verdict.APPLY
    else:
        assert verdict in (Verdict.STALE, Verdict.ILLEGAL)


def test_department_may_skip_steps_but_never_go_back() -> None:
    assert judge(State.DELIVERED, State.APPROVED) is Verdict.APPLY
    assert judge(State.APPROVED, State.IN_REVIEW) is Verdict.STALE
    assert judge(State.IN_REVIEW, State.ACCEPTED) is Verdict.STALE
    assert judge(State.WITHDRAWN, State.APPROVED) is Verdict.STALE
    assert judge(State.FAILED, State.DELIVERED) is Verdict.STALE  # final: only a replay moves it
    assert judge(State.SUSPENDED, State.NOT_ACCEPTED) is Verdict.ILLEGAL
    assert judge(State.SUPPLEMENT_REQUIRED, State.ACCEPTED) is not Verdict.APPLY
    assert judge(State.SUSPENDED, State.APPROVED) is Verdict.APPLY


def test_every_state_has_edges_declared() -> None:
    assert set(FORWARD) == set(State)
    assert set(RESTART) == {State.SUPPLEMENT_REQUIRED, State.FAILED}


def _legal(src: str | None, dst: str, restart: bool) -> bool:
    if src is None:
        return dst == State.RECEIVED.value
    if restart:
        return RESTART.get(State(src)) == State(dst)
    return State(dst) in reachable(State(src))


class StoredCase(RuleBasedStateMachine):
    """Drive one stored case with arbitrary updates; the store must follow the model."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.dir = tempfile.TemporaryDirectory()
        database = Path(self.dir.name) / "sm.db"
        migrated_sqlite(database)  # a copy: migrating for each of the 40 examples took ~10 s
        self.engine = create_engine(f"sqlite+aiosqlite:///{database}")
        self.model = State.RECEIVED
        self.version = 1
        self.restarts: set[int] = set()  # event ids written by explicit restarts
        self.run(self._insert())

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def _insert(self) -> None:
        t = now()
        async with self.engine.begin() as conn:
            await conn.execute(
                insert(applications).values(
                    id="a1",
                    receipt_number="C01-1",
                    client_id="c",
                    centre="C01",
                    matter_code="GG00301000",
                    matter_name="m",
                    region="339900",
                    department="amr",
                    status="received",
                    version=1,
                    applicant={},
                    form={},
                    materials=[],
                    delivery={},
                    idempotency_key="k",
                    created_at=t,
                    updated_at=t,
                )
            )
            await conn.execute(
                insert(events).values(
                    application_id="a1",
                    version=1,
                    at=t,
                    source="api",
                    actor="t",
                    from_status=None,
                    to_status="received",
                    detail={},
                )
            )

    async def _status(self) -> tuple[str, int]:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(applications.c.status, applications.c.version).where(
                        applications.c.id == "a1"
                    )
                )
            ).one()
            return row[0], row[1]

    @rule(
        new=states,
        source=st.sampled_from([Source.POLL, Source.CALLBACK, Source.DISPATCH]),
        old_version=st.booleans(),
    )
    def department_update(self, new: State, source: Source, old_version: bool) -> None:
        version = self.version - 1 if old_version and self.version > 1 else self.version

        async def go() -> None:
            async with self.engine.begin() as conn:
                app = await cases.lock_application(conn, "a1")
                await cases.advance(conn, app, [new], source=source, actor="test", version=version)

        self.run(go())
        if version == self.version and judge(self.model, new) is Verdict.APPLY:
            self.model = new

    @precondition(lambda self: self.model in RESTART)
    @rule()
    def explicit_restart(self) -> None:
        bump = self.model is State.SUPPLEMENT_REQUIRED

        async def go() -> None:
            async with self.engine.begin() as conn:
                app = await cases.lock_application(conn, "a1")
                result = await cases.change_status(
                    conn,
                    app,
                    State.DISPATCHING,
                    source=Source.OPERATOR,
                    actor="test",
                    restart=True,
                    extra={"version": app.version + 1} if bump else None,
                )
                assert result.change is not None
                last = (
                    await conn.execute(select(events.c.id).order_by(events.c.id.desc()).limit(1))
                ).scalar_one()
                self.restarts.add(last)

        self.run(go())
        self.model = State.DISPATCHING
        self.version += int(bump)

    @rule(new=states)
    def restart_from_anywhere_is_refused(self, new: State) -> None:
        if self.model in RESTART:
            return

        async def go() -> Verdict:
            async with self.engine.begin() as conn:
                app = await cases.lock_application(conn, "a1")
                return (
                    await cases.change_status(
                        conn,
                        app,
                        State.DISPATCHING,
                        source=Source.OPERATOR,
                        actor="t",
                        restart=True,
                    )
                ).verdict

        assert self.run(go()) is Verdict.ILLEGAL

    @invariant()
    def store_matches_model_and_history_is_legal(self) -> None:
        status, version = self.run(self._status())
        assert (status, version) == (self.model.value, self.version)

        async def history() -> list[Any]:
            async with self.engine.connect() as conn:
                return list((await conn.execute(select(events).order_by(events.c.id))).all())

        rows = self.run(history())
        previous = None
        for row in rows:
            assert row.from_status == previous  # a chain: no lost or duplicated step
            assert _legal(row.from_status, row.to_status, row.id in self.restarts), row
            previous = row.to_status
        assert previous == status

    def teardown(self) -> None:
        self.run(self.engine.dispose())
        self.loop.close()
        self.dir.cleanup()


StoredCase.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
test_stored_case = pytest.mark.filterwarnings("ignore::ResourceWarning")(StoredCase.TestCase)
