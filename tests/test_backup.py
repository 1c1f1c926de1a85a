"""`gateway backup`: a consistent copy of the SQLite database and the data folder in one
archive, made while the gateway runs, that restores to the same cases and documents."""

from __future__ import annotations

import hashlib
import sqlite3
import tarfile
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from gateway.backup import make_backup, sqlite_path
from gateway.runtime import Runtime
from tests.conftest import application

PDF = b"%PDF-1.4 backup test\n"


async def test_backup_restores_cases_and_documents(
    api: httpx.AsyncClient, runtime: Runtime, centre_headers: dict[str, str], tmp_path: Path
) -> None:
    url = runtime.config.gateway.database_url
    if sqlite_path(url) is None:
        pytest.skip("PostgreSQL is backed up with pg_dump (docs/deploy.md)")
    files = {"file": ("scan.pdf", PDF, "application/pdf")}
    material = (await api.post("/v1/materials", files=files, headers=centre_headers)).json()
    for i in range(3):
        created = await api.post(
            "/v1/applications",
            json=application(materials=[material["id"]]),
            headers={**centre_headers, "Idempotency-Key": f"b-{i}"},
        )
        assert created.status_code == 201
    # the gateway is running (its engine holds the database open) while the copy is made
    result = make_backup(url, runtime.config.gateway.data_dir, tmp_path / "b.tar.gz")
    assert result.database == "sqlite" and result.files >= 1
    restored = tmp_path / "restored"
    with tarfile.open(result.archive) as tar:
        tar.extractall(restored, filter="data")
    with sqlite3.connect(restored / "gateway.db") as db:
        assert db.execute("SELECT count(*) FROM applications").fetchone() == (3,)
    blobs = [p for p in (restored / "data").rglob("*") if p.is_file()]
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in blobs] == [material["sha256"]]
    assert (restored / "MANIFEST.json").exists()


def test_backup_command_names_a_missing_database(tmp_path: Path) -> None:
    from gateway.cli import app

    config = tmp_path / "gateway.toml"
    config.write_text(
        '[gateway]\ncity = "339900"\n'
        f'database_url = "sqlite+aiosqlite:///{tmp_path / "nothing.db"}"\n'
        f'data_dir = "{tmp_path / "var"}"\n'
        '[[gateway.regions]]\ncode = "339900"\nname = "city"\nkind = "city"\n'
    )
    (tmp_path / "departments").mkdir()
    (tmp_path / "matters.csv").write_text(
        "code,name,department,regions,promised_days,materials,pickup_anywhere,form_schema\n"
    )
    result = CliRunner().invoke(
        app, ["backup", "--config", str(config), "-o", str(tmp_path / "x.tgz")]
    )
    assert result.exit_code == 1
    assert "no database file at" in result.output
