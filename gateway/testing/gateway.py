"""A whole gateway in a test: a config built in code, a temporary SQLite store, and helpers
that take an application through intake and dispatch without the HTTP layer.

    config = make_config(tmp_path, departments=[DepartmentConfig(code="land", ...)])
    async with running_gateway(config) as runtime:
        app_id = await submit_application(runtime, matter_code="XK00000001")
        await dispatch(runtime)
        assert await case_status(runtime, app_id) == "delivered"
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

from gateway.config.catalog import Catalog
from gateway.config.loader import Config
from gateway.config.models import (
    Centre,
    DepartmentConfig,
    GatewaySettings,
    Matter,
    Region,
    RetryPolicy,
)
from gateway.connector import Connector
from gateway.plugin_manager import Plugins
from gateway.runtime import Runtime

TEST_CITY = "339900"
TEST_CENTRE = "C01"
TEST_MATTER = "XK00000001"

__all__ = [
    "TEST_CENTRE",
    "TEST_CITY",
    "TEST_MATTER",
    "case_status",
    "dispatch",
    "make_config",
    "make_department",
    "running_gateway",
    "submit_application",
]


def make_department(
    code: str = "dept", connector: str = "fake", **settings: Any
) -> DepartmentConfig:
    """A department for tests: short timeouts, one in-call attempt, no jitter."""
    values: dict[str, Any] = {
        "code": code,
        "name": f"Test department {code}",
        "connector": connector,
        "timeout_seconds": 5.0,
        "retry": RetryPolicy(in_call_attempts=1, in_call_wait_seconds=0, jitter=0),
    }
    values.update(settings)
    return DepartmentConfig.model_validate(values)


def make_config(
    directory: Path,
    *,
    departments: Iterable[DepartmentConfig] | None = None,
    matters: Iterable[Matter] | None = None,
    database_url: str | None = None,
) -> Config:
    """A city with one region (``339900``), one centre (``C01``) and the given departments
    (default: ``dept`` with the ``fake`` connector). Without ``matters``, department number
    *n* gets matter ``XK0000000n`` in ``339900``. The store is ``directory/gateway.db``."""
    depts = list(departments) if departments is not None else [make_department()]
    if matters is None:
        matters = [
            Matter(
                code=f"XK{n:08d}",
                name=f"Test matter {n}",
                department=d.code,
                regions=[TEST_CITY],
                promised_days=5,
            )
            for n, d in enumerate(depts, start=1)
        ]
    regions = [Region(code=TEST_CITY, name="Test city", kind="city")]
    settings = GatewaySettings(
        city=TEST_CITY,
        database_url=database_url or f"sqlite+aiosqlite:///{directory / 'gateway.db'}",
        data_dir=directory / "var",
        regions=regions,
        centres=[Centre(code=TEST_CENTRE, name="Test centre", region=TEST_CITY)],
    )
    return Config(
        path=directory / "gateway.toml",
        gateway=settings,
        departments={d.code: d for d in depts},
        catalog=Catalog(list(matters), regions),
    )


@contextlib.asynccontextmanager
async def running_gateway(
    config: Config,
    *,
    connectors: Mapping[str, Connector] | None = None,
    plugins: Plugins | None = None,
) -> AsyncIterator[Runtime]:
    """A migrated :class:`Runtime`; ``connectors`` (department code -> instance, such as a
    :class:`~gateway.testing.FakeConnector`) replace what the installed plugins would build."""
    runtime = Runtime(config, plugins=plugins)
    try:
        for code, connector in (connectors or {}).items():
            runtime.attach(code, connector)
        await runtime.prepare_database()
        yield runtime
    finally:
        await runtime.aclose()


async def submit_application(
    runtime: Runtime,
    *,
    matter_code: str = TEST_MATTER,
    region: str = TEST_CITY,
    form: dict[str, Any] | None = None,
    key: str | None = None,
) -> str:
    """Accept an application at centre ``C01`` as the API would; returns its id."""
    from gateway.intake import ApplicationIn, submit
    from gateway.store.clients import Client

    body = ApplicationIn.model_validate(
        {
            "matter_code": matter_code,
            "region": region,
            "applicant": {"name": "Test Applicant", "id_number": "110101199003074514"},
            "form": form or {},
        }
    )
    client = Client("test-client", "test", TEST_CENTRE, False)
    result = await submit(runtime, client, key or str(uuid.uuid4()), body)
    return result.accepted.id


async def dispatch(runtime: Runtime) -> int:
    """One dispatch sweep, waiting for its deliveries; returns how many jobs it claimed."""
    from gateway.dispatcher import Dispatcher

    dispatcher = Dispatcher(runtime)
    claimed = await dispatcher.sweep()
    await dispatcher.drain()
    return claimed


async def case_status(runtime: Runtime, application_id: str) -> str:
    """The stored status of an application."""
    from gateway.store.cases import get_application

    async with runtime.engine.connect() as conn:
        row = await get_application(conn, application_id)
    if row is None:
        raise LookupError(f"no application {application_id}")
    return str(row.status)
