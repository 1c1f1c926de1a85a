"""OneWindow Gateway plugin: the ``landreg`` connector (line-based TCP land registry)."""

from __future__ import annotations

from collections.abc import Callable

from gateway.connector import Connector
from gateway.hookspecs import hookimpl


@hookimpl
def register_connectors(register: Callable[[type[Connector]], None]) -> None:
    from gateway_landreg.connector import LandregConnector

    register(LandregConnector)
