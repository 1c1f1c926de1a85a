"""Shared fixtures: the example city on a real database (SQLite, and PostgreSQL when
GATEWAY_TEST_PG_URL is set), with its simulated departments on loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.api.app import create_app
from gateway.config.loader import Config, load_config
from gateway.runtime import Runtime
from gateway.simulators.city import SimulatedCity, simulated_city
from gateway.store.clients import create_client

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "gateway.toml"
PG_URL = os.environ.get("GATEWAY_TEST_PG_URL")
TEST_SECRETS = {
    "AMR_CALLBACK_SECRET": "amr-callback-secret-for-tests",
    "AMR_API_TOKEN": "amr-token-for-tests",
    "HRSS_API_KEY": "hrss-key-for-tests",
}
# Fast departments for tests: decisions in a fraction of a second.
FAST = {"decision_delay_seconds": 0.2, "callbacks": False}


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in TEST_SECRETS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh empty database: a SQLite file, or a new schema in the test PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
        return
    if not PG_URL:
        pytest.skip(
            "PostgreSQL tests need GATEWAY_TEST_PG_URL (e.g. "
            "postgresql+asyncpg://postgres@127.0.0.1:5432/test); .ci/run sets it"
        )
    schema = f"t_{secrets.token_hex(6)}"
    admin = create_async_engine(PG_URL)
    async with admin.begin() as conn:
        await conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}search_path={schema}"
    finally:
        async with admin.begin() as conn:
            await conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        await admin.dispose()


def configure_for_test(config: Config, tmp_path: Path, db_url: str) -> Config:
    settings = config.gateway.model_copy(
        update={
            "database_url": db_url,
            "data_dir": tmp_path / "var",
            "api": config.gateway.api.model_copy(update={"port": 0}),
        }
    )
    return dataclasses.replace(config, gateway=settings)


@pytest.fixture
def example_config(tmp_path: Path, db_url: str) -> Config:
    return configure_for_test(load_config(EXAMPLE), tmp_path, db_url)


@pytest.fixture
async def city(example_config: Config) -> AsyncIterator[SimulatedCity]:
    async with simulated_city(
        example_config,
        simulator_overrides={"amr": FAST, "hrss": FAST},
        department_overrides={
            "amr": {"poll_interval_seconds": 0.2},
            "hrss": {"poll_interval_seconds": 0.2},
        },
    ) as c:
        yield c


@pytest.fixture
async def runtime(city: SimulatedCity) -> AsyncIterator[Runtime]:
    rt = Runtime(city.config)
    await rt.prepare_database()
    try:
        yield rt
    finally:
        await rt.aclose()


@pytest.fixture
async def api(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        yield client


@pytest.fixture
def make_key(runtime: Runtime) -> Callable[..., Awaitable[dict[str, str]]]:
    async def make(centre: str | None = "C01", ops: bool = False) -> dict[str, str]:
        async with runtime.engine.begin() as conn:
            _c, key = await create_client(conn, name=centre or "ops", centre=centre, ops=ops)
        return {"Authorization": f"Bearer {key}"}

    return make


@pytest.fixture
async def centre_headers(make_key: Callable[..., Awaitable[dict[str, str]]]) -> dict[str, str]:
    return await make_key("C01")


@pytest.fixture
async def ops_headers(make_key: Callable[..., Awaitable[dict[str, str]]]) -> dict[str, str]:
    return await make_key(None, ops=True)


def application(**changes: Any) -> dict[str, Any]:
    """A valid application body for the example city."""
    body: dict[str, Any] = {
        "matter_code": "GG00301000",
        "region": "339900",
        "applicant": {"name": "张三", "id_number": "110101199003074518", "phone": "13800138000"},
        "form": {},
    }
    body.update(changes)
    return body


async def wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Wait until ``predicate()`` (plain or async) is true; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    async def holds() -> bool:
        value = predicate()
        return bool(await value if inspect.isawaitable(value) else value)

    while not await holds():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


@pytest.fixture
def anyio_backend() -> Iterator[str]:
    yield "asyncio"
