"""A hostile file share: symbolic links, FIFOs, devices and sockets inside the department's
folders are never read, written through or applied, locally and over SFTP; each such result is
quarantined with the reason, and a FIFO never blocks the department's other results."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from gateway_filedrop.connector import FiledropConnector

from gateway.connector import Ack
from gateway.errors import PermanentError
from gateway.simulators.sftp import SftpServer, sftp_server
from tests.filedrop_helpers import (
    KEY,
    envelope,
    local_options,
    make_connector,
    result_json,
    sftp_target,
    tree,
)

SECRET = b"GATEWAY_DB_PASSWORD=hunter2\n"
# generous: a pull that works returns in milliseconds; one that blocks never returns
PULL_TIMEOUT = 20.0


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def share(tmp_path: Path) -> Path:
    root = tmp_path / "share"
    for folder in ("inbox", "outbox", "archive", "quarantine", "sent"):
        (root / folder).mkdir(parents=True)
    return root


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A file outside the share the gateway can read (its database, its environment)."""
    path = tmp_path / "gateway-private" / "gateway.db"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    return path


@pytest.fixture
async def conn(share: Path, http: httpx.AsyncClient) -> AsyncIterator[FiledropConnector]:
    connector = make_connector(local_options(share, result={"stable_seconds": 0}), http)
    yield connector
    await connector.aclose()


def with_document(key: str = KEY) -> bytes:
    return result_json(key, "9", documents=[{"name": "licence.pdf", "file": "licence.pdf"}])


def reason(root: Path, name: str) -> str:
    return (root / "quarantine" / f"{name}.reason").read_text()


@contextlib.contextmanager
def fifo_unblocker(*fifos: Path, after: float = PULL_TIMEOUT / 2) -> Iterator[None]:
    """If code under test blocks opening one of ``fifos`` for reading (today's bug), open it
    for writing after ``after`` seconds so that the test fails instead of hanging for ever."""
    stop = threading.Event()

    def run() -> None:
        if stop.wait(after):
            return
        while not stop.wait(0.2):
            for fifo in fifos:
                with contextlib.suppress(OSError):
                    os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


async def pull(conn: FiledropConnector) -> list[str]:
    """One round as the daemon does it (pull, then archive each); the refs pulled."""
    updates = await asyncio.wait_for(conn.pull_updates(10), PULL_TIMEOUT)
    for update in updates:
        await conn.ack_update(update, "applied")
    return [u.ref or "" for u in updates]


def outside(tmp_path: Path, name: str) -> Path:
    """A folder outside the share holding an approval named ``name``, for links to point at."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / name).write_bytes(result_json(KEY, "9"))
    return folder


# -- local folder ----------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["secret", "/proc/self/environ"])
async def test_a_document_that_is_a_symlink_is_never_read(
    conn: FiledropConnector, share: Path, secret: Path, target: str
) -> None:
    (share / "outbox" / "r1.json").write_bytes(with_document())
    (share / "outbox" / "r1.files").mkdir()
    (share / "outbox" / "r1.files" / "licence.pdf").symlink_to(
        secret if target == "secret" else target
    )
    assert await pull(conn) == []
    assert "symbolic link" in reason(share, "r1.json")
    assert (share / "quarantine" / "r1.files" / "licence.pdf").is_symlink()
    assert secret.read_bytes() == SECRET


async def test_a_result_file_that_is_a_symlink_out_of_the_share_is_not_applied(
    conn: FiledropConnector, share: Path, tmp_path: Path
) -> None:
    elsewhere = outside(tmp_path, "forged.json")
    (share / "outbox" / "r1.json").symlink_to(elsewhere / "forged.json")
    (share / "outbox" / "r2.json").write_bytes(result_json(KEY, "1"))
    assert await pull(conn) == ["r2.json"]  # the genuine result still comes through
    assert "symbolic link" in reason(share, "r1.json")
    assert (share / "quarantine" / "r1.json").is_symlink()  # the link moved, not its target
    assert (elsewhere / "forged.json").read_bytes() == result_json(KEY, "9")


async def test_a_files_folder_that_is_a_symlink_is_refused(
    conn: FiledropConnector, share: Path, secret: Path
) -> None:
    (secret.parent / "licence.pdf").write_bytes(SECRET)
    (share / "outbox" / "r1.json").write_bytes(with_document())
    (share / "outbox" / "r1.files").symlink_to(secret.parent, target_is_directory=True)
    assert await pull(conn) == []
    assert "symbolic link" in reason(share, "r1.json")
    assert (secret.parent / "licence.pdf").read_bytes() == SECRET


async def test_a_fifo_neither_blocks_nor_halts_the_department(
    conn: FiledropConnector, share: Path
) -> None:
    fifo = share / "outbox" / "r1.json"
    os.mkfifo(fifo)
    doc_fifo = share / "outbox" / "r2.files" / "licence.pdf"
    doc_fifo.parent.mkdir()
    os.mkfifo(doc_fifo)
    (share / "outbox" / "r2.json").write_bytes(with_document())
    (share / "outbox" / "r3.json").write_bytes(result_json(KEY, "1"))
    with fifo_unblocker(fifo, doc_fifo):
        refs = await pull(conn)
    assert refs == ["r3.json"]
    assert "FIFO" in reason(share, "r1.json")
    assert "FIFO" in reason(share, "r2.json")
    assert stat.S_ISFIFO((share / "quarantine" / "r1.json").lstat().st_mode)
    # and the next round is not stuck either
    (share / "outbox" / "r4.json").write_bytes(result_json(KEY, "9"))
    assert await pull(conn) == ["r4.json"]


async def test_a_socket_is_quarantined(
    conn: FiledropConnector, share: Path, tmp_path: Path
) -> None:
    # AF_UNIX paths are short: bind in a short folder, then move the socket into the share
    with socket.socket(socket.AF_UNIX) as sock:
        short = Path(f"/tmp/fd-sock-{os.getpid()}-{id(sock)}")
        sock.bind(str(short))
        os.rename(short, share / "outbox" / "r1.json")
    assert await pull(conn) == []
    assert "socket" in reason(share, "r1.json")


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
async def test_a_device_is_quarantined_unopened(conn: FiledropConnector, share: Path) -> None:
    os.mknod(share / "outbox" / "r1.json", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero
    assert await pull(conn) == []
    assert "device" in reason(share, "r1.json")


async def test_planted_symlinks_are_never_written_through(
    conn: FiledropConnector, share: Path, secret: Path
) -> None:
    # where the gateway writes temporary names, the department plants links to the gateway's DB
    (share / "inbox" / f".{KEY}.json.tmp").symlink_to(secret)
    (share / "quarantine" / ".junk.json.reason.tmp").symlink_to(secret)
    await conn.submit(envelope())
    assert b"applicant" in (share / "inbox" / f"{KEY}.json").read_bytes()
    (share / "outbox" / "junk.json").write_bytes(b"{ not json")
    assert await pull(conn) == []
    assert "not JSON" in reason(share, "junk.json")
    assert secret.read_bytes() == SECRET


async def test_a_done_marker_symlink_is_not_written_through(
    share: Path, secret: Path, http: httpx.AsyncClient
) -> None:
    conn = make_connector(local_options(share, request={"commit": "done_marker"}), http)
    (share / "inbox" / f"{KEY}.json.done").symlink_to(secret)
    with pytest.raises(PermanentError, match="symbolic link"):
        await conn.submit(envelope())
    assert secret.read_bytes() == SECRET


async def test_a_configured_folder_that_is_a_symlink_is_refused(
    conn: FiledropConnector, share: Path, tmp_path: Path
) -> None:
    elsewhere = outside(tmp_path, "r1.json")
    (share / "outbox").rmdir()
    (share / "outbox").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(PermanentError, match=r"outbox.*symbolic link"):
        await conn.pull_updates(10)
    health = await conn.health()
    assert not health.ok and "outbox" in health.detail
    assert tree(elsewhere) == {"r1.json"}
    assert tree(share / "quarantine") == set()


async def settle_batch(conn: FiledropConnector, share: Path, secret: Path) -> None:
    """Two results settled in one ``ack_updates``: one result's ledger entry is a planted link
    to ``secret``, the other's archive name is taken."""
    other = "b0123456789abcdef"
    await conn.submit(envelope())
    await conn.submit(envelope(other))
    planted = share / "sent" / f"ow-{other}-v1.json"
    planted.unlink()
    planted.symlink_to(secret)
    (share / "archive" / "r1.json").write_bytes(b"an older result of the same name")
    (share / "outbox" / "r1.json").write_bytes(result_json(KEY, "9"))
    (share / "outbox" / "r2.json").write_bytes(result_json(f"ow-{other}-v1", "9"))
    updates = await asyncio.wait_for(conn.pull_updates(10), PULL_TIMEOUT)
    assert sorted(u.ref or "" for u in updates) == ["r1.json", "r2.json"]
    await conn.ack_updates([Ack(u, "applied") for u in updates])
    assert tree(share / "outbox") == set()
    assert tree(share / "archive") == {"r1.json", "r1.dup1.json", "r2.json"}
    assert json.loads((share / "sent" / f"{KEY}.json").read_bytes())["status"] == "9"
    assert planted.is_symlink()  # left as it was: never written through
    assert secret.read_bytes() == SECRET
    assert await conn.pull_updates(10) == []


async def test_a_batch_settled_at_once_never_writes_through_a_planted_link(
    conn: FiledropConnector, share: Path, secret: Path
) -> None:
    await settle_batch(conn, share, secret)


# -- SFTP ------------------------------------------------------------------------------------------


@pytest.fixture
async def server(share: Path, tmp_path: Path) -> AsyncIterator[SftpServer]:
    async with sftp_server(share, keydir=tmp_path / "keys") as srv:
        yield srv


@pytest.fixture
async def sftp_conn(
    server: SftpServer, http: httpx.AsyncClient
) -> AsyncIterator[FiledropConnector]:
    connector = make_connector(
        {"target": sftp_target(server), "result": {"stable_seconds": 0}, "timeout_seconds": 10},
        http,
    )
    yield connector
    await connector.aclose()


async def test_sftp_refuses_symlinked_results_and_documents(
    sftp_conn: FiledropConnector, share: Path, secret: Path
) -> None:
    (share / "outbox" / "r1.json").write_bytes(with_document())
    (share / "outbox" / "r1.files").mkdir()
    (share / "outbox" / "r1.files" / "licence.pdf").symlink_to(secret)
    (share / "outbox" / "r2.json").symlink_to(share / "archive" / "planted.json")
    (share / "archive" / "planted.json").write_bytes(result_json(KEY, "9"))
    (share / "outbox" / "r3.json").write_bytes(with_document())
    (share / "outbox" / "r3.files").symlink_to(secret.parent, target_is_directory=True)
    (secret.parent / "licence.pdf").write_bytes(SECRET)
    (share / "outbox" / "r4.json").write_bytes(result_json(KEY, "1"))
    assert await pull(sftp_conn) == ["r4.json"]
    for name in ("r1.json", "r2.json", "r3.json"):
        assert "symbolic link" in reason(share, name), name
    assert secret.read_bytes() == SECRET


async def test_sftp_batch_settled_at_once_never_writes_through_a_planted_link(
    sftp_conn: FiledropConnector, share: Path, secret: Path
) -> None:
    await settle_batch(sftp_conn, share, secret)


async def test_sftp_fifo_is_quarantined_unopened(sftp_conn: FiledropConnector, share: Path) -> None:
    fifo = share / "outbox" / "r1.json"
    os.mkfifo(fifo)
    (share / "outbox" / "r2.json").write_bytes(result_json(KEY, "1"))
    with fifo_unblocker(fifo):
        assert await pull(sftp_conn) == ["r2.json"]
    assert "FIFO" in reason(share, "r1.json")
