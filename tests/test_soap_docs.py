"""docs/plugins/soap.md's worked example, run against the simulated SOAP department it
configures, so the guide cannot drift from the connector."""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from gateway_soap.connector import SoapConnector
from gateway_soap.options import SoapOptions

from gateway.config.models import DepartmentConfig
from gateway.connector import ConnectorContext
from gateway.errors import DepartmentRejected
from gateway.simulators import SIMULATORS, serve_asgi
from gateway.states import State
from tests.conftest import wait_for
from tests.test_soap_connector import _no_material, envelope

DOC = Path(__file__).resolve().parent.parent / "docs" / "plugins" / "soap.md"
ENV = {"PLANNING_SOAP_PASSWORD": "planning-pw-for-tests"}


def example() -> dict[str, Any]:
    [block] = re.findall(r"```toml\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    resolved = re.sub(r"\$\{(\w+)\}", lambda m: ENV[m.group(1)], block)
    return tomllib.loads(resolved)


def rebase(url: str, actual: str) -> str:
    old, new = urlsplit(url), urlsplit(actual)
    return urlunsplit((new.scheme, new.netloc, old.path, old.query, old.fragment))


def test_the_example_is_a_valid_department_file() -> None:
    table = example()
    department = DepartmentConfig.model_validate(table)
    options = SoapOptions.model_validate(department.options)
    assert department.connector == "soap" and options.wsse is not None and options.wsse.digest
    assert department.map_status("9") is State.APPROVED
    assert "${PLANNING_SOAP_PASSWORD}" in DOC.read_text(encoding="utf-8")  # never a literal


async def test_the_example_runs_against_the_simulator() -> None:
    table = example()
    department = DepartmentConfig.model_validate(table)
    simulator = {**(department.simulator or {}), "port": 0, "decision_delay_seconds": 0.2}
    _settings, app, state = SIMULATORS["soap"].build(simulator)
    async with serve_asgi(app) as url, httpx.AsyncClient(timeout=60) as http:
        options = dict(department.options)
        options["wsdl"] = rebase(options["wsdl"], url)
        options["endpoint"] = rebase(options["endpoint"], url)
        connector = SoapConnector(
            ConnectorContext(
                department=department.code,
                options=SoapOptions.model_validate(options),
                http=http,
                read_material=_no_material,
            )
        )
        receipts = [await connector.submit(envelope(f"doc-{i}")) for i in range(6)]
        assert len({r.case_id for r in receipts}) == 6
        assert all(r.case_id.startswith("GH-") for r in receipts)
        assert state.wsse_seen == ["digest"] * 6  # the UsernameToken reached the department

        final = {State.APPROVED, State.REJECTED, State.NOT_ACCEPTED, State.SUPPLEMENT_REQUIRED}

        async def decided() -> bool:
            updates = [await connector.poll(r) for r in receipts]
            return all(u and department.map_status(u.status) in final for u in updates)

        await wait_for(decided)
        since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        listed = [c async for c in connector.list_cases(since, since + dt.timedelta(hours=2))]
        assert {c.case_id for c in listed} == {r.case_id for r in receipts}

        state.mode = "reject"
        with pytest.raises(DepartmentRejected) as caught:
            await connector.submit(envelope("doc-rejected"))
        assert department.map_status(caught.value.status) is State.NOT_ACCEPTED
