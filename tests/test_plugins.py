"""The plugin manager: entry points, error boundaries, switches, and every hook."""

from __future__ import annotations

import datetime as dt
import importlib.metadata as md
import uuid
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from gateway.api.app import create_app
from gateway.cli import app as cli_app
from gateway.config.models import DepartmentConfig, Matter
from gateway.connector import Envelope
from gateway.errors import PluginError
from gateway.events import Source, StatusChange
from gateway.hookspecs import hookimpl
from gateway.plugin_manager import load_plugins
from gateway.runtime import Runtime
from gateway.simulators.city import SimulatedCity
from gateway.states import State
from tests.conftest import application


def change() -> StatusChange:
    return StatusChange(
        application_id="a1",
        receipt_number="C01-1",
        department="amr",
        matter_code="GG00301000",
        centre="C01",
        version=1,
        from_status=None,
        to_status=State.RECEIVED,
        source=Source.API,
        actor="t",
        at=dt.datetime.now(dt.UTC),
    )


def test_builtin_connectors_load_from_entry_points() -> None:
    plugins = load_plugins()
    info = {p.name: p for p in plugins.info()}
    assert "rest" in info and info["rest"].origin.startswith("entry point onewindow-gateway")
    assert info["rest"].hooks == ("register_connectors",)
    assert info["rest"].version
    assert plugins.connectors()["rest"].__name__ == "RestConnector"


def test_broken_plugin_is_named_and_others_still_load(monkeypatch: pytest.MonkeyPatch) -> None:
    real = md.entry_points

    def entry_points(**kw: Any) -> Any:
        eps = list(real(**kw))
        if kw.get("group") == "gateway":
            eps.insert(0, md.EntryPoint("broken", "gateway_no_such_module", "gateway"))
        return eps

    monkeypatch.setattr(md, "entry_points", entry_points)
    plugins = load_plugins()
    assert "broken" in plugins.failures
    assert "ModuleNotFoundError" in plugins.failures["broken"]
    assert "rest" in plugins.connectors()


def test_load_and_block_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "rest" not in load_plugins(block=["rest"]).connectors()
    monkeypatch.setenv("GATEWAY_LOAD_PLUGINS", "rest")
    assert set(load_plugins().connectors()) == {"rest"}
    monkeypatch.setenv("GATEWAY_TRACE_PLUGINS", "1")
    assert load_plugins().trace


def test_duplicate_connector_kind_is_a_startup_error() -> None:
    rest = load_plugins().connectors()["rest"]

    class Impostor:
        @hookimpl
        def register_connectors(self, register: Any) -> None:
            register(rest)

    plugins = load_plugins(extra=[("impostor", Impostor())])
    with pytest.raises(PluginError) as exc:
        plugins.connectors()
    assert "already registered" in str(exc.value) and "impostor" in str(exc.value)


def test_hookimpl_with_unknown_argument_is_rejected() -> None:
    class Wrong:
        @hookimpl
        def status_changed(self, change: Any, extra: Any) -> None: ...

    with pytest.raises(PluginError) as exc:
        load_plugins(entry_points=False, extra=[("wrong", Wrong())])
    assert "wrong" in str(exc.value)


def test_failing_notifier_does_not_stop_the_others() -> None:
    seen: list[StatusChange] = []

    class Failing:
        @hookimpl
        def status_changed(self, change: StatusChange) -> None:
            raise RuntimeError("sms gateway down")

    class Recording:
        @hookimpl
        def status_changed(self, change: StatusChange) -> None:
            seen.append(change)

    plugins = load_plugins(
        entry_points=False, extra=[("recording", Recording()), ("failing", Failing())]
    )
    plugins.status_changed(change())
    assert len(seen) == 1


def test_map_payload_first_answer_wins() -> None:
    class Custom:
        @hookimpl
        def map_payload(self, envelope: Envelope, department: DepartmentConfig) -> Any:
            return {"custom": envelope.receipt_number} if department.code == "amr" else None

    plugins = load_plugins(entry_points=False, extra=[("custom", Custom())])
    dept = DepartmentConfig(code="amr", name="x", connector="rest")
    other = DepartmentConfig(code="hrss", name="y", connector="rest")
    env = Envelope.model_validate(
        {
            "application_id": "a",
            "idempotency_key": "k",
            "department": "amr",
            "matter_code": "GG00301000",
            "matter_name": "m",
            "region": "339900",
            "receipt_number": "C01-1",
            "centre": "C01",
            "applicant": {"name": "n", "id_number": "1"},
            "submitted_at": dt.datetime.now(dt.UTC),
        }
    )
    assert plugins.map_payload(env, dept) == {"custom": "C01-1"}
    assert plugins.map_payload(env, other) is None


async def test_map_payload_reaches_the_department(city: SimulatedCity) -> None:
    class Custom:
        @hookimpl
        def map_payload(self, envelope: Envelope, department: DepartmentConfig) -> Any:
            return {"custom_ref": envelope.receipt_number, "version": envelope.version}

    runtime = Runtime(city.config, plugins=load_plugins(extra=[("custom", Custom())]))
    await runtime.prepare_database()
    try:
        from gateway.dispatcher import Dispatcher
        from gateway.intake import ApplicationIn, submit
        from gateway.store.clients import Client

        client = Client("c", "t", "C01", False)
        accepted = (
            await submit(runtime, client, "k1", ApplicationIn.model_validate(application()))
        ).accepted
        dispatcher = Dispatcher(runtime)
        await dispatcher.sweep()
        await dispatcher.drain()
        [case] = city.states["amr"].cases.values()
        assert case.body == {"custom_ref": accepted.receipt_number, "version": 1}
    finally:
        await runtime.aclose()


async def test_validate_application_rejects_at_intake(city: SimulatedCity) -> None:
    class Rule:
        @hookimpl
        def validate_application(
            self, form: dict[str, Any], matter: Matter, region: str
        ) -> list[str] | None:
            return ["form.reason: is required for this matter"] if "reason" not in form else None

    runtime = Runtime(city.config, plugins=load_plugins(extra=[("rule", Rule())]))
    await runtime.prepare_database()
    try:
        from gateway.store.clients import create_client

        async with runtime.engine.begin() as conn:
            _c, key = await create_client(conn, name="t", centre="C01", ops=False)
        transport = httpx.ASGITransport(app=create_app(runtime))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as api:
            headers = {"Authorization": f"Bearer {key}"}
            bad = await api.post(
                "/v1/applications",
                json=application(),
                headers={**headers, "Idempotency-Key": str(uuid.uuid4())},
            )
            assert bad.status_code == 422 and "form.reason" in bad.json()["detail"]
            assert bad.json()["errors"] == [
                {
                    "field": "form.reason",
                    "code": "form_rejected",
                    "message": "is required for this matter",
                }
            ]
            ok = await api.post(
                "/v1/applications",
                json=application(form={"reason": "x"}),
                headers={**headers, "Idempotency-Key": str(uuid.uuid4())},
            )
            assert ok.status_code == 201
    finally:
        await runtime.aclose()


def test_register_commands_adds_cli_commands() -> None:
    class Extra:
        @hookimpl
        def register_commands(self, cli: typer.Typer) -> None:
            @cli.command("hello-dept")
            def hello() -> None:
                print("hello from a plugin")

    app = typer.Typer()

    @app.command()
    def base() -> None: ...

    load_plugins(entry_points=False, extra=[("extra", Extra())]).register_commands(app)
    result = CliRunner().invoke(app, ["hello-dept"])
    assert result.exit_code == 0 and "hello from a plugin" in result.output


def test_plugins_command_lists_origin() -> None:
    result = CliRunner().invoke(cli_app, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    assert '"rest"' in result.output and "entry point" in result.output
