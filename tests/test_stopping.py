"""A SIGTERM that comes while ``gateway daemon`` is still starting (imports, configuration,
runtime: seconds on a busy machine) stops it the usual way once it has started, with exit 0,
instead of ending it mid-start by the signal's default (exit -15)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE, TEST_SECRETS

#: the daemon's own process, with a SIGTERM sent to itself while it loads its configuration:
#: exactly inside the window, whatever the machine's speed
STOPPED_WHILE_STARTING = """
import os, signal, sys
import gateway.config.loader as loader
real = loader.load_config
def load_config(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return real(*args, **kwargs)
loader.load_config = load_config
from gateway.cli import app
sys.argv = ["gateway", *sys.argv[1:]]
app()
"""


@pytest.mark.slow  # a real daemon process
def test_a_sigterm_while_starting_stops_the_daemon_cleanly(tmp_path: Path) -> None:
    config = tmp_path / "config"
    shutil.copytree(EXAMPLE.parent, config)
    main = config / "gateway.toml"
    text = main.read_text(encoding="utf-8")
    text = re.sub(
        r"(?m)^database_url = .*$", f'database_url = "sqlite+aiosqlite:///{tmp_path}/g.db"', text
    )
    text = re.sub(r"(?m)^data_dir = .*$", f'data_dir = "{tmp_path / "var"}"', text)
    main.write_text(text, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-c", STOPPED_WHILE_STARTING, "daemon", "--config", str(main)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **TEST_SECRETS},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # it did start (migrated, ran), then stopped the usual way
    assert "gateway running" in done.stderr and "stopping" in done.stderr, done.stderr[-3000:]
