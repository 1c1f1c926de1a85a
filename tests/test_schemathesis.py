"""The whole API fuzzed by schemathesis against a real `gateway serve` on loopback, with a centre
key and an ops key: zero server errors, and every answer matches the OpenAPI document (status
codes, content types, bodies). FUZZ_EXAMPLES examples per operation (a few in the normal run;
`make fuzz` runs 300)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.store.clients import create_client
from gateway.store.db import create_engine
from gateway.testing.ports import free_port
from tests.conftest import EXAMPLE, TEST_SECRETS
from tests.databases import SQLITE, migrated_sqlite

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "5"))
ONLY = os.environ.get("FUZZ_ONLY")  # a regex over "METHOD /path": fuzz just those
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
GATEWAY = [sys.executable, "-m", "gateway"]


# Answers must be a function of the request: hypothesis replays a failing example to confirm it
# and calls a different answer "unreliable" (flaky). Per-key rate limits make the answer depend
# on how fast the previous requests came (a replay, or the 300th upload in a few seconds, gets
# 429), and the upload quota on how much the earlier examples uploaded; both are proven by
# tests/test_quotas.py, so the fuzzed server gets limits it never reaches. The 429 and 413
# answers themselves are declared in the OpenAPI document and checked there.
FUZZ_QUOTAS = """
[gateway.api.quotas]
centre_intake_per_second = 1000000.0
centre_uploads_per_second = 1000000.0
ops_intake_per_second = 1000000.0
ops_uploads_per_second = 1000000.0
upload_bytes_per_day = 1000000000000
"""


async def _keys(db_url: str) -> dict[str, str]:
    """A centre key and an ops key, stored in-process (``gateway keys create`` is tested in
    tests/test_keys.py; two CLI processes here cost seconds of the suite on a busy machine)."""
    engine = create_engine(db_url)
    try:
        async with engine.begin() as conn:
            _c, centre = await create_client(conn, name="C01", centre="C01", ops=False)
            _o, ops = await create_client(conn, name="ops", centre=None, ops=True)
    finally:
        await engine.dispose()
    return {"centre": centre, "ops": ops}


@pytest.fixture(scope="module")
def gateway_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`gateway serve --no-daemon` on a free loopback port, over a fresh SQLite database."""
    root = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(EXAMPLE.parent, root / "config")
    config = root / "config" / "gateway.toml"
    text, n = re.subn(
        r'^database_url = "[^"]*"',
        f'database_url = "sqlite+aiosqlite:///{root / "fuzz.db"}"',
        config.read_text("utf-8"),
        flags=re.M,
    )
    assert n == 1
    text = re.sub(r'^data_dir = "[^"]*"', f'data_dir = "{root / "var"}"', text, flags=re.M)
    config.write_text(text + FUZZ_QUOTAS, encoding="utf-8")
    env = {**os.environ, **TEST_SECRETS}
    migrated_sqlite(root / "fuzz.db")  # a copy of a database migrated once per worker
    keys = asyncio.run(_keys(f"{SQLITE}{root / 'fuzz.db'}"))
    port = free_port()
    log = (root / "serve.log").open("wb")
    process = subprocess.Popen(
        [*GATEWAY, "serve", "--no-daemon", "--port", str(port), "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        # a bound for a process that is up but never answers: generous, as CI's test-stress
        # (CPU burners, four workers, the fault suite beside it) once took 62 s to start it
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, (root / "serve.log").read_text("utf-8")[-2000:]
            assert time.monotonic() < deadline, "gateway serve did not start within 300 s"
            time.sleep(0.2)
        yield {"url": url, "keys": keys, "log": root / "serve.log"}
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def api_schema(gateway_serve: dict[str, Any]) -> Any:
    return schemathesis.openapi.from_url(f"{gateway_serve['url']}/openapi.json")


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    # no shrinking: a found failure is reported as found (shrinking replays draws, which
    # hypothesis calls inconsistent when the schema's strategies branch differently)
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def _fuzz(api_schema: Any, gateway: dict[str, Any], who: str) -> None:
    """Every operation, EXAMPLES cases each; every operation's failure is reported (not only
    the first one's)."""
    headers = {"Authorization": f"Bearer {gateway['keys'][who]}"}
    failures: list[str] = []
    operations = 0
    tally: dict[str, Counter[int]] = {}
    operations_seen: list[Any] = []
    started = time.monotonic()
    for result in api_schema.get_all_operations():
        operation = result.ok()
        operations += 1
        name = f"{operation.method.upper()} {operation.path}"
        if ONLY and not re.search(ONLY, name):
            continue
        seen = tally[name] = Counter()
        operations_seen.append(operation)

        run = _fuzzer(operation, gateway["url"], headers, seen)
        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:  # name the operation, go on
            failures.append(f"{name}: {_shown(exc)}")
    for operation in operations_seen:  # every answer is declared, not only covered by default
        name = f"{operation.method.upper()} {operation.path}"
        declared = set(operation.definition.raw.get("responses", {}))
        undeclared = sorted(str(code) for code in tally[name] if str(code) not in declared)
        if undeclared:
            failures.append(f"{name}: answered {', '.join(undeclared)}, not declared")
    requests = sum(sum(c.values()) for c in tally.values())
    print(
        f"\nfuzz with the {who} key: {requests} requests, {len(tally)} operations, "
        f"{time.monotonic() - started:.0f} s, {len(failures)} failing"
    )
    for name, seen in tally.items():
        print(f"  {name}: {dict(sorted(seen.items()))}")
    assert operations >= 30 or ONLY, f"only {operations} operations in the OpenAPI document"
    assert not any(code >= 500 for seen in tally.values() for code in seen), tally
    assert not failures, "\n\n".join(failures)


def _fuzzer(
    operation: Any, url: str, headers: dict[str, str], seen: Counter[int]
) -> Callable[[], None]:
    """The hypothesis test of one operation: each answer counted by status, then checked."""

    @given(case=operation.as_strategy())
    @FUZZ
    def run(case: Any) -> None:
        response = case.call(base_url=url, headers=headers, timeout=60)
        seen[response.status_code] += 1
        case.validate_response(response, checks=CHECKS)

    return run


def _shown(exc: BaseException) -> str:
    """The failure as found: for hypothesis's "unreliable" (flaky) errors, the first call's
    exception (what failed before the replay passed), not just the replay's complaint."""
    inner = getattr(exc, "exceptions", None) or []
    text = "".join(traceback.format_exception(exc))[-2500:]
    for sub in inner[:3]:
        text += "\n-- first call: " + "".join(traceback.format_exception(sub))[-2500:]
    return text


# every operation times EXAMPLES requests: the suite's 120 s per test is not enough for them
FUZZ_TIMEOUT = pytest.mark.timeout(max(600, EXAMPLES * 40))


@FUZZ_TIMEOUT
def test_fuzz_with_a_centre_key(api_schema: Any, gateway_serve: dict[str, Any]) -> None:
    _fuzz(api_schema, gateway_serve, "centre")


@FUZZ_TIMEOUT
def test_fuzz_with_an_ops_key(api_schema: Any, gateway_serve: dict[str, Any]) -> None:
    _fuzz(api_schema, gateway_serve, "ops")
