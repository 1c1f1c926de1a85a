"""data_dir full: the gateway's data_dir is a small size-limited folder (tmpfs) that the test
fills to the last byte while applications arrive and the department decides cases whose
certificates must be stored. On SQLite the database is in the same folder; on PostgreSQL only
the blob store is."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.config.loader import load_config
from gateway.simulators.city import simulated_city
from tests.conftest import EXAMPLE, wait_for
from tests.faults.harness import (
    FRONT_DESK_KEY,
    FrontDesk,
    gateway_process,
    report,
    throwaway_postgres,
    write_config,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

DECISION_SECONDS = 4.0


@contextlib.contextmanager
def small_disk(size_mb: int = 24) -> Iterator[Path]:
    """A folder on a tmpfs of ``size_mb``: a disk that can really fill up."""
    root = Path(tempfile.mkdtemp(prefix="gw-faults-disk-"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(root)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        root.rmdir()
        pytest.skip(f"data_dir full needs a size-limited folder (mount tmpfs: {done.stderr})")
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)
        root.rmdir()


def fill(disk: Path) -> Path:
    """Write a filler file until the disk has no byte left."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for chunk in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * chunk):
                    pass
    finally:
        os.close(fd)
    with pytest.raises(OSError) as full:
        (disk / "probe").write_bytes(b"x" * 8192)
    assert full.value.errno == errno.ENOSPC
    return filler


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_data_dir_full(tmp_path: Path, backend: str) -> None:
    sim_settings = {
        "decision_delay_seconds": DECISION_SECONDS,
        "callbacks": False,
        "mix": {"approve": 1.0},  # every case gets a certificate to store
    }
    with small_disk() as disk:
        async with contextlib.AsyncExitStack() as stack:
            db_url = f"sqlite+aiosqlite:///{disk / 'gateway.db'}"
            if backend == "postgres":
                db_url = (await stack.enter_async_context(throwaway_postgres())).url
            city = await stack.enter_async_context(
                simulated_city(load_config(EXAMPLE), simulator_overrides={"amr": sim_settings})
            )
            config = write_config(
                tmp_path / "config", db_url=db_url, data_dir=disk / "var", sim_urls=city.urls
            )
            gw = await stack.enter_async_context(gateway_process(config, tmp_path / "gw.log"))
            sim = city.states["amr"]
            auth = {"Authorization": f"Bearer {FRONT_DESK_KEY}"}
            client = await stack.enter_async_context(
                httpx.AsyncClient(base_url=gw.url, timeout=30, headers=auth)
            )

            async def upload() -> int:
                r = await client.post(
                    "/v1/materials",
                    files={"file": ("scan.pdf", os.urandom(64 * 1024), "application/pdf")},
                )
                assert r.status_code in (201, 503, 507), r.text
                if r.status_code != 201:
                    assert r.headers["content-type"] == "application/problem+json"
                    assert int(r.headers["retry-after"]) > 0
                return r.status_code

            early = await stack.enter_async_context(FrontDesk(gw.url, "early"))
            late = await stack.enter_async_context(FrontDesk(gw.url, "late"))
            deadline = time.monotonic() + 300
            await early.run(10, 10, deadline)
            assert len(early.accepted) == 10 and await upload() == 201

            # the department holds the early cases before the disk fills (on SQLite nothing
            # could be dispatched after)
            await wait_for(lambda: len(sim.cases) >= 10, timeout=120)
            early_cases = list(sim.cases.values())
            before = gw.lines()
            filler = fill(disk)
            load = asyncio.create_task(late.run(10, 2, deadline))
            uploads = [await upload() for _ in range(5)]
            # the department decides the early cases now; their certificates find no room.
            # Only the early ones: a late case the gateway still got in while the disk was full
            # (SQLite's write-ahead log reuses its room) is decided later, and waiting for every
            # case the department holds waited for each one that trickled in (a 120 s timeout
            # 1 run in 5)
            await wait_for(
                lambda: all(c.decided_at(DECISION_SECONDS) <= sim.clock() for c in early_cases),
                timeout=120,
            )
            sent_while_full = len(sim.cases) - len(early_cases)
            await asyncio.sleep(3)  # a few polls run into the full disk
            held = (await early.statuses())["ready_for_pickup"]
            half_written = sorted(p.name for p in disk.rglob(".tmp-*"))
            filler.unlink()
            freed = time.monotonic()
            uploads_after = await upload()
            await load

            async def handed_out() -> bool:
                statuses = (await early.statuses()) + (await late.statuses())
                return statuses["ready_for_pickup"] == len(early.accepted) + len(late.accepted)

            await wait_for(handed_out, timeout=120, interval=1)
            recovered = time.monotonic() - freed
            documents = 0
            for app_id in [*early.accepted.values(), *late.accepted.values()]:
                r = await client.get(f"/v1/applications/{app_id}")
                documents += len(r.json()["documents"])
            replayed = {**await early.replayed_ids(), **await late.replayed_ids()}
            log_text = gw.text_since(before)
    answers = early.answers + late.answers
    print(log_text)  # what ops saw
    report(
        f"data_dir full ({backend})",
        uploads_refused=sum(1 for u in uploads if u == 507),
        uploads_503=sum(1 for u in uploads if u == 503),
        requests=late.requests,
        answers_507=answers["507"],
        answers_503=answers["503"],
        answers_500=answers["500"],
        certificates_held_back=10 - held,
        half_written=len(half_written),
        lost=20 - len(early.accepted) - len(late.accepted),
        doubled=len(replayed) - len(set(replayed.values())),
        department_cases=len(sim.cases),
        sent_while_full=sent_while_full,
        recovery_s=round(recovered, 1),
        log_lines=len(log_text.splitlines()),
    )
    assert set(uploads) == {507}
    assert uploads_after == 201
    assert answers["500"] == 0 and early.refused == [] and late.refused == []
    assert held == 0  # no case was handed out without its certificate
    assert half_written == []
    assert len(early.accepted) + len(late.accepted) == 20 == len(sim.cases)
    assert len(set(replayed.values())) == 20
    assert documents == 20  # each certificate stored once the disk had room again
    assert len(log_text.splitlines()) < 20, log_text
    assert "Traceback" not in log_text
