"""deploy/: alert rules (promtool), the dashboard, systemd units (systemd-analyze), the example
production configuration and the guide's references all hold up."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

import gateway.metrics  # noqa: F401  (defines every gateway_* metric)
from gateway.config.loader import load_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
GATEWAY = Path(sys.executable).with_name("gateway")
#: series Prometheus itself provides
BUILTIN_SERIES = {"up"}


def _defined() -> set[str]:
    names = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        for suffix in ("_total", "_bucket", "_sum", "_count", "_created"):
            names.add(family.name + suffix)
    return names


def _queried(text: str) -> set[str]:
    return set(re.findall(r"\bgateway_[a-z_]+\b", text))


def test_alerts_and_dashboard_name_only_metrics_that_exist() -> None:
    alerts = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    dashboard = json.loads((DEPLOY / "grafana" / "gateway.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [dashboard["templating"]["list"][1]["definition"]]
    missing = (_queried(alerts) | _queried("\n".join(exprs))) - _defined()
    assert not missing, f"queried but not defined in gateway/metrics.py: {sorted(missing)}"
    assert len(_queried(alerts)) >= 10 and len(dashboard["panels"]) >= 10
    assert all(p["targets"] for p in dashboard["panels"])
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian: prometheus)")
def test_alert_rules_are_valid_and_fire_as_written() -> None:
    folder = DEPLOY / "prometheus"
    checked = subprocess.run(
        ["promtool", "check", "rules", "alerts.yml"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        ["promtool", "test", "rules", "alerts_test.yml"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def _exec_start(unit: Path) -> list[str]:
    line = next(x for x in unit.read_text().splitlines() if x.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def test_units_start_commands_the_cli_has() -> None:
    for unit in sorted((DEPLOY / "systemd").glob("*.service")):
        argv = _exec_start(unit)
        assert argv[0] == "/opt/gateway/venv/bin/gateway", unit.name
        command, flags = argv[1], [a for a in argv[2:] if a.startswith("--")]
        shown = subprocess.run(
            [str(GATEWAY), command, "--help"], capture_output=True, text=True, timeout=60
        )
        assert shown.returncode == 0, shown.stderr
        for flag in flags:
            assert flag in shown.stdout, f"{unit.name}: gateway {command} has no {flag}"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze")
def test_systemd_units_verify(tmp_path: Path) -> None:
    units = []
    for unit in sorted((DEPLOY / "systemd").glob("*.service")):
        # verify insists the program exists: point it at this environment's gateway
        text = unit.read_text().replace("/opt/gateway/venv/bin/gateway", str(GATEWAY))
        name = unit.name.replace("@.service", "@9101.service")
        (tmp_path / unit.name).write_text(text)
        if name != unit.name:
            (tmp_path / name).write_text(text)
        units.append(str(tmp_path / name))
    result = subprocess.run(
        ["systemd-analyze", "verify", *units], capture_output=True, text=True, timeout=120
    )
    # verify warns about unknown keys and bad values but still exits 0: any output is a failure
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        result.stdout + result.stderr
    )


def test_example_production_config_loads_with_secrets_from_files(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    shutil.copy(DEPLOY / "config" / "gateway.toml", folder / "gateway.toml")
    shutil.copytree(ROOT / "config" / "departments", folder / "departments")
    shutil.copytree(ROOT / "config" / "schemas", folder / "schemas")
    shutil.copy(ROOT / "config" / "matters.csv", folder / "matters.csv")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    env = {}
    for line in (DEPLOY / "config" / "gateway.env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, _path = line.partition("=")
            secret = secrets / name.lower()
            secret.write_text(f"s3cret-{name}\n")  # the trailing newline is dropped
            env[name] = str(secret)
    config = load_config(folder / "gateway.toml", env=env)
    settings = config.gateway
    assert settings.database_url.startswith("postgresql+asyncpg://gateway:s3cret-PG_PASSWORD_FILE@")
    assert settings.database.pool_size == 10 and settings.timezone == "Asia/Shanghai"
    amr = config.departments["amr"].callback_secrets[0].get_secret_value()
    assert amr == "s3cret-AMR_CALLBACK_SECRET_FILE"


def test_guide_names_files_that_exist() -> None:
    guide = (ROOT / "docs" / "deploy.md").read_text()
    named = set(re.findall(r"`((?:deploy|docs|tests)/[^`\s]+)`", guide))
    assert len(named) >= 8
    missing = [n for n in sorted(named) if not (ROOT / n).exists()]
    assert not missing, missing
