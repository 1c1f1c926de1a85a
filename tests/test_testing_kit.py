"""gateway.testing: the conformance suite against the built-in REST connector and its simulator,
the fake connector through a whole gateway, and the suite's failure messages."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from gateway_rest.connector import RestConnector

from gateway.config.models import DepartmentConfig
from gateway.connector import Connector, ConnectorContext, Envelope, Receipt
from gateway.errors import DepartmentRejected, PermanentError, TransientError
from gateway.runtime import Runtime
from gateway.simulators.rest_department import (
    RestDepartmentState,
    RestSimulatorSettings,
    create_rest_department,
)
from gateway.simulators.server import serve_asgi
from gateway.testing import (
    ConnectorConformance,
    Failure,
    FakeConnector,
    case_status,
    dispatch,
    make_config,
    make_department,
    running_gateway,
    submit_application,
)

REST_STATUS_MAP = {
    "0": "delivered",
    "1": "accepted",
    "2": "not_accepted",
    "3": "supplement_required",
    "4": "rejected",
    "5": "in_review",
    "9": "approved",
}


@dataclass
class RestSystem:
    url: str
    state: RestDepartmentState


class TestRestConnectorConformance(ConnectorConformance):
    """The built-in REST connector passes the suite it offers to others."""

    connector_class = RestConnector
    plugin_name = "rest"
    department_statuses = tuple(REST_STATUS_MAP)

    @pytest.fixture
    async def department_system(self) -> AsyncIterator[RestSystem]:
        app, state = create_rest_department(RestSimulatorSettings(decision_delay_seconds=0))
        async with serve_asgi(app) as url:
            yield RestSystem(url, state)

    def department_config(self, system: RestSystem) -> DepartmentConfig:
        return make_department(
            "amr",
            connector="rest",
            timeout_seconds=1.0,
            status_map=REST_STATUS_MAP,
            options={
                "base_url": f"{system.url}/api/v1",
                "timeout_seconds": 5,
                "submit": {"path": "/cases", "response": {"case_id": "case.id"}},
                "poll": {"path": "/cases/{case_id}"},
                "list": {"path": "/cases"},
            },
        )

    async def count_cases(self, system: RestSystem, idempotency_key: str) -> int:
        return sum(1 for c in system.state.cases.values() if c.idempotency_key == idempotency_key)

    def provoke(
        self, system: RestSystem, failure: Failure
    ) -> contextlib.AbstractAsyncContextManager[None]:
        @contextlib.asynccontextmanager
        async def failing() -> AsyncIterator[None]:
            system.state.mode = {"timeout": "timeout", "server_error": "fail503"}[failure]
            try:
                yield
            finally:
                system.state.mode = "ok"

        return failing()


# -- the suite's verdicts on broken connectors ---------------------------------------------------


class Forgetful(FakeConnector):
    """Makes a new case on every call: the bug the suite exists to catch."""

    def __init__(self, context: ConnectorContext) -> None:
        super().__init__(lambda e: Receipt(case_id=f"F-{uuid.uuid4().hex[:6]}"), context)


class Leaky(FakeConnector):
    """Raises library errors instead of TransientError."""

    def __init__(self, context: ConnectorContext) -> None:
        def handler(envelope: Envelope) -> Receipt:
            raise ConnectionRefusedError("[Errno 111] Connection refused")

        super().__init__(handler, context)


class _Suite(ConnectorConformance):
    def department_config(self, system: Any) -> DepartmentConfig:
        return make_department(connector="fake")


def _suite(cls: type[Connector]) -> tuple[ConnectorConformance, Any, Any]:
    suite: ConnectorConformance = type("Suite", (_Suite,), {"connector_class": cls})()
    dept = suite.department_config(None)
    made: list[Connector] = []

    def make_connector(d: DepartmentConfig | None = None) -> Connector:
        connector = FakeConnector.idempotent()  # only for its offline context
        made.append(cls(connector.context))
        return made[-1]

    def make_envelope(**changes: Any) -> Envelope:
        return suite.build_envelope(department=dept.code, **changes)

    return suite, make_connector, make_envelope


async def test_non_idempotent_connector_fails_saying_why() -> None:
    suite, make_connector, make_envelope = _suite(Forgetful)
    with pytest.raises(pytest.fail.Exception) as failed:
        await suite.test_submit_is_idempotent(None, make_connector(), make_connector, make_envelope)
    message = str(failed.value)
    assert message.startswith(
        "submit is not idempotent: the same idempotency_key produced case ids F-"
    )
    assert "send envelope.idempotency_key to the department" in message


async def test_untranslated_error_fails_saying_how_to_translate() -> None:
    suite, make_connector, make_envelope = _suite(Leaky)
    with pytest.raises(pytest.fail.Exception) as failed:
        await suite._expect_transient(make_connector(), make_envelope(), "connection refused", 1.0)
    assert "connection refused must raise TransientError" in str(failed.value)
    assert "ConnectionRefusedError" in str(failed.value)


def test_options_without_extra_forbid_fail_saying_why() -> None:
    from pydantic import BaseModel

    class LaxOptions(BaseModel):  # ignores unknown keys: pydantic's default
        base_url: str = ""

    class Lax(FakeConnector):
        Options = LaxOptions

    suite, _m, _e = _suite(Lax)
    with pytest.raises(pytest.fail.Exception) as failed:
        suite.test_kind_and_options(make_department(connector="fake"))
    assert "accepted an unknown key" in str(failed.value) and "extra='forbid'" in str(failed.value)


def test_suite_without_department_system_says_what_to_override() -> None:
    class Bare(ConnectorConformance):
        connector_class = FakeConnector

    with pytest.raises(pytest.fail.Exception) as failed:
        Bare().department_config(None)
    assert "must override `department_config(system)`" in str(failed.value)


def test_unreachable_rewrites_urls_and_ports() -> None:
    suite = _suite(FakeConnector)[0]
    dept = make_department(
        options={"base_url": "https://dept.example/api", "tcp": {"host": "10.0.0.1", "port": 9}}
    )
    moved = suite.unreachable(dept)
    assert moved is not None
    port = moved.options["tcp"]["port"]
    assert port != 9 and moved.options["tcp"]["host"] == "127.0.0.1"
    assert moved.options["base_url"] == f"http://127.0.0.1:{port}/api"
    assert suite.unreachable(make_department(options={"folder": "/x"})) is None


# -- the fake connector and a whole gateway --------------------------------------------------------


async def test_fake_connector_handler_sync_and_async() -> None:
    async def handler(envelope: Envelope) -> Receipt:
        return Receipt(case_id=envelope.receipt_number, status="1")

    suite = _suite(FakeConnector)[0]
    envelope = suite.build_envelope()
    fake = FakeConnector(handler)
    assert (await fake.submit(envelope)).case_id == envelope.receipt_number
    plain = FakeConnector(lambda e: Receipt(case_id="X"))
    assert (await plain.submit(envelope)).case_id == "X"
    assert fake.submitted == [envelope] and plain.submitted == [envelope]


async def test_gateway_runtime_fixture_delivers_to_the_fake(
    gateway_runtime: Runtime, fake_connector: FakeConnector
) -> None:
    app_id = await submit_application(gateway_runtime)
    assert await case_status(gateway_runtime, app_id) == "received"
    assert await dispatch(gateway_runtime) == 1
    assert await case_status(gateway_runtime, app_id) == "delivered"
    [envelope] = fake_connector.submitted
    assert envelope.application_id == app_id and envelope.department == "dept"


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (DepartmentRejected("not our matter", status="2"), "ready_for_pickup"),
        (PermanentError("mapping is wrong"), "failed"),
        (TransientError("busy"), "dispatching"),
    ],
)
async def test_fake_connector_errors_through_the_gateway(
    tmp_path: Any, error: Exception, status: str
) -> None:
    def handler(envelope: Envelope) -> Receipt:
        raise error

    dept = make_department(status_map={"2": "not_accepted"})
    async with running_gateway(
        make_config(tmp_path, departments=[dept]), connectors={"dept": FakeConnector(handler)}
    ) as runtime:
        app_id = await submit_application(runtime)
        await dispatch(runtime)
        assert await case_status(runtime, app_id) == status


def test_make_config_routes_one_matter_per_department(tmp_path: Any) -> None:
    config = make_config(tmp_path, departments=[make_department("one"), make_department("two")])
    assert config.catalog.route("XK00000002", "339900").department == "two"
    assert config.gateway.database_url.endswith("gateway.db")
