"""The served OpenAPI document is valid and complete, and a typed client generated from it
(openapi-python-client, generated here into a temporary folder, never committed) runs the
guide's walkthrough against a gateway on loopback: a front-desk team can generate its client
instead of hand-writing one."""

from __future__ import annotations

import asyncio
import importlib
import io
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from gateway.api.app import create_app
from gateway.config.loader import Config
from gateway.runtime import Runtime
from gateway.serving import serve_asgi
from tests.handout_fixtures import CERTIFICATE, decide, quiet_runtime

GENERATOR = Path(sys.executable).with_name("openapi-python-client")
PACKAGE = "onewindow_client"


@pytest.fixture
async def runtime(example_config: Config) -> AsyncIterator[Runtime]:
    async with quiet_runtime(example_config) as rt:
        yield rt


async def test_openapi_document_is_valid_and_complete(api: httpx.AsyncClient) -> None:
    spec = (await api.get("/openapi.json")).json()
    validate(spec)
    ops = [
        (path, method, op) for path, item in spec["paths"].items() for method, op in item.items()
    ]
    assert len(ops) >= 40
    ids = [op["operationId"] for _p, _m, op in ops]
    assert len(ids) == len(set(ids)), "operation ids name the generated client's functions"
    for path, method, op in ops:
        responses = op["responses"]
        assert any(code.startswith("2") for code in responses), (method, path)
        problem = responses["default"]["content"]["application/problem+json"]["schema"]
        assert problem == {"$ref": "#/components/schemas/Problem"}
        if "422" in responses:
            assert "application/problem+json" in responses["422"]["content"], (method, path)
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas  # never sent: problems are
    assert set(schemas["Problem"]["properties"]) >= {"type", "code", "errors", "detail"}
    for name in ("ApplicationPage", "PickupPage", "SubscriptionOut", "ApplicationAccepted"):
        assert name in schemas


def _generate(spec: Path, out: Path) -> None:
    config = out.parent / "client.yaml"
    config.write_text(
        f"post_hooks: []\nproject_name_override: onewindow-client\n"
        f"package_name_override: {PACKAGE}\n"
    )
    done = subprocess.run(
        [
            str(GENERATOR),
            *("generate", "--path", str(spec), "--config", str(config)),
            *("--meta", "none", "--output-path", str(out / PACKAGE)),
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    assert b"Warning" not in done.stdout, done.stdout.decode()


def _client_module(root: Path, name: str) -> Any:
    for loaded in [m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + ".")]:
        del sys.modules[loaded]
    sys.path.insert(0, str(root))
    try:
        return importlib.import_module(f"{PACKAGE}.{name}")
    finally:
        sys.path.remove(str(root))


async def test_a_generated_client_runs_the_walkthrough(
    api: httpx.AsyncClient,
    runtime: Runtime,
    centre_headers: dict[str, str],
    tmp_path: Path,
) -> None:
    spec = tmp_path / "openapi.json"
    spec.write_bytes((await api.get("/openapi.json")).content)
    await asyncio.to_thread(_generate, spec, tmp_path / "gen")
    root = tmp_path / "gen"
    client_mod = _client_module(root, "client")
    models = importlib.import_module(f"{PACKAGE}.models")
    types = importlib.import_module(f"{PACKAGE}.types")

    def op(group: str, name: str) -> Any:
        return importlib.import_module(f"{PACKAGE}.api.{group}.{name}")

    token = centre_headers["Authorization"].removeprefix("Bearer ")
    async with serve_asgi(create_app(runtime)) as base:
        client = client_mod.AuthenticatedClient(
            base_url=base, token=token, headers={"Accept-Language": "en"}
        )
        async with client as c:
            await _walkthrough(c, runtime, models, types, op)


async def _walkthrough(c: Any, runtime: Runtime, models: Any, types: Any, op: Any) -> None:
    """docs/front-desk-api.md's steps, through the generated client's typed functions."""
    # the catalogue, paged
    matters = await op("matters", "list_matters").asyncio(client=c, limit=2)
    assert len(matters.items) == 2 and matters.next_cursor
    # 1. submit
    body = models.ApplicationIn.from_dict(
        {
            "matter_code": "GG00301000",
            "region": "339900",
            "applicant": {
                "name": "张三",
                "id_number": "110101199003074514",
                "phone": "13800138000",
            },
            "delivery": {"method": "pickup", "centre": "C01"},
            "window": "W03",
            "clerk": "clerk07",
        }
    )
    made = await op("applications", "submit_application").asyncio_detailed(
        client=c, body=body, idempotency_key=str(uuid.uuid4())
    )
    assert made.status_code == 201
    accepted = made.parsed
    assert accepted.status.value == "received" and accepted.promised_by_final in (True, False)
    # 2. follow it, found by its receipt number
    found = await op("applications", "list_applications").asyncio(
        client=c, receipt_number=accepted.receipt_number
    )
    assert [a.id for a in found.items] == [accepted.id] and found.next_cursor is None
    case = await op("applications", "get_application").asyncio(client=c, app_id=accepted.id)
    assert case.status.value == "received" and case.applicant["id_number"].startswith("1101*")
    # 3. the department asks for more; the clerk uploads and hands it in
    await decide(runtime, accepted.id, "3", document=None, supplement_items=["营业执照副本"])
    case = await op("applications", "get_application").asyncio(client=c, app_id=accepted.id)
    assert case.supplement_items == ["营业执照副本"]
    upload = models.BodyUploadMaterial(
        file=types.File(
            payload=io.BytesIO(b"%PDF-1.4 scan"),
            file_name="licence-copy.pdf",
            mime_type="application/pdf",
        )
    )
    material = await op("materials", "upload_material").asyncio(client=c, body=upload)
    assert material.filename == "licence-copy.pdf"
    supplement = await op("applications", "add_supplement").asyncio(
        client=c,
        app_id=accepted.id,
        body=models.SupplementIn.from_dict({"materials": [material.id], "clerk": "clerk07"}),
    )
    assert supplement.version == 2
    # 4. the result is ready
    await decide(runtime, accepted.id, "9")
    pickups = await op("pickup", "list_pickups").asyncio(client=c)
    [item] = pickups.items
    assert item.decision.value == "approved" and item.documents[0].size == len(CERTIFICATE)
    assert item.bring[0].code == "id_document"
    doc = await op("pickup", "download").asyncio_detailed(
        client=c, app_id=accepted.id, doc_id=item.documents[0].id
    )
    assert doc.status_code == 200 and doc.content == CERTIFICATE
    # 5. hand it out
    handed = await op("pickup", "collect").asyncio(
        client=c,
        app_id=accepted.id,
        body=models.CollectIn.from_dict(
            {"pickup_code": accepted.pickup_code, "clerk": "clerk12", "window": "W05"}
        ),
    )
    assert handed.outcome.value == "collected"
    # an error is a typed problem with its code
    missing = await op("applications", "get_application").asyncio_detailed(
        client=c, app_id="a-missing"
    )
    assert missing.status_code == 404
    assert missing.parsed.code == "unknown_application"
    # status subscriptions
    sub = await op("webhooks", "subscribe").asyncio(
        client=c, body=models.SubscriptionIn.from_dict({"url": "http://127.0.0.1:9/h"})
    )
    assert sub.secret and sub.scope.value == "centre"
