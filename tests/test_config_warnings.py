"""check-config warns about literal credentials it cannot refuse by name (issue 12 item 12):
a password in database_url, a credential in a department's [options.headers]."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli import app
from gateway.config.loader import load_config
from tests.conftest import EXAMPLE, TEST_SECRETS


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    target = tmp_path / "config"
    shutil.copytree(EXAMPLE.parent, target)
    return target


def set_database_url(cfg: Path, url: str) -> None:
    toml = cfg / "gateway.toml"
    text, n = re.subn(
        r'^database_url = "[^"]*"', f'database_url = "{url}"', toml.read_text("utf-8"), flags=re.M
    )
    assert n == 1
    toml.write_text(text, encoding="utf-8")


def add_headers(cfg: Path, lines: str) -> None:
    amr = cfg / "departments" / "amr.toml"
    amr.write_text(
        amr.read_text(encoding="utf-8") + f"\n[options.headers]\n{lines}\n", encoding="utf-8"
    )


def warnings_of(cfg: Path) -> list[tuple[str, str]]:
    config = load_config(cfg / "gateway.toml", env={**TEST_SECRETS, "PG_PASSWORD": "pw"})
    return [(Path(w.file).name, w.key) for w in config.warnings]


def test_the_example_has_no_warnings(cfg: Path) -> None:
    assert warnings_of(cfg) == []


def test_a_literal_password_in_database_url_is_warned(cfg: Path) -> None:
    set_database_url(cfg, "postgresql+asyncpg://gw:hunter2@db.internal/gateway")
    assert warnings_of(cfg) == [("gateway.toml", "gateway.database_url")]
    set_database_url(cfg, "postgresql+asyncpg://gw:${PG_PASSWORD}@db/gateway")
    assert warnings_of(cfg) == []


def test_a_literal_credential_in_request_headers_is_warned(cfg: Path) -> None:
    add_headers(
        cfg,
        'Authorization = "Bearer abc123"\nX-Sign = "literal"\nAccept = "application/json"\n'
        'X-Client = "Token zzz"\nX-Auth = "${AMR_API_TOKEN}"',
    )
    assert sorted(warnings_of(cfg)) == [
        ("amr.toml", "options.headers.Authorization"),
        ("amr.toml", "options.headers.X-Client"),
        ("amr.toml", "options.headers.X-Sign"),
    ]


def test_check_config_shows_warnings_and_still_passes(
    cfg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_database_url(cfg, "postgresql+asyncpg://gw:hunter2@db.internal/gateway")
    for name, value in TEST_SECRETS.items():
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    result = runner.invoke(app, ["check-config", "--config", str(cfg / "gateway.toml")])
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and "gateway.database_url" in result.output
    assert "hunter2" not in result.output
    as_json = runner.invoke(app, ["check-config", "--json", "--config", str(cfg / "gateway.toml")])
    data = json.loads(as_json.output)
    assert data["ok"] is True
    assert [w["key"] for w in data["warnings"]] == ["gateway.database_url"]
