"""Shared fixtures: the example city on a real database (SQLite, and PostgreSQL when
GATEWAY_TEST_PG_URL is set), with its simulated departments on loopback.

The suite runs in parallel (pytest-xdist, ``make test``): anything a test opens must be its own,
so ports are ephemeral (port 0), folders come from ``tmp_path``, PostgreSQL schemas are random.
``GATEWAY_TEST_PG_URL=auto`` (what ``make test`` sets) uses the local PostgreSQL when it answers.
The run ends with one line per reason anything was skipped or left out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

import gateway.logs
from gateway.api.app import create_app
from gateway.config.loader import Config, load_config
from gateway.runtime import Runtime
from gateway.simulators.city import SimulatedCity, simulated_city
from gateway.store.clients import create_client
from tests.databases import SQLITE, SchemaPool, empty_schema, migrated_sqlite

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "gateway.toml"
PG_LOCAL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
PG_HOW = "set GATEWAY_TEST_PG_URL or run make test-pg"
PG_SKIP = "PostgreSQL tests need GATEWAY_TEST_PG_URL"


def _pg_answers(url: str) -> bool:
    """True when ``url``'s server takes a connection within a few seconds."""
    import asyncpg

    async def probe() -> None:
        conn = await asyncpg.connect(url.replace("+asyncpg", ""), timeout=5)
        await conn.close()

    try:
        asyncio.run(probe())
    except (OSError, TimeoutError, asyncpg.PostgresError):
        return False
    return True


def _pg_url() -> str | None:
    """The PostgreSQL URL for this run; ``auto`` is resolved once, in the first process, and
    handed to xdist workers through the environment (they start after conftest is imported)."""
    value = os.environ.get("GATEWAY_TEST_PG_URL", "")
    if value == "auto":
        value = PG_LOCAL if _pg_answers(PG_LOCAL) else ""
        os.environ["GATEWAY_TEST_PG_URL"] = value
        os.environ["GATEWAY_TEST_PG_MISSED"] = "" if value else "1"
    return value or None


PG_URL = _pg_url()
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


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """A test that runs a CLI command in-process configures logging for the whole process
    (level, stream); put it back, or the tests after it in this worker log differently (an
    INFO line filtered out) depending on which file xdist gave the worker first. Every test
    starts configured, as a program is: otherwise the first Runtime built inside a test's
    ``capture_logs`` block reconfigures structlog and the capture sees nothing."""
    gateway.logs.ensure_configured()
    before = structlog.get_config()
    configured = gateway.logs._configured
    yield
    structlog.configure(**before)
    gateway.logs._configured = configured


DB_PARAMS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
_SCHEMAS = SchemaPool(PG_URL) if PG_URL else None


def _postgres_or_skip() -> str:
    if not PG_URL:
        if os.environ.get("GATEWAY_TEST_PG_REQUIRED"):
            pytest.fail(f"GATEWAY_TEST_PG_REQUIRED is set but {PG_SKIP}")
        pytest.skip(f"{PG_SKIP}: {PG_HOW} (e.g. {PG_LOCAL})")
    return PG_URL


@pytest.fixture(params=DB_PARAMS)
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh database migrated to head: a SQLite file, or a schema of its own in the test
    PostgreSQL (tests/databases.py says how they are made cheaply)."""
    if request.param == "sqlite":
        migrated_sqlite(tmp_path / "gateway.db")
        yield f"{SQLITE}{tmp_path / 'gateway.db'}"
        return
    _postgres_or_skip()
    assert _SCHEMAS is not None
    async with _SCHEMAS.lease() as url:
        yield url


@pytest.fixture(params=DB_PARAMS)
async def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh empty database (not migrated): a SQLite file, or a new PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"{SQLITE}{tmp_path / 'empty.db'}"
        return
    async with empty_schema(_postgres_or_skip()) as url:
        yield url


def configure_for_test(config: Config, tmp_path: Path, db_url: str) -> Config:
    # a new PostgreSQL connection may take more than the 5 s default on a CI machine at load
    # 13 with several suites connecting at once (two "database unreachable: TimeoutError"
    # failures in one make test); tests of an unreachable database set their own
    database = config.gateway.database.model_copy(update={"connect_timeout_seconds": 30.0})
    settings = config.gateway.model_copy(
        update={
            "database_url": db_url,
            "data_dir": tmp_path / "var",
            "api": config.gateway.api.model_copy(update={"port": 0}),
            "database": database,
        }
    )
    return dataclasses.replace(config, gateway=settings)


@pytest.fixture
def example_config(tmp_path: Path, db_url: str) -> Config:
    """The example city on ``db_url``."""
    return configure_for_test(load_config(EXAMPLE), tmp_path, db_url)


@pytest.fixture
async def city(example_config: Config) -> AsyncIterator[SimulatedCity]:
    async with simulated_city(
        example_config,
        simulator_overrides={"amr": FAST, "hrss": FAST},
        # the change feed's safety-net polls as often as the polls: tests that poll a case
        # until it is decided keep working (tests/test_changes.py covers the feed itself)
        department_overrides={
            "amr": {
                "poll_interval_seconds": 0.2,
                "sync": {"poll_ceiling_seconds": 0.2, "feed_poll_seconds": 0.2},
            },
            "hrss": {
                "poll_interval_seconds": 0.2,
                "sync": {"poll_ceiling_seconds": 0.2, "feed_poll_seconds": 0.2},
            },
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
    # problems speak the centre's language (zh-CN) unless asked; tests read them in English
    async with httpx.AsyncClient(
        transport=transport, base_url="http://gateway.test", headers={"Accept-Language": "en"}
    ) as client:
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
        "applicant": {"name": "张三", "id_number": "110101199003074514", "phone": "13800138000"},
        "form": {},
    }
    body.update(changes)
    return body


async def wait_for(
    predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.02
) -> None:
    """Wait until ``predicate()`` (plain or async) is true; fail after ``timeout`` seconds.

    The timeout only bounds a failing test (a true condition returns at once), so it is generous:
    a machine busy with other work must not turn a slow pass into a failure."""
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


@pytest.fixture
def routes_walked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths Starlette's router is called for from now on: a request the front
    middleware's shortcut answers (gateway.api.front) never reaches it."""
    import starlette.routing

    walked: list[str] = []
    through = starlette.routing.Router.__call__

    async def counting(self: Any, scope: Any, receive: Any, send: Any) -> None:
        walked.append(scope["path"])
        await through(self, scope, receive, send)

    monkeypatch.setattr(starlette.routing.Router, "__call__", counting)
    return walked


# -- the end of the run: what was left out and why, one line per reason -----------------------


class _Tally:
    """Counts, in the process that reports (xdist's controller, or the only process)."""

    def __init__(self) -> None:
        self.postgres_passed = 0
        self.deselected_slow = 0
        self.deselected_faults = 0
        self.pg_required_unmet = False


_TALLY = _Tally()


def pytest_deselected(items: list[pytest.Item]) -> None:
    _TALLY.deselected_slow += sum(1 for item in items if item.get_closest_marker("slow"))
    _TALLY.deselected_faults += sum(1 for item in items if item.get_closest_marker("faults"))


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    # xdist: every worker collects (and deselects) the whole suite; the controller does not
    output = getattr(node, "workeroutput", {})
    _TALLY.deselected_slow = max(_TALLY.deselected_slow, output.get("deselected_slow", 0))
    _TALLY.deselected_faults = max(_TALLY.deselected_faults, output.get("deselected_faults", 0))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.passed and "postgres" in report.keywords:
        _TALLY.postgres_passed += 1


def _tests(n: int) -> str:
    return f"{n} test" if n == 1 else f"{n} tests"


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


def skip_lines(
    reasons: list[str], deselected_slow: int, pg_missed: bool, deselected_faults: int = 0
) -> list[str]:
    """One line per reason: PostgreSQL variants, slow tests left out, anything else."""
    counts: dict[str, int] = {}
    for reason in reasons:
        key = PG_SKIP if reason.startswith(PG_SKIP) else reason
        counts[key] = counts.get(key, 0) + 1
    lines = []
    for reason, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        if reason == PG_SKIP:
            why = (
                "nothing answered at 127.0.0.1:5432 (start PostgreSQL, or set GATEWAY_TEST_PG_URL)"
                if pg_missed
                else PG_HOW
            )
            lines.append(f"{n} PostgreSQL {'test' if n == 1 else 'tests'} skipped: {why}")
        else:
            lines.append(f"{_tests(n)} skipped: {reason}")
    if deselected_slow:
        lines.append(
            f"{_tests(deselected_slow)} marked slow not run (-m 'not slow'): "
            "make test-all runs them"
        )
    if deselected_faults:
        lines.append(
            f"{_tests(deselected_faults)} of the fault suite not run (-m 'not faults'): "
            "make test-faults runs them"
        )
    return lines


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    reports = terminalreporter.stats.get("skipped", [])
    reasons = [_skip_reason(r) for r in reports if isinstance(r, pytest.TestReport)]
    pg_missed = bool(os.environ.get("GATEWAY_TEST_PG_MISSED"))
    lines = skip_lines(reasons, _TALLY.deselected_slow, pg_missed, _TALLY.deselected_faults)
    if _TALLY.pg_required_unmet:
        lines.append("no PostgreSQL test passed but GATEWAY_TEST_PG_REQUIRED is set: exit 5")
    if not lines:
        lines = ["nothing skipped"]
    terminalreporter.write_sep("-", "left out of this run")
    for line in lines:
        terminalreporter.write_line(line)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _SCHEMAS is not None:
        _SCHEMAS.drop_all()
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["deselected_slow"] = _TALLY.deselected_slow
        workeroutput["deselected_faults"] = _TALLY.deselected_faults
        return
    # CI says GATEWAY_TEST_PG_REQUIRED=1: a run where no PostgreSQL test passed (the variants
    # vanished, or were all deselected) must not look green
    if (
        os.environ.get("GATEWAY_TEST_PG_REQUIRED")
        and exitstatus == 0
        and _TALLY.postgres_passed == 0
    ):
        _TALLY.pg_required_unmet = True
        session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED
