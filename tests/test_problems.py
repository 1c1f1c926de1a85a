"""Errors: a stable code on every problem and every errors[] item, one item per failing field,
no library wording, Chinese or English by Accept-Language, type URIs the gateway serves."""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from gateway.api.messages import FIELD_ERRORS, PROBLEMS
from gateway.config.loader import Config
from gateway.runtime import Runtime
from tests.conftest import ROOT, application
from tests.handout_fixtures import quiet_runtime
from tests.loopback import loopback_api

DOC = ROOT / "docs" / "front-desk-api.md"
LIBRARY_WORDING = re.compile(
    r"String should|Input should|Field required|Value error|should have|is not valid under|"
    r"is a required property|Extra inputs|\^\\d|validation error",
)
CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture
async def runtime(example_config: Config) -> AsyncIterator[Runtime]:
    # C02 is configured to speak English to its keys
    centres = [
        c.model_copy(update={"language": "en"}) if c.code == "C02" else c
        for c in example_config.gateway.centres
    ]
    config = dataclasses.replace(
        example_config, gateway=example_config.gateway.model_copy(update={"centres": centres})
    )
    async with quiet_runtime(config) as rt:
        yield rt


@pytest.fixture
async def api(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway on a loopback port (not in-process)."""
    async with loopback_api(runtime) as client:
        yield client


@pytest.fixture
async def raw(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """A client that sends no Accept-Language (as a front-desk system may not)."""
    async with loopback_api(runtime, language=None) as client:
        yield client


def key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


BAD_BODIES: list[dict[str, Any]] = [
    {"region": "339900", "applicant": {"name": "a", "id_number": "1"}},
    application(region="33990"),
    application(applicant={"name": "", "id_number": "1" * 80}),
    application(delivery={"method": "drone"}),
    application(delivery={"method": "mail"}),
    application(unexpected=1, materials="m1"),
    application(matter_code="XK00123000", form={"business_name": 5, "food_categories": []}),
    application(applicant={"name": "a\x00b", "id_number": "1"}),
]


@pytest.mark.parametrize("body", BAD_BODIES)
async def test_every_error_has_a_code_and_no_library_wording(
    raw: httpx.AsyncClient, centre_headers: dict[str, str], body: dict[str, Any]
) -> None:
    for lang in ("en", "zh-CN"):
        resp = await raw.post(
            "/v1/applications",
            json=body,
            headers={**centre_headers, **key(), "Accept-Language": lang},
        )
        assert resp.status_code == 422, resp.text
        problem = resp.json()
        assert resp.headers["content-language"] == lang
        assert problem["code"] in PROBLEMS
        assert problem["errors"], problem
        for item in problem["errors"]:
            assert set(item) == {"field", "code", "message"}
            assert item["code"] in FIELD_ERRORS or item["code"] in PROBLEMS, item
            assert item["message"] and not LIBRARY_WORDING.search(item["message"]), item
        assert not LIBRARY_WORDING.search(problem["detail"]), problem
        if lang == "zh-CN":
            assert CJK.search(problem["title"]) and CJK.search(problem["detail"]), problem


async def test_one_item_per_failing_form_field(
    api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    form = {
        "business_name": "",
        "business_type": "飞行器",
        "food_categories": [],
        "premises_address": "示范市青石路1号",
        "colour": "red",
    }
    resp = await api.post(
        "/v1/applications",
        json=application(matter_code="XK00123000", form=form),
        headers={**centre_headers, **key()},
    )
    assert resp.status_code == 422
    problem = resp.json()
    assert problem["code"] == "form_incomplete"
    got = {(e["field"], e["code"]) for e in problem["errors"]}
    assert got == {
        ("form.business_name", "too_short"),
        ("form.business_type", "not_allowed"),
        ("form.food_categories", "too_few"),
        ("form.colour", "unknown_field"),
    }
    missing = await api.post(
        "/v1/applications",
        json=application(matter_code="XK00123000", form={"business_name": "x"}),
        headers={**centre_headers, **key()},
    )
    fields = [(e["field"], e["code"]) for e in missing.json()["errors"]]
    assert fields == [
        ("form.premises_address", "required"),
        ("form.business_type", "required"),
        ("form.food_categories", "required"),
    ]


async def test_language_follows_accept_language_then_the_centre(
    raw: httpx.AsyncClient, make_key: Any, ops_headers: dict[str, str]
) -> None:
    c01, c02 = await make_key("C01"), await make_key("C02")
    path = "/v1/applications/a-missing"

    async def title(headers: dict[str, str]) -> tuple[str, str]:
        resp = await raw.get(path, headers=headers)
        assert resp.status_code == 404
        return resp.json()["title"], resp.headers["content-language"]

    assert await title(c01) == ("未知申请", "zh-CN")  # the configured default for centres
    assert await title(c02) == ("Unknown application", "en")  # C02 set to English
    assert await title(ops_headers) == ("Unknown application", "en")
    assert await title({**c01, "Accept-Language": "en-GB,en;q=0.9"}) == (
        "Unknown application",
        "en",
    )
    assert await title({**c02, "Accept-Language": "fr, zh-Hans;q=0.8, en;q=0.5"}) == (
        "未知申请",
        "zh-CN",
    )
    resp = await raw.get(path, headers=c01)
    assert resp.json()["detail"] == "此密钥看不到申请 a-missing"
    assert resp.json()["errors"] == [
        {"field": "id", "code": "unknown_application", "message": "此密钥看不到申请 a-missing"}
    ]
    # no key at all: English, with the code
    resp = await raw.get(path)
    assert resp.status_code == 401 and resp.json()["code"] == "unauthorized"


async def test_type_uris_resolve_to_pages_the_gateway_serves(
    raw: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    resp = await raw.get("/v1/applications/a-missing", headers=centre_headers)
    uri = resp.json()["type"]
    assert uri == str(raw.base_url).rstrip("/") + "/problems/unknown_application"
    page = await raw.get(urlsplit(uri).path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "unknown_application" in page.text and "未知申请" in page.text
    index = await raw.get("/problems")
    for code in PROBLEMS:
        assert f'href="problems/{code}"' in index.text
        assert (await raw.get(f"/problems/{code}")).status_code == 200
    assert (await raw.get("/problems/no_such_problem")).status_code == 404


def test_every_code_is_in_the_documented_table() -> None:
    text = DOC.read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", text, re.M))
    assert set(PROBLEMS) | set(FIELD_ERRORS) <= documented, sorted(
        (set(PROBLEMS) | set(FIELD_ERRORS)) - documented
    )
    assert documented <= set(PROBLEMS) | set(FIELD_ERRORS) | _OTHER_TABLE_CODES


# codes in other tables of the page (withdrawal outcomes) that the pattern also matches
_OTHER_TABLE_CODES = {"code", "outcome", "pending", "not_sent", "withdrawn", "refused", "too_late"}


def test_every_raised_problem_has_a_catalogue_entry() -> None:
    """Titles raised in the code derive codes; each must have Chinese text."""
    sources = [*(ROOT / "gateway").rglob("*.py")]
    titles: set[str] = set()
    pattern = re.compile(r"(?:Problem|CallbackRejected)\(\s*\d{3},\s*\"([^\"]+)\"", re.S)
    for path in sources:
        titles.update(pattern.findall(path.read_text(encoding="utf-8")))
    from gateway.errors import RequestProblem

    codes = {RequestProblem(400, t, "").code for t in titles}
    codes.discard("cannot_route_application")  # raised with the RouteError's own code
    assert codes <= set(PROBLEMS), sorted(codes - set(PROBLEMS))
