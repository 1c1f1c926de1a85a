"""Run the simulated departments of a configuration and point the config at them.

The demo, the benchmarks and the integration tests use this so they exercise exactly the
example city: each enabled department whose ``[simulator]`` kind is known gets its simulator on
loopback, and its connector's ``base_url`` is rewritten to the simulator's real address.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from gateway.config.loader import Config, check_literal_secrets
from gateway.errors import ConfigError
from gateway.simulators import SIMULATORS
from gateway.simulators.server import serve_asgi


@dataclass
class SimulatedCity:
    config: Config
    urls: dict[str, str] = field(default_factory=dict)
    states: dict[str, Any] = field(default_factory=dict)
    #: department code -> why it has no simulator
    missing: dict[str, str] = field(default_factory=dict)

    def set_callback_url(self, gateway_url: str) -> None:
        """Tell callback-sending simulators where the gateway's API is (known once it runs)."""
        for code, state in self.states.items():
            settings = getattr(state, "settings", None)
            if settings is not None and getattr(settings, "callbacks", False):
                state.settings = settings.model_copy(
                    update={"callback_url": f"{gateway_url}/v1/callbacks/{code}"}
                )


def _rebase(url: str, actual: str) -> str:
    old, new = urlsplit(url), urlsplit(actual)
    return urlunsplit((new.scheme, new.netloc, old.path, old.query, old.fragment))


@contextlib.asynccontextmanager
async def simulated_city(
    config: Config,
    *,
    ephemeral_ports: bool = True,
    simulator_overrides: dict[str, dict[str, Any]] | None = None,
    department_overrides: dict[str, dict[str, Any]] | None = None,
) -> AsyncIterator[SimulatedCity]:
    """Start the simulators; yields the city with a config whose connectors point at them.

    ``simulator_overrides[code]`` updates a department's ``[simulator]`` table (e.g. a shorter
    decision delay); ``department_overrides[code]`` updates its department settings.
    """
    simulator_overrides = simulator_overrides or {}
    department_overrides = department_overrides or {}
    problems = [
        problem
        for code, dept in sorted(config.departments.items())
        if (factory := SIMULATORS.get(str((dept.simulator or {}).get("kind", ""))))
        for problem in check_literal_secrets(config, code, "simulator", factory.settings)
    ]
    if problems:
        raise ConfigError(problems)
    departments = dict(config.departments)
    city = SimulatedCity(config)
    stop = asyncio.Event()  # all servers shut down at once when the city ends
    async with contextlib.AsyncExitStack() as stack:
        for code, dept in sorted(config.departments.items()):
            update: dict[str, Any] = dict(department_overrides.get(code, {}))
            table = dict(dept.simulator or {})
            factory = SIMULATORS.get(str(table.get("kind", "")))
            if not dept.enabled:
                city.missing[code] = "department disabled"
            elif factory is None:
                city.missing[code] = f"no simulator for kind '{table.get('kind')}'"
            else:
                table.update(simulator_overrides.get(code, {}))
                if ephemeral_ports:
                    table["port"] = 0
                    if "workdir" in factory.settings.model_fields:
                        # simulators that keep files get a folder private to this city
                        table["workdir"] = str(config.gateway.data_dir / "simulators" / code)
                if dept.callback_secrets:
                    table.setdefault("callback_secret", dept.callback_secrets[0].get_secret_value())
                settings, app, state = factory.build(table)
                url = await stack.enter_async_context(
                    serve_asgi(app, host="127.0.0.1", port=getattr(settings, "port", 0), stop=stop)
                )
                city.urls[code], city.states[code] = url, state
                options = dict(dept.options)
                for name in ("base_url", "endpoint", "wsdl"):  # wsdl: only when it is a URL
                    if str(options.get(name, "")).startswith(("http://", "https://")):
                        options[name] = _rebase(str(options[name]), url)
                connector_options = getattr(state, "connector_options", None)
                if callable(connector_options):  # e.g. a file-drop simulator's folders or port
                    options.update(connector_options())
                update["options"] = {**options, **update.get("options", {})}
            if update:
                departments[code] = type(dept).model_validate({**dict(dept), **update})
        city.config = dataclasses.replace(config, departments=departments)
        stack.callback(stop.set)  # runs first on the way out
        yield city
