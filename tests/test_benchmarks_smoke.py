"""The benchmark scripts still run and print their ratio line (tiny N: the figures are
meaningless here; docs/performance.md has the real ones). Not a timed test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # each starts a process that runs a whole (tiny) benchmark
@pytest.mark.parametrize(
    ("script", "ratio"),
    [
        ("intake.py", "ratio = gateway/bare = "),
        ("dispatch.py", "ratio = gateway/raw_httpx = "),
        # the city day starts the simulators, the API and the daemon as processes of their own
        ("cityday.py", "first submit to last decision"),
    ],
)
def test_benchmark_prints_its_ratio(script: str, ratio: str) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick"],
        capture_output=True,
        text=True,
        timeout=300 if script == "cityday.py" else 100,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert ratio in done.stdout, done.stdout
    assert "machine: " in done.stdout
