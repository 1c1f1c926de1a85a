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
import inspect
import json
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncssh
import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from gateway.config.loader import load_config
from gateway.connector import Applicant, CaseUpdate, Envelope, Receipt
from gateway.departments import DepartmentLink
from gateway.errors import AnswerTooLarge, ConnectorError, PermanentError, TransientError
from gateway.runtime import Runtime
from gateway.simulators import sftp as sftp_simulator
from gateway.simulators.city import SimulatedCity, simulated_city
from tests.conftest import EXAMPLE, configure_for_test, wait_for
from tests.filedrop_helpers import sftp_target
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
        applicant=Applicant(name="张三", id_number="110101199003074514"),
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
        if "timeout_seconds" in options and "timeout_seconds" in settings:
            # a connector's own deadline (SOAP: 10 s) is never shorter than the link's here
            options["timeout_seconds"] = max(
                options["timeout_seconds"], settings["timeout_seconds"]
            )
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


class Clock:
    """The breaker's clock, steered: a cool-down passes when the test says so."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def steered(link: DepartmentLink) -> Clock:
    clock = Clock()
    link.breaker.clock = clock
    return clock


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
    clock = steered(link)
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
        clock.t += link.breaker.cooldown + 1
        assert not link.breaker_open()
        await call(link, op, case_id)  # the probe succeeds: closed
        assert not link.breaker.tripped
        assert gauge(code) == 0
        closed = [e for e in logs if e["event"] == "breaker closed"]
        assert closed and closed[0]["log_level"] == "warning"


async def check_health_ignores_breaker(link: DepartmentLink, case_id: str, door: Hostile) -> None:
    """Health is exempt: it asks even while the breaker is open, and never moves it."""
    steered(link)
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
    # the cap's calls are held until released, then answered: 60 s only bounds a failure
    async with behind_door(city, code, concurrency=2, timeout_seconds=60.0) as (door, link, case):
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

    breaker = BreakerSettings(threshold=2, cooldown_seconds=15.0)
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


async def test_an_outsized_case_id_is_not_stored(city: SimulatedCity) -> None:
    """A department answering a 5 MB case id (under the 8 MB answer cap) is refused as a
    permanent error naming the limit; nothing of it is kept."""
    async with behind_door(city, "amr") as (door, link, _case):
        door.mode = "canned"
        door.canned = json.dumps({"case": {"id": "X" * (5 * MB), "status": "0"}}).encode()
        with pytest.raises(PermanentError, match="longer than 256 characters"):
            await link.submit(envelope("amr"))


# -- file drop ----------------------------------------------------------------------------------

#: file-drop operations; only pull_updates reads an answer of the department's making (a
#: result file): the others write, move or list, so the size row is pull_updates'
FILEDROP_OPS = ["submit", "pull_updates", "ack_update", "list_cases", "health"]


class SftpDoor:
    """What the hostile SFTP server does with each request (shared by its sessions)."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.release = asyncio.Event()
        self.requests = 0
        self.inflight = 0
        self.max_inflight = 0


_DOOR = SftpDoor()
_WRAPPED = ("open", "scandir", "stat", "lstat", "rename", "posix_rename", "mkdir", "remove")


class HostileSftp(sftp_simulator._Sftp):
    """The simulator's SFTP server, with each request held, slowed or failed on request."""


class _Entered:
    """One request at the door: counted while in, held, slowed or failed as the door says."""

    async def __aenter__(self) -> None:
        door = _DOOR
        door.requests += 1
        door.inflight += 1
        door.max_inflight = max(door.max_inflight, door.inflight)
        try:
            if door.mode == "hold":
                await asyncio.wait_for(door.release.wait(), timeout=60)
            elif door.mode == "trickle":
                await asyncio.sleep(2.0)  # a department that takes 2 s per file operation
            elif door.mode == "fail":
                raise asyncssh.SFTPFailure("the share is unavailable")
        except BaseException:
            door.inflight -= 1
            raise

    async def __aexit__(self, *exc: object) -> None:
        _DOOR.inflight -= 1


def _guarded(name: str) -> Callable[..., Any]:
    plain = getattr(sftp_simulator._Sftp, name)
    if inspect.isasyncgenfunction(plain):

        async def listing(self: Any, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            async with _Entered():
                async for item in plain(self, *args, **kwargs):
                    yield item

        return listing

    async def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        async with _Entered():
            result = plain(self, *args, **kwargs)
            return await result if inspect.isawaitable(result) else result

    return method


for _name in _WRAPPED:
    setattr(HostileSftp, _name, _guarded(_name))


@contextlib.asynccontextmanager
async def filedrop_over_sftp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **settings: Any
) -> AsyncIterator[tuple[SftpDoor, DepartmentLink, Path]]:
    global _DOOR
    _DOOR = door = SftpDoor()
    monkeypatch.setattr(sftp_simulator, "_Sftp", HostileSftp)
    base = tmp_path / uuid.uuid4().hex[:8]
    root = base / "share"
    root.mkdir(parents=True)
    async with sftp_simulator.sftp_server(root, keydir=base / "keys") as server:
        config = configure_for_test(load_config(EXAMPLE), base, "sqlite+aiosqlite://")
        dept = config.departments["civil"]
        options = dict(dept.options)
        options["target"] = sftp_target(server)
        options["result"] = {**options.get("result", {}), "stable_seconds": 0}
        dept = dept.model_copy(update={"options": options, **settings})
        runtime = Runtime(
            dataclasses.replace(config, departments={**config.departments, "civil": dept})
        )
        try:
            link = runtime.link("civil")
            assert link is not None
            # set-up, not under test: connect and make the folders
            assert await link.connector.pull_updates(1) == []
            yield door, link, root
        finally:
            await runtime.aclose()


async def call_filedrop(link: DepartmentLink, op: str) -> Any:
    if op == "ack_update":
        update = CaseUpdate(case_id="X1", status="9", ref="gone-result.json")
        return await link.ack_update(update, "applied")
    return await call(link, op, "X1")


@pytest.mark.parametrize("op", FILEDROP_OPS)
async def test_guards_hold_for_file_drop_over_sftp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, op: str
) -> None:
    from gateway.config.models import BreakerSettings, RetryPolicy

    retry = RetryPolicy(in_call_attempts=1, in_call_wait_seconds=0.0)
    async with filedrop_over_sftp(tmp_path, monkeypatch, concurrency=2, timeout_seconds=20.0) as (
        door,
        link,
        _root,
    ):
        door.mode = "hold"
        tasks = [asyncio.create_task(call_filedrop(link, op)) for _ in range(6)]
        tasks += [asyncio.create_task(call(link, "health", "X1")) for _ in range(2)]
        # two calls pass the link (the connector then takes the share one request at a time),
        # six wait at the link
        await wait_for(lambda: link.slots.used == 2 and len(link.slots._waiters) == 6, timeout=20)
        await wait_for(lambda: door.inflight >= 1, timeout=20)
        door.release.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert not [r for r in results if isinstance(r, BaseException)], results
        assert door.max_inflight <= 2

    async with filedrop_over_sftp(tmp_path, monkeypatch, timeout_seconds=0.5, retry=retry) as (
        door,
        link,
        _root,
    ):
        door.mode = "trickle"
        await check_deadline(lambda: call_filedrop(link, op), op)

    if op == "pull_updates":
        async with filedrop_over_sftp(tmp_path, monkeypatch, max_answer_bytes=MB) as (
            door,
            link,
            root,
        ):
            big = {"case_id": "X1", "status": "9", "detail": "x" * (4 * MB)}
            (root / "outbox" / "BIG-result.json").write_bytes(json.dumps(big).encode())
            tracemalloc.start()
            try:
                base = tracemalloc.get_traced_memory()[0]
                assert await link.pull_updates(10) == []
                growth = tracemalloc.get_traced_memory()[1] - base
            finally:
                tracemalloc.stop()
            reason = (root / "quarantine" / "BIG-result.json.reason").read_text()
            assert f"larger than {MB} bytes" in reason
            assert growth < 50 * MB

    breaker = BreakerSettings(threshold=2, cooldown_seconds=15.0)
    async with filedrop_over_sftp(tmp_path, monkeypatch, breaker=breaker, retry=retry) as (
        door,
        link,
        _root,
    ):
        clock = steered(link)
        if op == "health":
            door.mode = "fail"
            for _ in range(2):
                with pytest.raises(TransientError):
                    await call_filedrop(link, "submit")
            assert link.breaker_open()
            door.mode = "ok"
            asked = door.requests
            await call(link, "health", "X1")
            assert door.requests > asked and link.breaker_open()
            return
        with capture_logs() as logs:
            door.mode = "fail"
            for _ in range(2):
                with pytest.raises(TransientError):
                    await call_filedrop(link, op)
            assert link.breaker_open() and gauge("civil") == 1
            assert any(e["event"] == "breaker opened" for e in logs)
            asked = door.requests
            with pytest.raises(TransientError, match="breaker open"):
                await call_filedrop(link, op)
            assert door.requests == asked
            door.mode = "ok"
            clock.t += link.breaker.cooldown + 1
            await call_filedrop(link, op)
            assert not link.breaker.tripped and gauge("civil") == 0
            assert any(e["event"] == "breaker closed" and e["log_level"] == "warning" for e in logs)


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


async def test_a_breaker_recorded_twice_at_once_is_one_row(db_url: str) -> None:
    # opened, and reopened by a call still in flight: two records of one breaker at once (a
    # delete-then-insert made the second fail on the primary key and log it)
    import datetime as dt

    from gateway.store import breakers
    from gateway.store.db import create_engine

    engine = create_engine(db_url)
    until = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)

    async def record(failures: int) -> None:
        async with engine.begin() as conn:
            await breakers.record(
                conn, "amr", "host:1:abc", is_open=True, failures=failures, open_until=until
            )

    try:
        await asyncio.gather(record(5), record(6), record(7))
        async with engine.connect() as conn:
            found = await breakers.open_ones(conn, "amr")
        assert len(found) == 1 and found[0].failures in (5, 6, 7)
    finally:
        await engine.dispose()
