"""docs/front-desk-api.md is run, request by request, against the gateway: every ```http request
block is sent, the ```http answer block after it must match (status, content type, and every
JSON key it shows; ``"..."`` matches any value), and the quoted "(the test plays it:
`department ...`)" lines stand in for the department. The page covers every endpoint a centre's
key can call, and its state diagram is the state machine's. The page cannot drift from the
API."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.config.loader import Config
from gateway.runtime import Runtime
from gateway.states import FORWARD, RESTART
from tests.conftest import ROOT
from tests.handout_fixtures import decide, quiet_runtime
from tests.loopback import loopback_api

DOC = ROOT / "docs" / "front-desk-api.md"
_BLOCK = re.compile(
    r"^```http\n(.*?)^```$|^> \(the test plays it: `department (.*?)`\)\.$", re.S | re.M
)
_STATES = {"supplement_required": "3", "approved": "9", "rejected": "4"}


@pytest.fixture
async def runtime(example_config: Config) -> AsyncIterator[Runtime]:
    """No simulated departments needed: their answers are applied directly."""
    async with quiet_runtime(example_config) as rt:
        yield rt


@pytest.fixture
async def api(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway on a loopback port (not in-process)."""
    async with loopback_api(runtime) as client:
        yield client


def steps(text: str) -> list[tuple[str, str]]:
    """("request" | "answer" | "run", body) in page order."""
    out: list[tuple[str, str]] = []
    for m in _BLOCK.finditer(text):
        if m.group(2) is not None:
            out.append(("run", m.group(2).strip()))
        else:
            block = m.group(1)
            out.append(("answer" if block.startswith("HTTP/") else "request", block))
    return out


def fill(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), text)


def split(block: str) -> tuple[str, dict[str, str], str]:
    head, _, body = block.partition("\n\n")
    first, *lines = head.splitlines()
    headers = dict(line.split(": ", 1) for line in lines)
    return first, headers, body


def matches(expected: Any, actual: Any, where: str = "") -> None:
    if expected == "...":
        return
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: {actual!r} is not an object"
        for key, value in expected.items():
            assert key in actual, f"{where}.{key} missing in {actual!r}"
            matches(value, actual[key], f"{where}.{key}")
    elif isinstance(expected, list) and expected:
        assert isinstance(actual, list) and len(actual) >= len(expected), f"{where}: {actual!r}"
        for i, value in enumerate(expected):
            matches(value, actual[i], f"{where}[{i}]")
    else:
        assert expected == actual, f"{where}: expected {expected!r}, got {actual!r}"


async def send(api: httpx.AsyncClient, block: str) -> httpx.Response:
    first, headers, body = split(block)
    method, path = first.split(" ", 1)
    content = body.encode()
    if headers.get("Content-Type", "").startswith("multipart/"):
        content = body.replace("\n", "\r\n").encode()
    return await api.request(method, path, headers=headers, content=content or None)


def learn(path: str, answer: Any, values: dict[str, str]) -> None:
    """Remember what later requests refer to."""
    if not isinstance(answer, (dict, list)):
        return
    if path == "/v1/applications" and isinstance(answer, dict) and "pickup_code" in answer:
        values["id"], values["pickup_code"] = answer["id"], answer["pickup_code"]
        values["receipt_number"] = answer["receipt_number"]
    elif path == "/v1/webhooks" and isinstance(answer, dict) and "id" in answer:
        values["subscription_id"] = answer["id"]
    elif path == "/v1/materials" and isinstance(answer, dict):
        values["material_id"] = answer["id"]
    elif path.startswith("/v1/pickups") and isinstance(answer, dict) and answer["items"]:
        values["doc_id"] = answer["items"][0]["documents"][0]["id"]


async def test_front_desk_walkthrough_runs(
    api: httpx.AsyncClient, runtime: Runtime, centre_headers: dict[str, str]
) -> None:
    values = {"centre_key": centre_headers["Authorization"].removeprefix("Bearer ")}
    plan = steps(DOC.read_text(encoding="utf-8"))
    assert sum(kind == "request" for kind, _ in plan) >= 25, "the walkthrough lost its examples"
    last: httpx.Response | None = None
    checked = 0
    for kind, text in plan:
        text = fill(text, values)
        if kind == "run":
            app_id, state, *items = text.split(" ")
            await decide(
                runtime,
                app_id,
                _STATES[state],
                document=None if state == "supplement_required" else b"%PDF-1.4 licence",
                supplement_items=items[0].split(";") if items else None,
            )
        elif kind == "request":
            last = await send(api, text)
            first = split(text)[0]
            if last.headers.get("content-type", "").startswith("application/json"):
                learn(first.split(" ", 1)[1], last.json(), values)
        else:
            assert last is not None, "an answer block with no request before it"
            first, headers, body = split(text)
            status = int(first.split(" ")[1])
            assert last.status_code == status, f"{first}: got {last.status_code} {last.text}"
            assert last.headers["content-type"].startswith(headers["Content-Type"])
            if body.strip():
                matches(json.loads(body), last.json(), first)
            checked += 1
    assert checked >= 25
    assert sum(kind == "run" for kind, _ in plan) >= 3


def _pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{[^}]*\}", template)
    return re.compile("[^/]+".join(re.escape(p) for p in parts) + "$")


async def test_every_endpoint_a_centre_key_can_call_is_shown(api: httpx.AsyncClient) -> None:
    spec = (await api.get("/openapi.json")).json()
    callable_by_centre = {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if not path.startswith(("/v1/ops/", "/v1/callbacks/"))
        and path not in ("/healthz", "/readyz", "/metrics", "/problems")
    }
    shown = [
        (first.split(" ")[0], first.split(" ")[1].split("?", 1)[0])
        for kind, block in steps(DOC.read_text(encoding="utf-8"))
        if kind == "request"
        for first in [block.splitlines()[0]]
    ]
    missing = [
        (method, template)
        for method, template in sorted(callable_by_centre)
        if not any(m == method and _pattern(template).match(p) for m, p in shown)
    ]
    assert not missing, missing


def test_the_state_diagram_is_the_state_machine() -> None:
    text = DOC.read_text(encoding="utf-8")
    diagram = text.split("```mermaid", 1)[1].split("```", 1)[0]
    drawn = set(re.findall(r"^\s*(\w+) --> (\w+)", diagram, re.M))
    machine = {(a.value, b.value) for a, targets in FORWARD.items() for b in targets}
    machine |= {(a.value, b.value) for a, b in RESTART.items()}
    assert drawn == machine
