"""Real-world REST departments by configuration alone (issue 13).

Each file in ``config/examples/`` is a department in one style government back offices use
(envelope errors in HTTP 200, inline base64 documents, page-number / offset / next-link listing,
form bodies, GBK answers, token auth, signed requests). For each, the file is loaded by the real
config loader, the simulator plays the department from the file's own ``[simulator]`` table,
and a whole gateway takes applications through it: a transient business error is retried (not
failed), a refusal is refused with the department's message, documents are collected byte for
byte, and reconciliation reads every page and says how many it read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import shutil
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
import pytest_asyncio
from gateway_rest.connector import RestConnector

from gateway import documents
from gateway.config import check_connector_options, load_config
from gateway.config.models import DepartmentConfig, RetryPolicy
from gateway.connector import Envelope, Receipt
from gateway.plugin_manager import load_plugins
from gateway.poller import poll_department
from gateway.reconcile import reconcile_department
from gateway.runtime import Runtime
from gateway.simulators import SIMULATORS, serve_asgi
from gateway.simulators.rest_department import RestDepartmentState, certificate
from gateway.store import cases
from gateway.testing import (
    ConnectorConformance,
    Failure,
    case_status,
    dispatch,
    make_config,
    running_gateway,
)
from gateway.testing import submit_application as submit
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "config" / "examples").glob("*.toml"))
ENV = {"GOV_TOKEN_SECRET": "token-secret-for-tests", "GOV_SIGN_SECRET": "sign-secret-for-tests"}
#: one page short of three: five cases at page_size 2
CASES, PAGES = 5, 3


@dataclasses.dataclass
class Clock:
    """The simulator's clock, moved by the test (decisions come when it says, not by sleeping)."""

    now: dt.datetime

    def __call__(self) -> dt.datetime:
        return self.now


def load_example(path: Path, tmp_path: Path) -> tuple[DepartmentConfig, dict[str, Any]]:
    """The department in ``path`` through the real loader (secrets, env references, the
    connector's options model), and its resolved ``[simulator]`` table."""
    folder = tmp_path / "config"
    (folder / "departments").mkdir(parents=True)
    shutil.copy(ROOT / "config" / "gateway.toml", folder / "gateway.toml")
    shutil.copy(path, folder / "departments" / path.name)
    (folder / "matters.csv").write_text(
        f"code,name,department,regions,promised_days\nXK00000001,Test,{path.stem},339900,5\n",
        encoding="utf-8",
    )
    config = load_config(folder / "gateway.toml", env=ENV)
    assert check_connector_options(config, load_plugins().connectors()) == []
    dept = config.departments[path.stem]
    assert dept.simulator is not None
    return dept, dict(dept.simulator)


def pointed_at(dept: DepartmentConfig, url: str) -> DepartmentConfig:
    """The department at the running simulator, polled and retried at test speed."""
    options = {**dept.options, "base_url": f"{url}/api/v1"}
    retry = RetryPolicy(
        max_attempts=8, base_seconds=0.05, max_seconds=0.1, jitter=0, in_call_attempts=1
    )
    return dept.model_copy(
        update={"options": options, "retry": retry, "poll_interval_seconds": 0.01}
    )


@pytest.fixture(params=EXAMPLES, ids=[p.stem for p in EXAMPLES])
async def styled(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Runtime, RestDepartmentState, Clock, str]]:
    """A gateway connected to the simulator by one example file."""
    dept, table = load_example(request.param, tmp_path)
    clock = Clock(dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    _settings, app, state = SIMULATORS["rest"].build({**table, "port": 0, "mix": {"approve": 1.0}})
    state.clock = clock
    async with serve_asgi(app) as url:
        config = make_config(tmp_path / "gateway", departments=[pointed_at(dept, url)])
        async with running_gateway(config) as runtime:
            yield runtime, state, clock, dept.code


async def statuses(runtime: Runtime, ids: list[str]) -> list[str]:
    return [await case_status(runtime, i) for i in ids]


async def until(
    runtime: Runtime, step: Callable[[], Any], ids: list[str], wanted: set[str]
) -> None:
    async def done() -> bool:
        await step()
        return set(await statuses(runtime, ids)) <= wanted

    try:
        await wait_for(done, timeout=20)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: statuses {await statuses(runtime, ids)}") from None


async def test_example_department_connects_by_config_alone(
    styled: tuple[Runtime, RestDepartmentState, Clock, str],
) -> None:
    runtime, state, clock, code = styled
    accepted = [await submit(runtime, form={"licenceNo": f"L-{i}"}) for i in range(CASES)]
    refused = await submit(runtime, form={})
    everyone = [*accepted, refused]

    # the department is busy for one call: HTTP 200 with code 5001 "系统繁忙"
    state.mode, state.fail_left = "busy", 1
    await dispatch(runtime)
    assert state.transient_answers == 1
    after_busy = await statuses(runtime, everyone)
    assert "failed" not in after_busy
    assert after_busy.count("dispatching") == 1, after_busy  # waiting for its retry
    async with runtime.engine.connect() as conn:
        waiting = [
            row
            for i in everyone
            if (row := await cases.get_application(conn, i)) and row.status == "dispatching"
        ]
    assert "5001" in waiting[0].last_error and "系统繁忙" in waiting[0].last_error

    # a refusal is decided (not_accepted) and handed out as such: ready_for_pickup
    await until(runtime, lambda: dispatch(runtime), everyone, {"delivered", "ready_for_pickup"})
    assert await statuses(runtime, accepted) == ["delivered"] * CASES
    async with runtime.engine.connect() as conn:
        history = await cases.history(conn, refused)
    [refusal] = [e for e in history if e.to_status == "not_accepted"]
    # the department's own message is the reason
    assert refusal.detail["reason"] == "申请材料不全：缺少 form.licenceNo"

    # the department decides; polls bring the certificates
    clock.now += dt.timedelta(seconds=state.settings.decision_delay_seconds + 1)
    await until(runtime, lambda: poll_department(runtime, code), accepted, {"ready_for_pickup"})
    async with runtime.engine.connect() as conn:
        for app_id in accepted:
            row = await cases.get_application(conn, app_id)
            [doc] = await documents.for_application(conn, app_id)
            assert await runtime.blobs.get(doc.sha256) == certificate(row.department_case_id)
            assert doc.name == f"certificate-{row.department_case_id}.pdf"

    run = await reconcile_department(runtime, code)
    assert run.state == "done", run.error
    assert run.counts["department_cases"] == CASES
    assert run.counts["department_pages"] == PAGES


# -- the conformance suite against each example ----------------------------------------------


@dataclasses.dataclass
class StyledSystem:
    url: str
    state: RestDepartmentState
    department: DepartmentConfig


class _StyleConformance(ConnectorConformance):
    """The conformance suite against the simulator in one example file's style."""

    connector_class = RestConnector
    plugin_name = "rest"
    department_statuses = ("0", "1", "2", "3", "4", "5", "8", "9")
    pulls_results = False
    example: ClassVar[Path]

    @pytest_asyncio.fixture
    async def department_system(self, tmp_path: Path) -> AsyncIterator[StyledSystem]:
        dept, table = load_example(self.example, tmp_path)
        _settings, app, state = SIMULATORS["rest"].build(
            {**table, "port": 0, "decision_delay_seconds": 0}
        )
        async with serve_asgi(app) as url:
            yield StyledSystem(url, state, pointed_at(dept, url))

    def department_config(self, system: StyledSystem) -> DepartmentConfig:
        return system.department.model_copy(update={"timeout_seconds": 1.0})

    def build_envelope(self, **changes: Any) -> Envelope:
        # the example departments refuse applications without a licence number
        return super().build_envelope(**{"form": {"licenceNo": "L-1"}, **changes})

    async def count_cases(self, system: StyledSystem, idempotency_key: str) -> int:
        return sum(1 for c in system.state.cases.values() if c.idempotency_key == idempotency_key)

    def provoke(
        self, system: StyledSystem, failure: Failure
    ) -> contextlib.AbstractAsyncContextManager[None]:
        @contextlib.asynccontextmanager
        async def failing() -> AsyncIterator[None]:
            # a "server error" in these styles is the envelope's busy code in an HTTP 200
            system.state.mode = {"timeout": "timeout", "server_error": "busy"}[failure]
            try:
                yield
            finally:
                system.state.mode = "ok"

        return failing()

    async def decide_with_documents(
        self, system: StyledSystem, receipt: Receipt, envelope: Envelope
    ) -> list[bytes]:
        return [system.state.approve(receipt.case_id)]


for _path in EXAMPLES:
    _name = "TestConformance_" + _path.stem
    globals()[_name] = type(_name, (_StyleConformance,), {"example": _path})
