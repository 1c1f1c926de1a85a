"""Intake checks identity data and numbers (issue 12 item 9): resident ID numbers (GB 11643
check digit, birth date), phone numbers, and no NaN/Infinity/1e400 in a form; each refused with a
422 naming the field and never repeating the number."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway.config.loader import Config
from gateway.demo import fake_id_number
from gateway.identity import check_resident_id
from gateway.runtime import Runtime
from tests.conftest import application
from tests.handout_fixtures import quiet_runtime


@pytest.fixture
async def runtime(example_config: Config) -> AsyncIterator[Runtime]:
    async with quiet_runtime(example_config) as rt:
        yield rt


async def post(api: httpx.AsyncClient, headers: dict[str, str], raw: str) -> httpx.Response:
    return await api.post(
        "/v1/applications",
        content=raw.encode(),
        headers={
            **headers,
            "Idempotency-Key": str(uuid.uuid4()),
            "content-type": "application/json",
        },
    )


def with_applicant(**changes: object) -> str:
    body = application()
    body["applicant"] = {**body["applicant"], **changes}
    return json.dumps(body, ensure_ascii=False)


@pytest.mark.parametrize(
    ("id_number", "why"),
    [
        ("110101199003074518", "check digit"),  # one digit off
        ("110101199013074518", "birth date"),  # month 13, right check digit
        ("11010119900307451", "18 long"),
        ("1101011990030745AB", "17 digits"),
    ],
)
async def test_an_invalid_resident_id_number_is_refused(
    api: httpx.AsyncClient, centre_headers: dict[str, str], id_number: str, why: str
) -> None:
    resp = await post(api, centre_headers, with_applicant(id_number=id_number))
    assert resp.status_code == 422, resp.text
    assert resp.json()["errors"][0]["field"] == "applicant.id_number"
    assert why in resp.json()["detail"]
    assert id_number not in resp.text and id_number[-4:] not in resp.text


async def test_valid_numbers_are_accepted_and_other_id_types_are_not_checked(
    api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    for changes in (
        {"id_number": "11010519491231002x"},  # a lower-case check letter X
        {"phone": "+8613912345678"},
        {"phone": "0571-88888888"},
        {"kind": "organization", "id_type": "uscc", "id_number": "91330100MA2XXXXX0K"},
    ):
        resp = await post(api, centre_headers, with_applicant(**changes))
        assert resp.status_code == 201, (changes, resp.text)


@pytest.mark.parametrize("phone", ["12345", "1380013800", "23800138000", "138-0013-800a"])
async def test_an_invalid_phone_number_is_refused(
    api: httpx.AsyncClient, centre_headers: dict[str, str], phone: str
) -> None:
    resp = await post(api, centre_headers, with_applicant(phone=phone))
    assert resp.status_code == 422, resp.text
    assert resp.json()["errors"][0]["field"] == "applicant.phone"
    assert phone not in resp.json()["detail"]


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400"])
async def test_non_finite_numbers_in_a_form_are_refused(
    api: httpx.AsyncClient, centre_headers: dict[str, str], number: str
) -> None:
    raw = json.dumps(application(form={"area": 1})).replace('"area": 1', f'"area": {number}')
    assert number in raw
    resp = await post(api, centre_headers, raw)
    assert resp.status_code == 422, resp.text
    assert resp.json()["errors"][0]["field"] == "form"
    assert "area: not a finite number" in resp.json()["detail"]


def _with_check_digit(body: str) -> str:
    weights = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
    return body + "10X98765432"[sum(int(d) * w for d, w in zip(body, weights, strict=True)) % 11]


def test_a_region_known_only_as_a_province_is_bad_input_not_a_crash() -> None:
    # python-stdnum raises KeyError('county') for 3399xx: intake answered 500 before the fix
    with pytest.raises(ValueError, match="region"):
        check_resident_id(_with_check_digit("33990119900101123"))


def test_the_demo_makes_id_numbers_intake_accepts() -> None:
    rng = random.Random(7)
    for _ in range(500):
        check_resident_id(fake_id_number(rng))
