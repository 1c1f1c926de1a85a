"""Withdrawal through a real connector: the example REST department (amr, [options.withdraw])
is asked at its simulator by the daemon's ``withdrawals`` task (run directly here), never by the
API."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import update

from gateway.daemon import Daemon
from gateway.dispatcher import Dispatcher
from gateway.poller import poll_department
from gateway.runtime import Runtime
from gateway.simulators.city import SimulatedCity
from gateway.store.tables import applications
from tests.conftest import application


async def delivered(
    runtime: Runtime, city: SimulatedCity, api: httpx.AsyncClient, headers: dict[str, str], key: str
) -> tuple[str, Any]:
    """An application the amr simulator holds and will not decide by itself for an hour."""
    resp = await api.post(
        "/v1/applications", json=application(), headers={**headers, "Idempotency-Key": key}
    )
    assert resp.status_code == 201, resp.text
    city.states["amr"].settings = city.states["amr"].settings.model_copy(
        update={"decision_delay_seconds": 3600}
    )
    dispatcher = Dispatcher(runtime)
    await dispatcher.sweep()
    await dispatcher.drain()
    app_id: str = resp.json()["id"]
    [case] = [c for c in city.states["amr"].cases.values() if c.idempotency_key.endswith("-v1")]
    view = (await api.get(f"/v1/applications/{app_id}", headers=headers)).json()
    assert view["department_case_id"] == case.id and view["status"] != "withdrawn"
    return app_id, case


async def test_rest_department_confirms_the_withdrawal(
    runtime: Runtime, city: SimulatedCity, api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    app_id, case = await delivered(runtime, city, api, centre_headers, "withdraw-real")
    out = await api.post(f"/v1/applications/{app_id}/withdraw", headers=centre_headers)
    assert out.status_code == 202, out.text
    assert out.json()["outcome"] == "pending"
    assert case.forced is None  # the API did not call the department

    assert await Daemon(runtime).tasks["withdrawals"].run() == {"withdrawn": 1}
    assert case.forced is not None and case.forced[0] == "8"  # 撤回 at the department
    record = (await api.get(f"/v1/applications/{app_id}/withdrawal", headers=centre_headers)).json()
    assert record["outcome"] == "withdrawn" and record["needs_ops"] is False
    view = (await api.get(f"/v1/applications/{app_id}", headers=centre_headers)).json()
    assert view["status"] == "withdrawn"
    last = view["history"][-1]
    assert last["to_status"] == "withdrawn" and last["source"] == "dispatch"
    assert "department confirmed" in last["detail"]["note"]


async def test_rest_department_refuses_a_decided_case(
    runtime: Runtime, city: SimulatedCity, api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    """The department has decided but the gateway has not heard yet: it answers 409, the
    withdrawal is refused with its reason and the case goes on to the decision."""
    app_id, case = await delivered(runtime, city, api, centre_headers, "withdraw-refused")
    city.states["amr"].force_status(case.id, "9")  # approved, not yet told
    out = await api.post(f"/v1/applications/{app_id}/withdraw", headers=centre_headers)
    assert out.status_code == 202, out.text

    assert await Daemon(runtime).tasks["withdrawals"].run() == {"refused": 1}
    record = (await api.get(f"/v1/applications/{app_id}/withdrawal", headers=centre_headers)).json()
    assert record["outcome"] == "refused" and record["needs_ops"] is False
    assert "already decided" in record["detail"]
    view = (await api.get(f"/v1/applications/{app_id}", headers=centre_headers)).json()
    assert view["status"] not in ("withdrawn", "approved")
    assert case.forced[0] == "9"  # the department's decision is untouched

    async with runtime.engine.begin() as conn:  # the next poll is due now
        await conn.execute(
            update(applications).where(applications.c.id == app_id).values(next_poll_at=None)
        )
    assert await poll_department(runtime, "amr") >= 1
    view = (await api.get(f"/v1/applications/{app_id}", headers=centre_headers)).json()
    assert view["status"] in ("approved", "ready_for_pickup")
    record = (await api.get(f"/v1/applications/{app_id}/withdrawal", headers=centre_headers)).json()
    assert record["outcome"] == "refused" and record["status"] == view["status"]
