"""``gateway demo --keep`` leaves the gateway and its console running and prints the console's
address with a one-time ops key that signs in."""

from __future__ import annotations

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
        [sys.executable, "-m", "gateway", "demo", "--keep", "-n", "5", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, **TEST_SECRETS, "COLUMNS": "200"},
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 240
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
