"""Simulated department systems, by simulator kind.

``SIMULATORS[kind]`` builds a simulator from a department file's ``[simulator]`` table:
``factory.settings`` validates the table, ``factory.create(settings)`` returns the ASGI app
and its state. ``gateway simulate``, the demo and the tests all start simulators this way, so
SOAP and file-drop simulators plug in by adding an entry.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from pydantic import BaseModel

from gateway.serving import serve_asgi

__all__ = ["SIMULATORS", "SimulatorFactory", "serve_asgi"]


@dataclass(frozen=True)
class SimulatorFactory:
    """How to build one kind of simulator. The module is imported on first use: spyne and
    asyncssh are slow to import and most commands never start a simulator."""

    kind: str
    module: str
    settings_name: str
    create_name: str
    description: str = ""

    def _module(self) -> Any:
        try:
            return importlib.import_module(self.module)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("gateway"):
                raise
            # spyne and a2wsgi are the simulators' own dependencies, not the gateway's
            raise ModuleNotFoundError(
                f"the {self.kind} simulator needs {exc.name}: install the simulators extra "
                "(pip install 'onewindow-gateway[simulators]'; make install does)",
                name=exc.name,
            ) from exc

    @property
    def settings(self) -> type[BaseModel]:
        return cast(type[BaseModel], getattr(self._module(), self.settings_name))

    @property
    def create(self) -> Callable[[Any], tuple[Any, Any]]:
        return cast(Callable[[Any], tuple[Any, Any]], getattr(self._module(), self.create_name))

    def build(self, table: dict[str, Any]) -> tuple[BaseModel, Any, Any]:
        """Validate a ``[simulator]`` table and build (settings, asgi_app, state)."""
        settings = self.settings.model_validate(table)
        app, state = self.create(settings)
        return settings, app, state


SIMULATORS: dict[str, SimulatorFactory] = {
    "rest": SimulatorFactory(
        kind="rest",
        module="gateway.simulators.rest_department",
        settings_name="RestSimulatorSettings",
        create_name="create_rest_department",
        description="REST back-office system (FastAPI, in memory)",
    ),
    "soap": SimulatorFactory(
        kind="soap",
        module="gateway.simulators.soap_department",
        settings_name="SoapSimulatorSettings",
        create_name="create_soap_department",
        description="SOAP 1.1 back-office system (spyne via a2wsgi, in memory)",
    ),
    "filedrop": SimulatorFactory(
        kind="filedrop",
        module="gateway.simulators.filedrop_department",
        settings_name="FiledropSimulatorSettings",
        create_name="create_filedrop_department",
        description="file-drop back-office system (local folder or SFTP on loopback)",
    ),
}
