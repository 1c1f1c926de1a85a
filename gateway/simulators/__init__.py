"""Simulated department systems, by simulator kind.

``SIMULATORS[kind]`` builds a simulator from a department file's ``[simulator]`` table:
``factory.settings`` validates the table, ``factory.create(settings)`` returns the ASGI app
and its state. ``gateway simulate``, the demo and the tests all start simulators this way, so
SOAP and file-drop simulators plug in by adding an entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from gateway.simulators.filedrop_department import (
    FiledropSimulatorSettings,
    create_filedrop_department,
)
from gateway.simulators.rest_department import RestSimulatorSettings, create_rest_department
from gateway.simulators.server import serve_asgi
from gateway.simulators.soap_department import SoapSimulatorSettings, create_soap_department

__all__ = ["SIMULATORS", "SimulatorFactory", "serve_asgi"]


@dataclass(frozen=True)
class SimulatorFactory:
    """How to build one kind of simulator."""

    kind: str
    settings: type[BaseModel]
    create: Callable[[Any], tuple[Any, Any]]
    description: str = ""

    def build(self, table: dict[str, Any]) -> tuple[BaseModel, Any, Any]:
        """Validate a ``[simulator]`` table and build (settings, asgi_app, state)."""
        settings = self.settings.model_validate(table)
        app, state = self.create(settings)
        return settings, app, state


SIMULATORS: dict[str, SimulatorFactory] = {
    "rest": SimulatorFactory(
        kind="rest",
        settings=RestSimulatorSettings,
        create=create_rest_department,
        description="REST back-office system (FastAPI, in memory)",
    ),
    "soap": SimulatorFactory(
        kind="soap",
        settings=SoapSimulatorSettings,
        create=create_soap_department,
        description="SOAP 1.1 back-office system (spyne via a2wsgi, in memory)",
    ),
    "filedrop": SimulatorFactory(
        kind="filedrop",
        settings=FiledropSimulatorSettings,
        create=create_filedrop_department,
        description="file-drop back-office system (local folder or SFTP on loopback)",
    ),
}
