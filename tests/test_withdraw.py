"""Withdrawal before a decision. The API records the request; a case that never reached the
department is withdrawn at once, otherwise the daemon's ``withdrawals`` task asks the department
through the connector's optional ``withdraw`` (driven directly here: ``withdrawals.sweep``) and
records what it says: confirmed, refused, too late, or withdrawn here and flagged for ops."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import httpx
import pytest
from sqlalchemy import event, select, update

from gateway import withdrawals
from gateway.clock import now
from gateway.config.loader import Config
from gateway.config.models import RetryPolicy
from gateway.connector import Connector, ConnectorContext, Receipt
from gateway.errors import DepartmentRejected, PermanentError, TransientError
from gateway.runtime import Runtime
from gateway.store.tables import applications, dispatch_jobs, events
from gateway.store.tables import withdrawals as withdrawals_table
from tests.handout_fixtures import ID_NUMBER, decide, quiet_runtime, status_of, submit


@pytest.fixture
async def runtime(example_config: Config) -> AsyncIterator[Runtime]:
    """No simulated departments needed: their answers are applied directly."""
    async with quiet_runtime(example_config) as rt:
        yield rt


class Withdrawing(Connector):
    """A department that can withdraw cases (or refuses to, or is down). ``answers`` are used
    one per call (the last one repeats); ``gate``, if set, holds the first call until it is set."""

    kind: ClassVar[str] = "withdrawing"
    answers: ClassVar[list[Exception | None]] = [None]
    calls: ClassVar[list[str]] = []
    entered: ClassVar[asyncio.Event]
    gate: ClassVar[asyncio.Event | None] = None

    async def withdraw(self, receipt: Receipt) -> None:
        cls = type(self)
        cls.calls.append(receipt.case_id)
        cls.entered.set()
        if cls.gate is not None and len(cls.calls) == 1:
            await cls.gate.wait()
        answer = cls.answers[min(len(cls.calls), len(cls.answers)) - 1]
        if answer is not None:
            raise answer


@pytest.fixture
def withdrawing(runtime: Runtime) -> type[Withdrawing]:
    Withdrawing.calls = []
    Withdrawing.answers = [None]
    Withdrawing.entered = asyncio.Event()
    Withdrawing.gate = None
    runtime.connectors["amr"] = Withdrawing(runtime.connectors["amr"].context)
    return Withdrawing


def case_id(app: dict[str, Any]) -> str:
    return f"AMR-{app['id'][-6:]}"


async def at_department(
    api: httpx.AsyncClient, runtime: Runtime, headers: dict[str, str], status: str = "1"
) -> dict[str, Any]:
    """A case the department holds (amr status 1: accepted, 5: in review)."""
    app = await submit(api, headers)
    assert await decide(runtime, app["id"], status, document=None)
    return app


async def ask_withdrawal(
    api: httpx.AsyncClient, headers: dict[str, str], app_id: str
) -> dict[str, Any]:
    resp = await api.post(
        f"/v1/applications/{app_id}/withdraw", json={"reason": "申请人撤回"}, headers=headers
    )
    assert resp.status_code == 202, resp.text
    body: dict[str, Any] = resp.json()
    assert body["outcome"] == "pending" and body["settled_at"] is None
    return body


async def withdrawal(api: httpx.AsyncClient, headers: dict[str, str], app_id: str) -> Any:
    resp = await api.get(f"/v1/applications/{app_id}/withdrawal", headers=headers)
    assert resp.status_code == 200, resp.text
    return resp.json()


async def make_due(runtime: Runtime, app_id: str) -> None:
    """The backoff has passed (instead of waiting for it)."""
    async with runtime.engine.begin() as conn:
        await conn.execute(
            update(withdrawals_table)
            .where(withdrawals_table.c.application_id == app_id)
            .values(next_attempt_at=now())
        )


async def withdrawn_events(runtime: Runtime, app_id: str) -> list[Any]:
    async with runtime.engine.connect() as conn:
        q = select(events).where(
            events.c.application_id == app_id, events.c.to_status == "withdrawn"
        )
        return list((await conn.execute(q)).all())


def set_retry(runtime: Runtime, **policy: Any) -> None:
    depts = dict(runtime.config.departments)
    depts["amr"] = depts["amr"].model_copy(update={"retry": RetryPolicy(**policy)})
    runtime.config = dataclasses.replace(runtime.config, departments=depts)


async def test_never_sent_case_is_withdrawn_at_once(
    api: httpx.AsyncClient,
    runtime: Runtime,
    centre_headers: dict[str, str],
    ops_headers: dict[str, str],
    withdrawing: type[Withdrawing],
) -> None:
    app = await submit(api, centre_headers)
    url = f"/v1/applications/{app['id']}/withdraw"
    resp = await api.post(url, json={"reason": "申请人撤回", "clerk": "c3"}, headers=centre_headers)
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "withdrawn" and resp.json()["outcome"] == "not_sent"
    assert resp.json()["needs_ops"] is False and resp.json()["settled_at"] is not None
    again = await api.post(url, headers=centre_headers)
    assert again.status_code == 200 and again.json() == resp.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await withdrawal(api, centre_headers, app["id"]) == resp.json()
    assert (await api.get("/v1/ops/withdrawals", headers=ops_headers)).json()["items"] == []
    assert await withdrawals.sweep(runtime, "daemon-a") is None  # nothing for the department
    assert withdrawing.calls == []


async def test_an_idle_round_is_one_read(
    api: httpx.AsyncClient,
    runtime: Runtime,
    centre_headers: dict[str, str],
    withdrawing: type[Withdrawing],
) -> None:
    """The round runs every sweep interval: with nothing due it reads once, where it took a
    write transaction (and the free slots dispatch wanted) for every department. The read is
    the reader's (on SQLite no write lock), not a transaction of the engine's."""
    begun: list[object] = []
    count = begun.append  # one bound method, so that remove finds it
    read: list[object] = []
    reads = read.append
    event.listen(runtime.engine.sync_engine, "begin", count)
    if runtime.reader is not runtime.engine:
        event.listen(runtime.reader.sync_engine, "begin", reads)
    try:
        assert await withdrawals.sweep(runtime, "daemon-a") is None
        assert len(begun) + len(read) == 1 and len(runtime.config.departments) > 1
        assert not begun or runtime.reader is runtime.engine
        app = await at_department(api, runtime, centre_headers)
        await ask_withdrawal(api, centre_headers, app["id"])
        begun.clear()
        assert await withdrawals.sweep(runtime, "daemon-a") == {"withdrawn": 1}
        assert withdrawing.calls == [case_id(app)]
    finally:
        event.remove(runtime.engine.sync_engine, "begin", count)
        if runtime.reader is not runtime.engine:
            event.remove(runtime.reader.sync_engine, "begin", reads)


async def test_department_confirms_withdrawal(
    api: httpx.AsyncClient,
    runtime: Runtime,
    centre_headers: dict[str, str],
    withdrawing: type[Withdrawing],
) -> None:
    app = await at_department(api, runtime, centre_headers)
    first = await ask_withdrawal(api, centre_headers, app["id"])
    assert first["status"] == "accepted" and first["needs_ops"] is False
    assert withdrawing.calls == []  # the API does not call the department
    again = await api.post(f"/v1/applications/{app['id']}/withdraw", headers=centre_headers)
    assert again.status_code == 202 and again.json() == first
    assert again.headers["Idempotent-Replayed"] == "true"

    assert await withdrawals.sweep(runtime, "daemon-a") == {"withdrawn": 1}
    assert withdrawing.calls == [case_id(app)]
    out = await withdrawal(api, centre_headers, app["id"])
    assert out["outcome"] == "withdrawn" and out["status"] == "withdrawn"
    assert out["needs_ops"] is False and out["settled_at"] is not None
    [event] = await withdrawn_events(runtime, app["id"])
    assert event.source == "dispatch" and event.actor == "daemon-a"
    assert event.detail["department"] == "withdrawn"
    assert "department confirmed" in event.detail["note"]
    assert event.detail["requested_by"] == first["actor"]
    # asked once only; the department's later news is stale
    assert await withdrawals.sweep(runtime, "daemon-a") is None
    assert withdrawing.calls == [case_id(app)]
    assert await decide(runtime, app["id"], "9") == []
    assert await status_of(api, centre_headers, app["id"]) == "withdrawn"
    replay = await api.post(f"/v1/applications/{app['id']}/withdraw", headers=centre_headers)
    assert replay.status_code == 200 and replay.json() == out


async def test_department_refusal_leaves_the_case(
    api: httpx.AsyncClient,
    runtime: Runtime,
    centre_headers: dict[str, str],
    ops_headers: dict[str, str],
    withdrawing: type[Withdrawing],
) -> None:
    withdrawing.answers = [DepartmentRejected(f"已作出决定 {ID_NUMBER}")]
    app = await at_department(api, runtime, centre_headers, "5")
    await ask_withdrawal(api, centre_headers, app["id"])
    assert await withdrawals.sweep(runtime, "daemon-a") == {"refused": 1}
    out = await withdrawal(api, centre_headers, app["id"])
    assert out["outcome"] == "refused" and out["status"] == "in_review"
    assert out["needs_ops"] is False
    assert "已作出决定" in out["detail"] and ID_NUMBER not in out["detail"]  # scrubbed
    assert await status_of(api, centre_headers, app["id"]) == "in_review"
    assert await withdrawn_events(runtime, app["id"]) == []
    assert (await api.get("/v1/ops/withdrawals", headers=ops_headers)).json()["items"] == []
    # the case goes on; asking again answers with the refusal, without asking the department
    again = await api.post(f"/v1/applications/{app['id']}/withdraw", headers=centre_headers)
    assert again.status_code == 200 and again.json() == out
    assert await withdrawals.sweep(runtime, "daemon-a") is None
    assert withdrawing.calls == [case_id(app)]
    assert await decide(runtime, app["id"], "9") == ["approved", "ready_for_pickup"]


async def test_decision_that_arrives_first_wins(
    api: httpx.AsyncClient,
    runtime: Runtime,
    centre_headers: dict[str, str],
    withdrawing: type[Withdrawing],
) -> None:
    app = await at_department(api, runtime, centre_headers)
    await ask_withdrawal(api, centre_headers, app["id"])
    assert await decide(runtime, app["id"], "9") == ["approved", "ready_for_pickup"]
    assert await withdrawals.sweep(runtime, "daemon-a") == {"too_late": 1}
    assert withdrawing.calls == []  # nothing to ask: the department has decided
    out = await withdrawal(api, centre_headers, app["id"])
    assert out["outcome"] == "too_late" and out["needs_ops"] is False
    assert out["status"] == "ready_for_pickup"
    assert out["detail"] == "the department decided first; the case is ready_for_pickup"
    assert await withdrawn_events(runtime, app["id"]) == []


async def test_refusal_after_the_decision_came_in_is_too_late(
    api: httpx.AsyncClient,
    runtime: Runtime,
    centre_headers: dict[str, str],
    withdrawing: type[Withdrawing],
) -> None:
    """The decision lands while the department is being asked, and it refuses."""
    withdrawing.answers = [DepartmentRejected("已作出决定")]
    withdrawing.gate = asyncio.Event()
    app = await at_department(api, runtime, centre_headers)
    await ask_withdrawal(api, centre_headers, app["id"])
    round_ = asyncio.create_task(withdrawals.sweep(runtime, "daemon-a"))
    await withdrawing.entered.wait()
    assert await decide(runtime, app["id"], "4") == ["rejected", "ready_for_pickup"]
    withdrawing.gate.set()
    assert await round_ == {"too_late": 1}
    out = await withdrawal(api, centre_headers, app["id"])
    assert out["outcome"] == "too_late" and "已作出决定" in out["detail"]
    assert out["status"] == "ready_for_pickup"


@pytest.mark.parametrize("swap", ["unsupported", "no_connector_method"])
async def test_connector_that_cannot_withdraw_is_flagged_for_ops(
    api: httpx.AsyncClient,
    runtime: Runtime,
    centre_headers: dict[str, str],
    ops_headers: dict[str, str],
    swap: str,
) -> None:
    context = runtime.connectors["amr"].context
    if swap == "unsupported":  # a REST department configured without [options.withdraw]
        options = context.options.model_copy(update={"withdraw": None})
        runtime.connectors["amr"] = type(runtime.connectors["amr"])(
            ConnectorContext(
                department="amr",
                options=options,
                http=context.http,
                read_material=context.read_material,
            )
        )
    else:  # a connector that does not implement withdraw at all
        runtime.connectors["amr"] = type("Plain", (Connector,), {"kind": "plain"})(context)
    app = await at_department(api, runtime, centre_headers)
    await ask_withdrawal(api, centre_headers, app["id"])
    assert await withdrawals.sweep(runtime, "daemon-a") == {"unsupported": 1}
    out = await withdrawal(api, centre_headers, app["id"])
    assert out["outcome"] == "unsupported" and out["needs_ops"] is True
    assert await status_of(api, centre_headers, app["id"]) == "withdrawn"
    flagged = (await api.get("/v1/ops/withdrawals", headers=ops_headers)).json()["items"]
    assert [(f["id"], f["status"]) for f in flagged] == [(app["id"], "withdrawn")]
    assert (await api.get("/v1/ops/withdrawals", headers=centre_headers)).status_code == 403
    done = await api.post(f"/v1/ops/withdrawals/{app['id']}/resolve", headers=ops_headers)
    assert done.status_code == 200 and done.json()["resolved_by"].startswith("ops/")
    assert (await api.get("/v1/ops/withdrawals", headers=ops_headers)).json()["items"] == []


async def test_unknown_department_case_id_is_flagged_for_ops(
    api: httpx.AsyncClient,
    runtime: Runtime,
    centre_headers: dict[str, str],
    ops_headers: dict[str, str],
    withdrawing: type[Withdrawing],
) -> None:
    """A delivery was tried (the department may hold the case) but no receipt came back."""
    app = await submit(api, centre_headers)
    async with runtime.engine.begin() as conn:
        await conn.execute(
            update(applications).where(applications.c.id == app["id"]).values(status="dispatching")
        )
        await conn.execute(
            update(dispatch_jobs)
            .where(dispatch_jobs.c.application_id == app["id"])
            .values(attempts=1)
        )
    await ask_withdrawal(api, centre_headers, app["id"])
    assert await withdrawals.sweep(runtime, "daemon-a") == {"unknown": 1}
    assert withdrawing.calls == []
    out = await withdrawal(api, centre_headers, app["id"])
    assert out["outcome"] == "unknown" and out["needs_ops"] is True
    assert out["status"] == "withdrawn"
    flagged = (await api.get("/v1/ops/withdrawals", headers=ops_headers)).json()["items"]
    assert [f["id"] for f in flagged] == [app["id"]]


async def test_transient_failure_is_retried_then_confirmed(
    api: httpx.AsyncClient,
    runtime: Runtime,
    centre_headers: dict[str, str],
    withdrawing: type[Withdrawing],
) -> None:
    withdrawing.answers = [TransientError("HTTP 503"), None]
    # a backoff no busy machine outlasts between two sweeps (it was 1 s: make test-10x saw the
    # second sweep find the withdrawal due again at load 12); make_due stands in for the wait
    set_retry(runtime, base_seconds=3600.0, max_seconds=3600.0)
    app = await at_department(api, runtime, centre_headers)
    await ask_withdrawal(api, centre_headers, app["id"])
    assert await withdrawals.sweep(runtime, "daemon-a") == {"retrying": 1}
    out = await withdrawal(api, centre_headers, app["id"])
    assert out["outcome"] == "pending" and out["status"] == "accepted"
    assert out["detail"] == "retrying (attempt 1): TransientError: HTTP 503"
    assert await withdrawals.sweep(runtime, "daemon-a") is None  # backing off: not due yet
    assert withdrawing.calls == [case_id(app)]
    await make_due(runtime, app["id"])
    assert await withdrawals.sweep(runtime, "daemon-b") == {"withdrawn": 1}
    assert withdrawing.calls == [case_id(app)] * 2
    out = await withdrawal(api, centre_headers, app["id"])
    assert out["outcome"] == "withdrawn" and out["needs_ops"] is False
    assert out["status"] == "withdrawn"


@pytest.mark.parametrize("error", ["transient", "permanent"])
async def test_department_unreachable_after_the_budget_is_flagged_for_ops(
    api: httpx.AsyncClient,
    runtime: Runtime,
    centre_headers: dict[str, str],
    ops_headers: dict[str, str],
    withdrawing: type[Withdrawing],
    error: str,
) -> None:
    set_retry(runtime, max_attempts=3, base_seconds=1.0)
    withdrawing.answers = [
        TransientError("HTTP 503") if error == "transient" else PermanentError("HTTP 400")
    ]
    app = await at_department(api, runtime, centre_headers)
    await ask_withdrawal(api, centre_headers, app["id"])
    rounds = []
    for _ in range(3):
        rounds.append(await withdrawals.sweep(runtime, "daemon-a"))
        await make_due(runtime, app["id"])
    if error == "transient":
        assert rounds == [{"retrying": 1}, {"retrying": 1}, {"error": 1}]
        assert len(withdrawing.calls) == 3
    else:  # retrying cannot help
        assert rounds == [{"error": 1}, None, None]
        assert len(withdrawing.calls) == 1
    out = await withdrawal(api, centre_headers, app["id"])
    assert out["outcome"] == "error" and out["needs_ops"] is True
    assert out["status"] == "withdrawn"
    if error == "transient":
        assert out["detail"] == "gave up after 3 attempts: TransientError: HTTP 503"
    else:
        assert out["detail"].startswith("permanent: ")
    flagged = (await api.get("/v1/ops/withdrawals", headers=ops_headers)).json()["items"]
    assert [f["id"] for f in flagged] == [app["id"]]


async def test_two_daemons_never_ask_twice(
    api: httpx.AsyncClient,
    runtime: Runtime,
    centre_headers: dict[str, str],
    withdrawing: type[Withdrawing],
) -> None:
    """While one daemon waits on the department, another finds nothing to claim."""
    withdrawing.gate = asyncio.Event()
    app = await at_department(api, runtime, centre_headers)
    await ask_withdrawal(api, centre_headers, app["id"])
    first = asyncio.create_task(withdrawals.sweep(runtime, "daemon-a"))
    await withdrawing.entered.wait()
    assert await withdrawals.sweep(runtime, "daemon-b") is None
    withdrawing.gate.set()
    assert await first == {"withdrawn": 1}
    assert withdrawing.calls == [case_id(app)]
    assert len(await withdrawn_events(runtime, app["id"])) == 1


async def test_concurrent_claims_are_disjoint(
    api: httpx.AsyncClient,
    runtime: Runtime,
    centre_headers: dict[str, str],
    withdrawing: type[Withdrawing],
) -> None:
    ids = []
    for _ in range(6):
        app = await at_department(api, runtime, centre_headers)
        await ask_withdrawal(api, centre_headers, app["id"])
        ids.append(app["id"])
    a, b, c = await asyncio.gather(
        withdrawals.claim(runtime, "daemon-a", "amr", 4, 60.0),
        withdrawals.claim(runtime, "daemon-b", "amr", 4, 60.0),
        withdrawals.claim(runtime, "daemon-c", "amr", 4, 60.0),
    )
    claimed = [r.application_id for r in (*a, *b, *c)]
    assert sorted(claimed) == sorted(ids)  # each exactly once
    assert {r.lease_owner for r in a} <= {"daemon-a"}
    assert {r.lease_owner for r in b} <= {"daemon-b"}


async def test_expired_lease_is_retaken_and_the_late_answer_changes_nothing(
    api: httpx.AsyncClient,
    runtime: Runtime,
    centre_headers: dict[str, str],
    withdrawing: type[Withdrawing],
) -> None:
    """A daemon whose lease ran out (it hung) is replaced; its answer then records nothing."""
    withdrawing.gate = asyncio.Event()
    app = await at_department(api, runtime, centre_headers)
    await ask_withdrawal(api, centre_headers, app["id"])
    hung = asyncio.create_task(withdrawals.sweep(runtime, "daemon-a"))
    await withdrawing.entered.wait()
    await make_due(runtime, app["id"])  # daemon-a's lease has run out
    assert await withdrawals.sweep(runtime, "daemon-b") == {"withdrawn": 1}
    withdrawing.gate.set()
    assert await hung == {"lease_lost": 1}  # it heard the same answer and recorded nothing
    [event] = await withdrawn_events(runtime, app["id"])
    assert event.actor == "daemon-b"
    out = await withdrawal(api, centre_headers, app["id"])
    assert out["outcome"] == "withdrawn"


async def test_withdrawal_view_and_errors(
    api: httpx.AsyncClient,
    runtime: Runtime,
    centre_headers: dict[str, str],
    make_key: Any,
) -> None:
    app = await submit(api, centre_headers)
    none = await api.get(f"/v1/applications/{app['id']}/withdrawal", headers=centre_headers)
    assert none.status_code == 404 and none.json()["errors"][0]["field"] == "id"
    other = await make_key("C02")
    url = f"/v1/applications/{app['id']}"
    assert (await api.post(f"{url}/withdraw", headers=other)).status_code == 404
    assert (await api.post(f"{url}/withdraw", headers=centre_headers)).status_code == 200
    assert (await api.get(f"{url}/withdrawal", headers=other)).status_code == 404
    assert (await api.get(f"{url}/withdrawal", headers=centre_headers)).status_code == 200


async def test_decided_case_cannot_be_withdrawn(
    api: httpx.AsyncClient, runtime: Runtime, centre_headers: dict[str, str]
) -> None:
    app = await submit(api, centre_headers)
    await decide(runtime, app["id"])
    resp = await api.post(f"/v1/applications/{app['id']}/withdraw", headers=centre_headers)
    assert resp.status_code == 409 and resp.json()["errors"][0]["field"] == "id"
    assert await status_of(api, centre_headers, app["id"]) == "ready_for_pickup"


async def test_bad_withdraw_body_names_the_field(
    api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    app = await submit(api, centre_headers)
    resp = await api.post(
        f"/v1/applications/{app['id']}/withdraw",
        json={"reason": "x" * 501},
        headers=centre_headers,
    )
    assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "reason"
