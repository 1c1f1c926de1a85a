"""The whole API fuzzed by schemathesis against a real `gateway serve` on loopback, with a centre
key and an ops key: zero server errors, and every answer matches the OpenAPI document (status
codes, content types, bodies). FUZZ_EXAMPLES examples per operation (a few in the normal run;
`make fuzz` runs 300)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
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

from tests.conftest import EXAMPLE, TEST_SECRETS

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "5"))
ONLY = os.environ.get("FUZZ_ONLY")  # a regex over "METHOD /path": fuzz just those
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
GATEWAY = [sys.executable, "-m", "gateway"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _key(config: Path, env: dict[str, str], *scope: str) -> str:
    done = subprocess.run(
        [*GATEWAY, "keys", "create", *scope, "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


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
    config.write_text(text, encoding="utf-8")
    env = {**os.environ, **TEST_SECRETS}
    keys = {
        "centre": _key(config, env, "--centre", "C01"),
        "ops": _key(config, env, "--ops"),
    }
    port = _free_port()
    log = (root / "serve.log").open("wb")
    process = subprocess.Popen(
        [*GATEWAY, "serve", "--no-daemon", "--port", str(port), "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert process.poll() is None, (root / "serve.log").read_text("utf-8")[-2000:]
            assert time.monotonic() < deadline, "gateway serve did not start within 60 s"
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
    for result in api_schema.get_all_operations():
        operation = result.ok()
        operations += 1
        if ONLY and not re.search(ONLY, f"{operation.method.upper()} {operation.path}"):
            continue

        @given(case=operation.as_strategy())
        @FUZZ
        def run(case: Any) -> None:
            case.call_and_validate(
                base_url=gateway["url"], headers=headers, checks=CHECKS, timeout=60
            )

        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:  # name the operation, go on
            shown = "".join(traceback.format_exception(exc))[-3000:]
            failures.append(f"{operation.method.upper()} {operation.path}: {shown}")
    assert operations >= 30 or ONLY, f"only {operations} operations in the OpenAPI document"
    assert not failures, "\n\n".join(failures)


# every operation times EXAMPLES requests: the suite's 120 s per test is not enough for them
FUZZ_TIMEOUT = pytest.mark.timeout(max(600, EXAMPLES * 40))


@FUZZ_TIMEOUT
def test_fuzz_with_a_centre_key(api_schema: Any, gateway_serve: dict[str, Any]) -> None:
    _fuzz(api_schema, gateway_serve, "centre")


@FUZZ_TIMEOUT
def test_fuzz_with_an_ops_key(api_schema: Any, gateway_serve: dict[str, Any]) -> None:
    _fuzz(api_schema, gateway_serve, "ops")
