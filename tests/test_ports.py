"""gateway.testing.ports.free_port: ports for servers another process will bind later."""

from __future__ import annotations

import random
import socket

import pytest

from gateway.testing import ports


class _Repeats(random.Random):
    """Draws the same port twice, then another: what a city's five picks once met."""

    def __init__(self, draws: list[int]) -> None:
        super().__init__()
        self._draws = draws

    def randrange(self, *_args: object, **_kwargs: object) -> int:  # type: ignore[override]
        return self._draws.pop(0)


def _unbound_ports(n: int) -> list[int]:
    found: list[int] = []
    for port in range(20000, 30000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == n:
            return found
    pytest.skip("no unbound loopback ports in 20000-29999")


def test_a_port_is_not_handed_out_twice_before_it_is_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = _unbound_ports(2)
    monkeypatch.setattr(ports, "_GIVEN", set())
    monkeypatch.setattr(ports, "_ephemeral_start", lambda: 32768)
    draws = [first, first, second]
    monkeypatch.setattr(ports.random, "SystemRandom", lambda: _Repeats(draws))
    assert ports.free_port() == first
    # nothing is bound to `first` yet (its server starts later): still not given again
    assert ports.free_port() == second
