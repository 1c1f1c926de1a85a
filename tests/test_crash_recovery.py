"""Real processes: SIGKILL the dispatching daemon mid-run, restart it, and show that no
application is lost and the simulated department never opened a second case."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from gateway.config.loader import load_config
from gateway.intake import ApplicationIn, submit
from gateway.runtime import Runtime
from gateway.simulators.city import simulated_city
from gateway.store.clients import Client
from gateway.store.tables import applications, dispatch_jobs
from tests.conftest import EXAMPLE, TEST_SECRETS, application, wait_for

N = 40
CLIENT = Client(id="c-crash", name="crash test", centre="C01", ops=False)


def write_config(dest: Path, db_url: str, sim_urls: dict[str, str]) -> Path:
    """A copy of the example config on disk, pointed at this test's database and simulators."""
    shutil.copytree(EXAMPLE.parent, dest)
    main = dest / "gateway.toml"
    text = main.read_text()
    text = re.sub(r"(?m)^database_url = .*$", f'database_url = "{db_url}"', text)
    text = re.sub(r"(?m)^data_dir = .*$", f'data_dir = "{dest / "var"}"', text)
    text = re.sub(r"(?m)^lease_seconds = .*$", "lease_seconds = 2.0", text)
    text = re.sub(r"(?m)^sweep_interval_seconds = .*$", "sweep_interval_seconds = 0.1", text)
    main.write_text(text)
    for code, url in sim_urls.items():
        path = dest / "departments" / f"{code}.toml"
        dept = path.read_text()
        dept = re.sub(r'(?m)^base_url = "http://[^/"]+', f'base_url = "{url}', dept)
        dept = re.sub(r"(?m)^concurrency = .*$", "concurrency = 2", dept)
        # leases outlive the worst-case call (the department link's rule): short calls, so the
        # jobs the killed daemon held are due again within seconds
        dept = re.sub(r"(?m)^timeout_seconds = .*$", "timeout_seconds = 1", dept)
        path.write_text(dept)
    return main


def start_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **TEST_SECRETS}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "daemon", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


@pytest.mark.slow
async def test_sigkill_mid_run_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, db_url: str
) -> None:
    example = load_config(EXAMPLE)
    slow = {"decision_delay_seconds": 0.5, "callbacks": False}
    async with simulated_city(example, simulator_overrides={"amr": slow, "hrss": slow}) as city:
        sim = city.states["amr"]
        sim.mode, sim.slow_seconds = "slow", 0.15  # slow enough to be killed mid-run
        config_path = write_config(tmp_path / "config", db_url, city.urls)
        runtime = Runtime(load_config(config_path))
        await runtime.prepare_database()
        try:
            for i in range(N):
                await submit(
                    runtime, CLIENT, f"crash-{i}", ApplicationIn.model_validate(application())
                )

            async def delivered() -> int:
                async with runtime.engine.connect() as conn:
                    q = (
                        select(func.count())
                        .select_from(applications)
                        .where(applications.c.department_case_id.is_not(None))
                    )
                    return int((await conn.execute(q)).scalar_one())

            log = tmp_path / "daemon.log"
            first = start_daemon(config_path, log)
            try:
                await wait_for(lambda: _count_at_least(delivered, 8), timeout=30)
            finally:
                first.send_signal(signal.SIGKILL)
                first.wait(timeout=10)
            at_kill = await delivered()
            assert at_kill < N, "the daemon finished before it could be killed mid-run"

            sim.mode = "ok"
            second = start_daemon(config_path, log)
            try:
                # generous: a fresh daemon starts, the dead one's leases run out, on a busy CI
                await wait_for(lambda: _count_at_least(delivered, N), timeout=180)
            finally:
                second.send_signal(signal.SIGTERM)
                assert second.wait(timeout=30) == 0, log.read_text()[-3000:]

            async with runtime.engine.connect() as conn:
                rows = (
                    await conn.execute(
                        select(applications.c.status, applications.c.department_case_id)
                    )
                ).all()
                open_jobs = (
                    await conn.execute(
                        select(func.count())
                        .select_from(dispatch_jobs)
                        .where(dispatch_jobs.c.state != "done")
                    )
                ).scalar_one()
            assert len(rows) == N  # nothing lost
            assert len({case for _s, case in rows}) == N
            assert all(status not in ("received", "dispatching", "failed") for status, _ in rows)
            assert open_jobs == 0
            stats = sim.stats()
            assert stats["cases"] == N, stats  # no second case at the department
            # in-flight submissions at the kill were re-sent with the same key, deduplicated
            assert stats["submissions"] == N + stats["duplicates"]
        finally:
            await runtime.aclose()


async def _count_at_least(count: Callable[[], Awaitable[int]], n: int) -> bool:
    return await count() >= n
