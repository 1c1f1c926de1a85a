"""The front-desk API: intake, idempotency, problem+json on every kind of bad input."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from gateway.intake import ApplicationAccepted
from gateway.runtime import Runtime
from tests.conftest import application

FOOD_FORM = {
    "business_name": "小店",
    "premises_address": "东城区一号",
    "business_type": "餐饮服务经营者",
    "food_categories": ["热食类食品制售"],
}


def key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


def assert_problem(resp: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = resp.json()
    assert body["status"] == status and body["title"] and body["detail"]
    if field:
        assert field in [e["field"] for e in body.get("errors", [])], body
    assert "Traceback" not in resp.text
    return body


async def test_submit_returns_durable_answer(
    api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    resp = await api.post(
        "/v1/applications",
        json=application(matter_code="XK00123000", form=FOOD_FORM),
        headers={**centre_headers, **key()},
    )
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["status"] == "received"
    assert body["department"] == "amr"
    assert body["receipt_number"].startswith("C01-")
    assert body["promised_by"]
    got = await api.get(f"/v1/applications/{body['id']}", headers=centre_headers)
    assert got.status_code == 200
    view = got.json()
    assert view["history"][0]["to_status"] == "received"
    # PII is masked in every view
    assert view["applicant"]["id_number"] == "1101**********4514"
    assert "110101199003074514" not in got.text


async def test_same_key_same_body_same_answer(
    api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    headers = {**centre_headers, **key()}
    first = await api.post(
        "/v1/applications",
        json=application(matter_code="XK00123000", form=FOOD_FORM),
        headers=headers,
    )
    second = await api.post(
        "/v1/applications",
        json=application(matter_code="XK00123000", form=FOOD_FORM),
        headers=headers,
    )
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert second.headers.get("Idempotent-Replayed") == "true"
    listing = await api.get("/v1/applications", headers=centre_headers)
    assert len(listing.json()["items"]) == 1


async def test_same_key_other_body_is_409(
    api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    headers = {**centre_headers, **key()}
    await api.post(
        "/v1/applications",
        json=application(matter_code="XK00123000", form=FOOD_FORM),
        headers=headers,
    )
    other = application(matter_code="XK00123000", form={**FOOD_FORM, "business_name": "另一家"})
    assert_problem(
        await api.post("/v1/applications", json=other, headers=headers), 409, "Idempotency-Key"
    )


async def test_receipt_numbers_are_sequential_per_centre(
    api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    numbers = []
    for _ in range(3):
        resp = await api.post(
            "/v1/applications",
            json=application(matter_code="GG00301000", region="339900"),
            headers={**centre_headers, **key()},
        )
        numbers.append(resp.json()["receipt_number"])
    seqs = [int(n.rsplit("-", 1)[1]) for n in numbers]
    assert seqs == [seqs[0], seqs[0] + 1, seqs[0] + 2]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"region": "339900", "applicant": {"name": "a", "id_number": "1"}}, 422, "matter_code"),
        (application(matter_code="XK99999000"), 422, "matter_code"),
        (application(region="123456"), 422, "region"),
        (application(region="33990"), 422, "region"),
        (application(matter_code="QR00201000", region="339900"), 422, "region"),
        (
            application(matter_code="XK00123000", form={"business_name": "x"}),
            422,
            "form.premises_address",
        ),
        (application(applicant={"name": "a"}), 422, "applicant.id_number"),
        (application(materials=["m-does-not-exist"]), 422, "materials[0]"),
        (application(unexpected=1), 422, "unexpected"),
        (application(delivery={"method": "mail"}), 422, "delivery.address"),
    ],
    ids=[
        "missing-field",
        "unknown-matter",
        "unknown-region",
        "bad-region-code",
        "region-not-offered",
        "form-schema",
        "missing-id-number",
        "unknown-material",
        "extra-field",
        "mail-without-address",
    ],
)
async def test_bad_applications_get_problem_json(
    api: httpx.AsyncClient,
    centre_headers: dict[str, str],
    body: dict[str, Any],
    status: int,
    field: str,
) -> None:
    resp = await api.post("/v1/applications", json=body, headers={**centre_headers, **key()})
    assert_problem(resp, status, field)


async def test_malformed_json(api: httpx.AsyncClient, centre_headers: dict[str, str]) -> None:
    resp = await api.post(
        "/v1/applications",
        content=b'{"matter_code": ',
        headers={**centre_headers, **key(), "content-type": "application/json"},
    )
    assert_problem(resp, 400, "body")


async def test_oversized_body(api: httpx.AsyncClient, centre_headers: dict[str, str]) -> None:
    big = application(form={"note": "x" * 2_000_000})
    assert_problem(
        await api.post("/v1/applications", json=big, headers={**centre_headers, **key()}), 413
    )


async def test_oversized_chunked_body(
    api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(40):
            yield b"x" * 65536

    resp = await api.post(
        "/v1/applications",
        content=chunks(),
        headers={**centre_headers, **key(), "content-type": "application/json"},
    )
    assert_problem(resp, 413)


async def test_missing_idempotency_key(
    api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    assert_problem(
        await api.post(
            "/v1/applications",
            json=application(matter_code="XK00123000", form=FOOD_FORM),
            headers=centre_headers,
        ),
        400,
        "Idempotency-Key",
    )


@pytest.mark.parametrize("auth", [None, "Bearer owk_wrong", "Basic abc", "Bearer "])
async def test_wrong_key(api: httpx.AsyncClient, auth: str | None) -> None:
    headers = {"Authorization": auth} if auth else {}
    resp = await api.post("/v1/applications", json=application(), headers={**headers, **key()})
    assert_problem(resp, 401)
    assert resp.headers["www-authenticate"] == "Bearer"


async def test_ops_endpoints_need_ops_key(
    api: httpx.AsyncClient, centre_headers: dict[str, str], ops_headers: dict[str, str]
) -> None:
    assert_problem(await api.get("/v1/ops/failures", headers=centre_headers), 403)
    assert (await api.get("/v1/ops/failures", headers=ops_headers)).status_code == 200


async def test_ops_key_cannot_submit(api: httpx.AsyncClient, ops_headers: dict[str, str]) -> None:
    assert_problem(
        await api.post(
            "/v1/applications",
            json=application(matter_code="XK00123000", form=FOOD_FORM),
            headers={**ops_headers, **key()},
        ),
        403,
    )


async def test_other_centre_cannot_read(
    api: httpx.AsyncClient, centre_headers: dict[str, str], make_key: Any
) -> None:
    resp = await api.post(
        "/v1/applications",
        json=application(matter_code="XK00123000", form=FOOD_FORM),
        headers={**centre_headers, **key()},
    )
    other = await make_key("C02")
    assert_problem(await api.get(f"/v1/applications/{resp.json()['id']}", headers=other), 404)
    assert (await api.get("/v1/applications", headers=other)).json()["items"] == []


async def test_list_pages_with_cursor(
    api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    ids = []
    for _ in range(5):
        r = await api.post(
            "/v1/applications",
            json=application(matter_code="GG00301000", region="339900"),
            headers={**centre_headers, **key()},
        )
        ids.append(r.json()["id"])
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await api.get("/v1/applications", params=params, headers=centre_headers)).json()
        seen += [i["id"] for i in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == ids
    assert_problem(
        await api.get("/v1/applications", params={"cursor": "!!"}, headers=centre_headers),
        400,
        "cursor",
    )
    assert_problem(
        await api.get("/v1/applications", params={"status": "nope"}, headers=centre_headers),
        422,
        "status",
    )


async def test_material_upload(api: httpx.AsyncClient, centre_headers: dict[str, str]) -> None:
    files = {"file": ("licence.pdf", b"%PDF-1.4 test", "application/pdf")}
    resp = await api.post("/v1/materials", files=files, headers=centre_headers)
    assert resp.status_code == 201, resp.text
    material = resp.json()
    assert len(material["sha256"]) == 64 and material["size"] == 13
    sub = await api.post(
        "/v1/applications",
        json=application(materials=[material["id"]]),
        headers={**centre_headers, **key()},
    )
    assert sub.status_code == 201
    view = (await api.get(f"/v1/applications/{sub.json()['id']}", headers=centre_headers)).json()
    assert view["materials"][0]["sha256"] == material["sha256"]
    bad = {"file": ("x.exe", b"MZ", "application/x-msdownload")}
    assert_problem(await api.post("/v1/materials", files=bad, headers=centre_headers), 415, "file")


async def test_matters(api: httpx.AsyncClient, centre_headers: dict[str, str]) -> None:
    matters = (await api.get("/v1/matters", headers=centre_headers)).json()["items"]
    assert len(matters) >= 20
    one = await api.get("/v1/matters/XK00123000", headers=centre_headers)
    assert one.json()["department"] == "amr"
    assert_problem(await api.get("/v1/matters/NOPE", headers=centre_headers), 404)


async def test_probes_and_openapi(api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    ready = await api.get("/readyz")
    assert ready.status_code == 200 and "unavailable_departments" in ready.json()
    assert "gateway_intake_total" in (await api.get("/metrics")).text
    spec = (await api.get("/openapi.json")).json()
    assert "/v1/applications" in spec["paths"]


async def test_matter_of_disabled_department(
    api: httpx.AsyncClient, runtime: Runtime, centre_headers: dict[str, str]
) -> None:
    depts = runtime.config.departments
    depts["nrp"] = depts["nrp"].model_copy(update={"enabled": False})
    resp = await api.post(
        "/v1/applications",
        json=application(matter_code="XK00301000"),
        headers={**centre_headers, **key()},
    )
    body = assert_problem(resp, 422, "matter_code")
    assert "not accepting" in body["detail"]


async def test_same_form_in_another_key_order_is_the_same_application(
    api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    headers = {**centre_headers, **key()}
    first = await api.post(
        "/v1/applications", json=application(form={"a": 1, "b": {"x": 1, "y": 2}}), headers=headers
    )
    again = await api.post(
        "/v1/applications", json=application(form={"b": {"y": 2, "x": 1}, "a": 1}), headers=headers
    )
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"


async def test_idempotency_key_longer_than_200_is_refused(
    api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    resp = await api.post(
        "/v1/applications",
        json=application(),
        headers={**centre_headers, "Idempotency-Key": "k" * 201},
    )
    assert_problem(resp, 400, "Idempotency-Key")
    spec = (await api.get("/openapi.json")).json()
    params = spec["paths"]["/v1/applications"]["post"]["parameters"]
    assert {"name": "Idempotency-Key", "in": "header"}.items() <= params[0].items()


async def test_the_key_is_judged_before_the_body_and_a_revoked_key_cannot_submit(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    """Intake looks a database key up in the transaction that stores the application: an
    unknown key is still refused (401) before a bad body is (422), and a key revoked a moment
    ago is refused at once."""
    from gateway.store.clients import create_client, revoke

    bad = application(matter_code="NO0000000")  # a valid shape the catalog refuses
    malformed = {"matter_code": "GG00301000"}  # refused by the model itself
    unknown = {"Authorization": "Bearer owk_unknown", **key()}
    for body in (bad, malformed):
        assert_problem(await api.post("/v1/applications", json=body, headers=unknown), 401)
    async with runtime.engine.begin() as conn:
        client, secret = await create_client(conn, name="desk", centre="C01", ops=False)
    desk = {"Authorization": f"Bearer {secret}"}
    for body in (bad, malformed):
        assert_problem(
            await api.post("/v1/applications", json=body, headers={**desk, **key()}), 422
        )
    ok = await api.post("/v1/applications", json=application(), headers={**desk, **key()})
    assert ok.status_code == 201, ok.text
    async with runtime.engine.begin() as conn:
        assert await revoke(conn, client.id) is not None
    refused = await api.post("/v1/applications", json=application(), headers={**desk, **key()})
    assert_problem(refused, 401)
    assert refused.json()["detail"] == "this API key is not known or was revoked"


@pytest.mark.parametrize("kind", ["database", "config"])
async def test_every_key_gets_the_same_checks_in_the_same_order(
    runtime: Runtime, kind: str
) -> None:
    """One path for a key kept in the database and one from the config: key, then
    Idempotency-Key, then the body's route, then an answer the Idempotency-Key got before
    (a refused body under a used key is the 409 of a reused key, not the body's 422)."""
    from gateway.api.app import create_app
    from gateway.store.clients import Client, create_client, hash_key

    app = create_app(runtime)
    if kind == "config":
        secret = "static-c01"
        app.state.keyring.static[hash_key(secret)] = Client("s1", "front desk", "C01", False)
    else:
        async with runtime.engine.begin() as conn:
            _client, secret = await create_client(conn, name="desk", centre="C01", ops=False)
    desk = {"Authorization": f"Bearer {secret}"}
    bad = application(matter_code="NO0000000")  # a valid shape the catalog refuses
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://gateway.test",
        headers={"Accept-Language": "en"},
    ) as api:
        refused = await api.post("/v1/applications", json=bad, headers=desk)
        assert_problem(refused, 400, "Idempotency-Key")
        assert_problem(await api.post("/v1/applications", json=bad, headers={**desk, **key()}), 422)
        used = key()
        ok = await api.post("/v1/applications", json=application(), headers={**desk, **used})
        assert ok.status_code == 201, ok.text
        again = await api.post("/v1/applications", json=application(), headers={**desk, **used})
        assert again.json() == ok.json() and again.headers["idempotent-replayed"] == "true"
        assert_problem(await api.post("/v1/applications", json=bad, headers={**desk, **used}), 409)


ODD_BODIES = [
    b'{"matter_code": ',  # malformed
    b"",  # none
    b"[]",
    b'{"matter_code": "GG00301000"}',  # fields missing
    b'{"matter_code": 5, "region": "339900", "applicant": {}}',
    b'{"matter_code": "GG00301000", "region": "339900", "applicant": {"name": "x", '
    b'"id_number": "110101199003074514"}, "form": {"n": NaN}}',
    b'{"matter_code": "GG00301000", "region": "339900", "applicant": {"name": "\\ud800", '
    b'"id_number": "110101199003074514"}}',
    b'{"matter_code": "GG00301000", "region": "339900", "applicant": {"name": "x", '
    b'"id_number": "110101199003074514"}, "extra": 1}',
    b'{"matter_code": "GG00301000", "region": "339900", "applicant": {"name": "x", '
    b'"id_number": "110101199003074515"}}',  # a wrong check digit
]


@pytest.mark.parametrize("raw", ODD_BODIES)
async def test_a_body_is_answered_alike_on_the_fast_path_and_fastapis(
    api: httpx.AsyncClient, centre_headers: dict[str, str], raw: bytes
) -> None:
    """``application/json`` bodies are validated straight from their bytes; with any other
    spelling of the type FastAPI parses them itself. Both answer every body the same."""
    answers = []
    for content_type in ("application/json", "application/json; charset=utf-8"):
        resp = await api.post(
            "/v1/applications",
            content=raw,
            headers={**centre_headers, **key(), "content-type": content_type},
        )
        body = resp.json()
        answers.append((resp.status_code, {k: body.get(k) for k in ("code", "errors", "detail")}))
    assert answers[0] == answers[1]
    assert answers[0][0] in (400, 422)


_VOLATILE = ("id", "receipt_number", "pickup_code")


async def test_the_intake_shortcut_answers_as_fastapis_route(
    api: httpx.AsyncClient,
    centre_headers: dict[str, str],
    ops_headers: dict[str, str],
) -> None:
    """``POST /v1/applications`` with a JSON body is answered by the front middleware's
    shortcut, anything else by FastAPI's route: status, headers (the security headers, the
    Idempotent-Replayed of a replay, in the same order) and body are the same both ways, for an
    accepted application, its replay and every kind of refusal."""
    food = application(matter_code="XK00123000", form=FOOD_FORM)
    keys = [key(), key()]
    cases: list[tuple[dict[str, str] | list[dict[str, str]], Any, int]] = [
        ([{**centre_headers, **k} for k in keys], food, 201),  # accepted
        ([{**centre_headers, **k} for k in keys], food, 201),  # replayed
        ([{**centre_headers, **k} for k in keys], {**food, "form": {}}, 409),
        (centre_headers, food, 400),  # no Idempotency-Key
        ({**key(), "Authorization": "Bearer owk_wrong"}, food, 401),
        ({**ops_headers, **key()}, food, 403),
        ({**centre_headers, **key()}, application(matter_code="XK99999000"), 422),
        ({**centre_headers, **key()}, application(matter_code="XK00123000"), 422),  # form
        ({**centre_headers, **key()}, {**food, "delivery": {"centre": "C99"}}, 422),
        ({**centre_headers, **key()}, {**food, "region": "1"}, 422),  # FastAPI's both ways
    ]
    for headers, body, status in cases:
        answers = []
        for i, content_type in enumerate(("application/json", "application/json; x=1")):
            one = headers[i] if isinstance(headers, list) else headers
            resp = await api.post(
                "/v1/applications",
                content=json.dumps(body, ensure_ascii=False).encode(),
                headers={**one, "content-type": content_type},
            )
            got = resp.json()
            if resp.status_code == 201:
                assert list(got) == [*ApplicationAccepted.model_fields]  # the contract's order
                assert len(resp.content) == int(resp.headers["content-length"])
                got = {k: "-" if k in _VOLATILE else v for k, v in got.items()}
            raw = [
                (name, b"-" if name == b"content-length" and status == 201 else value)
                for name, value in resp.headers.raw
            ]
            answers.append((resp.status_code, raw, got))
        assert answers[0] == answers[1], (status, body)
        assert answers[0][0] == status, answers[0]
        if status == 201:
            assert (b"x-content-type-options", b"nosniff") in answers[0][1]


async def test_the_intake_shortcut_does_not_walk_the_routes(
    api: httpx.AsyncClient, centre_headers: dict[str, str], routes_walked: list[str]
) -> None:
    """A JSON application is answered before Starlette's router matches it against every
    route; another content type still goes through the router."""
    walked = routes_walked
    body = application(matter_code="XK00123000", form=FOOD_FORM)
    resp = await api.post("/v1/applications", json=body, headers={**centre_headers, **key()})
    assert resp.status_code == 201 and walked == []
    resp = await api.post(
        "/v1/applications",
        content=json.dumps(body).encode(),
        headers={**centre_headers, **key(), "content-type": "application/json; charset=utf-8"},
    )
    assert resp.status_code == 201 and walked == ["/v1/applications"]


async def test_the_shortcut_finds_the_handler_the_router_would(
    runtime: Runtime, centre_headers: dict[str, str]
) -> None:
    """An exception on the shortcut is answered by the handler Starlette's exception
    middleware would pick: a handler for an HTTPException's status before one for its class."""
    from fastapi.responses import PlainTextResponse

    from gateway.api.app import create_app

    app = create_app(runtime)

    async def by_status(_request: Any, exc: Any) -> PlainTextResponse:
        return PlainTextResponse(f"status handler {exc.status_code}", status_code=413)

    app.add_exception_handler(413, by_status)

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(40):
            yield b"x" * 65536

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as api:
        for content_type in ("application/json", "application/json; charset=utf-8"):
            resp = await api.post(
                "/v1/applications",
                content=chunks(),
                headers={**centre_headers, **key(), "content-type": content_type},
            )
            assert (resp.status_code, resp.text) == (413, "status handler 413"), content_type


def test_the_body_fingerprint_is_stable_across_versions() -> None:
    """Idempotency records keep the fingerprint an earlier version computed: a resend after an
    upgrade must still match it (the value below is what the gateway has computed since the
    fingerprint sorted the form)."""
    from gateway.intake import ApplicationIn, request_hash

    body = ApplicationIn.model_validate(
        {
            "matter_code": "GG00301000",
            "region": "339900",
            "applicant": {
                "name": "张三",
                "id_number": "110101199003074514",
                "phone": "13800138000",
            },
            "form": {"b": [1, {"z": 1, "a": "文"}], "a": None},
            "window": "W01",
        }
    )
    assert request_hash(body) == "111a98c857019054625edcf7faea9decd7f558c79380772b761446a2207d327a"
