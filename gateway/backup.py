"""``gateway backup``: one archive of what a SQLite installation keeps (docs/deploy.md).

The archive (``.tar.gz``) holds ``gateway.db``, a consistent copy of the SQLite database made
with SQLite's online backup (safe while the gateway runs), and ``data/``, the data folder
(materials and result documents, content-addressed: files are written once and never
changed, so copying them while the gateway runs is safe too), without the database file itself
or ``run/``. A ``MANIFEST.json`` says what is inside.

PostgreSQL installations back the database up with ``pg_dump`` (the guide shows how); this
command then archives the data folder alone.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import sqlite3
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

__all__ = ["BackupResult", "make_backup", "sqlite_path"]


@dataclass(frozen=True)
class BackupResult:
    archive: Path
    database: str  # "sqlite" or "postgresql (not included: use pg_dump)"
    files: int
    bytes: int


def sqlite_path(database_url: str) -> Path | None:
    """The database file of a SQLite URL (None for other databases)."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def make_backup(database_url: str, data_dir: Path, archive: Path) -> BackupResult:
    db_file = sqlite_path(database_url)
    if db_file is not None and not db_file.exists():
        raise FileNotFoundError(f"no database file at {db_file} (is database_url right?)")
    skip = {db_file.resolve()} if db_file else set()
    if db_file is not None:
        skip |= {Path(str(db_file) + suffix).resolve() for suffix in ("-wal", "-shm")}
    archive.parent.mkdir(parents=True, exist_ok=True)
    files, size = 0, 0
    with tarfile.open(archive, "w:gz") as tar, tempfile.TemporaryDirectory() as tmp:
        if db_file is not None:
            copy = Path(tmp) / "gateway.db"
            _sqlite_snapshot(db_file, copy)
            tar.add(copy, arcname="gateway.db")
            size += copy.stat().st_size
        if data_dir.is_dir():
            for path in sorted(data_dir.rglob("*")):
                if not path.is_file() or path.resolve() in skip:
                    continue
                relative = path.relative_to(data_dir)
                if relative.parts[0] == "run":
                    continue  # pid files of running processes
                tar.add(path, arcname=str(Path("data") / relative))
                files += 1
                size += path.stat().st_size
        manifest = {
            "made_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "database": "sqlite" if db_file else "not included (PostgreSQL: use pg_dump)",
            "data_files": files,
        }
        data = json.dumps(manifest, indent=2).encode()
        info = tarfile.TarInfo("MANIFEST.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return BackupResult(
        archive,
        "sqlite" if db_file else "postgresql (not included: use pg_dump)",
        files,
        size,
    )


def _sqlite_snapshot(source: Path, target: Path) -> None:
    # the online backup API copies a consistent state even while other processes write
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=60)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
        (check,) = dst.execute("PRAGMA integrity_check").fetchone()
        if check != "ok":
            raise RuntimeError(f"the copy of {source} fails its integrity check: {check}")
    finally:
        dst.close()
        src.close()
