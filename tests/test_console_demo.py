"""``gateway demo --keep`` leaves the gateway and its console running and prints the console's
address with a one-time ops key that signs in."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_SECRETS


@pytest.mark.slow
def test_demo_keep_prints_the_console_url_and_an_ops_key(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "gateway", "demo", "--keep", "-n", "5"),
            *("--outage-seconds", "0", "--data-dir", str(tmp_path)),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, **TEST_SECRETS, "COLUMNS": "200"},
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 600  # bounds a failing run only
        url = key = None
        while key is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "demo ended early:\n" + "".join(lines[-40:])
            lines.append(line)
            found = re.search(r"ops console: (http://127\.0\.0\.1:\d+/console)", line)
            if found:
                url = found.group(1)
            elif url and line.strip().startswith("owk_"):
                key = line.strip()
        assert url and key, "".join(lines[-40:])
        with httpx.Client() as client:
            form = client.get(f"{url}/signin")
            csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
            assert csrf
            r = client.post(f"{url}/signin", data={"key": key, "csrf": csrf.group(1)})
            assert r.status_code == 303 and r.headers["location"] == "/console/overview"
            page = client.get(f"{url}/overview")
            assert page.status_code == 200 and 'data-department="amr"' in page.text
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.slow
async def test_demo_takes_a_department_down_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    from gateway.config.loader import load_config
    from gateway.demo import run_demo
    from tests.conftest import EXAMPLE

    for name, value in TEST_SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("GATEWAY_SMS_OUTBOX", str(tmp_path / "sms.jsonl"))
    monkeypatch.setenv("GATEWAY_COURIER_MANIFEST", str(tmp_path / "courier.jsonl"))
    config = load_config(EXAMPLE)
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    ok = await run_demo(
        config, count=16, data_dir=tmp_path, timeout=600, console=console, outage_seconds=2
    )
    text = out.getvalue()
    assert ok, text[-3000:]
    for dept in config.departments.values():  # the departments by name
        assert f"{dept.code} " in text and dept.name in text
    found = re.search(
        r"outage of amr \(.+?\): down ([\d.]+) s; backlog at worst (\d+) cases \((\d+) retrying\); "
        r"drained ([\d.]+) s after it was back; after: (\d+) delivered, 0 failed, 0 not delivered; "
        r"the department holds (\d+) cases \(0 duplicates\)",
        " ".join(text.split()),
    )
    assert found, text[-3000:]
    down, worst, _retrying, _drained, delivered, held = found.groups()
    assert float(down) >= 2
    assert int(worst) >= 1  # its cases waited while it was down ...
    assert int(delivered) == int(held) >= int(worst)  # ... and every one reached it after
    assert "nothing lost" in text
