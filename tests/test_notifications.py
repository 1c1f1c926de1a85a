"""Notifications through ``status_changed`` (the example SMS outbox plugin) and delivery methods
through ``register_delivery_methods`` (the built-in manual one and the example courier)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.config.loader import Config
from gateway.delivery import DeliveryMethod
from gateway.errors import PluginError
from gateway.events import Source, StatusChange
from gateway.hookspecs import hookimpl
from gateway.manual_mail import ManualMail
from gateway.notifications import Contact, NotifiedChange, split, with_contact
from gateway.plugin_manager import load_plugins
from gateway.runtime import Runtime
from gateway.states import State
from tests.handout_fixtures import ID_NUMBER, decide, quiet_runtime, status_of, submit

PHONE = "13800138000"


@pytest.fixture
async def runtime(example_config: Config) -> AsyncIterator[Runtime]:
    """No simulated departments needed: their answers are applied directly."""
    async with quiet_runtime(example_config) as rt:
        yield rt


@pytest.fixture
def outbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "sms" / "outbox.jsonl"
    monkeypatch.setenv("GATEWAY_SMS_OUTBOX", str(path))
    return path


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


async def test_sms_outbox_gets_masked_messages(
    api: httpx.AsyncClient, runtime: Runtime, centre_headers: dict[str, str], outbox: Path
) -> None:
    app = await submit(api, centre_headers)
    await decide(runtime, app["id"], "3", document=None, supplement_items=["营业执照"])
    await decide(runtime, app["id"], "9", version=1)  # stale: nothing sent for it
    [asked] = lines(outbox)
    assert asked["status"] == "supplement_required" and asked["to"] == "138****8000"
    assert app["receipt_number"] in asked["text"]
    raw = outbox.read_text(encoding="utf-8")
    assert PHONE not in raw and ID_NUMBER not in raw and "张三" not in raw


async def test_ready_and_mailed_are_texted(
    api: httpx.AsyncClient, runtime: Runtime, centre_headers: dict[str, str], outbox: Path
) -> None:
    app = await submit(api, centre_headers, delivery={"method": "mail", "address": "东城区1号"})
    await decide(runtime, app["id"])
    resp = await api.post(
        f"/v1/applications/{app['id']}/mail",
        json={"clerk": "c", "method": "courier"},
        headers=centre_headers,
    )
    assert resp.status_code == 200, resp.text
    sent = lines(outbox)
    assert [m["status"] for m in sent] == ["ready_for_pickup", "mailed"]
    assert resp.json()["tracking_number"] in sent[1]["text"]


async def test_failing_notifier_never_affects_the_case(
    api: httpx.AsyncClient, runtime: Runtime, centre_headers: dict[str, str], outbox: Path
) -> None:
    calls: list[str] = []

    class Broken:
        @hookimpl(tryfirst=True)
        def status_changed(self, change: StatusChange) -> None:
            calls.append(change.to_status)
            raise RuntimeError("sms gateway down")

    runtime.plugins.register(Broken(), "broken_notifier")
    app = await submit(api, centre_headers)
    assert await decide(runtime, app["id"]) == ["approved", "ready_for_pickup"]
    collected = await api.post(
        f"/v1/applications/{app['id']}/collect",
        json={"pickup_code": app["pickup_code"], "clerk": "c"},
        headers=centre_headers,
    )
    assert collected.status_code == 200
    assert await status_of(api, centre_headers, app["id"]) == "collected"
    assert calls == ["approved", "ready_for_pickup", "collected"]
    assert [m["status"] for m in lines(outbox)] == ["ready_for_pickup"]  # the others still run


def test_contact_never_prints_the_phone() -> None:
    contact = Contact.from_applicant({"name": "张三", "phone": PHONE, "id_number": ID_NUMBER})
    shown = f"{contact!r} {contact} {contact.model_dump()}"
    assert PHONE not in shown and "张三" not in shown
    assert contact.masked_phone == "138****8000"
    assert contact.phone is not None and contact.phone.get_secret_value() == PHONE


async def test_courier_is_idempotent_and_listed(
    api: httpx.AsyncClient,
    runtime: Runtime,
    centre_headers: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manifest = tmp_path / "courier.jsonl"
    monkeypatch.setenv("GATEWAY_COURIER_MANIFEST", str(manifest))
    methods = (await api.get("/v1/delivery-methods", headers=centre_headers)).json()["items"]
    assert {m["name"] for m in methods} >= {"manual", "courier"}
    app = await submit(api, centre_headers)  # chose pickup; asks to have it mailed after all
    await decide(runtime, app["id"])
    url = f"/v1/applications/{app['id']}/mail"
    short = await api.post(
        url, json={"clerk": "c", "method": "courier", "address": "x"}, headers=centre_headers
    )
    assert short.status_code == 422 and short.json()["errors"][0]["field"] == "address"
    body = {"clerk": "c", "method": "courier", "address": "西城区青石路9号 3单元"}
    first = await api.post(url, json=body, headers=centre_headers)
    assert first.status_code == 200, first.text
    assert first.json()["carrier"] == "示例速递"
    assert first.json()["tracking_number"].startswith("SS")
    again = await api.post(url, json=body, headers=centre_headers)
    assert again.json() == first.json()
    [booking] = [json.loads(x) for x in manifest.read_text(encoding="utf-8").splitlines()]
    assert booking["waybill"] == first.json()["tracking_number"]


async def test_failing_delivery_method_records_nothing(
    api: httpx.AsyncClient, runtime: Runtime, centre_headers: dict[str, str]
) -> None:
    class Down(DeliveryMethod):
        name = "down"

        async def ship(self, parcel: Any) -> Any:
            raise ConnectionError("courier API unreachable")

    class Plugin:
        @hookimpl
        def register_delivery_methods(self, register: Callable[[DeliveryMethod], None]) -> None:
            register(Down())

    runtime.plugins.register(Plugin(), "down_courier")
    app = await submit(api, centre_headers, delivery={"method": "mail", "address": "东城区1号"})
    await decide(runtime, app["id"])
    resp = await api.post(
        f"/v1/applications/{app['id']}/mail",
        json={"clerk": "c", "method": "down"},
        headers=centre_headers,
    )
    assert resp.status_code == 502 and resp.json()["errors"][0]["field"] == "method"
    assert await status_of(api, centre_headers, app["id"]) == "ready_for_pickup"


def test_duplicate_delivery_method_is_a_startup_error() -> None:
    class Again:
        @hookimpl
        def register_delivery_methods(self, register: Callable[[DeliveryMethod], None]) -> None:
            register(ManualMail())

    plugins = load_plugins(entry_points=False, extra=[("again", Again())])
    with pytest.raises(PluginError) as exc:
        plugins.delivery_methods()
    assert "already registered" in str(exc.value) and "again" in str(exc.value)


def test_a_change_carries_its_contact_and_splits_back_unchanged() -> None:
    """with_contact and split copy the change's values without validating them again: the
    same values and fields set as the change itself, the contact beside them, never in a dump."""
    change = StatusChange(
        application_id="01JABCDEFGHJKMNPQRSTVWXYZ0",
        receipt_number="C01-20261201-0001",
        department="amr",
        matter_code="GG00301000",
        centre="C01",
        version=2,
        from_status=State.DELIVERED,
        to_status=State.APPROVED,
        source=Source.DISPATCH,
        actor="host:1:abc",
        at=dt.datetime(2026, 12, 1, 8, 30, tzinfo=dt.UTC),
        detail={"case_id": "A-1", "resent": True},
    )
    assert with_contact(change, None) is change
    carried = with_contact(change, {"name": "张三", "phone": PHONE, "id_number": ID_NUMBER})
    assert type(carried) is NotifiedChange
    assert carried.contact is not None and carried.contact.phone is not None
    assert carried.contact.phone.get_secret_value() == PHONE
    assert carried.contact.name.get_secret_value() == "张三"
    assert carried.model_dump() == change.model_dump()  # the contact is never dumped
    assert carried.model_fields_set == change.model_fields_set | {"contact"}
    plain, contact = split(carried)
    assert type(plain) is StatusChange and contact == carried.contact
    assert plain == change and plain.model_fields_set == change.model_fields_set
    # a change that already carries a contact gets the new one
    again = with_contact(carried, {"name": "李四"})
    assert again.contact is not None and again.contact.phone is None  # type: ignore[attr-defined]
    assert split(change) == (change, None)
