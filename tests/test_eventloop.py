"""The stack every gateway process runs on (gateway/eventloop.py): uvloop and httptools by
default, asyncio and h11 when GATEWAY_SERVER_STACK=plain, a clear refusal of anything else."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import typer

from gateway.cli.common import run as run_command
from gateway.eventloop import STACK_ENV, http_parser, loop_factory, run, stack
from gateway.serving import serve_asgi


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_standard_stack_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STACK_ENV, raising=False)
    assert stack() == "standard"
    assert http_parser() == "httptools"
    assert run(_loop_module()).startswith("uvloop")
    # the commands run their work on it too
    assert run_command(_loop_module()).startswith("uvloop")


def test_plain_stack_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STACK_ENV, " Plain ")
    assert stack() == "plain"
    assert loop_factory() is None
    assert http_parser() == "h11"
    assert run(_loop_module()).startswith("asyncio")


def test_a_misspelt_stack_is_refused_with_its_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(STACK_ENV, "fast")
    with pytest.raises(ValueError, match="GATEWAY_SERVER_STACK='fast': expected 'standard' or"):
        stack()
    work = _loop_module()
    with pytest.raises(typer.Exit) as exited:
        run_command(work)
    work.close()
    assert exited.value.exit_code == 2
    assert "GATEWAY_SERVER_STACK='fast'" in capsys.readouterr().err


@pytest.mark.parametrize("chosen", ["standard", "plain"])
def test_served_apps_answer_on_either_parser(monkeypatch: pytest.MonkeyPatch, chosen: str) -> None:
    """serve_asgi takes the stack's parser; an app answers the same on both."""
    monkeypatch.setenv(STACK_ENV, chosen)

    async def app(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        assert scope["type"] in ("http", "lifespan")
        if scope["type"] == "lifespan":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b"ok"})  # type: ignore[operator]

    async def go() -> tuple[int, bytes, str]:
        async with (
            serve_asgi(app, lifespan="off", startup_timeout=120) as url,
            httpx.AsyncClient() as client,
        ):
            answer = await client.get(url)
        return answer.status_code, answer.content, type(asyncio.get_running_loop()).__module__

    status, body, loop = run(go())
    assert (status, body) == (200, b"ok")
    assert loop.startswith("uvloop" if chosen == "standard" else "asyncio")
