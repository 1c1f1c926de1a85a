"""Loopback ports for servers a test starts in another process.

``bind(("127.0.0.1", 0))`` hands out a port from the kernel's ephemeral range, the range every
outgoing connection takes its local port from too. A port picked that way and handed to a
process that binds it seconds later can meanwhile be the local end of someone's connection; on a
busy CI machine with thousands of test connections that happens (the deployment test's API once
never came up). So the ports here come from below the ephemeral range, where only servers that
ask for a port by number live, and are checked free before they are handed out."""

from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["free_port"]

_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10000
#: ports this process handed out: several picked before any is bound (a city's four simulators
#: and its API) must differ, and a bind check alone cannot tell
_GIVEN: set[int] = set()


def _ephemeral_start() -> int:
    try:
        return int(_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _binds(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A loopback TCP port nothing is bound to now, outside the ephemeral range and not handed
    out before by this process (random, so two processes picking at once rarely meet; the bind
    check catches the rest of today's holders)."""
    top = _ephemeral_start()
    if top <= _LOWEST + 1000:  # an unusual range: fall back to the kernel's pick
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    picks = random.SystemRandom()
    for _ in range(200):
        port = picks.randrange(_LOWEST, top)
        if port not in _GIVEN and _binds(port):
            _GIVEN.add(port)
            return port
    raise RuntimeError(f"no free loopback port in {_LOWEST}-{top - 1} after 200 tries")
