"""Every guard of the department link holds for every operation of every built-in connector,
against real departments on loopback (the simulated ones, behind a door that misbehaves on
request: :mod:`tests.hostile_department`; file drop: a real folder).

    cap       never more than ``concurrency`` calls at the department, whichever operations
    deadline  a trickling answer is cut at the deadline
    size      a gzip bomb and an oversize answer are refused, memory growth under 50 MB
    breaker   opens after the threshold (WARNING log, gauge 1), refuses without calling, closes
              on the first success after the cool-down (WARNING log, gauge 0)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from gateway.config.loader import load_config
from gateway.connector import Applicant, Envelope, Receipt
from gateway.departments import DepartmentLink
from gateway.errors import AnswerTooLarge, ConnectorError, PermanentError, TransientError
from gateway.runtime import Runtime
from gateway.simulators.city import SimulatedCity, simulated_city
from tests.conftest import EXAMPLE, configure_for_test, wait_for
from tests.hostile_department import Hostile, gzip_bomb, hostile

MB = 1024 * 1024
EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)

#: (department of the example city, connector kind, operation)
HTTP_ROWS = [
    ("amr", "rest", "submit"),
    ("amr", "rest", "poll"),
    ("amr", "rest", "withdraw"),
    ("amr", "rest", "list_cases"),
    ("amr", "rest", "health"),
    ("nrp", "soap", "submit"),
    ("nrp", "soap", "poll"),
    ("nrp", "soap", "list_cases"),
    ("nrp", "soap", "health"),
]


class Unhealthy(Exception):
    """A health answer that says not ok (health never raises)."""


def envelope(department: str) -> Envelope:
    key = uuid.uuid4().hex[:12]
    return Envelope(
        application_id=f"a{key}",
        idempotency_key=f"ow-a{key}-v1",
        department=department,
        matter_code="XK00301000",
        matter_name="建设工程规划许可证核发",
        region="339900",
        receipt_number="C01-20260101-0001",
        centre="C01",
        applicant=Applicant(name="张三", id_number="110101199003074518"),
        form={"项目名称": "示范楼"},
        submitted_at=dt.datetime.now(dt.UTC),
    )


async def call(link: DepartmentLink, op: str, case_id: str) -> Any:
    if op == "submit":
        return await link.submit(envelope(link.code))
    if op == "poll":
        return await link.poll(Receipt(case_id=case_id))
    if op == "withdraw":
        return await link.withdraw(Receipt(case_id=case_id))
    if op == "list_cases":
        return [c async for c in link.list_cases(EPOCH, dt.datetime.now(dt.UTC))]
    if op == "pull_updates":
        return await link.pull_updates(10)
    health = await link.health()
    if not health.ok:
        raise Unhealthy(health.detail)
    return health


def _rebase(url: str, door: str) -> str:
    old, new = urlsplit(url), urlsplit(door)
    return urlunsplit((new.scheme, new.netloc, old.path, old.query, old.fragment))


@pytest.fixture
async def city(tmp_path: Path) -> AsyncIterator[SimulatedCity]:
    # no database is touched here: one engine kind is enough
    config = configure_for_test(load_config(EXAMPLE), tmp_path, "sqlite+aiosqlite://")
    async with simulated_city(config) as running:
        yield running


@contextlib.asynccontextmanager
async def behind_door(
    city: SimulatedCity, code: str, **settings: Any
) -> AsyncIterator[tuple[Hostile, DepartmentLink, str]]:
    """Department ``code`` reached through a hostile door, with ``settings`` changed; yields
    the door, the runtime's link and a case the department holds."""
    async with hostile(city.urls[code], xml=code == "nrp") as (door, url):
        dept = city.config.departments[code]
        options = dict(dept.options)
        key = "endpoint" if dept.connector == "soap" else "base_url"
        options[key] = _rebase(options[key], url)
        dept = dept.model_copy(update={"options": options, **settings})
        config = dataclasses.replace(
            city.config, departments={**city.config.departments, code: dept}
        )
        runtime = Runtime(config)
        try:
            link = runtime.link(code)
            assert link is not None
            # set-up, not under test: straight to the connector (the first SOAP call reads the
            # WSDL, which may take longer than the short deadlines below)
            seeded = await link.connector.submit(envelope(code))
            yield door, link, seeded.case_id
        finally:
            await runtime.aclose()


def gauge(code: str) -> float | None:
    return REGISTRY.get_sample_value("gateway_breaker_open", {"department": code})


# -- cap --------------------------------------------------------------------------------------


async def check_cap(
    link: DepartmentLink,
    op: str,
    case_id: str,
    inflight: Callable[[], int],
    most: Callable[[], int],
    release: Callable[[], None],
) -> None:
    """Eight calls at once (six of ``op``, two of ``health``, as different workers would make
    them): two reach the department, six wait at the link; all finish once it answers."""
    calls = [call(link, op, case_id) for _ in range(6)]
    calls += [call(link, "health", case_id) for _ in range(2)]
    tasks = [asyncio.create_task(c) for c in calls]
    await wait_for(lambda: inflight() == 2 and len(link.slots._waiters) == 6, timeout=20)
    assert link.slots.used == 2
    release()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert most() <= 2


# -- deadline ---------------------------------------------------------------------------------


async def check_deadline(call_it: Callable[[], Awaitable[Any]], op: str) -> float:
    started = time.monotonic()
    with pytest.raises((TransientError, Unhealthy)) as caught:
        await call_it()
    took = time.monotonic() - started
    # the department would trickle for 30 s; the deadline is 0.5 s (generous bound: busy machine)
    assert took < 15, f"{op} took {took:.1f} s"
    assert "within" in str(caught.value) or "deadline" in str(caught.value)
    return took


# -- size -------------------------------------------------------------------------------------


async def check_size(call_it: Callable[[], Awaitable[Any]]) -> int:
    """Refused naming the limit; returns the memory growth in bytes while refusing."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        with pytest.raises((AnswerTooLarge, Unhealthy)) as caught:
            await call_it()
        growth = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert "larger than 1048576 bytes" in str(caught.value)
    if isinstance(caught.value, ConnectorError):
        assert isinstance(caught.value, PermanentError)
    assert growth < 50 * MB, f"memory grew {growth / MB:.1f} MB"
    return growth


# -- breaker ----------------------------------------------------------------------------------


async def check_breaker(link: DepartmentLink, op: str, case_id: str, door: Hostile) -> None:
    code = link.code
    with capture_logs() as logs:
        door.mode = "fail"
        for _ in range(2):
            with pytest.raises(TransientError):
                await call(link, op, case_id)
        assert link.breaker_open()
        assert gauge(code) == 1
        assert next(e for e in logs if e["event"] == "breaker opened")["log_level"] == "warning"
        asked = door.requests
        with pytest.raises(TransientError, match="breaker open"):
            await call(link, op, case_id)
        assert door.requests == asked  # refused without calling the department
        door.mode = "ok"
        await wait_for(lambda: not link.breaker_open(), timeout=10)
        await call(link, op, case_id)  # the probe succeeds: closed
        assert not link.breaker.tripped
        assert gauge(code) == 0
        closed = [e for e in logs if e["event"] == "breaker closed"]
        assert closed and closed[0]["log_level"] == "warning"


async def check_health_ignores_breaker(link: DepartmentLink, case_id: str, door: Hostile) -> None:
    """Health is exempt: it asks even while the breaker is open, and never moves it."""
    door.mode = "fail"
    for _ in range(2):
        with pytest.raises(TransientError):
            await call(link, "poll" if link.dept.connector != "filedrop" else "submit", case_id)
    assert link.breaker_open()
    asked = door.requests
    door.mode = "ok"
    await call(link, "health", case_id)
    assert door.requests == asked + 1 and link.breaker_open()


# -- the table --------------------------------------------------------------------------------

FAST = {"retry": {"in_call_attempts": 1, "in_call_wait_seconds": 0.0}}


@pytest.mark.parametrize(
    ("code", "kind", "op"), HTTP_ROWS, ids=[f"{k}-{o}" for _c, k, o in HTTP_ROWS]
)
async def test_guards_hold_for_http_departments(
    city: SimulatedCity, code: str, kind: str, op: str
) -> None:
    from gateway.config.models import BreakerSettings, RetryPolicy

    retry = RetryPolicy(**FAST["retry"])
    async with behind_door(city, code, concurrency=2, timeout_seconds=20.0) as (door, link, case):
        door.mode = "hold"

        def release() -> None:
            door.release.set()

        await check_cap(link, op, case, lambda: door.inflight, lambda: door.max_inflight, release)

    async with behind_door(city, code, timeout_seconds=0.5, retry=retry) as (door, link, case):
        door.mode = "trickle"
        took = await check_deadline(lambda: call(link, op, case), op)

    growth = {}
    async with behind_door(city, code, max_answer_bytes=MB, retry=retry) as (door, link, case):
        gzip_bomb()  # made before measuring
        for mode in ("bomb", "big"):
            door.mode = mode
            growth[mode] = await check_size(lambda: call(link, op, case))

    breaker = BreakerSettings(threshold=2, cooldown_seconds=0.3)
    async with behind_door(city, code, breaker=breaker, retry=retry) as (door, link, case):
        if op == "health":
            await check_health_ignores_breaker(link, case, door)
        else:
            await check_breaker(link, op, case, door)

    if True:  # the figures, shown with pytest -s
        print(
            f"\n{kind}/{op}: deadline cut after {took:.2f} s; memory growth while refusing a "
            f"gzip bomb (200 MB inflated) {growth['bomb'] / MB:.1f} MB, "
            f"a 4 MB answer {growth['big'] / MB:.1f} MB"
        )


# -- file drop ----------------------------------------------------------------------------------


async def test_file_drop_answers_are_capped(city: SimulatedCity, tmp_path: Path) -> None:
    """A result file larger than the department's cap is never read whole: it is quarantined
    naming the limit, and memory stays flat."""
    code = "civil"
    dept = city.config.departments[code].model_copy(update={"max_answer_bytes": MB})
    config = dataclasses.replace(city.config, departments={**city.config.departments, code: dept})
    runtime = Runtime(config)
    try:
        link = runtime.link(code)
        assert link is not None
        state = city.states[code]
        big = {"case_id": "X1", "status": "9", "detail": "x" * (20 * MB)}
        await state.write_file("HUGE-result.json", json.dumps(big).encode())
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]

            async def quarantined() -> bool:
                await link.pull_updates(10)
                return (state.root / "quarantine" / "HUGE-result.json").exists()

            await wait_for(quarantined, timeout=20)
            growth = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
        reason = (state.root / "quarantine" / "HUGE-result.json.reason").read_text()
        assert str(MB) in reason
        assert growth < 50 * MB
    finally:
        await runtime.aclose()
