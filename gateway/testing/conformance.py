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

What it checks: ``kind`` and an ``Options`` model that rejects unknown keys; the plugin shows up
through its entry point; submit returns a case and is idempotent on the idempotency key (twice on
one connector, and again on a fresh connector, as after a gateway restart); distinct keys make
distinct cases; every status the connector reports maps through the department's
``status_map``; ``list_cases`` finds what was submitted; ``health`` is ok when the department is
up and reports (never raises) when it is unreachable; connection refused, server errors and
timeouts raise :class:`~gateway.errors.TransientError` (or, for a hang, give way to the core's
timeout), and a retry after a timeout makes no second case; ``aclose`` releases the connector's
own resources and leaves the shared HTTP client open. A check the plugin cannot provoke is
skipped with the reason; a failure says what is wrong in words.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
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
    CaseSummary,
    CaseUpdate,
    Connector,
    ConnectorContext,
    Envelope,
    Health,
    MaterialRef,
    Receipt,
)
from gateway.errors import TransientError
from gateway.plugin_manager import load_plugins
from gateway.testing.gateway import TEST_CENTRE, TEST_CITY, TEST_MATTER

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

    def unreachable(self, department: DepartmentConfig) -> DepartmentConfig | None:
        """The department with options that point at a closed port on loopback, or None.

        The default rewrites every ``http(s)://`` URL and every ``port`` option; override it
        for other ways of addressing a department."""
        port = _closed_port()
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
            "applicant": {"name": "Test Applicant", "id_number": "110101199003074518"},
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
        bound = self._bound(department) + 2.0
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
                connector, make_envelope(), "a server error (5xx)", self._bound(department) + 2.0
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
                done, _ = await asyncio.wait({task}, timeout=2.0)
                if not done:
                    _fail(
                        "submit ignored cancellation for 2s after the gateway's timeout: never "
                        "swallow asyncio.CancelledError"
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


def _task_package(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    frame = getattr(coro, "cr_frame", None)
    name = frame.f_globals.get("__name__", "") if frame is not None else ""
    return str(name).split(".")[0]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


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
