"""The connector conformance suite: what every department connector must do, checked against
the plugin's own department system (a test instance) or a simulator of it.

A plugin's test module subclasses :class:`ConnectorConformance`; pytest collects the inherited
tests::

    class TestLandRegistry(ConnectorConformance):
        connector_class = LandRegistryConnector
        plugin_name = "landreg"                  # also check the `gateway` entry point

        @pytest_asyncio.fixture
        async def department_system(self):      # start what the connector talks to
            async with running_simulator() as sim:
                yield sim

        def department_config(self, system):    # a department pointing at it
            return make_department("land", connector="landreg", timeout_seconds=1,
                                   options={"port": system.port}, status_map={"A": "accepted"})

        async def count_cases(self, system, idempotency_key):   # optional
            return system.cases_with_key(idempotency_key)

        def provoke(self, system, failure):    # optional: "timeout", "server_error"
            return system.failing(failure) if failure in ("timeout", "server_error") else None

        def callback_body(self, system, receipt, envelope):  # optional: parse_callback checks
            return {"case_id": receipt.case_id, "status": "A", "event_id": "e-1"}

        async def produce_result(self, system, receipt, envelope):  # optional: pull_updates
            await system.decide(receipt.case_id, "A")       # the department writes a result
            return True

        async def decide_with_documents(self, system, receipt, envelope):  # optional
            return [system.approve(receipt.case_id)]        # the documents it issued (bytes)

What it checks: ``kind`` and an ``Options`` model that rejects unknown keys; the plugin shows up
through its entry point; submit returns a case and is idempotent on the idempotency key (twice on
one connector, and again on a fresh connector, as after a gateway restart); distinct keys make
distinct cases; every status the connector reports maps through the department's
``status_map``; ``list_cases`` finds what was submitted; ``health`` is ok when the department is
up and reports (never raises) when it is unreachable; connection refused, server errors and
timeouts raise :class:`~gateway.errors.TransientError` (or, for a hang, give way to the core's
timeout), and a retry after a timeout makes no second case; ``aclose`` releases the connector's
own resources and leaves the shared HTTP client open.

The optional result channels, checked when the connector overrides the method and the plugin
supplies the hook: ``parse_callback`` turns the body ``callback_body`` gives into an update that
names the case (its case id or idempotency key) with a status the ``status_map`` maps, and
rejects the body without its status with ``ValueError`` (or ``PermanentError``) naming the
missing field; ``pull_updates`` returns the update for the result ``produce_result`` made, returns
it again while it is not acknowledged (a crash between apply and ack must not lose it), and no
longer once ``ack_update`` settled it as ``applied``, ``duplicate`` or ``unmatched``.

Documents and "no such case": with ``decide_with_documents`` the suite has the department
approve a case and checks that ``poll`` reports it approved with every document it issued, byte
for byte (a connector that loses documents fails, saying so: such a case would never reach
pickup). ``poll`` of a case the department does not hold (``unknown_case``) must raise
:class:`~gateway.errors.CaseNotFound` (returning None is fine for a connector that cannot poll);
an update would be made up, and ``TransientError`` would be asked again forever.

A check the plugin cannot provoke is skipped with the reason; a failure says what is wrong in
words.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar, Literal, NoReturn

import httpx
import pytest
import pytest_asyncio
from pydantic import ValidationError

from gateway.config.models import DepartmentConfig
from gateway.connector import (
    Ack,
    CaseSummary,
    CaseUpdate,
    Connector,
    ConnectorContext,
    Envelope,
    Health,
    MaterialRef,
    Receipt,
    UpdateOutcome,
)
from gateway.errors import CaseNotFound, PermanentError, TransientError
from gateway.plugin_manager import load_plugins
from gateway.states import State
from gateway.testing.gateway import TEST_CENTRE, TEST_CITY, TEST_MATTER
from gateway.testing.ports import free_port

__all__ = ["ConnectorConformance", "Failure", "MakeConnector", "MakeEnvelope"]

Failure = Literal["timeout", "server_error"]
MakeConnector = Callable[..., Connector]
MakeEnvelope = Callable[..., Envelope]


def _fail(message: str) -> NoReturn:
    pytest.fail(message, pytrace=False)


class ConnectorConformance:
    """Base class of a connector's conformance tests; override the marked members."""

    #: the connector under test (required)
    connector_class: ClassVar[type[Connector]]
    #: the entry-point name in the ``gateway`` group; None skips the registration check
    plugin_name: ClassVar[str | None] = None
    #: every status code the department can report (each must be in the status map)
    department_statuses: ClassVar[Collection[str]] = ()
    #: the longest the timeout check waits for a hung call (the department's
    #: ``timeout_seconds`` when that is shorter): the core's timeout in miniature
    max_timeout_seconds: ClassVar[float] = 2.0
    #: how much longer than that a check waits before it calls a call hung (a refused
    #: connection, a 5xx, a cancellation); generous, because a busy machine is slow, not hung
    slack_seconds: ClassVar[float] = 10.0
    #: the department pushes callbacks (``parse_callback``). None: check it when the connector
    #: implements it and ``callback_body`` gives a body, else skip saying why; True: fail instead
    #: of skipping; False: the department does not push, so the connector must not implement it
    pushes_callbacks: ClassVar[bool | None] = None
    #: the connector pulls results (``pull_updates``: result files, a queue), checked with
    #: ``produce_result``; None, True and False as for ``pushes_callbacks``
    pulls_results: ClassVar[bool | None] = None
    #: dotted path of the status in a ``callback_body`` (e.g. ``"case.status"``); None: the
    #: field that holds the status ``parse_callback`` read from it
    callback_status_field: ClassVar[str | None] = None
    #: how long the result checks keep pulling for the result ``produce_result`` made (for
    #: departments whose results become visible a moment later, or after a stability window)
    result_wait_seconds: ClassVar[float] = 30.0

    # -- what the plugin provides --------------------------------------------------------------

    @pytest_asyncio.fixture
    async def department_system(self) -> AsyncIterator[Any]:
        """Override: start the department system (or its simulator); yield a handle to it."""
        _fail(
            f"{type(self).__name__} must override the `department_system` fixture: start the "
            "department's test system or simulator and yield a handle to it"
        )
        yield None  # pragma: no cover

    def department_config(self, system: Any) -> DepartmentConfig:
        """Override: the department config (options, status_map) pointing at ``system``."""
        _fail(
            f"{type(self).__name__} must override `department_config(system)` to return the "
            "DepartmentConfig whose options point at the department system"
        )

    async def count_cases(self, system: Any, idempotency_key: str) -> int | None:
        """Optional: how many cases ``system`` holds for ``idempotency_key``. None: count
        through the connector's ``list_cases`` instead."""
        return None

    def provoke(self, system: Any, failure: Failure) -> AbstractAsyncContextManager[None] | None:
        """Optional: a context in which ``system`` fails as ``failure`` says (``timeout``: it
        never answers; ``server_error``: it answers with its 5xx/fault equivalent), or None
        when the plugin cannot provoke that failure (the check is skipped)."""
        return None

    def callback_body(
        self, system: Any, receipt: Receipt, envelope: Envelope
    ) -> dict[str, Any] | None:
        """Optional, for a connector that implements ``parse_callback``: the JSON body
        ``system`` pushes about the case ``receipt`` (submitted as ``envelope``), as the
        gateway hands it to ``parse_callback`` once the signature checks out. None skips the
        callback checks."""
        return None

    async def produce_result(self, system: Any, receipt: Receipt, envelope: Envelope) -> object:
        """Optional, for a connector that implements ``pull_updates``: make ``system`` produce a
        result for the case ``receipt`` (submitted as ``envelope``): a result file, a queue
        message; return True once it has. None or NotImplemented skips the result checks."""
        return None

    async def decide_with_documents(
        self, system: Any, receipt: Receipt, envelope: Envelope
    ) -> list[bytes] | None:
        """Optional: make ``system`` decide the case ``receipt`` as approved, issuing its
        documents; return their contents (checked byte for byte in what ``poll`` reports).
        None skips the documents check."""
        return None

    def unknown_case(self, system: Any) -> Receipt:
        """A receipt for a case ``system`` does not hold (the "no such case" check); override
        when the department's case ids have a shape this default does not fit."""
        return Receipt(case_id=f"NO-SUCH-CASE-{uuid.uuid4().hex[:12].upper()}")

    def unreachable(self, department: DepartmentConfig) -> DepartmentConfig | None:
        """The department with options that point at a closed port on loopback, or None.

        The default rewrites every ``http(s)://`` URL and every ``port`` option; override it
        for other ways of addressing a department."""
        port = free_port()
        options, changed = _point_at(department.options, port)
        return department.model_copy(update={"options": options}) if changed else None

    def build_envelope(self, **changes: Any) -> Envelope:
        """An envelope the department accepts; override to add required form fields."""
        app_id = f"app-{uuid.uuid4().hex[:12]}"
        values: dict[str, Any] = {
            "application_id": app_id,
            "idempotency_key": f"ow-{app_id}-v1",
            "department": "dept",
            "matter_code": TEST_MATTER,
            "matter_name": "Test matter",
            "region": TEST_CITY,
            "receipt_number": f"{TEST_CENTRE}-{uuid.uuid4().hex[:8]}",
            "centre": TEST_CENTRE,
            "applicant": {"name": "Test Applicant", "id_number": "110101199003074514"},
            "form": {},
            "submitted_at": dt.datetime.now(dt.UTC),
        }
        values.update(changes)
        return Envelope.model_validate(values)

    # -- fixtures the suite provides -----------------------------------------------------------

    @pytest.fixture
    def department(self, department_system: Any) -> DepartmentConfig:
        return self.department_config(department_system)

    @pytest_asyncio.fixture
    async def http(self) -> AsyncIterator[httpx.AsyncClient]:
        """The shared client, as the gateway hands it to every connector."""
        from gateway.http import make_client

        client = make_client()
        try:
            yield client
        finally:
            await client.aclose()

    @pytest_asyncio.fixture
    async def make_connector(
        self, department: DepartmentConfig, http: httpx.AsyncClient
    ) -> AsyncIterator[MakeConnector]:
        """``make_connector(department=None)`` builds a connector as the gateway does; every
        one built is closed after the test."""
        built: list[Connector] = []

        def make(dept: DepartmentConfig | None = None) -> Connector:
            dept = dept or department
            try:
                options = self.connector_class.Options.model_validate(dept.options)
            except ValidationError as exc:
                _fail(f"the department's options do not validate: {exc}")

            async def read_material(ref: MaterialRef) -> bytes:
                return f"material {ref.id}".encode()

            context = ConnectorContext(
                department=dept.code, options=options, http=http, read_material=read_material
            )
            connector = self.connector_class(context)
            built.append(connector)
            return connector

        yield make
        for connector in built:
            with contextlib.suppress(Exception):
                await connector.aclose()

    @pytest.fixture
    def connector(self, make_connector: MakeConnector) -> Connector:
        return make_connector()

    @pytest.fixture
    def make_envelope(self, department: DepartmentConfig) -> MakeEnvelope:
        def make(**changes: Any) -> Envelope:
            return self.build_envelope(**{"department": department.code, **changes})

        return make

    # -- helpers -------------------------------------------------------------------------------

    async def _submit(self, connector: Connector, envelope: Envelope, what: str) -> Receipt:
        try:
            receipt = await connector.submit(envelope)
        except Exception as exc:
            _fail(f"{what}: submit raised {type(exc).__name__}: {exc}")
        if not isinstance(receipt, Receipt):
            _fail(f"{what}: submit must return a Receipt, returned {receipt!r}")
        return receipt

    async def _listed(self, connector: Connector, since: dt.datetime) -> list[CaseSummary] | None:
        until = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
        try:
            return [s async for s in connector.list_cases(since, until)]
        except NotImplementedError:
            return None

    async def _count(
        self, system: Any, connector: Connector, key: str, since: dt.datetime
    ) -> int | None:
        counted = await self.count_cases(system, key)
        if counted is not None:
            return counted
        listed = await self._listed(connector, since)
        if listed is None or not any(s.idempotency_key for s in listed):
            return None
        return sum(1 for s in listed if s.idempotency_key == key)

    def _bound(self, department: DepartmentConfig) -> float:
        return min(department.timeout_seconds, self.max_timeout_seconds)

    # -- the contract --------------------------------------------------------------------------

    def test_kind_and_options(self, department: DepartmentConfig) -> None:
        cls = self.connector_class
        kind = getattr(cls, "kind", None)
        if not isinstance(kind, str) or not kind:
            _fail(f"{cls.__name__}.kind must be a non-empty string (the department's connector)")
        if department.connector != kind:
            _fail(
                f"department_config() says connector = {department.connector!r} but "
                f"{cls.__name__}.kind is {kind!r}"
            )
        typo = {**department.options, "no_such_option_x": 1}
        try:
            cls.Options.model_validate(typo)
        except ValidationError:
            return
        _fail(
            f"{cls.__name__}.Options accepted an unknown key 'no_such_option_x': set "
            "model_config = ConfigDict(extra='forbid') so a typo in a department file is an error"
        )

    def test_registered_through_entry_point(self) -> None:
        if self.plugin_name is None:
            pytest.skip("plugin_name not set: the entry-point check needs it")
        plugins = load_plugins()
        if self.plugin_name in plugins.failures:
            _fail(
                f"plugin {self.plugin_name!r} failed to load: {plugins.failures[self.plugin_name]}"
            )
        names = [p.name for p in plugins.info()]
        if self.plugin_name not in names:
            _fail(
                f"no plugin {self.plugin_name!r} in the `gateway` entry-point group (found: "
                f"{', '.join(names)}); add [project.entry-points.gateway] "
                f'{self.plugin_name} = "<your package>" to pyproject.toml and reinstall'
            )
        registered = plugins.connectors().get(self.connector_class.kind)
        if registered is not self.connector_class:
            _fail(
                f"plugin {self.plugin_name!r} does not register {self.connector_class.__name__} "
                f"for kind {self.connector_class.kind!r} (got {registered!r})"
            )

    @pytest.mark.asyncio
    async def test_submit_returns_a_case(
        self, connector: Connector, make_envelope: MakeEnvelope
    ) -> None:
        receipt = await self._submit(connector, make_envelope(), "a plain submit")
        if not receipt.case_id:
            _fail("submit returned a Receipt with an empty case_id")

    @pytest.mark.asyncio
    async def test_submit_is_idempotent(
        self,
        department_system: Any,
        connector: Connector,
        make_connector: MakeConnector,
        make_envelope: MakeEnvelope,
    ) -> None:
        since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        envelope = make_envelope()
        first = await self._submit(connector, envelope, "first submit")
        second = await self._submit(connector, envelope, "second submit with the same key")
        if first.case_id != second.case_id:
            _fail(
                "submit is not idempotent: the same idempotency_key produced case ids "
                f"{first.case_id} and {second.case_id}; send envelope.idempotency_key to the "
                "department (or look the key up first) so a retried delivery finds its case"
            )
        fresh = make_connector()  # as after a gateway restart: nothing kept in memory
        third = await self._submit(fresh, envelope, "submit with the same key on a new connector")
        if third.case_id != first.case_id:
            _fail(
                "submit is not idempotent across connector instances: the same idempotency_key "
                f"produced case ids {first.case_id} and {third.case_id} after a restart; the "
                "department, not the connector's memory, must remember the key"
            )
        key = envelope.idempotency_key
        count = await self._count(department_system, connector, key, since)
        if count is not None and count != 1:
            _fail(
                f"submit is not idempotent: the department holds {count} cases for "
                f"idempotency_key {key} after three submits of it"
            )

    @pytest.mark.asyncio
    async def test_distinct_keys_make_distinct_cases(
        self, connector: Connector, make_envelope: MakeEnvelope
    ) -> None:
        one = await self._submit(connector, make_envelope(), "first application")
        two = await self._submit(connector, make_envelope(), "second application")
        if one.case_id == two.case_id:
            _fail(
                f"two applications with different idempotency keys got the same case id "
                f"{one.case_id}"
            )

    @pytest.mark.asyncio
    async def test_statuses_map_through_status_map(
        self, department: DepartmentConfig, connector: Connector, make_envelope: MakeEnvelope
    ) -> None:
        since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        receipt = await self._submit(connector, make_envelope(), "submit")
        seen: list[tuple[str, str]] = [(s, "department_statuses") for s in self.department_statuses]
        if receipt.status is not None:
            seen.append((receipt.status, "submit's Receipt"))
        update = await connector.poll(receipt)
        if update is not None:
            if not isinstance(update, CaseUpdate):
                _fail(f"poll must return a CaseUpdate or None, returned {update!r}")
            if update.case_id != receipt.case_id:
                _fail(f"poll(receipt of case {receipt.case_id}) answered for case {update.case_id}")
            seen.append((update.status, "poll"))
        for summary in await self._listed(connector, since) or []:
            seen.append((summary.status, "list_cases"))
        if not seen:
            pytest.skip("the connector reported no status (no Receipt.status, no poll, no list)")
        known = ", ".join(sorted(department.status_map)) or "none"
        for raw, where in seen:
            if department.map_status(raw) is None:
                _fail(
                    f"department status {raw!r} (from {where}) maps to no gateway state: add it "
                    f"to the department's status_map (mapped codes: {known})"
                )

    @pytest.mark.asyncio
    async def test_list_cases_finds_submitted_cases(
        self, connector: Connector, make_envelope: MakeEnvelope
    ) -> None:
        since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        envelope = make_envelope()
        receipt = await self._submit(connector, envelope, "submit")
        listed = await self._listed(connector, since)
        if listed is None:
            pytest.skip("list_cases is not implemented: reconciliation cannot find lost cases")
        for summary in listed:
            if not isinstance(summary, CaseSummary):
                _fail(f"list_cases must yield CaseSummary objects, yielded {summary!r}")
        ids = {s.case_id for s in listed}
        if receipt.case_id not in ids:
            _fail(
                f"list_cases over the last minutes does not include case {receipt.case_id} "
                f"just submitted (listed {len(ids)} cases)"
            )
        mine = [s for s in listed if s.case_id == receipt.case_id]
        if mine[0].idempotency_key not in (None, envelope.idempotency_key):
            _fail(
                f"list_cases gives case {receipt.case_id} idempotency_key "
                f"{mine[0].idempotency_key!r}, but it was submitted as {envelope.idempotency_key!r}"
            )

    @pytest.mark.asyncio
    async def test_change_feed_tells_of_a_submitted_case(
        self, department: DepartmentConfig, connector: Connector, make_envelope: MakeEnvelope
    ) -> None:
        """A connector that offers a change feed (``offers_changes``) tells of a case just
        submitted: by time, in the window of the last minutes; by sequence, after number 0,
        the numbers increasing. Each item is a CaseUpdate whose status maps through the
        department's status_map. Without a feed the department's open cases are polled one by
        one; a connector must not then claim a numbered one."""
        if not connector.offers_changes():
            if connector.changes_by_sequence():
                _fail("changes_by_sequence() is true but offers_changes() is false")
            return
        since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        receipt = await self._submit(connector, make_envelope(), "submit")
        if connector.changes_by_sequence():
            told = [u async for u in connector.changes_after(0)]
            numbers = [u.sequence for u in told]
            if any(n is None for n in numbers) or numbers != sorted(set(numbers)):  # type: ignore[type-var]
                _fail(f"changes_after(0) must number each change, increasing; gave {numbers}")
        else:
            until = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
            told = [u async for u in connector.changes(since, until)]
        for update in told:
            if not isinstance(update, CaseUpdate):
                _fail(f"the change feed must yield CaseUpdate objects, yielded {update!r}")
            if department.map_status(update.status) is None:
                _fail(f"the change feed gives status {update.status!r}, not in the status_map")
        if receipt.case_id not in {u.case_id for u in told}:
            _fail(
                f"the change feed over the last minutes does not tell of case {receipt.case_id} "
                f"just submitted ({len(told)} changes)"
            )

    @pytest.mark.asyncio
    async def test_health_ok_when_department_is_up(self, connector: Connector) -> None:
        health = await connector.health()
        if not isinstance(health, Health):
            _fail(f"health must return a Health, returned {health!r}")
        if not health.ok:
            _fail(f"health says the running department is down: {health.detail}")

    @pytest.mark.asyncio
    async def test_unreachable_department(
        self,
        department: DepartmentConfig,
        make_connector: MakeConnector,
        make_envelope: MakeEnvelope,
    ) -> None:
        unreachable = self.unreachable(department)
        if unreachable is None:
            pytest.skip("no URL or port option to point elsewhere: override unreachable()")
        connector = make_connector(unreachable)
        bound = self._bound(department) + self.slack_seconds
        try:
            async with asyncio.timeout(bound):
                health = await connector.health()
        except TimeoutError:
            _fail(f"health did not answer within {bound:.1f}s while the department was down")
        except Exception as exc:
            _fail(f"health must report a problem, not raise: it raised {type(exc).__name__}: {exc}")
        if health.ok:
            _fail("health says ok while the department's port refuses connections")
        await self._expect_transient(connector, make_envelope(), "connection refused", bound)

    @pytest.mark.asyncio
    async def test_server_error_is_transient(
        self,
        department_system: Any,
        department: DepartmentConfig,
        connector: Connector,
        make_envelope: MakeEnvelope,
    ) -> None:
        failing = self.provoke(department_system, "server_error")
        if failing is None:
            pytest.skip("the plugin cannot provoke a server error: override provoke()")
        async with failing:
            await self._expect_transient(
                connector,
                make_envelope(),
                "a server error (5xx)",
                self._bound(department) + self.slack_seconds,
            )

    @pytest.mark.asyncio
    async def test_timeout_is_transient_and_retry_makes_no_second_case(
        self,
        department_system: Any,
        department: DepartmentConfig,
        connector: Connector,
        make_envelope: MakeEnvelope,
    ) -> None:
        hanging = self.provoke(department_system, "timeout")
        if hanging is None:
            pytest.skip("the plugin cannot make the department hang: override provoke()")
        since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        envelope = make_envelope()
        bound = self._bound(department)
        async with hanging:
            task = asyncio.create_task(connector.submit(envelope))
            done, _ = await asyncio.wait({task}, timeout=bound)
            if not done:  # the core's asyncio.timeout does the same
                task.cancel()
                done, _ = await asyncio.wait({task}, timeout=self.slack_seconds)
                if not done:
                    _fail(
                        f"submit ignored cancellation for {self.slack_seconds:.0f}s after the "
                        "gateway's timeout: never swallow asyncio.CancelledError"
                    )
            if not task.cancelled():
                exc = task.exception()
                if exc is None:
                    _fail("submit returned a receipt while the department was not answering")
                if not isinstance(exc, TransientError):
                    _fail(
                        "a department that does not answer must raise TransientError (retry "
                        f"later), submit raised {type(exc).__name__}: {exc}"
                    )
        retried = await self._submit(connector, envelope, "retry after a timeout")
        count = await self._count(department_system, connector, envelope.idempotency_key, since)
        if count is not None and count != 1:
            _fail(
                f"a retry after a timeout left {count} cases for one idempotency_key "
                f"(last case id {retried.case_id})"
            )

    @pytest.mark.asyncio
    async def test_aclose_releases_resources(
        self, make_connector: MakeConnector, http: httpx.AsyncClient, make_envelope: MakeEnvelope
    ) -> None:
        before = asyncio.all_tasks()
        connector = make_connector()
        await self._submit(connector, make_envelope(), "submit before aclose")
        await connector.health()
        await connector.aclose()
        await connector.aclose()  # closing twice is harmless (shutdown paths overlap)
        if http.is_closed:
            _fail("aclose closed the shared http client: it belongs to the gateway")
        package = type(connector).__module__.split(".")[0]
        left = [
            t for t in asyncio.all_tasks() - before if not t.done() and _task_package(t) == package
        ]
        if left:
            _fail(f"aclose left {len(left)} task(s) of {package} running: {left[0]!r}")

    @pytest.mark.asyncio
    async def test_decided_case_keeps_its_documents(
        self,
        department_system: Any,
        department: DepartmentConfig,
        connector: Connector,
        make_envelope: MakeEnvelope,
    ) -> None:
        envelope = make_envelope()
        receipt = await self._submit(connector, envelope, "submit")
        issued = await self.decide_with_documents(department_system, receipt, envelope)
        if issued is None:
            pytest.skip("decide_with_documents not provided: documents are not checked")
        if await connector.poll(receipt) is None:
            pytest.skip("poll is not implemented: documents are checked through poll")
        update = await self._poll_until_decided(department, connector, receipt)
        if not update.documents:
            _fail(
                f"case {receipt.case_id} was decided approved with {len(issued)} document(s), "
                "but poll's update carries none: the connector loses the department's "
                "documents (check where it reads them), and such a case never reaches pickup"
            )
        contents = [d.content for d in update.documents if d.content is not None]
        linked = [d for d in update.documents if d.content is None and d.url]
        for i, expected in enumerate(issued):
            if expected not in contents and not linked:
                sizes = ", ".join(str(len(c)) for c in contents) or "none"
                _fail(
                    f"document {i + 1} of case {receipt.case_id} ({len(expected)} bytes) is not "
                    f"in poll's update byte for byte (documents there: {sizes} bytes)"
                )

    async def _poll_until_decided(
        self, department: DepartmentConfig, connector: Connector, receipt: Receipt
    ) -> CaseUpdate:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.result_wait_seconds
        while True:
            update = await connector.poll(receipt)
            if update is None:
                _fail("poll answered the decided case with None")
            state = department.map_status(update.status)
            if state is State.APPROVED:
                return update
            if loop.time() > deadline:
                _fail(
                    f"case {receipt.case_id} was decided approved, but poll still reports "
                    f"status {update.status!r} ({state or 'unmapped'}) after "
                    f"{self.result_wait_seconds}s"
                )
            await asyncio.sleep(0.05)

    @pytest.mark.asyncio
    async def test_poll_of_no_such_case_raises_case_not_found(
        self, department_system: Any, connector: Connector
    ) -> None:
        receipt = self.unknown_case(department_system)
        try:
            update = await connector.poll(receipt)
        except CaseNotFound:
            return
        except TransientError as exc:
            _fail(
                f"poll of case {receipt.case_id}, which the department does not hold, raised "
                f"TransientError ({exc}): it would be asked again forever; raise CaseNotFound"
            )
        except Exception as exc:
            _fail(
                f"poll of case {receipt.case_id}, which the department does not hold, must raise "
                f"gateway.errors.CaseNotFound; it raised {type(exc).__name__}: {exc}"
            )
        if update is not None:
            _fail(
                f"poll of case {receipt.case_id}, which the department does not hold, returned "
                f"an update (status {update.status!r}): raise CaseNotFound instead"
            )

    # -- the optional result channels: pushed callbacks, pulled result files ------------------

    async def _callback_case(
        self, system: Any, connector: Connector, make_envelope: MakeEnvelope
    ) -> tuple[Envelope, Receipt, dict[str, Any]] | None:
        """What the callback checks work on; None when the department declares no callbacks
        (and the connector agrees)."""
        name = type(connector).__name__
        implemented = type(connector).parse_callback is not Connector.parse_callback
        if not _channel(self.pushes_callbacks, implemented, name, "parse_callback"):
            return None
        envelope = make_envelope()
        receipt = await self._submit(connector, envelope, "submit")
        body = self.callback_body(system, receipt, envelope)
        if body is None:
            _skip_or_fail(
                self.pushes_callbacks,
                "pushes_callbacks",
                "no sample callback body: override callback_body(system, receipt, envelope)",
            )
        try:
            payload = json.loads(json.dumps(body))
        except (TypeError, ValueError) as exc:
            _fail(
                "callback_body must return a JSON object (the gateway decodes the callback "
                f"body as JSON before parse_callback sees it): {exc}"
            )
        if not isinstance(payload, dict):
            _fail(f"callback_body must return a JSON object, returned {body!r}")
        return envelope, receipt, payload

    def _parse_callback(self, connector: Connector, payload: dict[str, Any]) -> CaseUpdate:
        try:
            update = connector.parse_callback(payload)
        except Exception as exc:
            _fail(
                f"parse_callback raised {type(exc).__name__}: {exc} on the body callback_body "
                "gave for a case just submitted"
            )
        if not isinstance(update, CaseUpdate):
            _fail(f"parse_callback must return a CaseUpdate, returned {update!r}")
        return update

    @pytest.mark.asyncio
    async def test_parse_callback_names_the_case_and_maps_its_status(
        self,
        department_system: Any,
        department: DepartmentConfig,
        connector: Connector,
        make_envelope: MakeEnvelope,
    ) -> None:
        found = await self._callback_case(department_system, connector, make_envelope)
        if found is None:
            return
        envelope, receipt, payload = found
        update = self._parse_callback(connector, payload)
        key = envelope.idempotency_key
        if update.idempotency_key not in (None, key):
            _fail(
                f"parse_callback's update names idempotency_key {update.idempotency_key!r}, but "
                f"the callback is about the case submitted as {key!r}: the gateway matches on "
                "the key first, so this callback would find no case"
            )
        if update.case_id != receipt.case_id and update.idempotency_key != key:
            _fail(
                f"parse_callback's update names case {update.case_id!r} and no idempotency_key, "
                f"but the callback is about case {receipt.case_id} (submitted as {key}): the "
                "gateway could not match it to its case"
            )
        if department.map_status(update.status) is None:
            known = ", ".join(sorted(department.status_map)) or "none"
            _fail(
                f"department status {update.status!r} (from parse_callback) maps to no gateway "
                f"state: add it to the department's status_map (mapped codes: {known})"
            )

    @pytest.mark.asyncio
    async def test_parse_callback_without_status_says_what_is_missing(
        self, department_system: Any, connector: Connector, make_envelope: MakeEnvelope
    ) -> None:
        found = await self._callback_case(department_system, connector, make_envelope)
        if found is None:
            return
        payload = found[2]
        status = self._parse_callback(connector, payload).status
        paths = [self.callback_status_field] if self.callback_status_field else None
        paths = paths or _paths_holding(payload, status)
        if not paths:
            _fail(
                f"the status {status!r} parse_callback read is in no field of the callback body: "
                "set callback_status_field to its dotted path"
            )
        stripped = copy.deepcopy(payload)
        for path in paths:
            if not _remove_path(stripped, path):
                _fail(f"callback_status_field {path!r} is not in the callback body")
        missing = " and ".join(repr(p) for p in paths)
        try:
            update = connector.parse_callback(stripped)
        except (ValueError, PermanentError) as exc:
            leaves = {p.rsplit(".", 1)[-1] for p in paths}
            if not any(leaf in str(exc) for leaf in leaves):
                _fail(
                    f"parse_callback rejected a callback body without {missing} but its message "
                    f"does not say what is missing: {type(exc).__name__}: {exc} (the gateway "
                    "answers the department 422 with this message: name the missing field)"
                )
            return
        except Exception as exc:
            _fail(
                f"a callback body without its status ({missing}) must raise ValueError or "
                f"PermanentError naming what is missing; parse_callback raised "
                f"{type(exc).__name__}: {exc}"
            )
        _fail(
            f"parse_callback accepted a callback body without its status ({missing}) and "
            f"returned status {update.status!r}: reject it with a ValueError naming the field"
        )

    async def _result_case(
        self, system: Any, connector: Connector, make_envelope: MakeEnvelope
    ) -> tuple[Envelope, Receipt] | None:
        """What the result checks work on; None when the department declares no result channel
        (and the connector agrees)."""
        name = type(connector).__name__
        implemented = type(connector).pull_updates is not Connector.pull_updates
        if not _channel(self.pulls_results, implemented, name, "pull_updates"):
            return None
        envelope = make_envelope()
        receipt = await self._submit(connector, envelope, "submit")
        try:
            produced = await self.produce_result(system, receipt, envelope)
        except NotImplementedError:
            produced = None
        if produced is None or produced is NotImplemented:
            _skip_or_fail(
                self.pulls_results,
                "pulls_results",
                "the plugin cannot make the department produce a result: override "
                "produce_result(system, receipt, envelope)",
            )
        return envelope, receipt

    async def _pull(self, connector: Connector, what: str) -> list[CaseUpdate]:
        try:
            updates = await connector.pull_updates(100)
        except Exception as exc:
            _fail(f"{what}: pull_updates raised {type(exc).__name__}: {exc}")
        if not isinstance(updates, list) or not all(isinstance(u, CaseUpdate) for u in updates):
            _fail(f"{what}: pull_updates must return a list of CaseUpdate, returned {updates!r}")
        return updates

    async def _pull_result(
        self, connector: Connector, receipt: Receipt, envelope: Envelope
    ) -> CaseUpdate:
        """Pull (as the daemon does, round after round) until the produced result shows up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.result_wait_seconds
        while True:
            updates = await self._pull(connector, "pulling the result produce_result made")
            mine = [u for u in updates if _names_case(u, receipt, envelope)]
            if mine:
                return mine[0]
            if loop.time() >= deadline:
                _fail(
                    f"pull_updates returned no update for case {receipt.case_id} (idempotency_key "
                    f"{envelope.idempotency_key}) within {self.result_wait_seconds:.1f}s after "
                    f"produce_result made the department produce one (the last pull returned "
                    f"{len(updates)} other update(s)); an update must carry the department's "
                    "case id or the gateway's idempotency key"
                )
            await asyncio.sleep(0.05)  # the next round of the daemon's schedule

    async def _ack(
        self, connector: Connector, update: CaseUpdate, outcome: UpdateOutcome, reason: str = ""
    ) -> None:
        try:
            await connector.ack_update(update, outcome, reason)
        except Exception as exc:
            _fail(
                f"ack_update(update of case {update.case_id}, {outcome!r}) raised "
                f"{type(exc).__name__}: {exc}"
            )

    @pytest.mark.asyncio
    async def test_pull_updates_repeats_an_update_until_it_is_acked(
        self,
        department_system: Any,
        department: DepartmentConfig,
        connector: Connector,
        make_envelope: MakeEnvelope,
    ) -> None:
        found = await self._result_case(department_system, connector, make_envelope)
        if found is None:
            return
        envelope, receipt = found
        update = await self._pull_result(connector, receipt, envelope)
        if department.map_status(update.status) is None:
            known = ", ".join(sorted(department.status_map)) or "none"
            _fail(
                f"department status {update.status!r} (from pull_updates) maps to no gateway "
                f"state: add it to the department's status_map (mapped codes: {known})"
            )
        again = await self._pull(connector, "pulling again before ack_update")
        if not any(_same_update(u, update) for u in again):
            _fail(
                f"pull_updates did not return the update for case {update.case_id} (ref "
                f"{update.ref!r}) again before it was acknowledged: an update must stay until "
                "ack_update settles it, or a crash between applying it and acking it loses "
                "the department's result"
            )
        await self._ack(connector, update, "applied")
        after = await self._pull(connector, "pulling after ack_update(..., 'applied')")
        if any(_same_update(u, update) for u in after):
            _fail(
                f"pull_updates returned the update for case {update.case_id} (ref "
                f"{update.ref!r}) again after ack_update(..., 'applied'): acknowledging must "
                "archive it, or the daemon applies it again on every round"
            )

    @pytest.mark.asyncio
    @pytest.mark.parametrize("outcome", ["duplicate", "unmatched"])
    async def test_pull_updates_settles_acked_updates(
        self,
        department_system: Any,
        connector: Connector,
        make_envelope: MakeEnvelope,
        outcome: UpdateOutcome,
    ) -> None:
        found = await self._result_case(department_system, connector, make_envelope)
        if found is None:
            return
        envelope, receipt = found
        update = await self._pull_result(connector, receipt, envelope)
        reason = "conformance check: no case with this idempotency key or case id"
        await self._ack(connector, update, outcome, reason if outcome == "unmatched" else "")
        after = await self._pull(connector, f"pulling after ack_update(..., {outcome!r})")
        if any(_same_update(u, update) for u in after):
            what = "quarantine" if outcome == "unmatched" else "archive"
            _fail(
                f"pull_updates returned the update for case {update.case_id} (ref "
                f"{update.ref!r}) again after ack_update(..., {outcome!r}): acknowledging must "
                f"{what} it, or the daemon meets it again on every round"
            )

    @pytest.mark.asyncio
    async def test_ack_updates_settles_every_update_of_a_batch(
        self,
        department_system: Any,
        connector: Connector,
        make_envelope: MakeEnvelope,
    ) -> None:
        """The daemon settles a committed batch with one ``ack_updates`` call (the default
        calls ``ack_update`` for each): every update of it, whatever its outcome, is settled."""
        settled: list[CaseUpdate] = []
        outcomes: list[UpdateOutcome] = ["applied", "duplicate", "unmatched"]
        for _ in outcomes:
            found = await self._result_case(department_system, connector, make_envelope)
            if found is None:
                return
            envelope, receipt = found
            settled.append(await self._pull_result(connector, receipt, envelope))
        reason = "conformance check: no case with this idempotency key or case id"
        acks = [
            Ack(update, outcome, reason if outcome == "unmatched" else "")
            for update, outcome in zip(settled, outcomes, strict=True)
        ]
        try:
            await connector.ack_updates(acks)
        except Exception as exc:
            _fail(f"ack_updates(a batch of {len(acks)}) raised {type(exc).__name__}: {exc}")
        after = await self._pull(connector, "pulling after ack_updates(...)")
        for ack in acks:
            if any(_same_update(u, ack.update) for u in after):
                _fail(
                    f"pull_updates returned the update for case {ack.update.case_id} (ref "
                    f"{ack.update.ref!r}) again after ack_updates settled it as "
                    f"{ack.outcome!r} in a batch of {len(acks)}: every update of the batch "
                    "must be settled, or the daemon meets it again on every round"
                )

    async def _expect_transient(
        self, connector: Connector, envelope: Envelope, what: str, bound: float
    ) -> None:
        try:
            async with asyncio.timeout(bound):
                receipt = await connector.submit(envelope)
        except TransientError:
            return
        except TimeoutError:
            _fail(f"submit did not give up within {bound:.1f}s on {what}")
        except Exception as exc:
            _fail(
                f"{what} must raise TransientError so the gateway retries later; submit raised "
                f"{type(exc).__name__}: {exc} (translate it: raise TransientError(...) from exc)"
            )
        _fail(f"submit returned case {receipt.case_id} despite {what}")


def _channel(declared: bool | None, implemented: bool, name: str, method: str) -> bool:
    """Whether to check the channel ``method`` serves: skip or fail when it cannot be checked,
    False when the department declares it has no such channel and the connector agrees."""
    flag = "pushes_callbacks" if method == "parse_callback" else "pulls_results"
    if declared is False:
        if implemented:
            _fail(
                f"{flag} = False says the department has no such channel, but {name} "
                f"implements {method}: set {flag} = True and supply the hook so the suite "
                "checks it"
            )
        return False
    if not implemented:
        _skip_or_fail(declared, flag, f"{name} does not implement {method}")
    return True


def _skip_or_fail(declared: bool | None, flag: str, reason: str) -> NoReturn:
    if declared:
        _fail(f"{flag} = True, but {reason}")
    pytest.skip(f"{reason} (set {flag} = False if the department has no such channel)")


def _names_case(update: CaseUpdate, receipt: Receipt, envelope: Envelope) -> bool:
    return update.case_id == receipt.case_id or update.idempotency_key == envelope.idempotency_key


def _same_update(update: CaseUpdate, settled: CaseUpdate) -> bool:
    """The same update again: the same ``ref`` (the connector's handle), else equal."""
    return update.ref == settled.ref if settled.ref is not None else update == settled


def _paths_holding(body: dict[str, Any], value: str) -> list[str]:
    """Dotted paths of the fields holding ``value``; those named like a status first."""
    found: list[str] = []

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, item in node.items():
            path = f"{prefix}{key}"
            if isinstance(item, dict):
                walk(item, f"{path}.")
            elif isinstance(item, str | int) and not isinstance(item, bool) and str(item) == value:
                found.append(path)

    walk(body, "")
    named = [p for p in found if "status" in p.rsplit(".", 1)[-1].lower()]
    return named or found


def _remove_path(body: dict[str, Any], path: str) -> bool:
    *parents, leaf = path.split(".")
    node: Any = body
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or leaf not in node:
        return False
    del node[leaf]
    return True


def _task_package(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    frame = getattr(coro, "cr_frame", None)
    name = frame.f_globals.get("__name__", "") if frame is not None else ""
    return str(name).split(".")[0]


def _point_at(value: Any, port: int) -> tuple[Any, bool]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        changed = False
        for key, item in value.items():
            if key == "port" and isinstance(item, int):
                out[key], hit = port, True
            elif key == "host" and isinstance(item, str):
                out[key], hit = "127.0.0.1", False
            else:
                out[key], hit = _point_at(item, port)
            changed = changed or hit
        return out, changed
    if isinstance(value, str) and value.startswith(("http://", "https://")):
        url = httpx.URL(value)
        return str(url.copy_with(scheme="http", host="127.0.0.1", port=port)), True
    return value, False
