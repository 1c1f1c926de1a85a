"""gateway.testing: the conformance suite against the built-in REST connector and its simulator,
the fake connector through a whole gateway, and the suite's failure messages."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from gateway_rest.connector import RestConnector

from gateway.config.models import DepartmentConfig
from gateway.connector import (
    Ack,
    CaseUpdate,
    Connector,
    ConnectorContext,
    Envelope,
    MaterialRef,
    Receipt,
    UpdateOutcome,
)
from gateway.errors import CaseNotFound, DepartmentRejected, PermanentError, TransientError
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
    pushes_callbacks = True  # the simulator pushes decisions (callbacks = true)
    pulls_results = False  # and leaves no result files

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

    def callback_body(
        self, system: RestSystem, receipt: Receipt, envelope: Envelope
    ) -> dict[str, Any]:
        view = system.state.view(system.state.cases[receipt.case_id])
        return {  # what the simulator pushes when a case is decided
            "event_id": str(uuid.uuid4()),
            "case_id": view["id"],
            "idempotency_key": view["idempotency_key"],
            "status": view["status"],
            "opinion": view["opinion"],
            "occurred_at": view["updated_at"],
            "documents": view["documents"],
            "supplement_items": view["supplement_items"],
        }

    async def decide_with_documents(
        self, system: RestSystem, receipt: Receipt, envelope: Envelope
    ) -> list[bytes]:
        return [system.state.approve(receipt.case_id)]


class DocumentDropping(RestConnector):
    """Reports decisions but loses their documents (a documents mapping that does not fit)."""

    async def poll(self, receipt: Receipt) -> CaseUpdate | None:
        update = await super().poll(receipt)
        return None if update is None else update.model_copy(update={"documents": []})


class NoSuchCaseTransient(RestConnector):
    """Treats the department's "no such case" as an outage."""

    async def poll(self, receipt: Receipt) -> CaseUpdate | None:
        try:
            return await super().poll(receipt)
        except CaseNotFound as exc:
            raise TransientError(str(exc)) from exc


async def _rest_suite_run(cls: type[RestConnector], check: str) -> str:
    """Run one check of the REST suite against ``cls`` on a real simulator; its failure text."""
    suite = type("Suite", (TestRestConnectorConformance,), {"connector_class": cls})()
    app, state = create_rest_department(RestSimulatorSettings(decision_delay_seconds=0))
    async with serve_asgi(app) as url, httpx.AsyncClient() as http:
        system = RestSystem(url, state)
        dept = suite.department_config(system)
        options = RestConnector.Options.model_validate(dept.options)

        async def no_material(ref: MaterialRef) -> bytes:
            raise AssertionError("no materials here")

        context = ConnectorContext(
            department=dept.code, options=options, http=http, read_material=no_material
        )
        connector = cls(context)

        def make_envelope(**changes: Any) -> Envelope:
            return suite.build_envelope(department=dept.code, **changes)

        with pytest.raises(pytest.fail.Exception) as failed:
            if check == "documents":
                await suite.test_decided_case_keeps_its_documents(
                    system, dept, connector, make_envelope
                )
            else:
                await suite.test_poll_of_no_such_case_raises_case_not_found(system, connector)
    return str(failed.value)


async def test_connector_that_drops_documents_fails_saying_so() -> None:
    message = await _rest_suite_run(DocumentDropping, "documents")
    assert "was decided approved with 1 document(s), but poll's update carries none" in message
    assert "never reaches pickup" in message


async def test_no_such_case_as_transient_fails_saying_why() -> None:
    message = await _rest_suite_run(NoSuchCaseTransient, "no_such_case")
    assert "which the department does not hold, raised TransientError" in message
    assert "raise CaseNotFound" in message


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


# -- the result-channel checks: pushed callbacks, pulled updates ----------------------------------


class ResultBox(FakeConnector):
    """Keeps each produced result until it is acknowledged, as ``pull_updates`` must; its
    ``parse_callback`` reads the status with ``payload["status"]`` (a KeyError when missing)."""

    def __init__(self) -> None:
        super().__init__(FakeConnector.idempotent().handler)
        self.pending: list[CaseUpdate] = []

    def parse_callback(self, payload: Any) -> CaseUpdate:
        return CaseUpdate(case_id=str(payload["case_id"]), status=str(payload["status"]))

    async def pull_updates(self, limit: int) -> list[CaseUpdate]:
        return self.pending[:limit]

    async def ack_update(
        self, update: CaseUpdate, outcome: UpdateOutcome, reason: str = ""
    ) -> None:
        self.pending.remove(update)


class Forgets(ResultBox):
    """Hands each result out once: a crash before the ack would lose it."""

    async def pull_updates(self, limit: int) -> list[CaseUpdate]:
        pulled, self.pending = self.pending[:limit], self.pending[limit:]
        return pulled


class NeverSettles(ResultBox):
    """Acknowledging changes nothing: the same result comes back every round."""

    async def ack_update(
        self, update: CaseUpdate, outcome: UpdateOutcome, reason: str = ""
    ) -> None:
        return None


class Vague(ResultBox):
    """Rejects a body without its status, but does not say what is missing."""

    def parse_callback(self, payload: Any) -> CaseUpdate:
        if "status" not in payload:
            raise ValueError("unusable callback")
        return super().parse_callback(payload)


class _ResultSuite(_Suite):
    result_wait_seconds = 0.1

    def callback_body(self, system: Any, receipt: Receipt, envelope: Envelope) -> dict[str, Any]:
        return {"case_id": receipt.case_id, "state": {"status": "accepted"}, "note": "accepted"}

    async def produce_result(self, system: ResultBox, receipt: Receipt, envelope: Envelope) -> bool:
        system.pending.append(
            CaseUpdate(case_id=receipt.case_id, ref=f"{receipt.case_id}.json", status="approved")
        )
        return True


class _Box(ResultBox):
    """The ResultBox whose ``parse_callback`` reads ``state.status``, raising ValueError."""

    def parse_callback(self, payload: Any) -> CaseUpdate:
        status = payload.get("state", {}).get("status")
        if status is None:
            raise ValueError("callback has no 'state.status'")
        return CaseUpdate(case_id=str(payload["case_id"]), status=str(status))


def _result_suite() -> tuple[_ResultSuite, DepartmentConfig, Any]:
    suite = _ResultSuite()
    dept = suite.department_config(None)

    def make_envelope(**changes: Any) -> Envelope:
        return suite.build_envelope(department=dept.code, **changes)

    return suite, dept, make_envelope


@pytest.mark.parametrize("outcome", ["duplicate", "unmatched"])
async def test_a_connector_that_keeps_results_until_acked_passes(outcome: UpdateOutcome) -> None:
    box = _Box()
    suite, dept, make_envelope = _result_suite()
    await suite.test_pull_updates_repeats_an_update_until_it_is_acked(box, dept, box, make_envelope)
    await suite.test_pull_updates_settles_acked_updates(box, box, make_envelope, outcome)
    await suite.test_parse_callback_names_the_case_and_maps_its_status(
        box, dept, box, make_envelope
    )
    await suite.test_parse_callback_without_status_says_what_is_missing(box, box, make_envelope)
    assert box.pending == []


async def test_pull_that_forgets_unacked_updates_fails_saying_why() -> None:
    box = Forgets()
    suite, dept, make_envelope = _result_suite()
    with pytest.raises(pytest.fail.Exception) as failed:
        await suite.test_pull_updates_repeats_an_update_until_it_is_acked(
            box, dept, box, make_envelope
        )
    message = str(failed.value)
    assert "did not return the update for case FAKE-1 (ref 'FAKE-1.json') again before" in message
    assert "a crash between applying it and acking it loses" in message


@pytest.mark.parametrize("outcome", ["applied", "unmatched"])
async def test_ack_that_settles_nothing_fails_saying_why(outcome: str) -> None:
    box = NeverSettles()
    suite, dept, make_envelope = _result_suite()
    with pytest.raises(pytest.fail.Exception) as failed:
        if outcome == "applied":
            await suite.test_pull_updates_repeats_an_update_until_it_is_acked(
                box, dept, box, make_envelope
            )
        else:
            await suite.test_pull_updates_settles_acked_updates(
                box, box, make_envelope, "unmatched"
            )
    assert f"again after ack_update(..., {outcome!r})" in str(failed.value)
    assert ("quarantine it" if outcome == "unmatched" else "archive it") in str(failed.value)


async def test_a_batch_acked_with_the_default_ack_updates_passes() -> None:
    """The default ``ack_updates`` settles each with ``ack_update``: a connector written
    before the batch method existed passes the batch check unchanged."""
    box = _Box()
    assert type(box).ack_updates is Connector.ack_updates
    suite, _dept, make_envelope = _result_suite()
    await suite.test_ack_updates_settles_every_update_of_a_batch(box, box, make_envelope)
    assert box.pending == []


async def test_ack_updates_that_settles_part_of_a_batch_fails_saying_why() -> None:
    class SettlesFirst(_Box):
        async def ack_updates(self, acks: Sequence[Ack]) -> None:
            await self.ack_update(acks[0].update, acks[0].outcome, acks[0].reason)

    box = SettlesFirst()
    suite, _dept, make_envelope = _result_suite()
    with pytest.raises(pytest.fail.Exception) as failed:
        await suite.test_ack_updates_settles_every_update_of_a_batch(box, box, make_envelope)
    message = str(failed.value)
    assert "(ref 'FAKE-2.json') again after ack_updates settled it as 'duplicate'" in message
    assert "in a batch of 3" in message
    assert [u.ref for u in box.pending] == ["FAKE-2.json", "FAKE-3.json"]


async def test_pull_that_never_shows_the_result_fails_saying_why() -> None:
    class Empty(ResultBox):
        async def pull_updates(self, limit: int) -> list[CaseUpdate]:
            return []

    box = Empty()
    suite, _dept, make_envelope = _result_suite()
    with pytest.raises(pytest.fail.Exception) as failed:
        await suite.test_pull_updates_settles_acked_updates(box, box, make_envelope, "duplicate")
    assert "pull_updates returned no update for case FAKE-1" in str(failed.value)


@pytest.mark.parametrize(
    ("connector", "verdict"),
    [
        (
            ResultBox,
            "must raise ValueError or PermanentError naming what is missing; "
            "parse_callback raised KeyError",
        ),
        (Vague, "does not say what is missing: ValueError: unusable callback"),
    ],
)
async def test_callback_without_status_fails_saying_why(
    connector: type[ResultBox], verdict: str
) -> None:
    class FlatSuite(_ResultSuite):
        def callback_body(
            self, system: Any, receipt: Receipt, envelope: Envelope
        ) -> dict[str, Any]:
            return {"case_id": receipt.case_id, "status": "accepted"}

    box = connector()
    suite = FlatSuite()
    _s, _d, make_envelope = _result_suite()
    with pytest.raises(pytest.fail.Exception) as failed:
        await suite.test_parse_callback_without_status_says_what_is_missing(box, box, make_envelope)
    assert "callback body without" in str(failed.value) and "'status'" in str(failed.value)
    assert verdict in str(failed.value)


async def test_callback_for_another_case_fails_saying_why() -> None:
    class Elsewhere(_ResultSuite):
        def callback_body(
            self, system: Any, receipt: Receipt, envelope: Envelope
        ) -> dict[str, Any]:
            return {"case_id": "FAKE-99", "state": {"status": "accepted"}}

    box = _Box()
    suite = Elsewhere()
    _s, dept, make_envelope = _result_suite()
    with pytest.raises(pytest.fail.Exception) as failed:
        await suite.test_parse_callback_names_the_case_and_maps_its_status(
            box, dept, box, make_envelope
        )
    assert "names case 'FAKE-99' and no idempotency_key, but the callback is about case FAKE-1" in (
        str(failed.value)
    )


async def test_result_checks_skip_saying_why() -> None:
    fake = FakeConnector.idempotent()  # implements neither channel
    suite, _dept, make_envelope = _result_suite()
    with pytest.raises(pytest.skip.Exception, match="does not implement parse_callback"):
        await suite.test_parse_callback_without_status_says_what_is_missing(
            None, fake, make_envelope
        )
    with pytest.raises(pytest.skip.Exception, match="does not implement pull_updates"):
        await suite.test_pull_updates_settles_acked_updates(None, fake, make_envelope, "applied")
    box = _Box()
    plain = _Suite()  # no hooks: nothing to check with
    with pytest.raises(pytest.skip.Exception, match=r"override callback_body\(system"):
        await plain.test_parse_callback_without_status_says_what_is_missing(box, box, make_envelope)
    with pytest.raises(pytest.skip.Exception, match=r"override produce_result\(system"):
        await plain.test_pull_updates_settles_acked_updates(box, box, make_envelope, "applied")


async def test_declared_channels_are_checked_against_the_connector() -> None:
    fake = FakeConnector.idempotent()  # implements neither channel
    _s, dept, make_envelope = _result_suite()

    class Required(_ResultSuite):
        pushes_callbacks = True
        pulls_results = True

    with pytest.raises(pytest.fail.Exception) as failed:
        await Required().test_parse_callback_names_the_case_and_maps_its_status(
            None, dept, fake, make_envelope
        )
    assert "pushes_callbacks = True, but FakeConnector does not implement parse_callback" in str(
        failed.value
    )

    class Absent(_ResultSuite):
        pushes_callbacks = False
        pulls_results = False

    absent = Absent()  # the department has neither channel and the connector agrees: passes
    await absent.test_parse_callback_without_status_says_what_is_missing(None, fake, make_envelope)
    await absent.test_pull_updates_settles_acked_updates(None, fake, make_envelope, "unmatched")
    assert fake.submitted == []
    box = _Box()
    with pytest.raises(pytest.fail.Exception) as failed:
        await absent.test_pull_updates_repeats_an_update_until_it_is_acked(
            box, dept, box, make_envelope
        )
    assert "pulls_results = False says the department has no such channel, but _Box " in str(
        failed.value
    )
    assert "implements pull_updates: set pulls_results = True" in str(failed.value)


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
