"""``gateway new-plugin NAME``: write a ready-to-install connector plugin package.

The package registers through the ``gateway`` entry-point group, holds a connector skeleton for
a department with an HTTP API (the error translation at the boundary is written; the
department-specific parts are ``TODO``), a test module running the conformance suite, and a
README. Once every ``TODO`` is filled in, ``pytest`` in the package passes as generated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["NAME_PATTERN", "PluginNames", "names_for", "write_plugin"]

NAME_PATTERN = r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$"


@dataclass(frozen=True)
class PluginNames:
    """Every name derived from the plugin name (``land-registry``)."""

    name: str  # land-registry
    distribution: str  # gateway-land-registry
    package: str  # gateway_land_registry
    kind: str  # land_registry: the entry-point name and connector kind
    cls: str  # LandRegistry


def names_for(name: str) -> PluginNames:
    """Derive the names; ``ValueError`` says what a valid name looks like."""
    if not re.fullmatch(NAME_PATTERN, name) or len(name) > 31:
        raise ValueError(
            f"plugin name {name!r} is not usable: use lower-case letters and digits, words "
            "joined by '-' or '_', starting with a letter, at most 31 characters "
            "(e.g. land-registry)"
        )
    kind = name.replace("-", "_")
    return PluginNames(
        name=name,
        distribution=f"gateway-{name.replace('_', '-')}",
        package=f"gateway_{kind}",
        kind=kind,
        cls="".join(part.capitalize() for part in kind.split("_")),
    )


def write_plugin(name: str, directory: Path | None = None) -> list[Path]:
    """Write the package into ``directory`` (default ``./gateway-NAME``); returns the files.

    Refuses a directory that exists and is not empty (nothing is overwritten).
    """
    names = names_for(name)
    root = directory if directory is not None else Path(names.distribution)
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not empty; choose another --directory")
    files = {
        "pyproject.toml": _PYPROJECT,
        "README.md": _README,
        f"{names.package}/__init__.py": _INIT,
        f"{names.package}/connector.py": _CONNECTOR,
        f"{names.package}/py.typed": "",
        "tests/test_conformance.py": _TESTS,
    }
    written: list[Path] = []
    for relative, template in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_render(template, names), encoding="utf-8")
        written.append(path)
    return written


def gateway_install_command() -> str:
    """How to install the gateway this scaffold was written by, outside its source tree: its
    source folder when it runs from one, else its wheel."""
    import gateway

    source = Path(gateway.__file__).resolve().parent.parent
    if (source / "pyproject.toml").is_file() and (source / "gateway").is_dir():
        return f"pip install '{source}'        # or: pip install onewindow_gateway-*.whl"
    return "pip install /path/to/onewindow_gateway-<version>-py3-none-any.whl"


def _render(template: str, names: PluginNames) -> str:
    # str.format would trip over the braces of the code inside the templates
    out = template.replace("<<gateway_install>>", gateway_install_command())
    for key, value in names.__dict__.items():
        out = out.replace(f"<<{key}>>", value)
    return out


_PYPROJECT = """\
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "<<distribution>>"
version = "0.1.0"
description = "OneWindow Gateway connector plugin: <<name>>"
readme = "README.md"
requires-python = ">=3.11"
dependencies = ["onewindow-gateway"]

[project.optional-dependencies]
test = ["pytest>=8", "pytest-asyncio>=0.23"]

# The gateway finds the plugin here: `gateway plugins` lists it as "<<kind>>".
[project.entry-points.gateway]
<<kind>> = "<<package>>"

[tool.setuptools.packages.find]
include = ["<<package>>*"]

[tool.setuptools.package-data]
<<package>> = ["py.typed"]

[tool.pytest.ini_options]
testpaths = ["tests"]
asyncio_mode = "auto"
asyncio_default_fixture_loop_scope = "function"
filterwarnings = [
  "error",
  # the gateway's own dependencies (SOAP libraries) warn on import
  "ignore::DeprecationWarning:spyne.*",
  "ignore::DeprecationWarning:zeep.*",
  "ignore:_SixMetaPathImporter:ImportWarning",
]
"""

_README = """\
# <<distribution>>

A [OneWindow Gateway](https://example.invalid/onewindow) connector plugin: connector kind
`<<kind>>`.

## Finish it

1. Fill in every `TODO` in `<<package>>/connector.py` (the department's requests and answers)
   and in `tests/test_conformance.py` (how to start the department's test system or simulator).
2. Install the gateway into your environment first: it is on no public package index, so pip
   cannot fetch it by name. Either its wheel (from the gateway's release, or `make dist` in its
   source tree) or its source folder:

   ```sh
   <<gateway_install>>
   ```

   Then `pip install -e '.[test]'` and run `pytest`: the gateway's conformance suite checks
   idempotent submit, status mapping, error classification, `list_cases`, `health`, `aclose`
   and timeouts, and says in words what is wrong.
3. `gateway plugins` lists `<<kind>>` once the package is installed.

## Use it

In `config/departments/<code>.toml`:

```toml
code = "<code>"
name = "..."
connector = "<<kind>>"
timeout_seconds = 10

[options]
base_url = "https://department.example/api"

[status_map]
"A" = "accepted"
```

`gateway check-config` validates the `[options]` table against `<<cls>>Options`.
"""

_INIT = '''\
"""OneWindow Gateway plugin: the ``<<kind>>`` connector."""

from __future__ import annotations

from collections.abc import Callable

from gateway.connector import Connector
from gateway.hookspecs import hookimpl


@hookimpl
def register_connectors(register: Callable[[type[Connector]], None]) -> None:
    from <<package>>.connector import <<cls>>Connector

    register(<<cls>>Connector)
'''

_CONNECTOR = '''\
"""The ``<<kind>>`` connector: delivers applications to the department's back-office system.

Every failure is translated in ``_request``, at the boundary::

    timeout, connection refused/reset, 429, 5xx  -> TransientError (the gateway retries later)
    422 (the department's business "no")         -> DepartmentRejected (becomes a case status)
    any other 4xx                                -> PermanentError (an operator must look)

Fill in each TODO; ``pytest`` runs the gateway's conformance suite against it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import httpx
from pydantic import BaseModel, ConfigDict, Field

from gateway.connector import (
    CaseSummary,
    CaseUpdate,
    Connector,
    ConnectorContext,
    Envelope,
    Health,
    Receipt,
)
from gateway.errors import (
    CaseNotFound,
    ConnectorError,
    DepartmentRejected,
    PermanentError,
    TransientError,
)


class <<cls>>Options(BaseModel):
    """The ``[options]`` table of a department file with ``connector = "<<kind>>"``."""

    model_config = ConfigDict(extra="forbid", frozen=True)  # a typo is a config error

    base_url: str = Field(description="the department system's API root")
    timeout_seconds: float = Field(default=10.0, gt=0)
    # TODO: add what else the department needs (credentials as ${ENV} references, paths...)


class <<cls>>Connector(Connector):
    kind: ClassVar[str] = "<<kind>>"
    Options: ClassVar[type[BaseModel]] = <<cls>>Options

    def __init__(self, context: ConnectorContext) -> None:
        super().__init__(context)
        self.options = <<cls>>Options.model_validate(context.options.model_dump())

    async def submit(self, envelope: Envelope) -> Receipt:
        """Deliver one application. MUST be idempotent on ``envelope.idempotency_key``: send
        the key so the department answers a retry with the case it already has."""
        raise NotImplementedError("TODO: submit")

    async def poll(self, receipt: Receipt) -> CaseUpdate | None:
        """The case's current status (raw department code; the status_map maps it). A case
        the department does not hold raises CaseNotFound: pass ``case=`` to ``_request``."""
        raise NotImplementedError("TODO: poll")

    async def list_cases(
        self, since: dt.datetime, until: dt.datetime
    ) -> AsyncIterator[CaseSummary]:
        """Every case changed in ``[since, until)``, for nightly reconciliation."""
        raise NotImplementedError("TODO: list_cases")
        yield  # an async generator  # pragma: no cover

    async def health(self) -> Health:
        try:
            await self._request("GET", "/")  # TODO: a cheap read the department answers
        except ConnectorError as exc:
            return Health(ok=False, detail=str(exc))
        return Health(ok=True)

    async def aclose(self) -> None:
        """Release what the connector opened itself (the shared http client is not its own)."""

    async def _request(
        self, method: str, path: str, *, case: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        """One call to the department, every failure translated to a gateway error; with
        ``case``, a 404 means the department holds no such case."""
        where = f"{self.context.department}: {method} {path}"
        try:
            response = await self.context.http.request(
                method,
                self.options.base_url.rstrip("/") + path,
                timeout=self.options.timeout_seconds,
                **kwargs,
            )
        except httpx.TimeoutException as exc:
            waited = self.options.timeout_seconds
            raise TransientError(f"{where}: no answer within {waited}s") from exc
        except (httpx.HTTPError, OSError) as exc:
            raise TransientError(f"{where}: {type(exc).__name__}") from exc
        status = response.status_code
        if status == 429 or status >= 500:
            retry_after = response.headers.get("Retry-After", "")
            raise TransientError(
                f"{where}: HTTP {status}",
                retry_after=float(retry_after) if retry_after.isdigit() else None,
            )
        if status == 422:
            raise DepartmentRejected(f"{where}: {response.text[:200]}")
        if status == 404 and case is not None:
            raise CaseNotFound(self.context.department, case, f"HTTP 404 from {path}")
        if status >= 400:
            raise PermanentError(f"{where}: HTTP {status}")
        return response
'''

_TESTS = '''\
"""The gateway's conformance suite, run against the department (or a simulator of it)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from typer.testing import CliRunner

from gateway.cli import app
from gateway.config.models import DepartmentConfig
from gateway.testing import ConnectorConformance, make_department
from <<package>>.connector import <<cls>>Connector


class Test<<cls>>Conformance(ConnectorConformance):
    connector_class = <<cls>>Connector
    plugin_name = "<<kind>>"
    department_statuses: tuple[str, ...] = ()  # TODO: every status code the department reports
    # The department pushes no callbacks and leaves no results to pull, so the connector does
    # not implement parse_callback or pull_updates. If it does, set True and supply the hook
    # (callback_body / produce_result, below) so the suite checks that channel.
    pushes_callbacks = False
    pulls_results = False

    @pytest.fixture
    async def department_system(self) -> AsyncIterator[Any]:
        # TODO: start a test instance of the department system (or a simulator) and yield it
        raise NotImplementedError("TODO: department_system")
        yield None  # pragma: no cover

    def department_config(self, system: Any) -> DepartmentConfig:
        return make_department(
            "<<kind>>",
            connector="<<kind>>",
            timeout_seconds=2.0,
            options={"base_url": "http://127.0.0.1:9"},  # TODO: point at `system`
            status_map={},  # TODO: department status code -> gateway state
        )

    # Optional, to run more checks (see gateway.testing.conformance):
    #   async def count_cases(self, system, idempotency_key) -> int | None
    #   def provoke(self, system, failure)   # "timeout" | "server_error" -> async context
    #   def callback_body(self, system, receipt, envelope) -> dict   # pushes_callbacks = True:
    #       # the JSON body the department pushes about the case just submitted
    #   async def produce_result(self, system, receipt, envelope) -> bool   # pulls_results = True:
    #       # make the department leave a result for the case; return True
    #   async def decide_with_documents(self, system, receipt, envelope) -> list[bytes]:
    #       # make the department approve the case; return the documents it issued


def test_listed_by_gateway_plugins() -> None:
    result = CliRunner().invoke(app, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert listed["connectors"]["<<kind>>"] == "<<package>>.connector"
'''
