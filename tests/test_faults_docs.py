"""docs/ops.md's section on infrastructure faults says what the code does: its figures are the
code's constants and defaults, and the metrics it names exist."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from prometheus_client import REGISTRY

from gateway import daemon, intake, outage
from gateway.config.models import GatewaySettings
from gateway.store import db

OPS = Path(__file__).resolve().parents[1] / "docs" / "ops.md"


def _section() -> str:
    after = OPS.read_text(encoding="utf-8").split("## Infrastructure faults", 1)[1]
    return after.split("\n## ", 1)[0]  # up to the next section


def test_the_engine_settings_table_shows_the_defaults() -> None:
    defaults = {
        name: p.default
        for name, p in inspect.signature(db.create_engine).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    rows = re.findall(r"^\| `(\w+)` \| (\d+)( s)? \|", _section(), re.M)
    assert {name for name, _v, _s in rows} >= {
        "statement_timeout",
        "pool_timeout",
        "connect_timeout",
        "recycle_seconds",
        "pool_size",
    }
    for name, value, _seconds in rows:
        assert defaults[name] == float(value), name
    assert f"`max_overflow` = {defaults['max_overflow']}" in _section()


def test_the_figures_in_the_text_are_the_codes() -> None:
    text = " ".join(_section().split())
    assert f"`Retry-After: {round(db.RETRY_AFTER)}`" in text
    assert f"doubling to at most {round(daemon.MAX_PAUSE_SECONDS)} s" in text
    assert f"after {daemon.MIN_PAUSE_SECONDS} s" in text
    assert f"at most every {round(outage.REMIND_SECONDS / 60)} minutes" in text
    assert "within a minute of coming back" in text and outage.FLAP_SECONDS == 60
    assert f"at most {intake.QUEUE_LIMIT} applications" in text
    default_mb = GatewaySettings.model_fields["data_dir_min_free_mb"].default
    assert f"data_dir_min_free_mb` (default {default_mb})" in text
    assert f"{round(outage.SETTLE_SECONDS)} s after its last failure" in text


def test_the_metrics_named_exist() -> None:
    import gateway.metrics  # noqa: F401  (registers them)

    named = set(re.findall(r"^\| `(gateway_\w+)", _section(), re.M))
    assert len(named) == 5
    known = {m.name for m in REGISTRY.collect()}
    for name in named:
        assert name.removesuffix("_total") in known, name


def test_the_killed_connection_retries_are_the_codes() -> None:
    from gateway.store.group import LOST_CONNECTION_ATTEMPTS

    text = " ".join(_section().split())
    assert f"up to {LOST_CONNECTION_ATTEMPTS} times in a row (`LOST_CONNECTION_ATTEMPTS`)" in text
