"""Not a benchmark: docs/ops.md's console screenshots (1280x800, Debian's headless chromium)
over the console benchmark's data (``benchmarks/console.py``: 20,000 cases over 180 days), with
the example city's simulated departments up and the gateway served on loopback.

    python benchmarks/console_shots.py docs/images/console
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import console as bench  # noqa: E402  (sets the example's secrets)

PAGES = {
    "overview.png": "/console/overview",
    "department.png": "/console/departments/amr",
    "board.png": "/console/board",
}


async def shoot(db: Path, out: Path) -> None:
    from playwright import async_api

    from gateway import clocks
    from gateway.config.loader import load_config
    from gateway.runtime import Runtime
    from gateway.service import running
    from gateway.simulators.city import simulated_city
    from gateway.store.clients import create_client

    config = load_config(bench.EXAMPLE)
    settings = config.gateway.model_copy(
        update={"database_url": f"sqlite+aiosqlite:///{db}", "data_dir": db.parent / "var"}
    )
    async with simulated_city(dataclasses.replace(config, gateway=settings)) as city:
        runtime = Runtime(city.config)
        try:
            async with running(runtime, api=True, daemon=False, host="127.0.0.1", port=0) as (
                _dispatcher,
                url,
            ):
                await clocks.refresh(runtime)
                async with runtime.engine.begin() as conn:
                    _c, key = await create_client(conn, name="duty ops", centre=None, ops=True)
                async with async_api.async_playwright() as pw:
                    browser = await pw.chromium.launch(
                        executable_path="/usr/bin/chromium", args=["--no-sandbox"]
                    )
                    context = await browser.new_context(viewport={"width": 1280, "height": 800})
                    page = await context.new_page()
                    await page.goto(f"{url}/console/signin")
                    await page.fill("#key", key)
                    await page.click("form.signin button[type=submit]")
                    await page.wait_for_url("**/console/overview")
                    for name, path in PAGES.items():
                        await page.goto(f"{url}{path}")
                        await page.screenshot(path=str(out / name))
                    await browser.close()
        finally:
            await runtime.aclose()


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    db = Path(tempfile.mkdtemp(prefix="gateway-console-shots-")) / "gateway.db"
    bench.build(db, 20_000)  # before the event loop: it migrates with one of its own
    asyncio.run(shoot(db, out))


if __name__ == "__main__":
    main()
