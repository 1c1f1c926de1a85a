"""The ops console in a real headless Chromium (Debian's ``chromium``, driven by Playwright),
against a real gateway (API + daemon on loopback) and the example city's simulated departments.

Skips, saying why, when /usr/bin/chromium or Playwright is missing (.ci/run installs both).
Screenshots of every page at 1280x800 go to ``screenshots/console/`` (ignored by git).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import update

from gateway.config.loader import Config
from gateway.runtime import Runtime
from gateway.service import running
from gateway.simulators.city import SimulatedCity, simulated_city
from gateway.store.clients import create_client
from gateway.store.tables import applications
from tests.conftest import FAST, ROOT, TEST_SECRETS, application
from tests.test_crash_recovery import write_config

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "screenshots" / "console"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_MS = 60_000  # generous: the machine is shared; a true condition returns at once

playwright_api = pytest.importorskip(
    "playwright.async_api", reason="Playwright for Python is not installed (pip install playwright)"
)
pytestmark = [
    # a browser and a whole gateway per test: about 20 s each on a busy machine (make test-slow)
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="no /usr/bin/chromium: apt-get install -y chromium (.ci/run does)",
    ),
]


@dataclass
class Console:
    runtime: Runtime
    city: SimulatedCity
    url: str
    ops_key: str
    page: Any
    requests: list[str] = field(default_factory=list)

    async def signin(self, key: str | None = None) -> None:
        await self.page.goto(f"{self.url}/console/signin")
        await self.page.fill("#key", key or self.ops_key)
        await self.page.click("form.signin button[type=submit]")

    async def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        await self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)

    async def control(self, department: str, mode: str) -> None:
        async with httpx.AsyncClient() as client:
            r = await client.post(f"{self.city.urls[department]}/_control", json={"mode": mode})
            r.raise_for_status()


@pytest.fixture
async def console(example_config: Config) -> AsyncIterator[Console]:
    quick = {
        "retry": {"max_attempts": 1, "in_call_attempts": 1},
        "timeout_seconds": 5.0,
        "sync": {"poll_ceiling_seconds": 0.2, "feed_poll_seconds": 0.2},
    }
    async with simulated_city(
        example_config,
        simulator_overrides={"amr": FAST, "hrss": FAST},
        department_overrides={
            "amr": {"poll_interval_seconds": 0.2, **quick},
            "hrss": {"poll_interval_seconds": 0.2, **quick},
        },
    ) as city:
        runtime = Runtime(city.config)
        try:
            async with running(runtime, api=True, daemon=True, host="127.0.0.1", port=0) as (
                _dispatcher,
                url,
            ):
                assert url is not None
                async with runtime.engine.begin() as conn:
                    _c, key = await create_client(conn, name="duty ops", centre=None, ops=True)
                async with playwright_api.async_playwright() as pw:
                    browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
                    context = await browser.new_context(viewport={"width": 1280, "height": 800})
                    page = await context.new_page()
                    page.set_default_timeout(WAIT_MS)
                    made = Console(runtime, city, url, key, page)
                    page.on("request", lambda request: made.requests.append(request.url))
                    try:
                        yield made
                    finally:
                        await browser.close()
                # nothing the browser asked for left loopback (no CDN, no fonts, no telemetry)
                hosts = {urlsplit(u).hostname for u in made.requests if u.startswith("http")}
                assert hosts <= {"127.0.0.1"}, hosts
        finally:
            await runtime.aclose()


async def _submit(c: Console, headers: dict[str, str], key: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=c.url) as client:
        r = await client.post(
            "/v1/applications", json=application(), headers={**headers, "Idempotency-Key": key}
        )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def _centre_headers(c: Console) -> dict[str, str]:
    async with c.runtime.engine.begin() as conn:
        _c, key = await create_client(conn, name="desk", centre="C01", ops=False)
    return {"Authorization": f"Bearer {key}"}


async def test_sign_in_every_page_and_keyboard(console: Console) -> None:
    page = console.page
    await console.signin()
    await page.wait_for_url("**/console/overview")
    for code in console.runtime.config.departments:
        await page.wait_for_selector(f'tr[data-department="{code}"]')
    assert await page.get_attribute("html", "lang") == "zh-CN"
    await console.shot("overview")
    # keyboard: the first Tab reaches the skip link, which lands on the main content
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.className") == "skip"
    for path, name in [
        ("/console/failures", "failures"),
        ("/console/cases", "cases"),
        ("/console/board", "board"),
        ("/console/keys", "keys"),
        ("/console/plugins", "plugins"),
        ("/console/departments/amr", "department"),
    ]:
        await page.goto(console.url + path)
        await page.wait_for_selector("main h1")
        await console.shot(name)
    # English on request, and the overview still fits a 1024-wide screen
    await page.click("header .tools a[lang=en]")
    await page.wait_for_selector("html[lang=en]")
    await page.goto(console.url + "/console/overview")
    await page.set_viewport_size({"width": 1024, "height": 768})
    assert await page.evaluate("document.documentElement.scrollWidth") <= 1024
    await console.shot("overview-en-1024")
    await page.click("header form[action='/console/signout'] button")
    await page.wait_for_url("**/console/signin")


async def test_a_department_goes_red_while_down_and_green_again(console: Console) -> None:
    page = console.page
    await console.signin()
    row = 'tr[data-department="amr"]'
    await page.wait_for_selector(f'{row}[data-health="up"]')
    await console.control("amr", "fail503")
    # no reload: the table refreshes itself
    await page.wait_for_selector(f'{row}[data-health="down"]')
    await console.shot("overview-department-down")
    await console.control("amr", "ok")
    await page.wait_for_selector(f'{row}[data-health="up"]')


async def test_replay_a_failed_case_and_watch_it_reach_delivered(console: Console) -> None:
    page = console.page
    headers = await _centre_headers(console)
    dept = "amr"
    await console.control(dept, "fail503")
    made = await _submit(console, headers, "browser-replay")
    assert made["department"] == dept
    await console.signin()
    await page.goto(f"{console.url}/console/failures?department={dept}")
    box = f'#failures input[value="{made["id"]}"]'
    while not await page.query_selector(box):  # failed after its one attempt
        await asyncio.sleep(0.2)
        await page.reload()
    await console.control(dept, "ok")
    await page.check(box)
    await console.shot("failures-selected")
    await page.click("#failures ~ button[type=submit]")
    await page.wait_for_selector("#confirm")
    await page.click("#confirm")
    await page.wait_for_selector("#replayed li.ok")
    await page.goto(f"{console.url}/console/cases?q={made['receipt_number']}")
    while "→ delivered" not in await page.inner_text("#history"):
        await asyncio.sleep(0.2)
        await page.reload()
    await console.shot("case")
    await page.goto(f"{console.url}/console/failures?department={dept}")
    assert await page.query_selector(box) is None  # it left the list


async def test_revoke_a_key_and_the_api_refuses_it(console: Console) -> None:
    page = console.page
    await console.signin()
    await page.goto(f"{console.url}/console/keys")
    await page.fill("#name", "front desk 9")
    await page.select_option("#scope", "centre")
    await page.click("form[action='/console/keys'] button[type=submit]")
    key = (await page.inner_text("#new-key")).strip()
    async with httpx.AsyncClient(base_url=console.url) as client:
        headers = {"Authorization": f"Bearer {key}"}
        assert (await client.get("/v1/matters", headers=headers)).status_code == 200
        row = page.locator("#keys tr", has_text="front desk 9")
        await row.locator("button.danger").click()
        await page.wait_for_selector("#keys tr:has-text('front desk 9') >> text=/已吊销|revoked/")
        assert (await client.get("/v1/matters", headers=headers)).status_code == 401


async def test_the_board_equals_gateway_deadlines(console: Console, tmp_path: Path) -> None:
    headers = await _centre_headers(console)
    # the department takes its time: the cases stay open, so two can be overdue
    state = console.city.states["amr"]
    state.settings = state.settings.model_copy(update={"decision_delay_seconds": 3600.0})
    ids = [(await _submit(console, headers, f"board-{i}"))["id"] for i in range(3)]
    async with console.runtime.engine.begin() as conn:  # two of them long overdue
        await conn.execute(
            update(applications)
            .where(applications.c.id.in_(ids[:2]))
            .values(promised_by=dt.date(2026, 1, 5))
        )
    config = write_config(tmp_path / "cli", console.runtime.config.gateway.database_url, {})
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "deadlines",
        "--json",
        "--within-days",
        "2",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **TEST_SECRETS},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-2000:]
    cli = json.loads(out)
    page = console.page
    await console.signin()
    await page.goto(f"{console.url}/console/board")
    await console.shot("board-with-overdue")
    for code in console.runtime.config.departments:
        overdue = sum(d["department"] == code for d in cli["overdue"])
        soon = sum(d["department"] == code for d in cli["due_soon"])
        row = page.locator(f'#board tr[data-department="{code}"]')
        assert await row.get_attribute("data-overdue") == str(overdue), code
        assert await row.get_attribute("data-due-soon") == str(soon), code
        cells = await row.locator("td.num").all_inner_texts()
        assert cells[-2:] == [str(overdue), str(soon)], code
    assert {d["application_id"] for d in cli["overdue"]} >= set(ids[:2])
