"""API keys (issue 12 item 12 and key management): a revoked key is refused at once by every
process; a rotated key's successor works at once and the old one until its grace ends;
`gateway keys create|list|revoke|rotate` and the ops endpoints do the same."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from gateway.api.app import create_app
from gateway.cli import app as cli
from gateway.config.loader import Config
from gateway.runtime import Runtime
from tests.cli_support import isolated_logging
from tests.conftest import EXAMPLE


@pytest.fixture
async def second_process(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """Another API process on the same database: its own runtime, engine and key ring."""
    other = Runtime(runtime.config)
    await other.prepare_database()
    transport = httpx.ASGITransport(app=create_app(other))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://b.test") as client:
            yield client
    finally:
        await other.aclose()


async def key_id_of(api: httpx.AsyncClient, ops: dict[str, str], name: str) -> str:
    keys = (await api.get("/v1/ops/keys", params={"limit": "500"}, headers=ops)).json()["items"]
    [found] = [k for k in keys if k["name"] == name]
    key_id: str = found["id"]
    return key_id


async def new_key(api: httpx.AsyncClient, ops: dict[str, str], name: str) -> dict[str, str]:
    made = await api.post("/v1/ops/keys", json={"name": name, "centre": "C01"}, headers=ops)
    assert made.status_code == 201, made.text
    assert made.json()["info"]["active"] is True
    return {"Authorization": f"Bearer {made.json()['key']}"}


async def test_a_revoked_key_is_refused_at_once_by_every_process(
    api: httpx.AsyncClient, second_process: httpx.AsyncClient, ops_headers: dict[str, str]
) -> None:
    desk = await new_key(api, ops_headers, "desk-1")
    for process in (api, second_process):  # both know the key now (a cache would keep it)
        assert (await process.get("/v1/applications", headers=desk)).status_code == 200
    key_id = await key_id_of(api, ops_headers, "desk-1")
    revoked = await api.post(f"/v1/ops/keys/{key_id}/revoke", headers=ops_headers)
    assert revoked.status_code == 200 and revoked.json()["active"] is False
    for process in (second_process, api):
        refused = await process.get("/v1/applications", headers=desk)
        assert refused.status_code == 401, refused.text
        assert refused.json()["detail"] == "this API key is not known or was revoked"


async def test_rotation_new_key_at_once_old_key_until_the_grace_ends(
    api: httpx.AsyncClient, second_process: httpx.AsyncClient, ops_headers: dict[str, str]
) -> None:
    old = await new_key(api, ops_headers, "desk-2")
    key_id = await key_id_of(api, ops_headers, "desk-2")
    rotated = await api.post(
        f"/v1/ops/keys/{key_id}/rotate", json={"grace_seconds": 3600}, headers=ops_headers
    )
    assert rotated.status_code == 200, rotated.text
    body = rotated.json()
    assert body["old"]["replaced_by"] == body["new"]["id"] and body["old"]["active"] is True
    assert body["new"]["centre"] == "C01" and body["new"]["name"] == "desk-2"
    new = {"Authorization": f"Bearer {body['key']}"}
    for process in (api, second_process):
        assert (await process.get("/v1/applications", headers=new)).status_code == 200
        assert (await process.get("/v1/applications", headers=old)).status_code == 200
    # rotating the new key without grace: it stops at once, its successor works
    again = await api.post(
        f"/v1/ops/keys/{body['new']['id']}/rotate",
        json={"grace_seconds": 0},
        headers=ops_headers,
    )
    newest = {"Authorization": f"Bearer {again.json()['key']}"}
    assert (await second_process.get("/v1/applications", headers=new)).status_code == 401
    assert (await second_process.get("/v1/applications", headers=newest)).status_code == 200
    # a key that no longer works cannot be rotated; an unknown one is a 404
    stale = await api.post(f"/v1/ops/keys/{body['new']['id']}/rotate", headers=ops_headers)
    assert stale.status_code == 409
    unknown = await api.post("/v1/ops/keys/c-nope/revoke", headers=ops_headers)
    assert unknown.status_code == 404 and unknown.json()["errors"][0]["field"] == "key_id"


async def test_key_endpoints_need_an_ops_key_and_a_single_scope(
    api: httpx.AsyncClient, centre_headers: dict[str, str], ops_headers: dict[str, str]
) -> None:
    assert (await api.get("/v1/ops/keys", headers=centre_headers)).status_code == 403
    made = await api.post(
        "/v1/ops/keys", json={"name": "x", "centre": "C01"}, headers=centre_headers
    )
    assert made.status_code == 403
    for bad in ({"name": "x"}, {"name": "x", "centre": "C01", "ops": True}):
        resp = await api.post("/v1/ops/keys", json=bad, headers=ops_headers)
        assert resp.status_code == 422, resp.text
    unknown = await api.post(
        "/v1/ops/keys", json={"name": "x", "centre": "C99"}, headers=ops_headers
    )
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "centre"
    listed = (await api.get("/v1/ops/keys", headers=ops_headers)).json()
    assert all("key" not in k and "key_hash" not in k for k in listed)


@pytest.fixture
def _logging() -> Iterator[None]:
    with isolated_logging():
        yield


@pytest.mark.usefixtures("_logging")
def test_cli_create_list_rotate_revoke(tmp_path: Path, example_config: Config) -> None:
    cfg = tmp_path / "config"
    shutil.copytree(EXAMPLE.parent, cfg)
    toml = cfg / "gateway.toml"
    text = toml.read_text(encoding="utf-8")
    toml.write_text(
        text.replace(
            'database_url = "sqlite+aiosqlite:///var/gateway.db"',
            f'database_url = "sqlite+aiosqlite:///{tmp_path / "cli.db"}"',
        ),
        encoding="utf-8",
    )
    runner = CliRunner()

    def gateway(*args: str) -> str:
        result = runner.invoke(cli, [*args, "--config", str(toml)])
        assert result.exit_code == 0, result.output
        return result.output

    created = gateway("keys", "create", "--centre", "C02", "--name", "desk-c02")
    key = created.strip().splitlines()[-1]
    assert key.startswith("owk_")
    [listed] = json.loads(gateway("keys", "list", "--json"))
    assert listed["centre"] == "C02" and listed["active"] and key not in json.dumps(listed)
    rotated = gateway("keys", "rotate", listed["id"], "--grace", "2h")
    assert rotated.strip().splitlines()[-1].startswith("owk_") or "owk_" in rotated
    after = {k["id"]: k for k in json.loads(gateway("keys", "list", "--json"))}
    old = after[listed["id"]]
    assert old["active"] and old["expires_at"] and old["replaced_by"] in after
    gateway("keys", "revoke", listed["id"])
    assert not {k["id"]: k for k in json.loads(gateway("keys", "list", "--json"))}[listed["id"]][
        "active"
    ]
    bad = runner.invoke(
        cli, ["keys", "rotate", listed["id"], "--grace", "90d", "--config", str(toml)]
    )
    assert bad.exit_code != 0
    missing = runner.invoke(cli, ["keys", "revoke", "c-nope", "--config", str(toml)])
    assert missing.exit_code == 1 and "unknown key id 'c-nope'" in missing.output
    assert "gateway keys list" in missing.output
    # a mistyped id (one character off) is named back; every id is not listed
    typo = listed["id"][:-1] + ("x" if listed["id"][-1] != "x" else "y")
    for verb in ("revoke", "rotate"):
        mistyped = runner.invoke(cli, ["keys", verb, typo, "--config", str(toml)])
        assert mistyped.exit_code == 1, mistyped.output
        assert f"Did you mean '{listed['id']}'?" in mistyped.output
