"""A real ``gateway daemon`` process on a real exchange folder: a FIFO among the department's
results is quarantined with its reason (never opened: a read would block the daemon), the other
results keep flowing, ops see it in the department's health, and SIGTERM still stops the daemon
promptly."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.api.app import create_app
from gateway.config.loader import load_config
from gateway.envelopes import idempotency_key
from gateway.intake import ApplicationIn, submit
from gateway.runtime import Runtime
from gateway.store.clients import Client, create_client
from tests.conftest import EXAMPLE, TEST_SECRETS, application, wait_for
from tests.filedrop_helpers import result_json

CLIENT = Client(id="c-fifo", name="fifo test", centre="C01", ops=False)
#: SIGTERM to exit: generous for a busy machine (the daemon's own grace is 10 s per tick)
STOP_SECONDS = 10.0


def write_config(dest: Path, db_url: str, exchange: Path) -> Path:
    """The example config with only the file-drop department, on this test's database and
    exchange folder, reading results every half second."""
    shutil.copytree(EXAMPLE.parent, dest)
    main = dest / "gateway.toml"
    text = main.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^database_url = .*$", f'database_url = "{db_url}"', text)
    text = re.sub(r"(?m)^data_dir = .*$", f'data_dir = "{dest / "var"}"', text)
    main.write_text(text + "\n[gateway.schedule]\nresults_seconds = 0.5\n", encoding="utf-8")
    for path in (dest / "departments").glob("*.toml"):
        dept = path.read_text(encoding="utf-8")
        if path.stem == "civil":
            dept = dept.replace('root = "var/filedrop/civil"', f'root = "{exchange}"', 1)
        else:
            dept = re.sub(r"(?m)^(connector = .*)$", r"\1\nenabled = false", dept, count=1)
        path.write_text(dept, encoding="utf-8")
    return main


@pytest.fixture
async def runtime(tmp_path: Path, db_url: str) -> AsyncIterator[Runtime]:
    exchange = tmp_path / "exchange"
    exchange.mkdir()
    config = write_config(tmp_path / "config", db_url, exchange)
    rt = Runtime(load_config(config, env={**os.environ, **TEST_SECRETS}))
    await rt.prepare_database()
    try:
        yield rt
    finally:
        await rt.aclose()


def start_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", "daemon", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **TEST_SECRETS},
        )


@pytest.mark.slow
async def test_a_fifo_among_results_is_quarantined_by_a_running_daemon(
    runtime: Runtime, tmp_path: Path
) -> None:
    exchange = tmp_path / "exchange"
    inbox, outbox, quarantine = (exchange / n for n in ("inbox", "outbox", "quarantine"))
    ids = []
    for i, (matter, region) in enumerate([("QR00401000", "339901"), ("QR00402000", "339902")]):
        body = ApplicationIn.model_validate(application(matter_code=matter, region=region))
        ids.append((await submit(runtime, CLIENT, f"fifo-{i}", body)).accepted.id)
    async with runtime.engine.begin() as conn:
        _c, desk = await create_client(conn, name="C01", centre="C01", ops=False)
        _c, ops = await create_client(conn, name="ops", centre=None, ops=True)
    app = httpx.ASGITransport(app=create_app(runtime))
    client = httpx.AsyncClient(transport=app, base_url="http://gateway.test")

    async def status(app_id: str) -> str:
        resp = await client.get(
            f"/v1/applications/{app_id}", headers={"Authorization": f"Bearer {desk}"}
        )
        assert resp.status_code == 200, resp.text
        return str(resp.json()["status"])

    log = tmp_path / "daemon.log"
    daemon = start_daemon(runtime.config.path, log)
    try:
        # both requests written by the daemon: their keys name the results
        first, second = (idempotency_key(app_id, 1) for app_id in ids)
        await wait_for(lambda: all((inbox / f"{k}.json").exists() for k in (first, second)), 60)
        os.mkfifo(outbox / "evil.json")  # first in the outbox: met before the real result
        (outbox / "MZ-1.json").write_bytes(result_json(first, case_id="MZ-1"))

        async def decided(app_id: str) -> bool:
            return await status(app_id) == "approved"

        await wait_for(lambda: decided(ids[0]), timeout=60)
        await wait_for(lambda: (quarantine / "evil.json.reason").exists(), timeout=60)
        # reading goes on after the quarantine
        (outbox / "MZ-2.json").write_bytes(result_json(second, case_id="MZ-2"))
        await wait_for(lambda: decided(ids[1]), timeout=60)
        assert daemon.poll() is None, log.read_text(encoding="utf-8")[-3000:]
    finally:
        daemon.send_signal(signal.SIGTERM)
        asked = time.monotonic()
        code = daemon.wait(timeout=60)
        stopped = time.monotonic() - asked
    assert code == 0, log.read_text(encoding="utf-8")[-3000:]
    assert stopped < STOP_SECONDS, f"SIGTERM took {stopped:.1f} s"

    reason = (quarantine / "evil.json.reason").read_text(encoding="utf-8")
    assert "evil.json: outbox/evil.json is a FIFO" in reason
    assert (quarantine / "evil.json").is_fifo()  # moved as it is, never opened
    assert sorted(p.name for p in (exchange / "archive").glob("MZ-*.json")) == [
        "MZ-1.json",
        "MZ-2.json",
    ]
    assert "result file evil.json quarantined" in log.read_text(encoding="utf-8")
    resp = await client.get("/v1/ops/departments", headers={"Authorization": f"Bearer {ops}"})
    [civil] = [d for d in resp.json()["items"] if d["code"] == "civil"]
    assert civil["healthy"] is False and "1 result file(s) in quarantine" in civil["health_detail"]
    await client.aclose()
