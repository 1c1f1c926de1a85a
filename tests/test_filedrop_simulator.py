"""The simulated file-drop department on a real folder: takes complete requests only, decides
with a seeded mix, writes slowly / garbage / duplicates on request, and the connector reads its
results (in every format) without ever reading a half-written file."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_filedrop.connector import FiledropConnector

from gateway.connector import CaseUpdate
from gateway.simulators import SIMULATORS, serve_asgi
from gateway.simulators.filedrop_department import (
    FiledropDepartmentState,
    FiledropSimulatorSettings,
)
from tests.conftest import wait_for
from tests.filedrop_helpers import KEY, envelope, make_connector


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def collect(conn: FiledropConnector, seen: list[CaseUpdate], want: int) -> bool:
    for update in await conn.pull_updates(50):
        seen.append(update)
        await conn.ack_update(update, "applied")
    return len(seen) >= want


def settings(root: Path, **changes: Any) -> FiledropSimulatorSettings:
    base: dict[str, Any] = {
        "root": root,
        "decision_delay_seconds": 0.05,
        "scan_interval_seconds": 0.02,
    }
    base.update(changes)
    return FiledropSimulatorSettings.model_validate(base)


@pytest.mark.parametrize("fmt", ["json", "xml", "csv"])
async def test_round_trip_in_every_format(
    tmp_path: Path, http: httpx.AsyncClient, fmt: str
) -> None:
    sim = settings(tmp_path, format=fmt, mix={"approve": 1.0})
    async with FiledropDepartmentState(settings=sim).running() as dept:
        conn = make_connector(
            {
                **dept.connector_options(),
                "request": {"format": fmt},
                "result": {"format": fmt, "stable_seconds": 0},
            },
            http,
        )
        await conn.submit(envelope())
        seen: list[CaseUpdate] = []
        await wait_for(lambda: collect(conn, seen, 2))
    assert [u.status for u in seen] == ["1", "9"]
    assert all(u.idempotency_key == KEY for u in seen)
    [doc] = seen[1].documents
    assert doc.content is not None and doc.content.startswith(b"%PDF")
    assert doc.name.startswith("certificate-MZ-")


async def test_takes_only_committed_requests(tmp_path: Path) -> None:
    sim = settings(
        tmp_path,
        request_commit="done_marker",
        decision_delay_seconds=3600,
        scan_interval_seconds=3600,  # only the scans below, after the first at start
    )
    dept = FiledropDepartmentState(settings=sim)
    async with dept.running():
        inbox = tmp_path / "inbox"
        (inbox / f".{KEY}.json.tmp").write_text("{")  # someone's write in progress
        (inbox / f"{KEY}.json").write_text('{"a": 1}')  # no marker yet
        assert await dept.scan() == 0
        (inbox / f"{KEY}.json.done").write_text("")
        await dept.scan()  # (or the watcher got there first)
    assert dept.stats()["requests"] == 1
    assert sorted(p.name for p in (tmp_path / "processed").iterdir()) == [
        f"{KEY}.json",
        f"{KEY}.json.done",
    ]


async def test_slow_writes_are_never_read_half_written(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    sim = settings(
        tmp_path,
        slow_write_rate=1.0,
        slow_chunk_bytes=16,
        slow_chunk_pause_seconds=0.01,
        mix={"approve": 1.0},
    )
    async with FiledropDepartmentState(settings=sim).running() as dept:
        conn = make_connector({**dept.connector_options(), "result": {"stable_seconds": 0.1}}, http)
        for i in range(3):
            await conn.submit(envelope(f"a000000000000000{i}"))
        seen: list[CaseUpdate] = []
        await wait_for(lambda: collect(conn, seen, 6), interval=0.005)
        assert dept.stats()["slow_writes"] == 6
    assert sorted(u.status for u in seen) == ["1", "1", "1", "9", "9", "9"]
    assert not (tmp_path / "quarantine").exists() or not list((tmp_path / "quarantine").iterdir())


async def test_an_unstable_threshold_of_zero_would_read_partial_files(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    """The control experiment: without the stability check a slow writer is caught midway
    (proves the slow writer really is slow, so the test above means something)."""
    sim = settings(
        tmp_path,
        slow_write_rate=1.0,
        slow_chunk_bytes=8,
        slow_chunk_pause_seconds=0.02,
        progress=False,
        mix={"reject": 1.0},
    )
    async with FiledropDepartmentState(settings=sim).running() as dept:
        conn = make_connector({**dept.connector_options(), "result": {"stable_seconds": 0}}, http)
        await conn.submit(envelope())

        async def quarantined() -> bool:
            await conn.pull_updates(10)
            q = tmp_path / "quarantine"
            return q.exists() and any(p.suffix == ".reason" for p in q.iterdir())

        await wait_for(quarantined, interval=0.005)


async def test_garbage_and_duplicates_on_request(tmp_path: Path, http: httpx.AsyncClient) -> None:
    sim = settings(
        tmp_path, garbage_rate=1.0, duplicate_rate=1.0, mix={"reject": 1.0}, progress=False
    )
    async with FiledropDepartmentState(settings=sim).running() as dept:
        conn = make_connector({**dept.connector_options(), "result": {"stable_seconds": 0}}, http)
        await conn.submit(envelope())
        seen: list[CaseUpdate] = []
        await wait_for(lambda: collect(conn, seen, 2))
        stats = dept.stats()
    assert [u.status for u in seen] == ["4", "4"]  # the duplicate is passed on, the core drops it
    assert stats["garbage_written"] == 1 and stats["duplicate_results"] == 1
    garbage = f"garbage-{seen[0].case_id}.json"
    assert sorted(p.name for p in (tmp_path / "quarantine").iterdir()) == [
        garbage,
        f"{garbage}.reason",
    ]


async def test_seeded_mix_is_deterministic_and_resends_are_decided(tmp_path: Path) -> None:
    a = FiledropDepartmentState(settings=settings(tmp_path, seed=7))
    b = FiledropDepartmentState(settings=settings(tmp_path, seed=7))
    keys = [f"ow-a{i:016x}-v1" for i in range(200)]
    outcomes = [a.outcome_for(k, 1) for k in keys]
    assert outcomes == [b.outcome_for(k, 1) for k in keys]
    assert {"approve", "reject", "supplement", "not_accept"} == set(outcomes)
    assert "supplement" not in {a.outcome_for(k.replace("-v1", "-v2"), 2) for k in keys}


async def test_registered_and_controllable(tmp_path: Path) -> None:
    factory = SIMULATORS["filedrop"]
    _settings, app, state = factory.build({"kind": "filedrop", "root": str(tmp_path)})
    assert isinstance(state, FiledropDepartmentState)
    async with serve_asgi(app, port=0) as url, httpx.AsyncClient(base_url=url) as client:
        assert (tmp_path / "inbox").is_dir()  # the lifespan started the department
        response = await client.post("/_control", json={"garbage_rate": 0.5})
        assert response.status_code == 200
        assert state.settings.garbage_rate == 0.5
        assert (await client.post("/_control", json={"nope": 1})).status_code == 422
        stats = (await client.get("/_stats")).json()
        assert stats["requests"] == 0 and "sftp_dropped" in stats
    assert not state.tasks  # the watcher stopped with the app


async def test_runs_on_one_workdir_keep_to_folders_of_their_own(tmp_path: Path) -> None:
    """The simulated-city harness hands every run the same workdir (data_dir/simulators/civil);
    case numbers restart with each run, so an earlier or a concurrent run's result files must
    not be this run's (the fault suite read another city's MZ-2026-000020-1.json and
    quarantined it: its own case stayed accepted)."""
    leftover = tmp_path / "outbox" / "MZ-2026-000001-1.json"  # what a run before this left
    leftover.parent.mkdir(parents=True)
    leftover.write_text("{}")
    sim = FiledropSimulatorSettings(workdir=tmp_path, decision_delay_seconds=3600)
    async with (
        FiledropDepartmentState(settings=sim).running() as one,
        FiledropDepartmentState(settings=sim).running() as other,
    ):
        assert one.root != other.root
        assert one.root.parent == tmp_path and other.root.parent == tmp_path
        assert list((one.root / "outbox").iterdir()) == []
        (one.root / "outbox" / leftover.name).write_text("{}")
        assert list((other.root / "outbox").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outbox"]  # each run's folder removed


async def test_a_request_that_cannot_be_taken_leaves_those_taken_before_it_decided(
    tmp_path: Path,
) -> None:
    """A scan takes its requests in one worker-thread trip: one failing (here a folder with a
    request's name) must not leave the cases taken before it in that scan undecided."""
    sim = settings(tmp_path, decision_delay_seconds=0, scan_interval_seconds=3600)
    dept = FiledropDepartmentState(settings=sim)
    async with dept.running():
        inbox = tmp_path / "inbox"
        (inbox / "ow-a1-v1.json").write_text('{"a": 1}')
        (inbox / "ow-a2-v1.json").mkdir()  # not a file: reading it fails
        (inbox / "ow-a3-v1.json").write_text('{"a": 3}')
        with pytest.raises(OSError):
            await dept.scan()
        await wait_for(lambda: dept.stats()["results_written"] >= 1, 30)
    assert [c.idempotency_key for c in dept.cases.values()] == ["ow-a1-v1"]
    assert dept.cases["ow-a1-v1"].results
