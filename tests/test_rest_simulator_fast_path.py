"""The simulated REST department's fast path answers exactly as FastAPI's routing does.

Case creation, the case view and both feeds are answered by the fault middleware itself (see
``_FaultMiddleware``). Two departments with the same settings and the same clock, one with the
fast path and one without, get the same requests, in every answer style, fault mode and error
case; every ASGI message they send (status, headers, body) must be the same."""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.parse
from typing import Any

import pytest
from gateway_rest.signing import digest, signed_text
from starlette.types import Message

from gateway.simulators.rest_department import (
    RestDepartmentState,
    RestSimulatorSettings,
    create_rest_department,
)

T0 = dt.datetime(2026, 12, 2, 8, 0, tzinfo=dt.UTC)
REQUIRED = {"form": {"licenceNo": "L-1"}}


class Department:
    """One simulated department called over ASGI, its clock set by the test."""

    def __init__(self, settings: RestSimulatorSettings, *, fast_path: bool) -> None:
        self.now = T0
        self.app, self.state = create_rest_department(
            settings, clock=lambda: self.now, fast_path=fast_path
        )
        #: whether each request went through FastAPI's router (it marks the scope)
        self.routed: list[bool] = []

    async def call(
        self,
        method: str,
        path: str,
        *,
        query: str = "",
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        disconnect: bool = False,
    ) -> list[Message]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
        }
        incoming: list[Message] = [
            {"type": "http.disconnect"}
            if disconnect
            else {"type": "http.request", "body": body, "more_body": False}
        ]
        sent: list[Message] = []

        async def receive() -> Message:
            return incoming.pop(0) if incoming else {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)

        await self.app(scope, receive, send)
        self.routed.append("endpoint" in scope)
        return sent


def sign(secret: str, query: str, body: bytes, nonce: str) -> dict[str, str]:
    """Headers of a request signed as ``[simulator.signing]`` (hmac-sha256) checks it."""
    added = {"appKey": "app-1", "timestamp": str(int(time.time() * 1000)), "nonce": nonce}
    pairs = {**dict(urllib.parse.parse_qsl(query)), **added}
    if body:
        pairs["body"] = body.decode()
    return {**added, "sign": digest("hmac-sha256", signed_text(pairs), secret).upper()}


STYLES: dict[str, dict[str, Any]] = {
    "plain": {},
    "envelope": {"envelope": True, "required_fields": ["form.licenceNo"]},
    "inline-offset": {"envelope": True, "documents": "inline", "listing": "offset"},
    "url-next-link": {"documents": "url", "listing": "next_link"},
    "page-gbk": {"envelope": True, "listing": "page", "charset": "gbk"},
    "form": {"envelope": True, "form_bodies": True},
    "bearer": {"auth_token": "t0k"},
    "api-key": {"auth_key": "k3y", "required_fields": ["form.licenceNo"]},
    "token": {"token": {"app_id": "app-1", "app_secret": "s3cret"}},
    "signed": {"signing": {"algorithm": "hmac-sha256", "app_id": "app-1", "secret": "s1gn"}},
}


def _auth(style: dict[str, Any], token: str | None) -> dict[str, str]:
    if "auth_token" in style:
        return {"Authorization": f"Bearer {style['auth_token']}"}
    if "auth_key" in style:
        return {"X-Api-Key": style["auth_key"]}
    if token is not None:
        return {"Authorization": f"Bearer {token}"}
    return {}


async def _token(department: Department) -> str | None:
    """The same token in both departments (tokens are random): issued by one, copied over."""
    tokens = department.state.tokens
    if tokens is None:
        return None
    issued, _ttl = tokens.issue(department.now)
    return issued


async def _exchange_all(
    department: Department, style: dict[str, Any], token: str | None
) -> list[list[Message]]:
    """Every hot request in ``style``: errors, creation, views, listings, feeds."""
    auth = _auth(style, token)
    json_type = {"Content-Type": "application/json"}
    out: list[list[Message]] = []
    nonces = iter(f"n{i}" for i in range(1000))

    async def call(method: str, path: str, *, query: str = "", **kw: Any) -> None:
        headers = {**auth, **kw.pop("headers", {})}
        if "signing" in style:
            headers.update(sign("s1gn", query, kw.get("body", b""), next(nonces)))
        out.append(await department.call(method, path, query=query, headers=headers, **kw))

    def body(value: Any) -> bytes:
        return json.dumps(value, ensure_ascii=False).encode()

    # refusals: no key, not an object, a missing required field, no credentials
    await call("POST", "/api/v1/cases", headers=json_type, body=body(REQUIRED))
    await call("POST", "/api/v1/cases", headers={**json_type, "Idempotency-Key": "k0"}, body=b"[]")
    await call("POST", "/api/v1/cases", headers={**json_type, "Idempotency-Key": "k0"}, body=b"{")
    await call("POST", "/api/v1/cases", headers={"Idempotency-Key": "k1"}, body=body({"x": 1}))
    if auth:
        out.append(await department.call("GET", "/api/v1/cases/AMR-2026-000001"))
        out.append(await department.call("GET", "/api/v1/changes"))
    # new cases, a duplicate, a form body
    for key in ("k1", "k2", "k3", "k1"):
        await call(
            "POST",
            "/api/v1/cases",
            headers={**json_type, "Idempotency-Key": key},
            body=body({**REQUIRED, "名称": "测试", "version": 1}),
        )
    form = urllib.parse.urlencode({"form": json.dumps(REQUIRED["form"]), "ref": "R-1"})
    await call(
        "POST",
        "/api/v1/cases",
        headers={"Content-Type": "application/x-www-form-urlencoded", "Idempotency-Key": "k4"},
        body=form.encode(),
    )
    # the cases in every phase of their lives, as views, listings and the numbered feed
    for seconds in (0.0, 1.2, 1.6, 2.5):
        department.now = T0 + dt.timedelta(seconds=seconds)
        for case_id in ("AMR-2026-000001", "AMR-2026-000003", "AMR-2026-000099", "x%20y"):
            await call("GET", f"/api/v1/cases/{case_id}")
        for query in (
            "",
            "limit=2",
            "view=full&limit=2",
            "view=full&cursor=1&limit=1",
            "size=1&page=2",
            "offset=1&limit=1&view=full",
            f"since={urllib.parse.quote((T0 + dt.timedelta(seconds=1)).isoformat())}",
            "since=not-a-time",
            "limit=ten",
        ):
            await call("GET", "/api/v1/cases", query=query)
        for query in ("", "since_seq=2&limit=3", "since_seq=x", "limit=0"):
            await call("GET", "/api/v1/changes", query=query)
    return out


def _pair(style: dict[str, Any]) -> tuple[Department, Department]:
    settings = RestSimulatorSettings.model_validate(
        {"decision_delay_seconds": 2.0, "mix": {"approve": 0.5, "supplement": 0.5}, **style}
    )
    return Department(settings, fast_path=True), Department(settings, fast_path=False)


@pytest.mark.parametrize("name", sorted(STYLES))
async def test_every_hot_answer_is_the_same_bytes_as_through_the_routes(name: str) -> None:
    style = STYLES[name]
    fast, routed = _pair(style)
    token = await _token(fast)
    if token is not None:
        assert routed.state.tokens is not None and fast.state.tokens is not None
        routed.state.tokens.tokens = dict(fast.state.tokens.tokens)
    fast_answers = await _exchange_all(fast, style, token)
    routed_answers = await _exchange_all(routed, style, token)
    assert len(fast_answers) == len(routed_answers) > 50
    for number, (one, other) in enumerate(zip(fast_answers, routed_answers, strict=True)):
        assert one == other, f"request {number}"
    assert not any(fast.routed) and all(routed.routed)  # the paths compared are the two
    assert {a[0]["status"] for a in fast_answers} >= {200}
    assert fast.state.stats() == routed.state.stats()


@pytest.mark.parametrize("mode", ["fail503", "fail429", "busy", "timeout", "slow", "fail503-twice"])
@pytest.mark.parametrize("envelope", [False, True], ids=["plain", "envelope"])
async def test_faults_apply_to_the_fast_path(mode: str, envelope: bool) -> None:
    fast, routed = _pair({"envelope": envelope})
    for department in (fast, routed):
        state: RestDepartmentState = department.state
        state.mode, state.retry_after = mode.removesuffix("-twice"), 7
        state.fail_left = 2 if mode.endswith("-twice") else 0
        state.slow_seconds = 0
    calls: list[dict[str, Any]] = [
        {"method": "POST", "path": "/api/v1/cases", "headers": {"Idempotency-Key": "k"}},
        {"method": "GET", "path": "/api/v1/cases/AMR-2026-000001"},
        {"method": "GET", "path": "/api/v1/cases", "query": "view=full"},
        {"method": "GET", "path": "/api/v1/changes"},
    ]
    answers = {}
    for department in (fast, routed):
        answers[department] = [
            await department.call(body=b'{"a": 1}', disconnect=mode == "timeout", **call)
            for call in calls
        ]
    assert answers[fast] == answers[routed]
    first = answers[fast][0]
    if mode == "timeout":
        assert first == []  # no answer: the client gives up
    elif mode == "slow":
        assert first[0]["status"] == (200 if envelope else 201)
    else:
        expected = {"fail503": 503, "fail429": 429, "busy": 200 if envelope else 503}
        assert first[0]["status"] == expected[mode.removesuffix("-twice")]
    if mode == "fail429":
        assert (b"retry-after", b"7") in first[0]["headers"]
    if mode == "fail503-twice":  # two calls refused, then the department is back
        assert [a[0]["status"] for a in answers[fast]] == [503, 503, 200, 200]
    assert fast.state.stats() == routed.state.stats()
    assert fast.state.transient_answers == routed.state.transient_answers


async def test_other_requests_still_go_through_the_routes() -> None:
    fast, routed = _pair({"documents": "url"})
    others = [
        ("POST", "/api/v1/cases", {"Idempotency-Key": "k"}),
        ("HEAD", "/api/v1/cases/AMR-2026-000001", {}),
        ("GET", "/api/v1/cases/AMR-2026-000001/certificate", {}),
        ("POST", "/api/v1/cases/AMR-2026-000001/withdraw", {}),
        ("PUT", "/api/v1/cases", {}),
        ("GET", "/api/v1/cases/", {}),
        ("GET", "/_stats", {}),
    ]
    answers: dict[Department, list[list[Message]]] = {fast: [], routed: []}
    for department in (fast, routed):
        for method, path, headers in others:
            department.now = T0 + dt.timedelta(seconds=3 if path != "/api/v1/cases" else 0)
            answer = await department.call(method, path, headers=headers, body=b'{"a": 1}')
            answers[department].append(answer)
    assert answers[fast] == answers[routed]
    assert [a[0]["status"] for a in answers[fast]][:3] == [
        201,
        405,
        200,
    ]  # HEAD: FastAPI routes GET only
    assert fast.routed[0] is False and routed.routed[0] is True
    assert fast.routed[1:] == routed.routed[1:]  # the router's (a redirect does not mark it)
