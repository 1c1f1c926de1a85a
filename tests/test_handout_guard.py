"""Collecting a result is no ID-number oracle (issue 12 item 4): failed identity checks are
counted per case and per key, then refused with 429 whatever is guessed; a collected case
answers a repeat only to the same kind of check."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from gateway import verification
from gateway.config.loader import Config
from gateway.runtime import Runtime
from tests.handout_fixtures import ID_NUMBER, decide, quiet_runtime, status_of, submit

KeyMaker = Callable[..., Awaitable[dict[str, str]]]
WRONG = "110101199003071234"


@pytest.fixture
async def runtime(example_config: Config) -> AsyncIterator[Runtime]:
    async with quiet_runtime(example_config) as rt:
        yield rt


async def ready_case(api: httpx.AsyncClient, runtime: Runtime, headers: dict[str, str]) -> dict:
    app = await submit(api, headers)
    await decide(runtime, app["id"])
    return app


async def collect(
    api: httpx.AsyncClient, headers: dict[str, str], app_id: str, **proof: str
) -> httpx.Response:
    return await api.post(
        f"/v1/applications/{app_id}/collect", json={**proof, "clerk": "c"}, headers=headers
    )


async def test_wrong_id_numbers_lock_the_case_then_every_guess_gets_429(
    api: httpx.AsyncClient, runtime: Runtime, centre_headers: dict[str, str]
) -> None:
    app = await ready_case(api, runtime, centre_headers)
    for _ in range(verification.PER_CASE):
        assert (await collect(api, centre_headers, app["id"], id_number=WRONG)).status_code == 403
    for guess in (WRONG, ID_NUMBER):  # the right one too: the answer says nothing
        locked = await collect(api, centre_headers, app["id"], id_number=guess)
        assert locked.status_code == 429, locked.text
        assert locked.json()["errors"][0]["field"] == "id_number"
        assert 0 < int(locked.headers["Retry-After"]) <= verification.WINDOW.total_seconds()
    assert await status_of(api, centre_headers, app["id"]) == "ready_for_pickup"
    # the pickup code is a separate secret with its own lock: it still hands the result out
    by_code = await collect(api, centre_headers, app["id"], pickup_code=app["pickup_code"])
    assert by_code.status_code == 200, by_code.text


async def test_a_key_is_bounded_across_cases(
    api: httpx.AsyncClient, runtime: Runtime, make_key: KeyMaker
) -> None:
    guesser, colleague = await make_key("C01"), await make_key("C01")
    apps = [await ready_case(api, runtime, guesser) for _ in range(5)]
    per_case = verification.PER_KEY // len(apps)
    assert per_case < verification.PER_CASE
    for app in apps:
        for _ in range(per_case):
            wrong = await collect(api, guesser, app["id"], id_number=WRONG)
            assert wrong.status_code == 403
    fresh = await ready_case(api, runtime, guesser)
    refused = await collect(api, guesser, fresh["id"], id_number=ID_NUMBER)
    assert refused.status_code == 429 and "API key" in refused.json()["detail"]
    # another key of the centre is not held up by this one's failures
    ok = await collect(api, colleague, fresh["id"], id_number=ID_NUMBER)
    assert ok.status_code == 200


async def test_a_collected_case_answers_a_repeat_only_to_the_same_check(
    api: httpx.AsyncClient, runtime: Runtime, centre_headers: dict[str, str]
) -> None:
    app = await ready_case(api, runtime, centre_headers)
    assert (await collect(api, centre_headers, app["id"], id_number=ID_NUMBER)).status_code == 200
    repeat = await collect(api, centre_headers, app["id"], id_number=ID_NUMBER)
    assert repeat.status_code == 200 and repeat.headers["Idempotent-Replayed"] == "true"
    for code in (app["pickup_code"], "ZZZZZZZZ"):  # another kind of check: not compared
        other = await collect(api, centre_headers, app["id"], pickup_code=code)
        assert other.status_code == 409 and other.json()["title"] == "Already collected"
    # wrong ID numbers on a collected case count like any others
    for _ in range(verification.PER_CASE):
        assert (await collect(api, centre_headers, app["id"], id_number=WRONG)).status_code == 403
    locked = await collect(api, centre_headers, app["id"], id_number=ID_NUMBER)
    assert locked.status_code == 429
    assert await status_of(api, centre_headers, app["id"]) == "collected"
