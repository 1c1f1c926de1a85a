"""The ops console (/console) over the API app: sign-in and sessions, CSRF, the pages and the
figures they show. Driven in a real browser by tests/test_console_browser.py."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from gateway import clocks, deadlines
from gateway.console import figures, i18n, svg
from gateway.console.settings import HIDDEN, shown_settings
from gateway.pii import mask_id
from gateway.runtime import Runtime
from gateway.store.tables import audit_log
from tests.conftest import TEST_SECRETS, application, wait_for

CONSOLE = Path(__file__).resolve().parent.parent / "gateway" / "console"
MakeKey = Callable[..., Awaitable[dict[str, str]]]


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html[:500]
    return found.group(1)


async def signin(api: httpx.AsyncClient, key: str) -> httpx.Response:
    form = await api.get("/console/signin")
    assert form.status_code == 200
    return await api.post("/console/signin", data={"key": key, "csrf": _csrf(form.text)})


def _key(headers: dict[str, str]) -> str:
    return headers["Authorization"].removeprefix("Bearer ")


async def test_pages_need_a_session(api: httpx.AsyncClient) -> None:
    for path in ("/console/overview", "/console/failures", "/console/keys", "/console/board"):
        r = await api.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/console/signin", path


async def test_ops_key_signs_in_with_a_strict_httponly_cookie(
    api: httpx.AsyncClient, ops_headers: dict[str, str]
) -> None:
    r = await signin(api, _key(ops_headers))
    assert r.status_code == 303 and r.headers["location"] == "/console/overview"
    cookie = next(c for c in r.headers.get_list("set-cookie") if c.startswith("owg_console="))
    lowered = cookie.lower()
    assert "httponly" in lowered and "samesite=strict" in lowered and "path=/console" in lowered
    assert "max-age=" in lowered
    assert _key(ops_headers) not in cookie  # the session id, never the key
    page = await api.get("/console/overview")
    assert page.status_code == 200
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"


async def test_centre_key_and_unknown_key_are_refused(
    api: httpx.AsyncClient, centre_headers: dict[str, str]
) -> None:
    r = await signin(api, _key(centre_headers))
    assert r.status_code == 403 and i18n.MESSAGES["signin.centre"]["zh-CN"] in r.text
    r = await signin(api, "owk_not-a-key")
    assert r.status_code == 401
    assert (await api.get("/console/overview")).status_code == 303


async def test_signin_without_its_csrf_token_is_refused(
    api: httpx.AsyncClient, ops_headers: dict[str, str]
) -> None:
    await api.get("/console/signin")
    r = await api.post("/console/signin", data={"key": _key(ops_headers), "csrf": "forged"})
    assert r.status_code == 403
    assert (await api.get("/console/overview")).status_code == 303


async def test_every_action_needs_the_session_csrf_token(
    api: httpx.AsyncClient, ops_headers: dict[str, str], runtime: Runtime
) -> None:
    await signin(api, _key(ops_headers))
    before = len(await _keys(runtime))
    r = await api.post("/console/keys", data={"name": "x", "scope": "ops", "csrf": "forged"})
    assert r.status_code == 403
    r = await api.post("/console/failures/replay", data={"id": "a1", "confirmed": "yes"})
    assert r.status_code == 403
    r = await api.post("/console/signout", data={})
    assert r.status_code == 403
    assert len(await _keys(runtime)) == before
    assert (await api.get("/console/overview")).status_code == 200  # still signed in


async def _keys(runtime: Runtime) -> list[object]:
    from gateway.store import clients

    async with runtime.engine.connect() as conn:
        return list(await clients.list_keys(conn))


async def test_signout_ends_the_session(
    api: httpx.AsyncClient, ops_headers: dict[str, str]
) -> None:
    await signin(api, _key(ops_headers))
    page = await api.get("/console/overview")
    r = await api.post("/console/signout", data={"csrf": _csrf(page.text)})
    assert r.status_code == 303
    assert (await api.get("/console/overview")).status_code == 303


async def test_revoking_the_signed_in_key_ends_its_session(
    api: httpx.AsyncClient, ops_headers: dict[str, str], runtime: Runtime
) -> None:
    await signin(api, _key(ops_headers))
    page = await api.get("/console/keys")
    mine = re.findall(r'action="/console/keys/([^/"]+)/revoke"', page.text)
    assert mine
    r = await api.post(f"/console/keys/{mine[0]}/revoke", data={"csrf": _csrf(page.text)})
    assert r.status_code == 303
    assert (await api.get("/console/overview")).status_code == 303
    assert (await api.get("/v1/ops/departments", headers=ops_headers)).status_code == 401


async def test_keys_page_creates_a_key_shown_once(
    api: httpx.AsyncClient, ops_headers: dict[str, str]
) -> None:
    await signin(api, _key(ops_headers))
    page = await api.get("/console/keys")
    r = await api.post(
        "/console/keys",
        data={"name": "desk 7", "scope": "centre", "centre": "C01", "csrf": _csrf(page.text)},
    )
    assert r.status_code == 303
    shown = await api.get("/console/keys")
    key = re.search(r'<code id="new-key">([^<]+)</code>', shown.text)
    assert key
    matters = await api.get("/v1/matters", headers={"Authorization": f"Bearer {key.group(1)}"})
    assert matters.status_code == 200
    assert key.group(1) not in (await api.get("/console/keys")).text  # once


async def test_overview_has_a_row_per_department_and_a_fragment(
    api: httpx.AsyncClient, ops_headers: dict[str, str], runtime: Runtime
) -> None:
    await signin(api, _key(ops_headers))
    page = await api.get("/console/overview")
    for code in runtime.config.departments:
        assert f'data-department="{code}"' in page.text
    fragment = await api.get("/console/overview/table")
    assert fragment.text.lstrip().startswith('<table class="grid" id="overview-table"')
    assert "<html" not in fragment.text


async def test_overview_counts_a_delivery_and_the_case_lookup_is_audited(
    api: httpx.AsyncClient,
    ops_headers: dict[str, str],
    centre_headers: dict[str, str],
    runtime: Runtime,
) -> None:
    from gateway.testing.gateway import dispatch

    r = await api.post(
        "/v1/applications",
        json=application(),
        headers={**centre_headers, "Idempotency-Key": "console-1"},
    )
    assert r.status_code == 201, r.text
    app_id, dept = r.json()["id"], r.json()["department"]

    async def delivered() -> bool:
        await dispatch(runtime)
        rows = {row.code: row for row in await figures.overview(runtime)}
        return rows[dept].delivered_today == 1 and sum(rows[dept].hourly) == 1

    await wait_for(delivered)
    await signin(api, _key(ops_headers))
    page = await api.get("/console/cases", params={"q": r.json()["receipt_number"]})
    assert app_id in page.text
    person = application()["applicant"]
    assert person["id_number"] not in page.text and person["phone"] not in page.text
    assert mask_id(person["id_number"]) in page.text
    async with runtime.engine.connect() as conn:
        rows = (await conn.execute(select(audit_log))).all()
    lookups = [r for r in rows if r.channel == "console" and r.action == "console case lookup"]
    assert any(app_id in r.applications for r in lookups)


async def test_board_figures_are_the_deadline_figures(
    api: httpx.AsyncClient, ops_headers: dict[str, str], runtime: Runtime
) -> None:
    await signin(api, _key(ops_headers))
    overdue, soon = await deadlines.listing(runtime, within_days=figures.DUE_SOON_DAYS)
    page = await api.get("/console/board")
    assert page.status_code == 200
    for code in runtime.config.departments:
        n = sum(d.department == code for d in overdue)
        m = sum(d.department == code for d in soon)
        assert f'data-department="{code}" data-overdue="{n}" data-due-soon="{m}"' in page.text
    csv = await api.get("/console/board.csv")
    assert csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines()[0].startswith("rank,department,name,decided,on_time")
    assert len(csv.text.splitlines()) == 1 + len(runtime.config.departments)


async def test_department_page_hides_secrets(
    api: httpx.AsyncClient, ops_headers: dict[str, str], runtime: Runtime
) -> None:
    await signin(api, _key(ops_headers))
    for code in runtime.config.departments:
        page = await api.get(f"/console/departments/{code}")
        assert page.status_code == 200
        for secret in TEST_SECRETS.values():
            assert secret not in page.text
    assert (await api.get("/console/departments/nope")).status_code == 404


def test_settings_hide_secret_values(runtime: Runtime) -> None:
    amr = runtime.config.departments["amr"]
    shown = dict(shown_settings(amr))
    assert shown["options.auth.token"] == HIDDEN
    assert shown["callback_secrets"] == str([HIDDEN])
    for secret in TEST_SECRETS.values():
        assert all(secret not in v for v in shown.values())
    assert shown["code"] == "amr"


def test_both_languages_have_every_message() -> None:
    for key, entry in i18n.MESSAGES.items():
        assert set(entry) == set(i18n.LANGUAGES), key
    used = set()
    for template in (CONSOLE / "templates").glob("*.html"):
        used |= set(re.findall(r"t\('([a-z_.]+)'\)", template.read_text()))
    assert used - set(i18n.MESSAGES) == set()


def test_nothing_is_fetched_from_elsewhere() -> None:
    for path in [*(CONSOLE / "templates").glob("*.html"), *(CONSOLE / "static").iterdir()]:
        text = path.read_text()
        assert not re.search(r"(src|href)=\"(https?:)?//", text), path
        assert "<script>" not in text and " style=" not in text, path  # CSP: no inline


def test_sparkline_scales_to_the_largest_value() -> None:
    drawn = str(svg.sparkline([0, 5, 10], "x", width=100, height=24))
    assert 'points="0,22 50,12 100,2"' in drawn
    assert "<title>x</title>" in drawn


@pytest.mark.parametrize("values, p50, p95", [([1.0], 1.0, 1.0), ([3.0, 1.0, 2.0, 4.0], 2.0, 4.0)])
def test_percentiles_are_nearest_rank(values: list[float], p50: float, p95: float) -> None:
    assert figures.percentile(values, 50) == p50
    assert figures.percentile(values, 95) == p95


def test_the_ops_guide_explains_every_overview_column_and_the_export() -> None:
    from gateway.console import sessions
    from gateway.console.routes import CSV_COLUMNS

    guide = (CONSOLE.parent.parent / "docs" / "ops.md").read_text()
    section = guide.split("## The ops console")[1].split("\n## ")[0]
    table = (CONSOLE / "templates" / "_overview_table.html").read_text()
    for key in re.findall(r"t\('(col\.[a-z_]+)'\)", table):
        if key == "col.department":
            continue
        zh, en = i18n.MESSAGES[key]["zh-CN"], i18n.MESSAGES[key]["en"]
        assert f"| {zh} *{en}* |" in section, key
    assert "`" + ",".join(CSV_COLUMNS) + "`" in section
    assert f"{sessions.IDLE_SECONDS // 60} minutes" in section
    assert f"{sessions.ABSOLUTE_SECONDS // 3600} hours" in section
    assert f"--within-days {figures.DUE_SOON_DAYS}" in section
    for image in re.findall(r"\]\((images/console/[^)]+)\)", section):
        assert (CONSOLE.parent.parent / "docs" / image).is_file(), image


@pytest.mark.parametrize("paused", [False, True])
def test_on_time_uses_the_deadline_clock(paused: bool) -> None:
    import datetime as dt
    from types import SimpleNamespace

    china = deadlines.CHINA
    at = dt.datetime(2026, 11, 2, 9, tzinfo=china)  # a Monday
    history: deadlines.History = (
        [(at, "in_review", "supplement_required"), (at + dt.timedelta(days=9), None, "in_review")]
        if paused
        else []
    )
    row = SimpleNamespace(
        id="a1",
        receipt_number="r",
        department="amr",
        matter_code="m",
        centre="C01",
        status="approved",
        promised_by=dt.date(2026, 11, 6),
    )
    for day in range(1, 30):
        on = dt.date(2026, 11, day)
        expected = deadlines.deadline_of(row, history, on).days_left >= 0
        assert clocks.on_time(row.promised_by, *clocks.clock_of(history), on) == expected, on


async def test_a_session_works_in_every_api_process_and_ends_everywhere(
    api: httpx.AsyncClient, ops_headers: dict[str, str], runtime: Runtime
) -> None:
    import datetime as dt

    from sqlalchemy import update

    from gateway.api.app import create_app
    from gateway.console import sessions
    from gateway.store.tables import console_sessions

    await signin(api, _key(ops_headers))
    cookie = api.cookies[sessions.COOKIE]
    other_runtime = Runtime(runtime.config)  # another API process on the same database
    try:
        await other_runtime.prepare_database()
        other = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(other_runtime)),
            base_url="http://gateway.test",
            cookies={sessions.COOKIE: cookie},
        )
        async with other:
            page = await other.get("/console/keys")
            assert page.status_code == 200
            # a key made through one process is shown once, by the next page, in another
            made = await other.post(
                "/console/keys", data={"name": "desk 9", "scope": "ops", "csrf": _csrf(page.text)}
            )
            assert made.status_code == 303
            shown = re.search(
                r'<code id="new-key">([^<]+)</code>', (await api.get("/console/keys")).text
            )
            assert shown
            async with runtime.engine.connect() as conn:
                stored = (await conn.execute(select(console_sessions))).all()
            text = repr(stored)
            assert cookie not in text and _key(ops_headers) not in text  # only hashes kept
            assert shown.group(1) not in text  # the new key is kept only sealed, and now gone
            # idle too long: refused everywhere
            async with runtime.engine.begin() as conn:
                await conn.execute(
                    update(console_sessions).values(
                        seen_at=dt.datetime.now(dt.UTC)
                        - dt.timedelta(seconds=sessions.IDLE_SECONDS + 5)
                    )
                )
            assert (await other.get("/console/overview")).status_code == 303
            assert (await api.get("/console/overview")).status_code == 303
            # signed out in one process: signed out in the other
            await signin(api, _key(ops_headers))
            other.cookies.set(sessions.COOKIE, api.cookies[sessions.COOKIE])
            page = await other.get("/console/overview")
            assert page.status_code == 200
            out = await other.post("/console/signout", data={"csrf": _csrf(page.text)})
            assert out.status_code == 303
            assert (await api.get("/console/overview")).status_code == 303
    finally:
        await other_runtime.aclose()
