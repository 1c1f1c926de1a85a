"""Withdrawal through a real connector: the example REST department withdraws at its simulator."""

from __future__ import annotations

import httpx

from gateway.dispatcher import Dispatcher
from gateway.runtime import Runtime
from gateway.simulators.city import SimulatedCity
from tests.conftest import application


async def test_rest_department_withdraws_for_real(
    runtime: Runtime, city: SimulatedCity, api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    """The example amr department (REST, [options.withdraw]) withdraws at the simulator."""
    resp = await api.post(
        "/v1/applications",
        json=application(),
        headers={**centre_headers, "Idempotency-Key": "withdraw-real"},
    )
    app_id = resp.json()["id"]
    city.states["amr"].settings = city.states["amr"].settings.model_copy(
        update={"decision_delay_seconds": 3600}
    )
    dispatcher = Dispatcher(runtime)
    await dispatcher.sweep()
    await dispatcher.drain()
    out = await api.post(f"/v1/applications/{app_id}/withdraw", headers=centre_headers)
    assert out.status_code == 200, out.text
    assert out.json()["outcome"] == "withdrawn" and out.json()["needs_ops"] is False
    view = (await api.get(f"/v1/applications/{app_id}", headers=centre_headers)).json()
    [case] = city.states["amr"].cases.values()
    assert case.forced is not None and case.forced[0] == "8"
    assert view["status"] == "withdrawn"
