"""Every command that prints a table: as wide as the terminal at most, plain tab-separated lines
when piped (comment lines start with ``# ``), and ``--json`` (gateway.cli.output)."""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from rich.cells import cell_len
from rich.console import Console
from typer.testing import CliRunner

from gateway.cli import app
from tests.conftest import EXAMPLE, ROOT, TEST_SECRETS
from tests.test_crash_recovery import write_config

DEPARTMENTS = ["amr", "civil", "hrss", "nrp"]


def _table(output: str) -> list[list[str]]:
    """The rows of a piped table (comment lines skipped), header first."""
    return [line.split("\t") for line in output.splitlines() if not line.startswith("# ")]


def _on_terminal(args: list[str], columns: int) -> str:
    """``gateway *args`` with its stdout on a pseudo-terminal ``columns`` wide."""
    leader, follower = pty.openpty()
    fcntl_size = struct.pack("HHHH", 50, columns, 0, 0)
    fcntl.ioctl(follower, termios.TIOCSWINSZ, fcntl_size)
    # rich sizes a "dumb" terminal 80 wide whatever it is: a real terminal type, no colours
    env = {**os.environ, **TEST_SECRETS, "COLUMNS": str(columns), "TERM": "xterm"}
    env["NO_COLOR"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", *args],
        stdout=follower,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        env=env,
    )
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _w, _x = select.select([leader], [], [], 1)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        try:
            data = os.read(leader, 65536)
        except OSError:  # the terminal closed: the command is done
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(leader)
    return b"".join(chunks).decode().replace("\r\n", "\n")


def test_check_config_piped_is_one_plain_table() -> None:
    result = CliRunner().invoke(app, ["check-config", "--config", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    rows = _table(result.stdout)
    assert rows[0] == ["code", "name", "connector", "state", "matters"]
    assert [r[0] for r in rows[1:]] == DEPARTMENTS
    assert ["amr", "市场监督管理局", "rest", "enabled", "6"] in rows
    lines = result.stdout.splitlines()
    assert lines[0] == f"# Departments ({EXAMPLE})"
    assert "# matters: 20" in lines and lines[-1] == "# configuration OK"
    assert "─" not in result.stdout and "[" not in "".join(r[3] for r in rows)


def test_check_config_table_fits_a_narrow_terminal() -> None:
    shown = _on_terminal(["check-config", "--config", str(EXAMPLE)], columns=50)
    assert "configuration OK" in shown
    assert "─" in shown  # a drawn table, not the piped form
    for code in DEPARTMENTS:
        assert code in shown
    # the table (and its title); the lines after it are as long as what they say
    lines = re.sub(r"\x1b\[[0-9;]*m", "", shown).splitlines()  # bold, italic
    table = lines[: 1 + next(i for i, line in enumerate(lines) if line.startswith("└"))]
    assert any("hrss" in line for line in table) and any("人力" in line for line in table)
    assert max(cell_len(line) for line in table) <= 50, shown


def test_refetch_list_piped_and_json(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c", f"sqlite+aiosqlite:///{tmp_path / 'g.db'}", {})
    runner = CliRunner()
    piped = runner.invoke(app, ["refetch", "--list", "--config", str(config)])
    assert piped.exit_code == 0, piped.output
    assert piped.stdout.splitlines() == [
        "id\treceipt\tdepartment\tcase\tdecided at",
        "# 0 approved case(s) without documents",
    ]
    as_json = runner.invoke(app, ["refetch", "--list", "--json", "--config", str(config)])
    assert as_json.exit_code == 0 and json.loads(as_json.stdout) == []
    unknown = runner.invoke(app, ["refetch", "--list", "--department", "hrs", "-c", str(config)])
    assert unknown.exit_code == 1
    assert "unknown department 'hrs'. Did you mean 'hrss'?" in unknown.output


def test_reconcile_report_file_is_plain_and_json_is_offered(tmp_path: Path) -> None:
    # nothing listens at the example's amr address: the run fails, the report still says so
    config = write_config(tmp_path / "c", f"sqlite+aiosqlite:///{tmp_path / 'g.db'}", {})
    runner = CliRunner()
    report = tmp_path / "report.tsv"
    written = runner.invoke(
        app, ["reconcile", "-d", "amr", "--output", str(report), "--config", str(config)]
    )
    assert written.exit_code == 1, written.output
    lines = report.read_text().splitlines()
    assert lines[0] == "# reconciliation"
    head, row = lines[1].split("\t"), lines[2].split("\t")
    assert head[:5] == ["department", "run", "state", "since", "until"]
    assert row[0] == "amr" and row[2] == "failed" and row[4].endswith("+08:00")
    as_json = runner.invoke(app, ["reconcile", "-d", "amr", "--json", "--config", str(config)])
    assert as_json.exit_code == 1
    runs = json.loads(as_json.stdout)["runs"]
    assert [r["department"] for r in runs] == ["amr"]
    assert "connection failed" in runs[0]["error"]


def test_simulate_piped_prints_a_plain_table_then_runs() -> None:
    rows = _simulate([])
    lines = rows.splitlines()
    assert lines[0] == "# Simulated departments"
    table = _table(rows)
    assert table[0] == ["department", "kind", "URL"]
    urls = {r[0]: r[2] for r in table[1:]}
    assert set(urls) == set(DEPARTMENTS)
    assert urls["amr"].startswith("http://127.0.0.1:")
    assert lines[-1] == "# Running; Ctrl-C to stop."


def test_simulate_json() -> None:
    out = _simulate(["--json", "--only", "amr"])
    assert [(r["department"], r["kind"]) for r in json.loads(out)] == [("amr", "rest")]


def test_simulate_unknown_department_says_did_you_mean() -> None:
    result = CliRunner().invoke(app, ["simulate", "--only", "amrx", "--config", str(EXAMPLE)])
    assert result.exit_code == 1
    assert "unknown department 'amrx'. Did you mean 'amr'?" in result.output


def _simulate(args: list[str]) -> str:
    """What ``gateway simulate`` printed once its simulators run (then stopped with SIGINT)."""
    env = {**os.environ, **TEST_SECRETS}
    # port 0: the example's fixed ports may be taken by another test on this machine
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "simulate", *args, "--config", str(_any_port())],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
        env=env,
        text=True,
    )
    assert proc.stdout is not None
    out: list[str] = []
    try:
        for line in proc.stdout:
            out.append(line)
            if line.startswith("# Running") or (args[:1] == ["--json"] and line == "]\n"):
                break
    finally:
        proc.send_signal(signal.SIGINT)
        _rest, errors = proc.communicate(timeout=60)
    assert out, errors
    return "".join(out)


_PORT_FREE: Path | None = None


def _any_port() -> Path:
    """The example config with every simulator on a free port."""
    global _PORT_FREE
    if _PORT_FREE is None:
        import shutil
        import tempfile

        dest = Path(tempfile.mkdtemp(prefix="gw-cli-tables-")) / "config"
        shutil.copytree(EXAMPLE.parent, dest)
        for path in (dest / "departments").glob("*.toml"):
            path.write_text(re.sub(r"(?m)^port = \d+$", "port = 0", path.read_text()))
        _PORT_FREE = dest / "gateway.toml"
    return _PORT_FREE


def test_demo_summary_piped_is_plain_and_json_is_offered(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from gateway.demo import Outage, Outcome, _print_summary

    outcomes = {
        "amr": Outcome("amr", "市场监督管理局", "rest", True, submitted=3),
        "nrp": Outcome("nrp", "自然资源和规划局", "soap", False, reason="no simulator"),
    }
    outcomes["amr"].statuses = {"collected": 2, "ready_for_pickup": 1}
    piped = Console(file=io.StringIO(), width=40)
    _print_summary(piped, outcomes, as_json=False)
    assert isinstance(piped.file, io.StringIO)
    text = piped.file.getvalue()
    rows = _table(text)
    assert rows[0][:3] == ["dept", "kind", "sent"]
    assert rows[1][:3] == ["amr", "rest", "3"] and rows[1][12] == "1"  # one left
    assert rows[2][:3] == ["nrp", "soap", "n/a"]
    _print_summary(piped, outcomes, as_json=True)
    summary = json.loads(capsys.readouterr().out)
    assert [(o["department"], o["left"]) for o in summary["departments"]] == [
        ("amr", 1),
        ("nrp", 0),
    ]
    assert summary["outage"] is None
    # with a department taken down, --json carries what the narrative says of the outage
    outage = Outage("amr", "市场监督管理局", down_seconds=10.0, worst_backlog=4, drain_seconds=2.5)
    outage.delivered = outage.held = 3
    _print_summary(piped, outcomes, as_json=True, outage=outage)
    told = json.loads(capsys.readouterr().out)["outage"]
    assert told["department"] == "amr" and told["worst_backlog"] == 4
    assert told["drain_seconds"] == 2.5 and told["nothing_lost"] is True
    outage.stuck = 1
    _print_summary(piped, outcomes, as_json=True, outage=outage)
    assert json.loads(capsys.readouterr().out)["outage"]["nothing_lost"] is False
