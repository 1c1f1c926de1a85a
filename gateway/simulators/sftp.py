"""A real SFTP server on loopback (asyncssh), for the simulated file-drop department and tests.

Usage::

    async with sftp_server(root, keydir=tmp) as server:    # port 0: a free port
        server.port, server.host_key_line, server.client_key_path

The server's host key and the client's key are generated fresh into ``keydir``; clients are
served inside ``root`` (chroot). ``server.faults.drop_after_bytes`` makes the server abort a
connection once that many bytes have been written through it: a transfer cut off midway.
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

__all__ = ["SftpFaults", "SftpServer", "sftp_server"]


@dataclass
class SftpFaults:
    drop_after_bytes: int | None = None


@dataclass
class SftpServer:
    """A running server: where it listens and how a client logs in."""

    root: Path
    host: str
    port: int
    username: str
    password: str | None
    host_key_line: str  # "ssh-ed25519 AAAA...": pin this, or write it to known_hosts
    client_key_path: Path
    known_hosts_path: Path
    client_public: asyncssh.SSHKey
    faults: SftpFaults = field(default_factory=SftpFaults)
    connections: int = 0
    dropped: int = 0


class _Server(asyncssh.SSHServer):
    def __init__(self, server: SftpServer) -> None:
        self.server = server

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.server.connections += 1

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return (
            username == self.server.username
            and key.public_data == self.server.client_public.public_data
        )

    def password_auth_supported(self) -> bool:
        return self.server.password is not None

    def validate_password(self, username: str, password: str) -> bool:
        expected = self.server.password
        return (
            expected is not None
            and username == self.server.username
            and hmac.compare_digest(password.encode(), expected.encode())
        )


class _Sftp(asyncssh.SFTPServer):
    def __init__(self, chan: asyncssh.SSHServerChannel[bytes], server: SftpServer) -> None:
        super().__init__(chan, chroot=str(server.root).encode())
        self.server = server
        self.written = 0

    def write(self, file_obj: object, offset: int, data: bytes) -> int:
        limit = self.server.faults.drop_after_bytes
        if limit is not None and self.written + len(data) > limit:
            keep = max(limit - self.written, 0)
            result = super().write(file_obj, offset, data[:keep])
            self.server.dropped += 1
            self.connection.abort()
            return result  # type: ignore[return-value]
        self.written += len(data)
        return super().write(file_obj, offset, data)  # type: ignore[return-value]


@contextlib.asynccontextmanager
async def sftp_server(
    root: Path,
    *,
    keydir: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    username: str = "gateway",
    password: str | None = None,
) -> AsyncIterator[SftpServer]:
    """Serve ``root`` over SFTP on ``host:port`` for the duration of the block."""
    keydir.mkdir(parents=True, exist_ok=True)
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key_path = keydir / "client_ed25519"
    client_key.write_private_key(str(client_key_path))
    client_key_path.chmod(0o600)
    host_line = host_key.export_public_key().decode().split()
    server = SftpServer(
        root=root,
        host=host,
        port=port,
        username=username,
        password=password,
        host_key_line=" ".join(host_line[:2]),
        client_key_path=client_key_path,
        known_hosts_path=keydir / "known_hosts",
        client_public=client_key.convert_to_public(),
    )
    acceptor = await asyncssh.listen(
        host,
        port,
        server_host_keys=[host_key],
        server_factory=lambda: _Server(server),
        sftp_factory=lambda chan: _Sftp(chan, server),
        allow_scp=False,
        agent_forwarding=False,
        x509_trusted_certs=None,
    )
    try:
        server.port = acceptor.get_port()
        server.known_hosts_path.write_text(f"[{host}]:{server.port} {server.host_key_line}\n")
        yield server
    finally:
        acceptor.close()
        await acceptor.wait_closed()
