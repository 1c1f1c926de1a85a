"""Quotas (issue 12 item 10): per-key rates on intake and uploads (429 + Retry-After, per key
class), and a per-key upload quota; a refused request stores nothing."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from gateway.api.app import create_app
from gateway.config.loader import Config
from gateway.config.models import QuotaSettings
from gateway.runtime import Runtime
from tests.conftest import application
from tests.handout_fixtures import quiet_runtime

KeyMaker = Callable[..., Awaitable[dict[str, str]]]


@pytest.fixture
async def runtime(example_config: Config) -> AsyncIterator[Runtime]:
    async with quiet_runtime(example_config) as rt:
        yield rt


@pytest.fixture
async def limited(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """Slow rates (a bucket of 2, refilled at 0.01/s: nothing refills during the test)."""
    gateway = runtime.config.gateway
    quotas = QuotaSettings(
        centre_intake_per_second=0.01,
        centre_uploads_per_second=0.01,
        ops_intake_per_second=0.01,
        ops_uploads_per_second=0.01,
        burst_seconds=200,
        upload_bytes_per_day=100,
    )
    api = gateway.api.model_copy(update={"quotas": quotas})
    runtime.config = dataclasses.replace(
        runtime.config, gateway=gateway.model_copy(update={"api": api})
    )
    transport = httpx.ASGITransport(app=create_app(runtime))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        yield client


async def submit(api: httpx.AsyncClient, headers: dict[str, str]) -> httpx.Response:
    return await api.post(
        "/v1/applications",
        json=application(),
        headers={**headers, "Idempotency-Key": str(uuid.uuid4())},
    )


async def test_intake_over_the_rate_is_429_with_retry_after_per_key(
    limited: httpx.AsyncClient, make_key: KeyMaker
) -> None:
    a, b = await make_key("C01"), await make_key("C01")
    assert [(await submit(limited, a)).status_code for _ in range(2)] == [201, 201]
    refused = await submit(limited, a)
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["code"] == "too_many_requests"
    assert (await submit(limited, b)).status_code == 201  # another key has its own bucket
    listed = (await limited.get("/v1/applications", headers=a)).json()["items"]
    assert len(listed) == 3  # the refused one was not stored


async def test_uploads_have_a_rate_and_a_daily_quota(
    limited: httpx.AsyncClient, make_key: KeyMaker
) -> None:
    key = await make_key("C01")

    async def upload(size: int) -> httpx.Response:
        return await limited.post(
            "/v1/materials",
            files={"file": ("a.pdf", b"%" * size, "application/pdf")},
            headers=key,
        )

    assert (await upload(60)).status_code == 201
    over = await upload(60)  # 120 bytes in 24 h > 100
    assert over.status_code == 413 and over.json()["code"] == "upload_quota_exceeded"
    assert (await upload(10)).status_code == 429  # the two tokens are spent


async def test_uploads_nothing_refers_to_expire(
    api: httpx.AsyncClient, runtime: Runtime, centre_headers: dict[str, str]
) -> None:
    from gateway import housekeeping
    from gateway.clock import now

    async def upload(content: bytes) -> dict[str, str]:
        resp = await api.post(
            "/v1/materials",
            files={"file": ("a.pdf", content, "application/pdf")},
            headers=centre_headers,
        )
        assert resp.status_code == 201, resp.text
        body: dict[str, str] = resp.json()
        return body

    used, unused = await upload(b"%PDF used"), await upload(b"%PDF never used")
    submitted = await api.post(
        "/v1/applications",
        json=application(materials=[used["id"]]),
        headers={**centre_headers, "Idempotency-Key": "with-material"},
    )
    assert submitted.status_code == 201
    assert runtime.blobs.path(unused["sha256"]).exists()
    # as housekeeping sees it once unused_upload_hours have passed
    later = now() + dt.timedelta(seconds=5)
    assert await housekeeping.expire_uploads(runtime, later) == 1
    assert not runtime.blobs.path(unused["sha256"]).exists()
    assert runtime.blobs.path(used["sha256"]).exists()
    refused = await api.post(
        "/v1/applications",
        json=application(materials=[unused["id"]]),
        headers={**centre_headers, "Idempotency-Key": "with-expired"},
    )
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "materials[0]"
    assert await housekeeping.expire_uploads(runtime, later) == 0
