"""Built-in soap connector, registered through the ``gateway`` entry point like any plugin."""

from __future__ import annotations

from collections.abc import Callable

from gateway.connector import Connector
from gateway.hookspecs import hookimpl


@hookimpl(trylast=True)
def register_connectors(register: Callable[[type[Connector]], None]) -> None:
    from gateway_soap.connector import SoapConnector

    register(SoapConnector)
