"""Configuration reload: validated first; a bad file or a restart-only change is refused with
the reason and the running configuration kept; a good one is applied at once; SIGHUP and
`gateway reload` reach a running process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from gateway import logs
from gateway import reload as reloading
from gateway.config.loader import load_config
from gateway.runtime import Runtime
from tests.conftest import EXAMPLE, TEST_SECRETS, wait_for
from tests.test_crash_recovery import write_config


@pytest.fixture
def config_dir(tmp_path: Path, db_url: str) -> Path:
    return write_config(tmp_path / "config", db_url, {}).parent


def _edit(path: Path, pattern: str, repl: str) -> None:
    text = path.read_text()
    new = re.sub(pattern, repl, text, count=1, flags=re.M)
    assert new != text, pattern
    path.write_text(new)


async def test_a_valid_change_is_applied_and_a_bad_one_refused(
    config_dir: Path, tmp_path: Path
) -> None:
    logs.configure("INFO")  # another test's CLI run may have left it at WARNING
    runtime = Runtime(load_config(config_dir / "gateway.toml"))
    try:
        amr = config_dir / "departments" / "amr.toml"
        link = runtime.link("amr")
        assert link is not None
        # a status map fix and a timeout: applied, the link (and its breaker) kept
        _edit(amr, r'^"5" = "in_review".*$', '"5" = "accepted"')
        _edit(amr, r"^timeout_seconds = .*$", "timeout_seconds = 3")
        with capture_logs() as logged:
            assert await reloading.reload(runtime, config_dir / "gateway.toml")
        assert runtime.config.departments["amr"].status_map["5"] == "accepted"
        assert runtime.link("amr") is link and link.dept.timeout_seconds == 3
        assert [e["event"] for e in logged] == ["configuration reloaded"]

        # concurrency changes the guards: a fresh link
        _edit(amr, r"^concurrency = .*$", "concurrency = 3")
        assert await reloading.reload(runtime, config_dir / "gateway.toml")
        fresh = runtime.link("amr")
        assert fresh is not link and fresh is not None and fresh.slots.cap == 3

        # a typo: refused, the running configuration kept
        _edit(amr, r"^timeout_seconds = .*$", "timeout_secnds = 4")
        with capture_logs() as logged:
            assert not await reloading.reload(runtime, config_dir / "gateway.toml")
        assert runtime.config.departments["amr"].timeout_seconds == 3
        (refused,) = logged
        assert refused["log_level"] == "warning" and "refused" in refused["event"]
        assert any("timeout_secnds" in p for p in refused["problems"])
        _edit(amr, r"^timeout_secnds = .*$", "timeout_seconds = 3")

        # what only a restart applies: refused, named
        _edit(config_dir / "gateway.toml", r"^port = .*$", "port = 9999")
        with capture_logs() as logged:
            assert not await reloading.reload(runtime, config_dir / "gateway.toml")
        assert logged[0]["changes"] == ["[gateway] api"]
    finally:
        await runtime.aclose()


def test_restart_needed_names_what_changed() -> None:
    old = load_config(EXAMPLE)
    new = load_config(EXAMPLE)
    assert reloading.restart_needed(old, new) == []


@pytest.mark.slow
def test_sighup_sigusr1_and_gateway_reload_reach_a_running_daemon(
    config_dir: Path, tmp_path: Path
) -> None:
    env = {**os.environ, **TEST_SECRETS, "GATEWAY_LOG_FORMAT": "json"}
    env.pop("GATEWAY_LOG_LEVEL", None)
    config = config_dir / "gateway.toml"
    log = tmp_path / "daemon.log"
    gateway = [sys.executable, "-m", "gateway"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*gateway, "daemon", "--config", str(config)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def events() -> list[str]:
        found = []
        for line in log.read_text().splitlines():
            try:
                found.append(json.loads(line)["event"])
            except ValueError:
                continue
        return found

    try:
        import asyncio

        async def wait(event: str, count: int = 1) -> None:
            await wait_for(lambda: events().count(event) >= count, timeout=60, interval=0.1)

        asyncio.run(wait("daemon started"))
        # SIGUSR1: what the process is doing, without changing anything (once it runs: the
        # dispatcher is named from then on; earlier the process only must not die of it)
        asyncio.run(wait("gateway running"))
        proc.send_signal(signal.SIGUSR1)
        asyncio.run(wait("process snapshot"))
        [snap] = [
            json.loads(line)
            for line in log.read_text().splitlines()
            if '"process snapshot"' in line
        ]
        assert snap["level"] == "warning"
        assert re.search(r"^link amr: slots \d/8 in use, \d+ waiting; breaker", snap["text"], re.M)
        assert "\ndispatcher " in snap["text"] and "\ntask " in snap["text"]
        _edit(
            config_dir / "departments" / "amr.toml",
            r"^timeout_seconds = .*$",
            "timeout_seconds = 4",
        )
        proc.send_signal(signal.SIGHUP)
        asyncio.run(wait("configuration reloaded"))
        _edit(
            config_dir / "departments" / "amr.toml",
            r"^timeout_seconds = .*$",
            "timeout_seconds = -1",
        )
        # the CLI validates first and does not signal a process with a broken file
        refused = subprocess.run(
            [*gateway, "reload", "--config", str(config)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 1 and "timeout_seconds" in refused.stderr
        # a SIGHUP with the broken file: the process refuses and keeps running
        proc.send_signal(signal.SIGHUP)
        asyncio.run(wait("configuration reload refused: the running configuration is kept"))
        assert proc.poll() is None
        _edit(
            config_dir / "departments" / "amr.toml",
            r"^timeout_seconds = .*$",
            "timeout_seconds = 5",
        )
        told = subprocess.run(
            [*gateway, "reload", "--config", str(config)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert told.returncode == 0 and f"{proc.pid}" in told.stdout, told.stderr
        asyncio.run(wait("configuration reloaded", 2))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
