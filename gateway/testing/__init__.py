"""The plugin author kit: a pytest plugin (entry point ``pytest11``), loaded in every pytest run
of a project where the gateway is installed.

What a connector's test module uses::

    from gateway.testing import ConnectorConformance   # the conformance suite, as a base class
    from gateway.testing import FakeConnector          # a connector answering from a function
    from gateway.testing import make_config, make_department, running_gateway

Fixtures it adds to every test session (none is autouse):

``gateway_config``
    a one-department city (department ``dept``, connector kind ``fake``, matter
    ``XK00000001`` in region ``339900``) on a SQLite file in ``tmp_path``.
``fake_connector``
    a :class:`FakeConnector` that gives every new idempotency key a new case.
``gateway_runtime``
    a migrated :class:`gateway.runtime.Runtime` over ``gateway_config`` with
    ``fake_connector`` serving department ``dept``; closed after the test.

This module stays cheap to import: the kit's modules load when a name is first used.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from gateway.config.loader import Config
    from gateway.runtime import Runtime
    from gateway.testing.conformance import ConnectorConformance, Failure
    from gateway.testing.fake import FakeConnector, Handler
    from gateway.testing.gateway import (
        TEST_CITY,
        TEST_MATTER,
        case_status,
        dispatch,
        make_config,
        make_department,
        running_gateway,
        submit_application,
    )

_LAZY = {
    "ConnectorConformance": "gateway.testing.conformance",
    "Failure": "gateway.testing.conformance",
    "FakeConnector": "gateway.testing.fake",
    "Handler": "gateway.testing.fake",
    "TEST_CITY": "gateway.testing.gateway",
    "TEST_MATTER": "gateway.testing.gateway",
    "case_status": "gateway.testing.gateway",
    "dispatch": "gateway.testing.gateway",
    "make_config": "gateway.testing.gateway",
    "make_department": "gateway.testing.gateway",
    "running_gateway": "gateway.testing.gateway",
    "submit_application": "gateway.testing.gateway",
}

__all__ = [
    "TEST_CITY",
    "TEST_MATTER",
    "ConnectorConformance",
    "Failure",
    "FakeConnector",
    "Handler",
    "case_status",
    "dispatch",
    "make_config",
    "make_department",
    "running_gateway",
    "submit_application",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gateway.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


@pytest.fixture
def gateway_config(tmp_path: Path) -> Config:
    """A one-department test city on a temporary SQLite database."""
    from gateway.testing.gateway import make_config

    return make_config(tmp_path)


@pytest.fixture
def fake_connector() -> FakeConnector:
    """A FakeConnector giving each new idempotency key a new case (``FAKE-1``, ``FAKE-2``...)."""
    from gateway.testing.fake import FakeConnector

    return FakeConnector.idempotent()


if importlib.util.find_spec("pytest_asyncio") is not None:
    import pytest_asyncio

    @pytest_asyncio.fixture
    async def gateway_runtime(
        gateway_config: Config, fake_connector: FakeConnector
    ) -> AsyncIterator[Runtime]:
        """A migrated gateway over ``gateway_config``; ``fake_connector`` serves ``dept``."""
        from gateway.testing.gateway import running_gateway

        async with running_gateway(gateway_config, connectors={"dept": fake_connector}) as rt:
            yield rt

else:  # the kit's async fixtures need pytest-asyncio: say so when one is used

    @pytest.fixture(name="gateway_runtime")
    def _gateway_runtime_needs_pytest_asyncio() -> None:
        pytest.fail("gateway_runtime needs pytest-asyncio: pip install pytest-asyncio")
