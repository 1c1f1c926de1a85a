"""Who may act on a case (issue 12 items 6 and 7): every key is a centre's or ops; only the
centre that took an application may change it; its pickup centre may only hand it out."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from gateway.api.app import create_app
from gateway.config.loader import Config, load_config
from gateway.config.models import StaticKey
from gateway.errors import ConfigError
from gateway.runtime import Runtime
from tests.conftest import EXAMPLE, TEST_SECRETS
from tests.handout_fixtures import ID_NUMBER, decide, quiet_runtime, status_of, submit

KeyMaker = Callable[..., Awaitable[dict[str, str]]]
UNSCOPED = "owk_unscoped-key-for-tests"


@pytest.fixture
async def runtime(example_config: Config) -> AsyncIterator[Runtime]:
    async with quiet_runtime(example_config) as rt:
        yield rt


@pytest.mark.parametrize(
    ("scope", "ok"),
    [("", False), ('centre = "C01"\nops = true\n', False), ('centre = "C01"\n', True)],
    ids=["neither", "both", "centre"],
)
def test_check_config_refuses_a_key_with_no_single_scope(
    tmp_path: Path, scope: str, ok: bool
) -> None:
    cfg = tmp_path / "config"
    shutil.copytree(EXAMPLE.parent, cfg)
    toml = cfg / "gateway.toml"
    toml.write_text(
        toml.read_text(encoding="utf-8")
        + f'\n[[gateway.api_keys]]\nname = "desk"\n{scope}key = "${{DESK_KEY}}"\n',
        encoding="utf-8",
    )
    env = {**TEST_SECRETS, "DESK_KEY": UNSCOPED}
    if ok:
        load_config(toml, env=env)
        return
    with pytest.raises(ConfigError) as info:
        load_config(toml, env=env)
    [problem] = info.value.problems
    assert problem.key == "gateway.api_keys.0" and "exactly one of centre" in problem.message


async def test_a_key_scoped_to_nothing_reads_and_changes_nothing(
    runtime: Runtime, api: httpx.AsyncClient, make_key: KeyMaker
) -> None:
    """The attack: such a key (here slipped past check-config) listed every centre's cases and
    withdrew another centre's mail case."""
    c02 = await make_key("C02")
    mailed = await submit(api, c02, delivery={"method": "mail", "address": "某路 1 号"})
    gateway = runtime.config.gateway
    keys = [*gateway.api_keys, StaticKey(name="desk", key=UNSCOPED)]
    runtime.config = dataclasses.replace(
        runtime.config, gateway=gateway.model_copy(update={"api_keys": keys})
    )
    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as rogue:
        auth = {"Authorization": f"Bearer {UNSCOPED}"}
        for method, path in [
            ("GET", "/v1/applications"),
            ("GET", f"/v1/applications/{mailed['id']}"),
            ("POST", f"/v1/applications/{mailed['id']}/withdraw"),
            ("GET", "/v1/pickups"),
        ]:
            resp = await rogue.request(method, path, headers=auth)
            assert resp.status_code == 403, (path, resp.text)
    assert await status_of(api, c02, mailed["id"]) == "received"


async def test_the_pickup_centre_hands_out_but_cannot_change_the_case(
    runtime: Runtime, api: httpx.AsyncClient, make_key: KeyMaker
) -> None:
    c01, c02 = await make_key("C01"), await make_key("C02")
    held = await submit(api, c01, delivery={"method": "pickup", "centre": "C02"})
    for path, body in [
        ("withdraw", {"reason": "not mine to withdraw"}),
        ("supplements", {"materials": ["m-any"]}),
    ]:
        resp = await api.post(f"/v1/applications/{held['id']}/{path}", json=body, headers=c02)
        assert resp.status_code == 403, (path, resp.text)
        assert resp.json()["title"] == "Not the receiving centre"
    assert await status_of(api, c01, held["id"]) == "received"
    await decide(runtime, held["id"])
    mail = await api.post(
        f"/v1/applications/{held['id']}/mail",
        json={"clerk": "x", "tracking_number": "T1", "address": "某路 2 号"},
        headers=c02,
    )
    assert mail.status_code == 403 and mail.json()["title"] == "Not the receiving centre"
    assert await status_of(api, c01, held["id"]) == "ready_for_pickup"
    # what the pickup centre may do: read it and hand it out
    assert (await api.get(f"/v1/applications/{held['id']}", headers=c02)).status_code == 200
    handed = await api.post(
        f"/v1/applications/{held['id']}/collect",
        json={"id_number": ID_NUMBER, "clerk": "c"},
        headers=c02,
    )
    assert handed.status_code == 200


async def test_the_receiving_centre_changes_its_case_wherever_it_is_handed_out(
    runtime: Runtime, api: httpx.AsyncClient, make_key: KeyMaker
) -> None:
    c01 = await make_key("C01")
    held = await submit(api, c01, delivery={"method": "pickup", "centre": "C02"})
    await decide(runtime, held["id"])
    mail = await api.post(
        f"/v1/applications/{held['id']}/mail",
        json={"clerk": "x", "tracking_number": "T1", "address": "某路 2 号"},
        headers=c01,
    )
    assert mail.status_code == 200, mail.text
    other = await submit(api, c01, delivery={"method": "pickup", "centre": "C02"})
    withdrawn = await api.post(f"/v1/applications/{other['id']}/withdraw", headers=c01)
    assert withdrawn.status_code == 200 and withdrawn.json()["status"] == "withdrawn"
