"""docs/deploy.md followed on PostgreSQL: build the wheel, install it into a fresh virtual
environment, migrate a fresh schema, start the API and two daemons as separate processes with
the documented settings (deploy/config/gateway.toml, the units' --no-migrate, a daemon's
--metrics-port), submit applications, restart one daemon while they flow, and lose nothing."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.config.loader import load_config
from gateway.simulators.city import simulated_city
from gateway.testing.install import make_venv, run
from gateway.testing.ports import free_port
from tests.conftest import EXAMPLE, PG_URL, TEST_SECRETS, application, wait_for
from tests.test_crash_recovery import write_config

ROOT = Path(__file__).resolve().parent.parent
N = 30
pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(600)]


def _production_config(folder: Path, db_url: str, port: int) -> Path:
    """deploy/config/gateway.toml with this test's database, data folder and port (the city's
    departments and catalog are already in ``folder``, pointed at the simulators)."""
    prod = (ROOT / "deploy" / "config" / "gateway.toml").read_text()
    prod = re.sub(r"(?m)^database_url = .*$", f'database_url = "{db_url}"', prod)
    prod = re.sub(r"(?m)^data_dir = .*$", f'data_dir = "{folder / "data"}"', prod)
    prod = re.sub(r"(?m)^port = 8080$", f"port = {port}", prod)
    prod = re.sub(r"(?m)^public_url = .*$", "", prod)
    # short leases so the restarted daemon's work is due again within seconds (as in the
    # crash test); everything else as documented
    prod = re.sub(r"(?m)^lease_seconds = .*$", "lease_seconds = 2.0", prod)
    path = folder / "gateway.toml"
    path.write_text(prod)
    return path


async def test_the_deployment_guide_on_postgresql(tmp_path: Path) -> None:
    if not PG_URL:
        pytest.skip("needs GATEWAY_TEST_PG_URL")
    # 1. `make dist` (the wheel)
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("onewindow_gateway-*.whl")
    # 2. a fresh virtual environment with the wheel; its dependencies come from this test's
    # environment (make_venv), as there is no index to download them from here
    python = make_venv(tmp_path / "venv")
    installed = run(
        python, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", str(wheel)
    )
    assert installed.returncode == 0, installed.stderr
    # (not from the source tree: every process here runs in tmp_path, as on a server)
    where = run(python, "-c", "import gateway; print(gateway.__file__)", cwd=tmp_path)
    where = where.stdout.strip()
    assert where.startswith(str(tmp_path / "venv")), f"not the installed wheel: {where}"
    gateway = str(tmp_path / "venv" / "bin" / "gateway")

    # 3. a fresh PostgreSQL schema
    schema = f"deploy_{secrets.token_hex(5)}"
    admin = create_async_engine(PG_URL)
    async with admin.begin() as conn:
        await conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in PG_URL else "?"
    db_url = f"{PG_URL}{sep}search_path={schema}"
    procs: list[subprocess.Popen[bytes]] = []
    fast = {"decision_delay_seconds": 0.3, "callbacks": False}
    try:
        async with simulated_city(
            load_config(EXAMPLE), simulator_overrides={"amr": fast, "hrss": fast}
        ) as city:
            folder = write_config(tmp_path / "etc", db_url, city.urls).parent
            for code in ("amr", "hrss"):  # decisions are polled for: within a second, not 30
                dept = folder / "departments" / f"{code}.toml"
                dept.write_text(
                    re.sub(
                        r"(?m)^poll_interval_seconds = .*$",
                        "poll_interval_seconds = 1",
                        dept.read_text(),
                    )
                )
            port, metrics = free_port(), [free_port(), free_port()]
            config = _production_config(folder, db_url, port)
            env = {
                **os.environ,
                **TEST_SECRETS,
                "GATEWAY_CONFIG": str(config),
                "GATEWAY_LOG_FORMAT": "json",
            }
            env.pop("GATEWAY_LOG_LEVEL", None)

            def gw(*args: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run(
                    [gateway, *args],
                    env=env,
                    cwd=tmp_path,
                    capture_output=True,
                    text=True,
                    timeout=120,
                )

            def start(name: str, *args: str) -> subprocess.Popen[bytes]:
                with (tmp_path / f"{name}.log").open("ab") as out:
                    proc = subprocess.Popen(
                        [gateway, *args],
                        env=env,
                        cwd=tmp_path,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                procs.append(proc)
                return proc

            # the units' --no-migrate: a node refuses an unmigrated database and says why
            refused = gw("daemon", "--no-migrate")
            assert refused.returncode == 1 and "run 'gateway migrate'" in refused.stderr
            # 4. `gateway migrate`, once
            migrated = gw("migrate")
            assert migrated.returncode == 0 and "created the schema" in migrated.stdout
            created = gw("keys", "create", "--centre", "C01")
            assert created.returncode == 0, created.stderr
            key = created.stdout.strip().splitlines()[-1]

            # 5. the API and two daemons, as the systemd units start them
            start("api", "serve", "--no-daemon", "--no-migrate")
            daemons = [
                start(f"daemon{i}", "daemon", "--no-migrate", "--metrics-port", str(p))
                for i, p in enumerate(metrics)
            ]
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(timeout=30) as http:

                async def answers(url: str) -> bool:
                    try:
                        return (await http.get(url)).status_code == 200
                    except httpx.TransportError:
                        return False

                async def up(name: str, proc: subprocess.Popen[bytes], url: str) -> bool:
                    # a process that exited will never answer: say which and why at once
                    if proc.poll() is not None:
                        log = (tmp_path / f"{name}.log").read_text(errors="replace")
                        raise AssertionError(f"{name} exited {proc.returncode}:\n{log[-3000:]}")
                    return await answers(url)

                waits = [("api", procs[0], f"{base}/readyz")] + [
                    (f"daemon{i}", d, f"http://127.0.0.1:{p}/healthz")
                    for i, (d, p) in enumerate(zip(daemons, metrics, strict=True))
                ]
                # a process that exits fails at once (up); one alive and silent gets 300 s, as
                # a start at CI's load can take a minute
                for name, proc, url in waits:
                    await wait_for(
                        lambda n=name, p=proc, u=url: up(n, p, u), timeout=300, interval=0.2
                    )

                headers = {"Authorization": f"Bearer {key}"}
                ids: list[str] = []

                async def submit(i: int) -> None:
                    answer = await http.post(
                        f"{base}/v1/applications",
                        json=application(),
                        headers={**headers, "Idempotency-Key": f"deploy-{i}"},
                    )
                    assert answer.status_code == 201, answer.text
                    ids.append(answer.json()["id"])

                for i in range(N // 2):
                    await submit(i)
                # 6. a rolling restart of one daemon while work flows
                daemons[0].send_signal(signal.SIGTERM)
                assert daemons[0].wait(timeout=60) == 0, (tmp_path / "daemon0.log").read_text()[
                    -3000:
                ]
                for i in range(N // 2, N):
                    await submit(i)
                again = start(
                    "daemon0-again", "daemon", "--no-migrate", "--metrics-port", str(metrics[0])
                )

                async def views() -> list[dict[str, Any]]:
                    got = [
                        (await http.get(f"{base}/v1/applications/{i}", headers=headers)).json()
                        for i in ids
                    ]
                    return got

                async def all_decided() -> bool:
                    return all(
                        v["status"] not in ("received", "dispatching", "delivered")
                        for v in await views()
                    )

                await wait_for(all_decided, timeout=240, interval=2.0)
                # the rolling restart is done when the restarted daemon is up too: the other
                # daemon may have decided everything while it was still starting (CI, load 15)
                await wait_for(
                    lambda: up("daemon0-again", again, f"http://127.0.0.1:{metrics[0]}/healthz"),
                    timeout=300,
                    interval=0.2,
                )
                final = await views()
                scraped = (await http.get(f"http://127.0.0.1:{metrics[1]}/metrics")).text
            # 7. nothing lost, nothing failed, no second case at a department
            assert len(final) == N and len({v["id"] for v in final}) == N
            assert not [v for v in final if v["status"] == "failed"], final
            assert len({v["department_case_id"] for v in final}) == N
            assert city.states["amr"].stats()["cases"] == N
            assert 'gateway_backlog_cases{department="amr"' in scraped
            # every process stops cleanly on SIGTERM, as systemd stops it
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            assert [p.wait(timeout=60) for p in procs] == [0] * len(procs)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        async with admin.begin() as conn:
            await conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        await admin.dispose()
        if os.environ.get("GATEWAY_KEEP_DEPLOY_LOGS"):
            shutil.copytree(
                tmp_path, Path(os.environ["GATEWAY_KEEP_DEPLOY_LOGS"]), dirs_exist_ok=True
            )
