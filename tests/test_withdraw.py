"""Withdrawal before a decision: never sent, confirmed by the department through the connector's
optional ``withdraw``, refused by it, or recorded and flagged for ops."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import ClassVar

import httpx
import pytest

from gateway.config.loader import Config
from gateway.connector import Connector, ConnectorContext, Receipt
from gateway.errors import DepartmentRejected, TransientError
from gateway.runtime import Runtime
from tests.handout_fixtures import decide, quiet_runtime, status_of, submit


@pytest.fixture
async def runtime(example_config: Config) -> AsyncIterator[Runtime]:
    """No simulated departments needed: their answers are applied directly."""
    async with quiet_runtime(example_config) as rt:
        yield rt


class Withdrawing(Connector):
    """A department that can withdraw cases (or refuses to, or is down)."""

    kind: ClassVar[str] = "withdrawing"
    answer: ClassVar[Exception | None] = None
    calls: ClassVar[list[str]] = []

    async def withdraw(self, receipt: Receipt) -> None:
        type(self).calls.append(receipt.case_id)
        if self.answer is not None:
            raise self.answer


@pytest.fixture
def withdrawing(runtime: Runtime) -> type[Withdrawing]:
    Withdrawing.calls = []
    Withdrawing.answer = None
    runtime.connectors["amr"] = Withdrawing(runtime.connectors["amr"].context)
    return Withdrawing


async def test_never_sent_case_is_withdrawn_at_once(
    api: httpx.AsyncClient, centre_headers: dict[str, str], ops_headers: dict[str, str]
) -> None:
    app = await submit(api, centre_headers)
    url = f"/v1/applications/{app['id']}/withdraw"
    resp = await api.post(url, json={"reason": "申请人撤回", "clerk": "c3"}, headers=centre_headers)
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "withdrawn" and resp.json()["outcome"] == "not_sent"
    assert resp.json()["needs_ops"] is False
    again = await api.post(url, headers=centre_headers)
    assert again.status_code == 200 and again.json() == resp.json()
    assert (await api.get("/v1/ops/withdrawals", headers=ops_headers)).json() == []


async def test_department_confirms_withdrawal(
    api: httpx.AsyncClient,
    runtime: Runtime,
    centre_headers: dict[str, str],
    withdrawing: type[Withdrawing],
) -> None:
    app = await submit(api, centre_headers)
    await decide(runtime, app["id"], "1", document=None)  # accepted: the department holds it
    resp = await api.post(f"/v1/applications/{app['id']}/withdraw", headers=centre_headers)
    assert resp.json()["outcome"] == "withdrawn" and resp.json()["needs_ops"] is False
    assert withdrawing.calls == [f"AMR-{app['id'][-6:]}"]
    # the department's later news is stale
    assert await decide(runtime, app["id"], "9") == []
    assert await status_of(api, centre_headers, app["id"]) == "withdrawn"


async def test_department_refusal_leaves_the_case(
    api: httpx.AsyncClient,
    runtime: Runtime,
    centre_headers: dict[str, str],
    withdrawing: type[Withdrawing],
) -> None:
    withdrawing.answer = DepartmentRejected("已作出决定 110101199003074518")
    app = await submit(api, centre_headers)
    await decide(runtime, app["id"], "5", document=None)
    resp = await api.post(f"/v1/applications/{app['id']}/withdraw", headers=centre_headers)
    assert resp.status_code == 409
    assert "110101199003074518" not in resp.text  # scrubbed
    assert await status_of(api, centre_headers, app["id"]) == "in_review"


@pytest.mark.parametrize("swap", [True, False])
async def test_unsupported_or_unreachable_is_flagged_for_ops(
    api: httpx.AsyncClient,
    runtime: Runtime,
    centre_headers: dict[str, str],
    ops_headers: dict[str, str],
    swap: bool,
) -> None:
    context = runtime.connectors["amr"].context
    if swap:  # a connector with withdraw, but the department is down
        Withdrawing.answer = TransientError("HTTP 503")
        runtime.connectors["amr"] = Withdrawing(context)
    else:  # a REST department configured without [options.withdraw]
        options = context.options.model_copy(update={"withdraw": None})
        runtime.connectors["amr"] = type(runtime.connectors["amr"])(
            ConnectorContext(
                department="amr",
                options=options,
                http=context.http,
                read_material=context.read_material,
            )
        )
    app = await submit(api, centre_headers)
    await decide(runtime, app["id"], "1", document=None)
    resp = await api.post(f"/v1/applications/{app['id']}/withdraw", headers=centre_headers)
    assert resp.status_code == 200
    assert resp.json()["needs_ops"] is True
    assert resp.json()["outcome"] == ("error" if swap else "unsupported")
    assert await status_of(api, centre_headers, app["id"]) == "withdrawn"
    flagged = (await api.get("/v1/ops/withdrawals", headers=ops_headers)).json()
    assert [f["id"] for f in flagged] == [app["id"]]
    assert (await api.get("/v1/ops/withdrawals", headers=centre_headers)).status_code == 403
    done = await api.post(f"/v1/ops/withdrawals/{app['id']}/resolve", headers=ops_headers)
    assert done.status_code == 200 and done.json()["resolved_by"].startswith("ops/")
    assert (await api.get("/v1/ops/withdrawals", headers=ops_headers)).json() == []


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
