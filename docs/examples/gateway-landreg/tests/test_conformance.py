"""The gateway's conformance suite against the simulated land registry."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

import pytest
from gateway_landreg.connector import LandregConnector
from gateway_landreg.simulator import LandRegistry, running_simulator
from typer.testing import CliRunner

from gateway.cli import app
from gateway.config.models import DepartmentConfig
from gateway.errors import DepartmentRejected
from gateway.testing import ConnectorConformance, Failure, FakeConnector, make_department


class TestLandregConformance(ConnectorConformance):
    connector_class = LandregConnector
    plugin_name = "landreg"
    department_statuses = ("R", "G", "D")

    @pytest.fixture
    async def department_system(self) -> AsyncIterator[LandRegistry]:
        async with running_simulator() as registry:
            yield registry

    def department_config(self, system: LandRegistry) -> DepartmentConfig:
        return make_department(
            "rer",
            connector="landreg",
            timeout_seconds=1.0,
            options={"port": system.port, "timeout_seconds": 0.5},
            status_map={"R": "delivered", "G": "approved", "D": "rejected"},
        )

    async def count_cases(self, system: LandRegistry, idempotency_key: str) -> int:
        return 1 if idempotency_key in system.cases else 0

    def provoke(
        self, system: LandRegistry, failure: Failure
    ) -> contextlib.AbstractAsyncContextManager[None]:
        @contextlib.asynccontextmanager
        async def failing() -> AsyncIterator[None]:
            system.mode = {"timeout": "hang", "server_error": "busy"}[failure]
            try:
                yield
            finally:
                system.mode = "ok"

        return failing()


async def test_refusal_is_a_business_answer() -> None:
    async with running_simulator() as registry:
        suite = TestLandregConformance()
        context = FakeConnector.idempotent().context  # an offline context to fill in
        context.options = LandregConnector.Options.model_validate(
            suite.department_config(registry).options
        )
        landreg = LandregConnector(context)
        with pytest.raises(DepartmentRejected) as refused:
            await landreg.submit(suite.build_envelope(form={"refuse": True}))
        assert refused.value.status == "D" and not registry.cases


def test_listed_by_gateway_plugins() -> None:
    result = CliRunner().invoke(app, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["connectors"]["landreg"] == "gateway_landreg.connector"
