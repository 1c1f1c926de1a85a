"""What the pickup window sees (decision, opinion, documents, what to bring), and the promised
date: estimated while the holiday calendar does not cover it, final (with an event) once it
does."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway import workdays
from gateway.config.loader import Config
from gateway.connector import CaseUpdate
from gateway.deadlines import refresh_promised_dates
from gateway.events import Source
from gateway.runtime import Runtime
from gateway.updates import apply_case_update
from tests.handout_fixtures import CERTIFICATE, decide, quiet_runtime, submit
from tests.loopback import loopback_api


@pytest.fixture
async def runtime(example_config: Config) -> AsyncIterator[Runtime]:
    async with quiet_runtime(example_config) as rt:
        yield rt


@pytest.fixture
async def api(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway on a loopback port (not in-process)."""
    async with loopback_api(runtime) as client:
        yield client


async def refuse(runtime: Runtime, app_id: str, status: str, opinion: str) -> None:
    await apply_case_update(
        runtime,
        app_id,
        CaseUpdate(case_id=f"AMR-{app_id[-6:]}", status=status, detail=opinion),
        source=Source.POLL,
        actor="poll/amr",
    )


async def test_pickup_items_say_what_was_decided_and_what_to_bring(
    api: httpx.AsyncClient, runtime: Runtime, centre_headers: dict[str, str]
) -> None:
    approved = await submit(api, centre_headers)
    await decide(runtime, approved["id"])
    rejected = await submit(api, centre_headers)
    # the opinion quotes an ID number: it is shown masked
    await refuse(
        runtime, rejected["id"], "4", "经营场所与申请人110101199003074514登记不符，不予许可"
    )
    mailed = await submit(
        api, centre_headers, delivery={"method": "mail", "address": "示范市青石路1号"}
    )
    await decide(runtime, mailed["id"])

    page = (await api.get("/v1/pickups", headers=centre_headers)).json()
    items = {i["id"]: i for i in page["items"]}
    assert set(items) == {approved["id"], rejected["id"], mailed["id"]}

    one = items[approved["id"]]
    assert one["decision"] == "approved" and one["decided_at"]
    assert one["opinion"] == "准予许可" and one["notice"] is None
    [doc] = one["documents"]
    assert doc["size"] == len(CERTIFICATE) and doc["name"] == "licence.pdf"
    assert [b["code"] for b in one["bring"]] == ["id_document", "proxy_authorisation"]
    assert "ID document" in one["bring"][0]["text"]  # the api fixture asks for English

    no = items[rejected["id"]]
    assert no["decision"] == "rejected" and no["documents"] == []
    assert no["opinion"] == "经营场所与申请人1101**********4514登记不符，不予许可"
    assert no["notice"].startswith("Refused")
    assert no["bring"]

    post = items[mailed["id"]]
    assert post["method"] == "mail" and post["bring"] == []
    assert f"/v1/applications/{mailed['id']}/mail" in post["notice"]

    zh = await api.get("/v1/pickups", headers={**centre_headers, "Accept-Language": "zh-CN"})
    zh_items = {i["id"]: i for i in zh.json()["items"]}
    assert zh_items[rejected["id"]]["notice"].startswith("不予许可")
    assert zh_items[approved["id"]]["bring"][0]["text"].startswith("申请人身份证件")


async def test_not_accepted_is_listed_as_such(
    api: httpx.AsyncClient, runtime: Runtime, centre_headers: dict[str, str]
) -> None:
    app = await submit(api, centre_headers)
    await refuse(runtime, app["id"], "not_accepted", "不属于本部门职权范围")
    [item] = (await api.get("/v1/pickups", headers=centre_headers)).json()["items"]
    assert item["decision"] == "not_accepted"
    assert item["opinion"] == "不属于本部门职权范围"
    assert item["notice"].startswith("Not accepted")


async def test_a_promise_beyond_the_calendar_is_estimated_until_the_calendar_covers_it(
    api: httpx.AsyncClient,
    runtime: Runtime,
    centre_headers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    covered = workdays.is_workday

    def old_calendar(day: dt.date) -> tuple[bool, bool]:
        # as if the installed calendar ended before today: weekends only, not covered
        return day.weekday() < 5, False

    monkeypatch.setattr(workdays, "is_workday", old_calendar)
    accepted = await submit(api, centre_headers)
    assert accepted["promised_by_final"] is False
    case = (await api.get(f"/v1/applications/{accepted['id']}", headers=centre_headers)).json()
    assert case["promised_by_final"] is False
    assert await refresh_promised_dates(runtime) == 0  # still not covered: nothing to settle

    monkeypatch.setattr(workdays, "is_workday", covered)  # a newer calendar is installed
    assert await refresh_promised_dates(runtime) == 1
    assert await refresh_promised_dates(runtime) == 0
    case = (await api.get(f"/v1/applications/{accepted['id']}", headers=centre_headers)).json()
    assert case["promised_by_final"] is True
    created = dt.datetime.fromisoformat(case["created_at"]).astimezone(
        dt.timezone(dt.timedelta(hours=8))
    )
    due, _ = workdays.add_workdays(created.date(), 1)  # GG00301000: 1 working day
    assert case["promised_by"] == due.isoformat()
    event = case["history"][-1]
    assert event["source"] == "deadlines"
    assert event["from_status"] == event["to_status"] == case["status"]
    assert event["detail"] == {
        "promised_by": due.isoformat(),
        "estimated": accepted["promised_by"],
        "promised_by_final": True,
    }
    assert case["status"] == "received"
