"""Infrastructure failures are their own class: told once per outage, answered 503/507 with
Retry-After (never 500), nothing half-written. The fault suite (tests/faults/) drives the same
paths against real processes; these are the quick checks of each piece."""

from __future__ import annotations

import asyncio
import base64
import errno
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text
from structlog.testing import capture_logs

from gateway.api.app import create_app
from gateway.blobs import BlobStore
from gateway.config.loader import load_config
from gateway.errors import DatabaseUnavailable, InfrastructureError, Overloaded, StorageFull
from gateway.outage import SETTLE_SECONDS, Outage
from gateway.runtime import Runtime
from gateway.store.db import create_engine, outage_of, unavailable
from gateway.store.group import GroupCommit
from gateway.testing.ports import free_port
from tests.conftest import EXAMPLE, application, configure_for_test, wait_for


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_an_outage_is_logged_once_reminded_and_ended_with_its_length() -> None:
    clock = _Clock()
    outage = Outage("database", remind_seconds=60, clock=clock)
    with capture_logs() as logs:
        for _ in range(500):  # 50 s of failures, ten a second
            outage.failed("refused")
            clock.t += 0.1
        clock.t += 20  # past the reminder interval
        outage.failed("refused")
        clock.t += 0.1
        outage.ok()  # one statement worked: a slow database does that; not the end yet
        assert outage.down and outage.answering
        clock.t += SETTLE_SECONDS
        outage.ok()
        outage.ok()
    assert not outage.down
    events = [(e["log_level"], e["event"]) for e in logs]
    assert events[0][0] == "warning" and events[0][1].startswith("database unavailable since ")
    assert events[1] == ("warning", "database still unavailable")
    assert events[2] == ("info", "database back after 70.0 s")  # first to last failure
    assert len(events) == 3
    assert logs[2]["failures"] == 501


def test_a_flapping_dependency_is_not_announced_each_time() -> None:
    clock = _Clock()
    outage = Outage("database", remind_seconds=300, clock=clock)
    with capture_logs() as logs:
        for _ in range(40):  # down 1 s, up 6 s, for 280 s
            outage.failed("refused")
            clock.t += 1
            outage.failed("refused")
            clock.t += SETTLE_SECONDS + 1
            outage.ok()
            assert not outage.down
    assert [e["log_level"] for e in logs] == ["warning", "info"]  # the first; the rest counted


def test_database_errors_are_told_apart_from_bugs() -> None:
    import sqlite3

    assert isinstance(unavailable(ConnectionRefusedError(111, "refused")), DatabaseUnavailable)
    assert isinstance(unavailable(TimeoutError()), DatabaseUnavailable)
    locked = unavailable(sqlite3.OperationalError("database is locked"))
    assert isinstance(locked, DatabaseUnavailable) and locked.status == 503
    full = unavailable(sqlite3.OperationalError("database or disk is full"))
    assert isinstance(full, StorageFull) and full.status == 507
    assert unavailable(sqlite3.OperationalError("no such table: x")) is None
    assert unavailable(ValueError("a bug")) is None
    wrapped = RuntimeError("outer")
    wrapped.__cause__ = ConnectionResetError(104, "reset")
    assert isinstance(unavailable(wrapped), DatabaseUnavailable)


async def test_an_unreachable_database_is_503_with_retry_after_and_one_log_line(
    tmp_path: Path,
) -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/gateway"
    config = configure_for_test(load_config(EXAMPLE), tmp_path, url)
    runtime = Runtime(config)
    transport = httpx.ASGITransport(app=create_app(runtime), raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://gw.test") as client:
            with capture_logs() as logs:
                answers = [
                    await client.post(
                        "/v1/applications",
                        json=application(),
                        headers={"Authorization": "Bearer k", "Idempotency-Key": f"k{i}"},
                    )
                    for i in range(20)
                ]
    finally:
        await runtime.aclose()
    assert {a.status_code for a in answers} == {503}
    first = answers[0]
    assert first.headers["content-type"] == "application/problem+json"
    assert int(first.headers["retry-after"]) >= 1
    assert "database" in first.json()["detail"] and "Idempotency-Key" in first.json()["detail"]
    outage = [e for e in logs if e["event"] != "request"]  # the access log has a line each
    assert [e["event"][:29] for e in outage] == ["database unavailable since 20"]
    assert outage_of(runtime.engine).down


async def test_sqlite_outage_ends_with_the_next_statement_that_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gateway.outage.SETTLE_SECONDS", 0.0)
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'g.db'}")
    outage = outage_of(engine)
    try:
        outage.failed("simulated")
        with capture_logs() as logs:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        assert not outage.down
        assert logs[0]["event"].startswith("database back after ")
    finally:
        await engine.dispose()


async def test_group_commit_sheds_load_when_its_queue_is_full(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'g.db'}")
    release = asyncio.Event()

    stores: list[list[int]] = []

    async def slow_store(_conn: object, items: list[int]) -> list[int]:
        stores.append(items)
        await release.wait()  # a database slower than the callers
        return items

    group: GroupCommit[int, int] = GroupCommit(engine, slow_store, max_queue=3)  # type: ignore[arg-type]
    try:
        first = asyncio.ensure_future(group.submit(0))
        await wait_for(lambda: stores == [[0]])  # the writer took item 0, waits on the database
        waiting = [asyncio.ensure_future(group.submit(i)) for i in (1, 2, 3)]
        await wait_for(lambda: group._queue.full())
        with pytest.raises(Overloaded) as shed:
            await group.submit(4)
        assert shed.value.status == 503 and shed.value.retry_after > 0
        release.set()
        assert await asyncio.gather(first, *waiting) == [0, 1, 2, 3]
    finally:
        await group.aclose()
        await engine.dispose()


def _fail_fsync_with_enospc(monkeypatch: pytest.MonkeyPatch) -> None:
    # the write hook: a full disk is reported by write() or by fsync() (delayed allocation)
    def full(_fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("gateway.blobs.os.fsync", full)


async def test_a_full_data_dir_refuses_the_blob_and_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BlobStore(tmp_path / "blobs")
    _fail_fsync_with_enospc(monkeypatch)
    with capture_logs() as logs:
        for _ in range(3):
            with pytest.raises(StorageFull):
                await store.put(b"%PDF- a scanned document")
    assert [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == []
    assert [e["event"][:28] for e in logs] == ["storage not writable since 2"]
    monkeypatch.undo()
    monkeypatch.setattr("gateway.outage.SETTLE_SECONDS", 0.0)
    with capture_logs() as logs:
        sha = await store.put(b"%PDF- a scanned document")
    assert await store.get(sha) == b"%PDF- a scanned document"
    assert logs[0]["event"].startswith("storage back after ")


def test_low_free_space_is_a_warning_and_a_metric(tmp_path: Path) -> None:
    with capture_logs() as logs:
        store = BlobStore(tmp_path / "blobs", min_free_bytes=2**62)
        store.check_space()  # still low: not told again so soon
    assert [e["event"] for e in logs] == ["data_dir low on free space"]
    assert REGISTRY.get_sample_value("gateway_data_dir_low") == 1
    free = REGISTRY.get_sample_value("gateway_data_dir_free_bytes")
    assert free is not None and free > 0
    BlobStore(tmp_path / "blobs", min_free_bytes=0)
    assert REGISTRY.get_sample_value("gateway_data_dir_low") == 0


async def test_an_upload_to_a_full_data_dir_is_507(
    runtime: Runtime,
    api: httpx.AsyncClient,
    centre_headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fail_fsync_with_enospc(monkeypatch)
    r = await api.post(
        "/v1/materials",
        files={"file": ("scan.pdf", b"%PDF-1.4 scan", "application/pdf")},
        headers=centre_headers,
    )
    assert r.status_code == 507, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert int(r.headers["retry-after"]) > 0
    assert "no room" in r.json()["detail"]
    monkeypatch.undo()
    r = await api.post(
        "/v1/materials",
        files={"file": ("scan.pdf", b"%PDF-1.4 scan", "application/pdf")},
        headers=centre_headers,
    )
    assert r.status_code == 201


def test_every_infrastructure_error_is_a_retry_later_answer() -> None:
    for cls in InfrastructureError.__subclasses__():
        err = cls("x")
        assert err.status in (503, 507) and err.retry_after > 0, cls


async def test_a_callback_whose_document_finds_no_room_is_refused_and_applies_when_resent(
    runtime: Runtime,
    api: httpx.AsyncClient,
    centre_headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.test_callbacks import _delivered_case, signed

    app_id, case_id = await _delivered_case(runtime, api, centre_headers)
    certificate = {
        "name": "certificate.pdf",
        "content_type": "application/pdf",
        "content_b64": base64.b64encode(b"%PDF-1.4 certificate").decode(),
    }
    raw, headers = signed(
        {"case_id": case_id, "status": "9", "documents": [certificate]}, event_id="ev-doc"
    )
    _fail_fsync_with_enospc(monkeypatch)
    first = await api.post("/v1/callbacks/amr", content=raw, headers=headers)
    assert first.status_code == 507, first.text
    assert int(first.headers["retry-after"]) > 0
    view = (await api.get(f"/v1/applications/{app_id}", headers=centre_headers)).json()
    assert view["status"] != "approved" and view["documents"] == []  # not applied without it
    monkeypatch.undo()
    again = await api.post("/v1/callbacks/amr", content=raw, headers=headers)  # the resend
    assert again.status_code == 200 and again.json()["status"] == "applied", again.text
    view = (await api.get(f"/v1/applications/{app_id}", headers=centre_headers)).json()
    assert view["status"] in ("approved", "ready_for_pickup")
    assert [d["name"] for d in view["documents"]] == ["certificate.pdf"]


async def test_intake_sheds_load_with_503_when_its_queue_is_full(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway import intake
    from gateway.store.clients import Client, hash_key

    app = create_app(runtime)
    # a key from config: on SQLite a stored key's lookup would queue behind the slow write
    app.state.keyring.static[hash_key("static-c01")] = Client("s1", "front desk", "C01", False)
    centre_headers = {"Authorization": "Bearer static-c01"}
    transport = httpx.ASGITransport(app=app)
    api = httpx.AsyncClient(transport=transport, base_url="http://gw.test")

    store = intake._store_in_order
    release = asyncio.Event()

    async def slow_database(conn: Any, batch: list[Any]) -> list[Any]:
        await release.wait()  # a database slower than the front desk
        return await store(conn, batch)

    monkeypatch.setattr(intake, "QUEUE_LIMIT", 3)
    monkeypatch.setattr(intake, "_store_in_order", slow_database)

    def post(i: int) -> asyncio.Future[httpx.Response]:
        return asyncio.ensure_future(
            api.post(
                "/v1/applications",
                json=application(),
                headers={**centre_headers, "Idempotency-Key": f"shed-{i}"},
            )
        )

    first = post(0)
    writer = intake._writer(runtime)  # the runtime's one intake group commit
    # item 0 submitted (its submit starts the writer's loop) and taken by it
    await wait_for(lambda: writer._task is not None and writer._queue.empty())
    waiting = [post(i) for i in (1, 2, 3)]
    await wait_for(lambda: writer._queue.full())
    shed = await api.post(
        "/v1/applications",
        json=application(),
        headers={**centre_headers, "Idempotency-Key": "shed-4"},
    )
    release.set()
    answers = await asyncio.gather(first, *waiting)
    await api.aclose()
    assert shed.status_code == 503, shed.text
    assert shed.headers["retry-after"] == "1"
    assert shed.json()["code"] == "service_unavailable", shed.json()
    assert "Idempotency-Key" in shed.json()["detail"]
    assert [a.status_code for a in answers] == [201, 201, 201, 201]
