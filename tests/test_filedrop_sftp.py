"""The filedrop connector against a real SFTP server (asyncssh on loopback): key and password
auth, host-key checking, a connection dropped mid-transfer, and the simulated department."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import httpx
import pytest
from gateway_filedrop.connector import FiledropConnector

from gateway.errors import PermanentError, TransientError
from gateway.simulators.filedrop_department import (
    FiledropDepartmentState,
    FiledropSimulatorSettings,
)
from gateway.simulators.sftp import SftpServer, sftp_server
from tests.conftest import wait_for
from tests.filedrop_helpers import KEY, envelope, make_connector, result_json, sftp_target, tree

PINNED = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[SftpServer]:
    root = tmp_path / "srv"
    root.mkdir()
    async with sftp_server(root, keydir=tmp_path / "keys", password="pw-for-tests") as srv:
        yield srv


@pytest.fixture
async def conn(server: SftpServer, http: httpx.AsyncClient) -> AsyncIterator[FiledropConnector]:
    connector = make_connector(
        {"target": sftp_target(server), "result": {"stable_seconds": 0}}, http
    )
    yield connector
    await connector.aclose()


async def test_submit_pull_ack_over_sftp(conn: FiledropConnector, server: SftpServer) -> None:
    receipt = await conn.submit(envelope())
    assert receipt.case_id == KEY
    assert await conn.submit(envelope()) == receipt
    files = tree(server.root)
    assert {f"inbox/{KEY}.json", f"inbox/{KEY}.m1.pdf", f"sent/{KEY}.json"} <= files
    assert {f for f in files if f.startswith("inbox/")} == {
        f"inbox/{KEY}.json",
        f"inbox/{KEY}.m1.pdf",
    }
    (server.root / "outbox" / "r1.json").write_bytes(result_json(KEY, "9"))
    (server.root / "outbox" / "junk.json").write_bytes(b"{")
    [update] = await conn.pull_updates(10)
    assert (update.idempotency_key, update.status, update.ref) == (KEY, "9", "r1.json")
    await conn.ack_update(update, "applied")
    assert tree(server.root / "archive") == {"r1.json"}
    assert tree(server.root / "quarantine") == {"junk.json", "junk.json.reason"}
    health = await conn.health()  # reachable, but a file waits for ops in quarantine
    assert not health.ok and "1 result file(s) in quarantine" in health.detail
    # one connection served all of that
    assert server.connections == 1


async def test_known_hosts_file_and_password(server: SftpServer, http: httpx.AsyncClient) -> None:
    conn = make_connector(
        {
            "target": sftp_target(
                server,
                host_key=None,
                known_hosts=str(server.known_hosts_path),
                private_key=None,
                password="pw-for-tests",
            )
        },
        http,
    )
    try:
        await conn.submit(envelope())
    finally:
        await conn.aclose()
    assert (server.root / "inbox" / f"{KEY}.json").exists()


async def test_untrusted_host_key_is_refused(server: SftpServer, http: httpx.AsyncClient) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    conn = make_connector(
        {"target": sftp_target(server, host_key=" ".join(other.split()[:2]))}, http
    )
    with pytest.raises(PermanentError, match="host key not trusted"):
        await conn.submit(envelope())
    assert not (server.root / "inbox").exists()
    assert not (await conn.health()).ok


async def test_wrong_password_is_refused(server: SftpServer, http: httpx.AsyncClient) -> None:
    conn = make_connector({"target": sftp_target(server, private_key=None, password="wrong")}, http)
    with pytest.raises(PermanentError, match="authentication failed") as info:
        await conn.submit(envelope())
    assert "wrong" not in str(info.value)


async def test_unreachable_server_is_transient(http: httpx.AsyncClient, tmp_path: Path) -> None:
    conn = make_connector(
        {
            "target": {
                "type": "sftp",
                "host": "127.0.0.1",
                "port": 1,
                "username": "u",
                "password": "p",
                "host_key": PINNED,
                "connect_timeout_seconds": 2,
            }
        },
        http,
    )
    with pytest.raises(TransientError, match="cannot connect"):
        await conn.pull_updates(10)


async def test_connection_dropped_mid_transfer(conn: FiledropConnector, server: SftpServer) -> None:
    await conn.pull_updates(1)  # connected, folders made
    server.faults.drop_after_bytes = 20
    with pytest.raises(TransientError, match=r"connection lost|ConnectionLost"):
        await conn.submit(envelope())
    visible = {f for f in tree(server.root) if not f.rsplit("/", 1)[-1].startswith(".")}
    assert visible == set(), "nothing half-written may be visible to the department"
    assert server.dropped == 1
    server.faults.drop_after_bytes = None
    await conn.submit(envelope())  # reconnects
    assert server.connections == 2
    inbox = sorted(p.name for p in (server.root / "inbox").iterdir() if not p.name.startswith("."))
    assert inbox == [f"{KEY}.json", f"{KEY}.m1.pdf"]
    assert (server.root / "inbox" / f"{KEY}.m1.pdf").stat().st_size > 20


async def test_simulated_department_over_sftp(tmp_path: Path, http: httpx.AsyncClient) -> None:
    settings = FiledropSimulatorSettings(
        root=tmp_path / "dept",
        transport="sftp",
        decision_delay_seconds=0.1,
        scan_interval_seconds=0.02,
        mix={"approve": 1.0},
    )
    async with FiledropDepartmentState(settings=settings).running() as dept:
        assert dept.sftp is not None and dept.sftp.port > 0
        conn = make_connector({**dept.connector_options(), "result": {"stable_seconds": 0}}, http)
        try:
            await conn.submit(envelope())
            seen: list[str] = []

            async def final() -> bool:
                for update in await conn.pull_updates(10):
                    seen.append(update.status)
                    await conn.ack_update(update, "applied")
                return "9" in seen

            await wait_for(final)
        finally:
            await conn.aclose()
        assert seen == ["1", "9"]
        assert dept.stats()["requests"] == 1 and dept.stats()["sftp_connections"] >= 1
        assert tree(dept.root / "processed") == {f"{KEY}.json", f"{KEY}.m1.pdf"}
