"""Result documents and handing out: ready_for_pickup after a decision with its documents,
listing per centre, download with the hash checked, collect by ID number or pickup code,
mailing through delivery methods; each idempotent and recorded."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from gateway.config.loader import Config
from gateway.runtime import Runtime
from tests.handout_fixtures import CERTIFICATE, ID_NUMBER, decide, quiet_runtime, status_of, submit

KeyMaker = Callable[..., Awaitable[dict[str, str]]]


@pytest.fixture
async def runtime(example_config: Config) -> AsyncIterator[Runtime]:
    """No simulated departments needed: their answers are applied directly."""
    async with quiet_runtime(example_config) as rt:
        yield rt


async def test_201_carries_a_pickup_code(
    api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    accepted = await submit(api, centre_headers)
    code = accepted["pickup_code"]
    assert len(code) == 8 and code.isalnum() and code.upper() == code


async def test_approval_with_document_becomes_ready_and_is_listed(
    api: httpx.AsyncClient, runtime: Runtime, centre_headers: dict[str, str]
) -> None:
    app = await submit(api, centre_headers)
    assert await decide(runtime, app["id"]) == ["approved", "ready_for_pickup"]
    case = (await api.get(f"/v1/applications/{app['id']}", headers=centre_headers)).json()
    assert case["status"] == "ready_for_pickup"
    [doc] = case["documents"]
    assert doc["sha256"] == hashlib.sha256(CERTIFICATE).hexdigest()
    assert doc["size"] == len(CERTIFICATE)

    listed = (await api.get("/v1/pickups", headers=centre_headers)).json()["items"]
    assert [p["id"] for p in listed] == [app["id"]]
    assert listed[0]["centre"] == "C01" and listed[0]["method"] == "pickup"
    assert listed[0]["applicant"]["id_number"] != ID_NUMBER  # masked

    got = await api.get(doc["download"], headers=centre_headers)
    assert got.status_code == 200
    assert got.content == CERTIFICATE
    assert got.headers["content-type"] == "application/pdf"
    assert got.headers["x-content-sha256"] == doc["sha256"]


async def test_approval_without_document_waits_for_it(
    api: httpx.AsyncClient, runtime: Runtime, centre_headers: dict[str, str]
) -> None:
    app = await submit(api, centre_headers)
    assert await decide(runtime, app["id"], document=None) == ["approved"]
    assert (await api.get("/v1/pickups", headers=centre_headers)).json()["items"] == []
    # the certificate comes in a later message with the same status
    assert await decide(runtime, app["id"]) == ["ready_for_pickup"]
    assert await status_of(api, centre_headers, app["id"]) == "ready_for_pickup"


async def test_a_case_from_before_handovers_gets_its_row_when_it_becomes_ready(
    api: httpx.AsyncClient, runtime: Runtime, centre_headers: dict[str, str]
) -> None:
    """The decided cases' handover rows and documents are read together; a case with no
    handover row (stored before handovers existed) is asked for its documents alone, waits
    without one and gets its row when it becomes ready."""
    from sqlalchemy import delete, select

    from gateway.store.tables import handovers

    old, waits, new = [await submit(api, centre_headers) for _ in range(3)]
    async with runtime.engine.begin() as conn:
        gone = handovers.c.application_id.in_([old["id"], waits["id"]])
        await conn.execute(delete(handovers).where(gone))
    assert await decide(runtime, waits["id"], document=None) == ["approved"]
    assert await decide(runtime, old["id"]) == ["approved", "ready_for_pickup"]
    assert await decide(runtime, new["id"]) == ["approved", "ready_for_pickup"]
    async with runtime.engine.connect() as conn:
        rows = {
            r.application_id: r
            for r in (await conn.execute(select(handovers))).all()
            if r.application_id in (old["id"], waits["id"])
        }
    assert list(rows) == [old["id"]]  # made when it became ready; the waiting case has none
    row = rows[old["id"]]
    assert row.centre == "C01" and row.method == "pickup" and row.ready_at is not None


async def test_refusal_is_ready_at_once_and_documents_are_not_listed_twice(
    api: httpx.AsyncClient, runtime: Runtime, centre_headers: dict[str, str]
) -> None:
    app = await submit(api, centre_headers)
    assert await decide(runtime, app["id"], "4", document=b"decision letter") == [
        "rejected",
        "ready_for_pickup",
    ]
    assert await decide(runtime, app["id"], "4", document=b"decision letter") == []
    case = (await api.get(f"/v1/applications/{app['id']}", headers=centre_headers)).json()
    assert len(case["documents"]) == 1


async def test_damaged_document_is_refused_not_served(
    api: httpx.AsyncClient, runtime: Runtime, centre_headers: dict[str, str]
) -> None:
    app = await submit(api, centre_headers)
    await decide(runtime, app["id"])
    doc = (await api.get(f"/v1/applications/{app['id']}", headers=centre_headers)).json()[
        "documents"
    ][0]
    runtime.blobs.path(doc["sha256"]).write_bytes(b"tampered")
    got = await api.get(doc["download"], headers=centre_headers)
    assert got.status_code == 500
    assert got.headers["content-type"] == "application/problem+json"
    assert "does not match" in got.json()["detail"]
    missing = await api.get(f"/v1/applications/{app['id']}/documents/dnope", headers=centre_headers)
    assert missing.status_code == 404 and missing.json()["errors"][0]["field"] == "doc_id"


async def test_collect_with_id_number_is_recorded_and_idempotent(
    api: httpx.AsyncClient, runtime: Runtime, centre_headers: dict[str, str]
) -> None:
    app = await submit(api, centre_headers)
    await decide(runtime, app["id"])
    url = f"/v1/applications/{app['id']}/collect"
    body = {"id_number": ID_NUMBER.lower().replace("8", "8"), "clerk": "clerk07", "window": "W03"}
    first = await api.post(url, json=body, headers=centre_headers)
    assert first.status_code == 200, first.text
    record = first.json()
    assert record["status"] == "collected" and record["outcome"] == "collected"
    assert record["handed_out_by"] == "C01/clerk07" and record["window"] == "W03"
    assert record["verified_with"] == "id_number"
    assert ID_NUMBER not in first.text
    again = await api.post(url, json=body, headers=centre_headers)
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.json() == record
    history = (await api.get(f"/v1/applications/{app['id']}", headers=centre_headers)).json()[
        "history"
    ]
    assert [e["to_status"] for e in history].count("collected") == 1
    assert (await api.get("/v1/pickups", headers=centre_headers)).json()["items"] == []


async def test_collect_with_pickup_code(
    api: httpx.AsyncClient, runtime: Runtime, centre_headers: dict[str, str]
) -> None:
    app = await submit(api, centre_headers)
    await decide(runtime, app["id"])
    resp = await api.post(
        f"/v1/applications/{app['id']}/collect",
        json={"pickup_code": app["pickup_code"].lower(), "clerk": "c1"},
        headers=centre_headers,
    )
    assert resp.status_code == 200 and resp.json()["verified_with"] == "pickup_code"


async def test_wrong_identity_is_refused_without_echo_and_codes_lock(
    api: httpx.AsyncClient, runtime: Runtime, centre_headers: dict[str, str]
) -> None:
    app = await submit(api, centre_headers)
    await decide(runtime, app["id"])
    url = f"/v1/applications/{app['id']}/collect"
    wrong_id = "110101199003071234"
    resp = await api.post(url, json={"id_number": wrong_id, "clerk": "c"}, headers=centre_headers)
    assert resp.status_code == 403
    assert resp.json()["errors"][0]["field"] == "id_number"
    assert wrong_id not in resp.text and ID_NUMBER not in resp.text
    for _ in range(5):
        bad = await api.post(
            url, json={"pickup_code": "ZZZZZZZZ", "clerk": "c"}, headers=centre_headers
        )
        assert bad.status_code == 403 and "ZZZZZZZZ" not in bad.text
    locked = await api.post(
        url, json={"pickup_code": app["pickup_code"], "clerk": "c"}, headers=centre_headers
    )
    assert locked.status_code == 403 and "too often" in locked.json()["detail"]
    assert await status_of(api, centre_headers, app["id"]) == "ready_for_pickup"
    ok = await api.post(url, json={"id_number": ID_NUMBER, "clerk": "c"}, headers=centre_headers)
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"clerk": "c"}, "id_number"),
        ({"clerk": "c", "id_number": ID_NUMBER, "pickup_code": "ABCDEFGH"}, "id_number"),
        ({"id_number": ID_NUMBER}, "clerk"),
    ],
)
async def test_collect_problems_name_the_field(
    api: httpx.AsyncClient,
    runtime: Runtime,
    centre_headers: dict[str, str],
    body: dict[str, str],
    field: str,
) -> None:
    app = await submit(api, centre_headers)
    await decide(runtime, app["id"])
    resp = await api.post(
        f"/v1/applications/{app['id']}/collect", json=body, headers=centre_headers
    )
    assert resp.status_code == 422
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.json()["errors"][0]["field"] == field
    assert ID_NUMBER not in resp.text


async def test_not_ready_cannot_be_collected(
    api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    app = await submit(api, centre_headers)
    resp = await api.post(
        f"/v1/applications/{app['id']}/collect",
        json={"id_number": ID_NUMBER, "clerk": "c"},
        headers=centre_headers,
    )
    assert resp.status_code == 409 and "received" in resp.json()["detail"]


async def test_mail_manual_needs_tracking_number_then_records_it(
    api: httpx.AsyncClient, runtime: Runtime, centre_headers: dict[str, str]
) -> None:
    app = await submit(
        api, centre_headers, delivery={"method": "mail", "address": "东城区青石路1号"}
    )
    await decide(runtime, app["id"])
    listed = (await api.get("/v1/pickups", headers=centre_headers)).json()["items"]
    assert listed[0]["method"] == "mail" and listed[0]["address"] == "东城区青石路1号"
    url = f"/v1/applications/{app['id']}/mail"
    missing = await api.post(url, json={"clerk": "c"}, headers=centre_headers)
    assert missing.status_code == 422 and missing.json()["errors"][0]["field"] == "tracking_number"
    unknown = await api.post(url, json={"clerk": "c", "method": "pigeon"}, headers=centre_headers)
    assert unknown.status_code == 422 and "manual" in unknown.json()["detail"]
    body = {"clerk": "c2", "tracking_number": "EMS123456789CN", "carrier": "EMS"}
    mailed = await api.post(url, json=body, headers=centre_headers)
    assert mailed.status_code == 200, mailed.text
    assert mailed.json()["tracking_number"] == "EMS123456789CN"
    assert mailed.json()["status"] == "mailed"
    again = await api.post(url, json=body, headers=centre_headers)
    assert again.json() == mailed.json() and again.headers["idempotent-replayed"] == "true"
    collect = await api.post(
        f"/v1/applications/{app['id']}/collect",
        json={"id_number": ID_NUMBER, "clerk": "c"},
        headers=centre_headers,
    )
    assert collect.status_code == 409


async def test_mail_without_address_anywhere_names_the_field(
    api: httpx.AsyncClient, runtime: Runtime, centre_headers: dict[str, str]
) -> None:
    app = await submit(api, centre_headers)
    await decide(runtime, app["id"])
    resp = await api.post(
        f"/v1/applications/{app['id']}/mail",
        json={"clerk": "c", "tracking_number": "T1"},
        headers=centre_headers,
    )
    assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "address"


async def test_pickup_at_another_centre_is_listed_there(
    api: httpx.AsyncClient, runtime: Runtime, make_key: KeyMaker
) -> None:
    c01, c02 = await make_key("C01"), await make_key("C02")
    app = await submit(api, c01, delivery={"method": "pickup", "centre": "C02"})
    await decide(runtime, app["id"])
    assert (await api.get("/v1/pickups", headers=c01)).json()["items"] == []
    assert [p["id"] for p in (await api.get("/v1/pickups", headers=c02)).json()["items"]] == [
        app["id"]
    ]
    # the receiving centre sees the case but does not hand it out
    resp = await api.post(
        f"/v1/applications/{app['id']}/collect",
        json={"id_number": ID_NUMBER, "clerk": "c"},
        headers=c01,
    )
    assert resp.status_code == 403
    ok = await api.post(
        f"/v1/applications/{app['id']}/collect",
        json={"id_number": ID_NUMBER, "clerk": "c"},
        headers=c02,
    )
    assert ok.status_code == 200 and ok.json()["centre"] == "C02"
