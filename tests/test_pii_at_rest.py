"""Field-level encryption of ID and phone numbers at rest (issue 12 item 14): with
[gateway.security] pii_key the database holds neither in clear, while the API, hand-out by ID
number and what the department receives are unchanged; rows written before the key still read;
a missing or wrong key is refused at start naming the setting, never read as garbage."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from gateway.api.app import create_app
from gateway.cli import app as cli
from gateway.config.loader import Config, load_config
from gateway.config.models import SecuritySettings
from gateway.dispatcher import Dispatcher
from gateway.errors import ConfigError
from gateway.pii import mask_id, mask_phone
from gateway.pii_crypto import PREFIX, PiiCipher, key_id, parse_key
from gateway.runtime import Runtime
from gateway.simulators.city import simulated_city
from gateway.store import cases
from gateway.store.clients import create_client
from gateway.store.db import create_engine
from gateway.testing.fake import FakeConnector
from tests.conftest import EXAMPLE, FAST, TEST_SECRETS, application, wait_for
from tests.handout_fixtures import ID_NUMBER, decide

PHONE = "13800138000"
SECURITY = '\n[gateway.security]\npii_key = "${GATEWAY_PII_KEY}"\n'
ROTATING = 'pii_previous_keys = ["${GATEWAY_PII_KEY_OLD}"]\n'
KEY_A = base64.b64encode(bytes(range(32))).decode()
KEY_B = bytes(range(100, 132)).hex()


def keyed(config: Config, key: str | None, *previous: str) -> Config:
    security = SecuritySettings(
        pii_key=SecretStr(key) if key else None,
        pii_previous_keys=[SecretStr(p) for p in previous],
    )
    return dataclasses.replace(
        config, gateway=config.gateway.model_copy(update={"security": security})
    )


@contextlib.asynccontextmanager
async def serving(config: Config) -> AsyncIterator[tuple[Runtime, httpx.AsyncClient, dict]]:
    rt = Runtime(config)
    await rt.prepare_database()
    async with rt.engine.begin() as conn:
        _c, key = await create_client(conn, name="C01", centre="C01", ops=False)
    transport = httpx.ASGITransport(app=create_app(rt))
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://gateway.test", headers={"Accept-Language": "en"}
        ) as api:
            yield rt, api, {"Authorization": f"Bearer {key}"}
    finally:
        await rt.aclose()


async def submit(api: httpx.AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    resp = await api.post(
        "/v1/applications",
        json=application(),
        headers={**headers, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def stored_applicants(config: Config) -> dict[str, Any]:
    """The applicant column as the database holds it, read without the gateway's types."""
    engine = create_engine(config.gateway.database_url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT id, applicant FROM applications"))).all()
    finally:
        await engine.dispose()
    return {r[0]: r[1] if isinstance(r[1], dict) else json.loads(r[1]) for r in rows}


def database_bytes(config: Config) -> bytes:
    """Every byte of a SQLite database: the file and its write-ahead log."""
    path = Path(str(make_url(config.gateway.database_url).database))
    return b"".join(p.read_bytes() for p in (path, Path(f"{path}-wal")) if p.exists())


async def test_with_a_key_nothing_at_rest_is_clear_and_every_answer_is_unchanged(
    example_config: Config,
) -> None:
    config = keyed(example_config, KEY_A)
    async with serving(config) as (rt, api, headers):
        app = await submit(api, headers)
        shown = (await api.get(f"/v1/applications/{app['id']}", headers=headers)).json()
        assert shown["applicant"]["id_number"] == mask_id(ID_NUMBER)
        assert shown["applicant"]["phone"] == mask_phone(PHONE)
        await decide(rt, app["id"])
        wrong = await api.post(
            f"/v1/applications/{app['id']}/collect",
            json={"id_number": "110101199003071234", "clerk": "c"},
            headers=headers,
        )
        assert wrong.status_code == 403, wrong.text
        right = await api.post(
            f"/v1/applications/{app['id']}/collect",
            json={"id_number": ID_NUMBER, "clerk": "c"},
            headers=headers,
        )
        assert right.status_code == 200, right.text
        assert right.json()["verified_with"] == "id_number"
    stored = (await stored_applicants(config))[app["id"]]
    assert stored["name"] == "张三"
    for field, clear in (("id_number", ID_NUMBER), ("phone", PHONE)):
        assert stored[field].startswith(f"{PREFIX}{key_id(parse_key(KEY_A))}:")
        assert clear not in json.dumps(stored)
    if config.gateway.database_url.startswith("sqlite"):
        raw = database_bytes(config)
        assert app["id"].encode() in raw  # the row is there...
        assert ID_NUMBER.encode() not in raw and PHONE.encode() not in raw  # ...sealed


async def test_without_a_key_the_numbers_are_stored_as_before(example_config: Config) -> None:
    async with serving(example_config) as (_rt, api, headers):
        app = await submit(api, headers)
    stored = (await stored_applicants(example_config))[app["id"]]
    assert (stored["id_number"], stored["phone"]) == (ID_NUMBER, PHONE)


async def test_rows_written_before_the_key_still_read_and_hand_out(
    example_config: Config,
) -> None:
    async with serving(example_config) as (_rt, api, headers):
        old = await submit(api, headers)
    async with serving(keyed(example_config, KEY_A)) as (rt, api, headers):
        new = await submit(api, headers)
        for app in (old, new):
            shown = (await api.get(f"/v1/applications/{app['id']}", headers=headers)).json()
            assert shown["applicant"]["id_number"] == mask_id(ID_NUMBER)
        await decide(rt, old["id"])
        collected = await api.post(
            f"/v1/applications/{old['id']}/collect",
            json={"id_number": ID_NUMBER, "clerk": "c"},
            headers=headers,
        )
        assert collected.status_code == 200, collected.text
    stored = await stored_applicants(example_config)
    assert stored[old["id"]]["id_number"] == ID_NUMBER  # as it was written
    assert stored[new["id"]]["id_number"].startswith(PREFIX)


async def test_a_missing_or_wrong_key_is_refused_at_start_naming_the_setting(
    example_config: Config,
) -> None:
    async with serving(keyed(example_config, KEY_A)) as (_rt, api, headers):
        app = await submit(api, headers)
    for config in (example_config, keyed(example_config, KEY_B)):
        rt = Runtime(config)
        try:
            with pytest.raises(ConfigError) as refused:
                await rt.prepare_database()
            assert "pii_key" in str(refused.value)
            assert key_id(parse_key(KEY_A)) in str(refused.value)
            # and a process that skipped the check still never passes a ciphertext on
            async with rt.engine.connect() as conn:
                with pytest.raises(ConfigError, match="pii_key"):
                    await cases.get_application(conn, app["id"])
        finally:
            await rt.aclose()
    assert KEY_A not in str(refused.value) and KEY_B not in str(refused.value)


async def test_a_rotated_key_reads_what_the_previous_one_wrote(example_config: Config) -> None:
    async with serving(keyed(example_config, KEY_A)) as (_rt, api, headers):
        old = await submit(api, headers)
    async with serving(keyed(example_config, KEY_B, KEY_A)) as (_rt, api, headers):
        new = await submit(api, headers)
        shown = (await api.get(f"/v1/applications/{old['id']}", headers=headers)).json()
        assert shown["applicant"]["phone"] == mask_phone(PHONE)
    stored = await stored_applicants(example_config)
    assert stored[new["id"]]["id_number"].startswith(f"{PREFIX}{key_id(parse_key(KEY_B))}:")


def test_an_altered_ciphertext_is_refused_not_read() -> None:
    cipher = PiiCipher(parse_key(KEY_A))
    sealed = cipher.seal("id_number", ID_NUMBER)
    assert cipher.open("id_number", sealed) == ID_NUMBER
    assert sealed != cipher.seal("id_number", ID_NUMBER)  # a fresh nonce every time
    flipped = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    with pytest.raises(ConfigError, match="does not decrypt"):
        cipher.open("id_number", flipped)
    with pytest.raises(ConfigError, match="does not decrypt"):  # no moving it to phone
        cipher.open("phone", sealed)


def test_check_config_refuses_a_literal_or_malformed_key(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLE.parent, tmp_path / "config")
    path = tmp_path / "config" / "gateway.toml"
    original = path.read_text("utf-8")
    path.write_text(original + f'\n[gateway.security]\npii_key = "{KEY_A}"\n', "utf-8")
    with pytest.raises(ConfigError) as literal:
        load_config(path)
    assert "security.pii_key" in str(literal.value) and "${ENV}" in str(literal.value)
    path.write_text(original + '\n[gateway.security]\npii_key = "${PII}"\n', "utf-8")
    with pytest.raises(ConfigError) as short:
        load_config(path, env={**TEST_SECRETS, "PII": "too-short-a-key"})
    [problem] = short.value.problems
    assert problem.key == "gateway.security.pii_key" and "too-short" not in str(problem)
    loaded = load_config(path, env={**TEST_SECRETS, "PII": KEY_A})
    assert loaded.gateway.security.cipher() is not None


async def test_the_department_receives_the_clear_numbers(example_config: Config) -> None:
    """The envelope every connector is given, and the body on the wire of a REST department."""
    async with serving(keyed(example_config, KEY_A)) as (rt, api, headers):
        fake = FakeConnector.idempotent()
        rt.attach("amr", fake)
        dispatcher = Dispatcher(rt, seed=1)
        task = asyncio.create_task(dispatcher.run())
        try:
            await submit(api, headers)
            await wait_for(lambda: len(fake.submitted) == 1)
        finally:
            await dispatcher.stop(grace_seconds=2)
            await task
    [envelope] = fake.submitted
    assert (envelope.applicant.id_number, envelope.applicant.phone) == (ID_NUMBER, PHONE)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_rest_department_gets_the_clear_id_number_on_the_wire(
    example_config: Config,
) -> None:
    config = keyed(example_config, KEY_A)
    fast = {"amr": FAST, "hrss": FAST}
    async with (
        simulated_city(config, simulator_overrides=fast) as city,
        serving(city.config) as (rt, api, headers),
    ):
        dispatcher = Dispatcher(rt, seed=1)
        task = asyncio.create_task(dispatcher.run())
        try:
            app = await submit(api, headers)
            await wait_for(lambda: city.states["amr"].stats()["cases"] == 1)
        finally:
            await dispatcher.stop(grace_seconds=2)
            await task
    [case] = city.states["amr"].cases.values()
    assert case.body["applicant"]["idNo"] == ID_NUMBER
    assert case.body["ref"] == app["receipt_number"]


def config_file(example_config: Config, tmp_path: Path, security: str = "") -> Path:
    """A copy of the example config on the test's database, with ``security`` appended."""
    shutil.copytree(EXAMPLE.parent, tmp_path / "config", dirs_exist_ok=True)
    path = tmp_path / "config" / "gateway.toml"
    toml, n = re.subn(
        r'^database_url = "[^"]*"',
        f'database_url = "{example_config.gateway.database_url}"',
        (EXAMPLE.parent / "gateway.toml").read_text("utf-8"),
        flags=re.M,
    )
    assert n == 1
    path.write_text(toml + security, "utf-8")
    return path


async def gateway_cli(*args: str) -> Any:
    command = typer.main.get_command(cli)
    argv = list(args) if isinstance(command, typer.core.TyperGroup) else list(args[1:])
    return await asyncio.to_thread(CliRunner().invoke, cli, argv)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_check_config_says_the_database_needs_the_key(
    example_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serving(keyed(example_config, KEY_A)) as (_rt, api, headers):
        await submit(api, headers)
    path = config_file(example_config, tmp_path)
    without = await gateway_cli("check-config", "--config", str(path))
    assert without.exit_code == 1, without.output
    assert "[gateway.security.pii_key]" in without.output
    assert key_id(parse_key(KEY_A)) in without.output
    path = config_file(example_config, tmp_path, SECURITY)
    monkeypatch.setenv("GATEWAY_PII_KEY", KEY_A)
    keyed_run = await gateway_cli("check-config", "--config", str(path))
    assert keyed_run.exit_code == 0, keyed_run.output


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_reseal_seals_old_rows_with_the_current_key_so_old_keys_can_go(
    example_config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serving(example_config) as (_rt, api, headers):
        clear = await submit(api, headers)
    async with serving(keyed(example_config, KEY_A)) as (_rt, api, headers):
        old_key = await submit(api, headers)
    path = config_file(example_config, tmp_path, SECURITY + ROTATING)
    monkeypatch.setenv("GATEWAY_PII_KEY", KEY_B)
    monkeypatch.setenv("GATEWAY_PII_KEY_OLD", KEY_A)
    done = await gateway_cli("pii", "reseal", "--config", str(path), "--batch", "1")
    assert done.exit_code == 0, done.output
    assert "sealed 2 applicant(s)" in done.output
    stored = await stored_applicants(example_config)
    sealed_b = f"{PREFIX}{key_id(parse_key(KEY_B))}:"
    for app in (clear, old_key):
        assert stored[app["id"]]["id_number"].startswith(sealed_b)
        assert stored[app["id"]]["phone"].startswith(sealed_b)
    # KEY_A is no longer needed: B alone starts, reads and hands out both
    async with serving(keyed(example_config, KEY_B)) as (rt, api, headers):
        await decide(rt, old_key["id"])
        collected = await api.post(
            f"/v1/applications/{old_key['id']}/collect",
            json={"id_number": ID_NUMBER, "clerk": "c"},
            headers=headers,
        )
        assert collected.status_code == 200, collected.text
