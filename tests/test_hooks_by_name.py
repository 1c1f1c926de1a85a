"""Hooks are called by name, as pluggy calls them: an implementation may take any subset of a
hook's arguments, in any order, and still gets each argument under its own name."""

from __future__ import annotations

import datetime as dt
import inspect
from collections.abc import Callable
from typing import Any

import pytest
import typer

from gateway import hookspecs
from gateway.config.models import DepartmentConfig, Matter
from gateway.connector import Applicant, Envelope
from gateway.events import Source, StatusChange
from gateway.hookspecs import hookimpl
from gateway.notifications import Contact
from gateway.plugin_manager import Plugins, load_plugins
from gateway.states import State

SPECS = sorted(
    name
    for name, fn in vars(hookspecs).items()
    if inspect.isfunction(fn) and hasattr(fn, "gateway_spec")
)

ENVELOPE = Envelope(
    application_id="a1",
    idempotency_key="ow-a1-v1",
    department="amr",
    matter_code="GG00301000",
    matter_name="m",
    region="339900",
    receipt_number="C01-1",
    centre="C01",
    applicant=Applicant(name="N", id_number="110101199003074514"),
    submitted_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
)
DEPARTMENT = DepartmentConfig(code="amr", name="amr", connector="rest")
MATTER = Matter(code="GG00301000", name="m", department="amr", regions=["339900"], promised_days=5)
CHANGE = StatusChange(
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
    at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
)


class _Recorder:
    """Records what each of its implementations received, by parameter name."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def record(self, impl: str, **got: Any) -> None:
        self.calls.append((impl, got))


def test_every_hook_is_covered_here() -> None:
    assert sorted(CASES) == SPECS


def _validate(rec: _Recorder) -> tuple[list[object], Callable[[Plugins], Any], list[Any]]:
    class Reversed:
        @hookimpl
        def validate_application(self, region: str, matter: Matter, form: dict[str, Any]) -> None:
            rec.record("reversed", region=region, matter=matter, form=form)

    class OnlyRegion:
        @hookimpl
        def validate_application(self, region: str) -> list[str]:
            rec.record("only_region", region=region)
            return [f"region {region} is closed"]

    def call(p: Plugins) -> Any:
        return p.validate_application({"area": 1}, MATTER, "339900")

    expected = [
        ("reversed", {"region": "339900", "matter": MATTER, "form": {"area": 1}}),
        ("only_region", {"region": "339900"}),
    ]
    return [Reversed(), OnlyRegion()], call, expected


def _map_payload(rec: _Recorder) -> tuple[list[object], Callable[[Plugins], Any], list[Any]]:
    class Reversed:
        @hookimpl
        def map_payload(
            self, department: DepartmentConfig, envelope: Envelope
        ) -> dict[str, Any] | None:
            rec.record("reversed", department=department, envelope=envelope)
            return None

    class OnlyDepartment:
        @hookimpl
        def map_payload(self, department: DepartmentConfig) -> dict[str, Any] | None:
            rec.record("only_department", department=department)
            return None

    def call(p: Plugins) -> Any:
        return p.map_payload(ENVELOPE, DEPARTMENT)

    both = {"department": DEPARTMENT, "envelope": ENVELOPE}
    return (
        [Reversed(), OnlyDepartment()],
        call,
        [("only_department", {"department": DEPARTMENT}), ("reversed", both)],
    )


def _status_changed(rec: _Recorder) -> tuple[list[object], Callable[[Plugins], Any], list[Any]]:
    contact = Contact.model_validate({"name": "N", "phone": "13912345678"})

    class Reversed:
        @hookimpl
        def status_changed(self, contact: Contact | None, change: StatusChange) -> None:
            rec.record("reversed", contact=contact, change=change)

    class OnlyContact:
        @hookimpl
        def status_changed(self, contact: Contact | None) -> None:
            rec.record("only_contact", contact=contact)

    def call(p: Plugins) -> Any:
        p.status_changed(CHANGE, contact)

    return (
        [Reversed(), OnlyContact()],
        call,
        [
            ("only_contact", {"contact": contact}),
            ("reversed", {"contact": contact, "change": CHANGE}),
        ],
    )


def _register_connectors(
    rec: _Recorder,
) -> tuple[list[object], Callable[[Plugins], Any], list[Any]]:
    class Takes:
        @hookimpl
        def register_connectors(self, register: Callable[[Any], None]) -> None:
            rec.record("takes", register=callable(register))

    return [Takes()], lambda p: p.connectors(), [("takes", {"register": True})]


def _register_delivery_methods(
    rec: _Recorder,
) -> tuple[list[object], Callable[[Plugins], Any], list[Any]]:
    class Takes:
        @hookimpl
        def register_delivery_methods(self, register: Callable[[Any], None]) -> None:
            rec.record("takes", register=callable(register))

    return [Takes()], lambda p: p.delivery_methods(), [("takes", {"register": True})]


def _register_commands(rec: _Recorder) -> tuple[list[object], Callable[[Plugins], Any], list[Any]]:
    cli = typer.Typer()

    class Takes:
        @hookimpl
        def register_commands(self, cli: typer.Typer) -> None:
            rec.record("takes", cli=cli)

    return [Takes()], lambda p: p.register_commands(cli), [("takes", {"cli": cli})]


CASES: dict[
    str, Callable[[_Recorder], tuple[list[object], Callable[[Plugins], Any], list[Any]]]
] = {
    "map_payload": _map_payload,
    "register_commands": _register_commands,
    "register_connectors": _register_connectors,
    "register_delivery_methods": _register_delivery_methods,
    "status_changed": _status_changed,
    "validate_application": _validate,
}


@pytest.mark.parametrize("hook", SPECS)
def test_hook_arguments_arrive_by_name(hook: str) -> None:
    rec = _Recorder()
    impls, call, expected = CASES[hook](rec)
    plugins = load_plugins(
        entry_points=False,
        extra=[(f"p{i}", impl) for i, impl in enumerate(impls)],
        block=["manual_mail"],
    )
    result = call(plugins)
    assert sorted(rec.calls, key=lambda c: c[0]) == sorted(expected, key=lambda c: c[0])
    if hook == "validate_application":
        assert result == ["region 339900 is closed"]
