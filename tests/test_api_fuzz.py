"""No input produces a 5xx: seeded structural mutations of valid requests, all answered with
2xx or a 4xx problem+json, and nothing accepted is changed by them."""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import httpx

from tests.conftest import application

VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    1e308,
    "",
    "x" * 5000,
    "🙂\u0000",
    [],
    {},
    [1, [2]],
    {"a": {"b": {"c": {}}}},
    "339900",
    "XK00123000",
    10**30,
]


def mutate(body: Any, rng: random.Random, depth: int = 0) -> Any:
    if isinstance(body, dict) and body and rng.random() < 0.8:
        key = rng.choice(list(body))
        action = rng.random()
        if action < 0.3:
            body.pop(key)
        elif action < 0.6:
            body[key] = rng.choice(VALUES)
        elif action < 0.8 and depth < 3:
            body[key] = mutate(body[key], rng, depth + 1)
        else:
            body[rng.choice(["extra", "applicant", "__proto__", "form"])] = rng.choice(VALUES)
        return body
    if isinstance(body, list) and body:
        body[rng.randrange(len(body))] = rng.choice(VALUES)
        return body
    return rng.choice(VALUES)


async def test_mutated_applications_never_5xx(
    api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    rng = random.Random(20261126)
    accepted = await api.post(
        "/v1/applications",
        json=application(),
        headers={**centre_headers, "Idempotency-Key": "fuzz-base"},
    )
    before = (
        await api.get(f"/v1/applications/{accepted.json()['id']}", headers=centre_headers)
    ).json()
    statuses: set[int] = set()
    for i in range(250):
        body = mutate(copy.deepcopy(application()), rng)
        raw = json.dumps(body).encode() if rng.random() < 0.9 else json.dumps(body).encode()[:-3]
        headers = {**centre_headers, "content-type": "application/json"}
        if rng.random() < 0.9:
            headers["Idempotency-Key"] = rng.choice([f"fuzz-{i}", "fuzz-base", "", "k" * 300])
        resp = await api.post("/v1/applications", content=raw, headers=headers)
        statuses.add(resp.status_code)
        assert resp.status_code < 500, (body, resp.text)
        if resp.status_code >= 400:
            assert resp.headers["content-type"].startswith("application/problem+json")
            assert resp.json()["detail"]
    assert {400, 422} <= statuses  # the mutations did reach the validators
    after = (
        await api.get(f"/v1/applications/{accepted.json()['id']}", headers=centre_headers)
    ).json()
    assert after == before  # a replayed key with another body never changed what was accepted


async def test_odd_query_parameters_never_5xx(
    api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    rng = random.Random(7)
    params_pool: list[dict[str, Any]] = [
        {"limit": "0"},
        {"limit": "-1"},
        {"limit": "abc"},
        {"limit": "100000"},
        {"updated_since": "yesterday"},
        {"updated_since": "2026-01-01T00:00:00"},
        {"status": "approved", "centre": "C02"},
        {"cursor": "%%%"},
        {"cursor": "YQ"},
        {"department": "x" * 100},
        {"status": ""},
    ]
    for _ in range(40):
        params = rng.choice(params_pool)
        resp = await api.get("/v1/applications", params=params, headers=centre_headers)
        assert resp.status_code < 500, (params, resp.text)
    for path in [
        "/v1/applications/..%2F..%2Fetc",
        "/v1/matters/%00",
        "/v1/applications/" + "a" * 500,
    ]:
        assert (await api.get(path, headers=centre_headers)).status_code in (400, 404, 422)


async def test_nul_characters_are_refused_not_crashing(
    api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    for field, value in [
        ("clerk", "a\u0000b"),
        ("window", "\u0000"),
        ("applicant", {"name": "张\u0000三", "id_number": "1"}),
        ("form", {"note": "x\u0000"}),
    ]:
        body = {**application(), field: value}
        resp = await api.post(
            "/v1/applications",
            json=body,
            headers={**centre_headers, "Idempotency-Key": f"nul-{field}"},
        )
        assert resp.status_code < 500, resp.text
    key = {**centre_headers, "Idempotency-Key": "nul\u0000key"}
    resp = await api.post("/v1/applications", json=application(), headers=key)
    assert resp.status_code < 500
