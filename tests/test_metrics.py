"""Metrics ops alert on: the shared backlog read at scrape time, latency from intake, callback
outcomes and reconciliation discrepancies."""

from __future__ import annotations

import datetime as dt

import httpx
from prometheus_client.parser import text_string_to_metric_families

from gateway import collector
from gateway.clock import new_id
from gateway.events import Source, StatusChange
from gateway.metrics import DELIVERY_LATENCY
from gateway.runtime import Runtime
from gateway.states import State
from gateway.updates import announce
from tests.conftest import application


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


async def test_backlog_is_read_from_the_database_at_scrape_time(
    api: httpx.AsyncClient, runtime: Runtime, centre_headers: dict[str, str]
) -> None:
    for i in range(3):
        created = await api.post(
            "/v1/applications",
            json=application(),
            headers={**centre_headers, "Idempotency-Key": f"m-{i}"},
        )
        assert created.status_code == 201
    collector._last.clear()  # another test's scrape within MIN_INTERVAL would be reused
    text = (await api.get("/metrics")).text
    backlog = _samples(text, "gateway_backlog_cases")
    assert backlog[(("department", "amr"), ("state", "received"))] == 3
    assert _samples(text, "gateway_failed_cases")[(("department", "amr"),)] == 0
    assert (("department", "nrp"),) in _samples(text, "gateway_overdue_cases")
    assert _samples(text, "gateway_retrying_jobs")[(("department", "amr"),)] == 0
    # a second scrape at once does not query again
    assert await collector.collect(runtime) is False


def test_delivery_latency_is_measured_from_intake() -> None:
    app_id = new_id("a")
    before = DELIVERY_LATENCY.labels("civil")._sum.get()  # type: ignore[attr-defined]

    class _Runtime:
        class plugins:
            @staticmethod
            def status_changed(*_args: object) -> None:
                return None

    change = StatusChange(
        application_id=app_id,
        receipt_number="C01-1",
        department="civil",
        matter_code="GG00301000",
        centre="C01",
        version=1,
        from_status=State.DISPATCHING,
        to_status=State.DELIVERED,
        source=Source.DISPATCH,
        actor="t",
        at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=90),
    )
    announce(_Runtime(), [change])  # type: ignore[arg-type]
    took = DELIVERY_LATENCY.labels("civil")._sum.get() - before  # type: ignore[attr-defined]
    assert 89 <= took <= 120


async def test_callback_outcomes_and_reconciliation_runs_are_counted(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    from prometheus_client import REGISTRY

    from gateway import reconcile

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    refused = value("gateway_callbacks_total", department="amr", outcome="refused_401")
    unknown = value("gateway_callbacks_total", department="unknown", outcome="refused_404")
    answer = await api.post("/v1/callbacks/amr", content=b"{}", headers={"X-Timestamp": "1"})
    assert answer.status_code == 401
    stranger = await api.post("/v1/callbacks/nope-" + "x" * 40, content=b"{}")
    assert stranger.status_code == 404
    assert value("gateway_callbacks_total", department="amr", outcome="refused_401") == refused + 1
    after = value("gateway_callbacks_total", department="unknown", outcome="refused_404")
    assert after == unknown + 1  # an unknown path is not a label of its own

    runs = value("gateway_reconcile_runs_total", department="amr", state="done")
    result = await reconcile.reconcile_department(runtime, "amr", trigger="cli")
    assert result.state == "done"
    assert value("gateway_reconcile_runs_total", department="amr", state="done") == runs + 1
