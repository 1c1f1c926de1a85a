"""Run the land registry in a copy of the demo city: ``python run_in_demo_city.py CONFIG WORK``.

Copies the gateway's example config (CONFIG, e.g. ``config/``) to WORK, adds the ``rer``
department and its matter, starts the simulated registry, and takes two applications through
the gateway: intake, dispatch, polling. Prints one JSON line with what happened.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import sys
from pathlib import Path

from gateway_landreg.simulator import running_simulator

from gateway.config.loader import load_config
from gateway.demo import use_demo_secrets
from gateway.poller import poll_sweep
from gateway.runtime import Runtime
from gateway.testing import case_status, dispatch, submit_application

HERE = Path(__file__).parent
MATTER = "XK00900000,不动产首次登记,rer,339900,10,不动产登记申请书;权属来源证明,true,\n"
FINAL = {"ready_for_pickup", "approved", "rejected"}


async def main(source: Path, work: Path) -> dict[str, object]:
    city = work / "config"
    shutil.copytree(source, city)
    async with running_simulator() as registry:
        department = (HERE / "rer.toml").read_text(encoding="utf-8")
        department = department.replace("port = 17001", f"port = {registry.port}")
        (city / "departments" / "rer.toml").write_text(department, encoding="utf-8")
        with (city / "matters.csv").open("a", encoding="utf-8") as catalog:
            catalog.write(MATTER)
        use_demo_secrets()
        config = load_config(city / "gateway.toml")
        settings = config.gateway.model_copy(
            update={"database_url": f"sqlite+aiosqlite:///{work / 'gw.db'}", "data_dir": work}
        )
        runtime = Runtime(dataclasses.replace(config, gateway=settings))
        await runtime.prepare_database()
        try:
            # accepted at the city centre for a district: any centre, any region (同城通办)
            granted = await submit_application(runtime, matter_code="XK00900000", region="339901")
            denied = await submit_application(
                runtime, matter_code="XK00900000", region="339900", form={"deny": True}
            )
            await dispatch(runtime)
            delivered = [await case_status(runtime, a) for a in (granted, denied)]
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            statuses = delivered
            while not FINAL.issuperset(statuses) and loop.time() < deadline:
                await poll_sweep(runtime)
                statuses = [await case_status(runtime, a) for a in (granted, denied)]
                await asyncio.sleep(0.05)  # the poll interval: wait for the cases to fall due
            return {
                "connector": type(runtime.connectors["rer"]).__name__,
                "delivered": delivered,
                "final": statuses,
                "registry_cases": {c.id: c.status for c in registry.cases.values()},
            }
        finally:
            await runtime.aclose()


if __name__ == "__main__":
    result = asyncio.run(main(Path(sys.argv[1]), Path(sys.argv[2])))
    print(json.dumps(result, ensure_ascii=False))
