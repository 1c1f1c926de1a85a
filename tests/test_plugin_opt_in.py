"""Opt-in plugins (entry-point group ``gateway.opt_in``: the example notifier and courier) load
only when enabled by name; a production install without ``enable`` has neither."""

from __future__ import annotations

import pytest

from gateway.plugin_manager import load_plugins

EXAMPLES = {"sms_outbox", "courier_example"}


def names(**switches: list[str]) -> set[str]:
    return {p.name for p in load_plugins(**switches).info()}  # type: ignore[arg-type]


def test_examples_are_off_by_default() -> None:
    loaded = names()
    assert {"rest", "soap", "filedrop"} <= loaded
    assert not loaded & EXAMPLES


def test_enable_loads_them_even_when_load_narrows_the_rest() -> None:
    assert names(enable=sorted(EXAMPLES)) >= EXAMPLES
    assert names(load=["rest"], enable=["sms_outbox"]) == {"rest", "sms_outbox", "manual_mail"}


def test_block_wins_over_enable() -> None:
    assert "sms_outbox" not in names(enable=["sms_outbox"], block=["sms_outbox"])


def test_environment_enables_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_ENABLE_PLUGINS", "courier_example")
    assert "courier_example" in names()
    courier = load_plugins().delivery_methods()["courier"]
    assert type(courier).__module__ == "gateway_courier_example"
