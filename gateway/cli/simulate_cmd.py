"""``gateway simulate``: run the simulated department systems named in the config.

Each department file may have a ``[simulator]`` table; its ``kind`` picks a factory from
:data:`gateway.simulators.SIMULATORS`. All simulators run in one event loop until Ctrl-C or
SIGTERM. Simulators with ``callbacks = true`` push to the gateway's own callback endpoint,
signed with the department's first callback secret.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gateway.cli import app
from gateway.cli.common import err as _err
from gateway.cli.common import run
from gateway.errors import ConfigError, ConfigProblem

if TYPE_CHECKING:  # imported where used: `gateway --help` must not load them
    import asyncio

    from pydantic import ValidationError

    from gateway.config.models import DepartmentConfig

__all__ = ["RunningSimulator", "run_simulators", "simulator_table"]


@dataclass
class RunningSimulator:
    """One row of what ``gateway simulate`` started (``url`` None: nothing was started)."""

    department: str
    kind: str
    url: str | None
    note: str = ""
    state: Any = None


def simulator_table(department: DepartmentConfig, public_url: str) -> dict[str, Any]:
    """The department's ``[simulator]`` table with the run-time callback settings filled in."""
    table = dict(department.simulator or {})
    if table.get("callbacks"):
        table.setdefault("callback_url", f"{public_url.rstrip('/')}/v1/callbacks/{department.code}")
        if department.callback_secrets:
            table.setdefault("callback_secret", department.callback_secrets[0].get_secret_value())
    return table


def _problem(code: str, exc: ValidationError) -> ConfigProblem:
    detail = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(table)'}: {e['msg']}" for e in exc.errors()
    )
    return ConfigProblem(file=f"departments/{code}.toml", key="simulator", message=detail)


async def run_simulators(
    departments: Mapping[str, DepartmentConfig],
    public_url: str,
    *,
    only: Iterable[str] | None = None,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[list[RunningSimulator]], None] | None = None,
) -> list[RunningSimulator]:
    """Start every department's simulator, call ``on_ready(rows)``, run until ``stop`` is set.

    :param only: department codes to run (default: all with a ``[simulator]`` table).
    :raises ConfigError: a ``[simulator]`` table is invalid or ``only`` names an unknown code.
    """
    from pydantic import ValidationError

    from gateway.serving import serve_asgi
    from gateway.simulators import SIMULATORS

    wanted = set(only or ())
    unknown = sorted(wanted - set(departments))
    if unknown:
        raise ConfigError(
            [ConfigProblem("--only", "", f"no department {code!r}") for code in unknown]
        )
    rows: list[RunningSimulator] = []
    builds: list[tuple[RunningSimulator, Any, str, int]] = []
    problems: list[ConfigProblem] = []
    for code in sorted(departments):
        department = departments[code]
        if wanted and code not in wanted:
            continue
        if department.simulator is None:
            if wanted:
                rows.append(RunningSimulator(code, "-", None, "no [simulator] table"))
            continue
        kind = str(department.simulator.get("kind", ""))
        factory = SIMULATORS.get(kind)
        if factory is None:
            rows.append(RunningSimulator(code, kind or "-", None, f"no simulator for kind {kind}"))
            continue
        try:
            settings, asgi_app, state = factory.build(simulator_table(department, public_url))
        except ValidationError as exc:
            problems.append(_problem(code, exc))
            continue
        row = RunningSimulator(code, kind, None, state=state)
        rows.append(row)
        host = str(getattr(settings, "host", "127.0.0.1"))
        builds.append((row, asgi_app, host, int(getattr(settings, "port", 0))))
    if problems:
        raise ConfigError(problems)

    import asyncio

    stop = stop or asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        for row, asgi_app, host, port in builds:
            row.url = await stack.enter_async_context(serve_asgi(asgi_app, host=host, port=port))
        if on_ready is not None:
            on_ready(rows)
        await stop.wait()
    return rows


def _print(rows: list[RunningSimulator], as_json: bool) -> None:
    from gateway.cli.common import emit_json
    from gateway.cli.output import print_note, print_table

    if as_json:
        emit_json(
            [
                {"department": r.department, "kind": r.kind, "url": r.url, "note": r.note}
                for r in rows
            ]
        )
    else:
        print_table(
            ("department", "kind", "URL"),
            [(r.department, r.kind, r.url or r.note) for r in rows],
            title="Simulated departments",
        )
        running = any(row.url for row in rows)
        print_note("Running; Ctrl-C to stop." if running else "No simulators to run.")
    sys.stdout.flush()  # a script reading the pipe sees the URLs while the simulators run


async def _until_signalled(
    departments: Mapping[str, DepartmentConfig],
    public_url: str,
    only: list[str] | None,
    as_json: bool,
) -> None:
    import asyncio
    import signal

    from gateway import stopping

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, stop.set)
        stopping.on_loop(loop, stop.set)  # a SIGTERM held while this process started stops it

    def ready(rows: list[RunningSimulator]) -> None:
        _print(rows, as_json)
        if not any(row.url for row in rows):
            stop.set()

    await run_simulators(departments, public_url, only=only, stop=stop, on_ready=ready)


@app.command("simulate")
def simulate(
    config: Annotated[
        Path,
        typer.Option("--config", "-c", envvar="GATEWAY_CONFIG", help="path of gateway.toml"),
    ] = Path("config/gateway.toml"),
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="department code to simulate (repeatable; default: all)"),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print what runs as JSON (then run until Ctrl-C)")
    ] = False,
) -> None:
    """Run the config's simulated department systems until Ctrl-C."""
    from gateway import stopping

    stopping.hold()  # first: a SIGTERM while starting stops it once started
    from gateway.cli.output import unknown_name
    from gateway.config.loader import load_config

    try:
        cfg = load_config(config)
        for code in only or ():
            if code not in cfg.departments:
                raise unknown_name("department", code, cfg.departments)
        api = cfg.gateway.api
        public_url = api.public_url or f"http://{api.host}:{api.port}"
        run(_until_signalled(cfg.departments, public_url, only, as_json))
    except ConfigError as exc:
        _err.print(f"[red]Configuration has {len(exc.problems)} problem(s):[/red]")
        for problem in exc.problems:
            _err.print(f"  {problem}", markup=False, highlight=False)
        raise typer.Exit(1) from exc
    except RuntimeError as exc:
        _err.print(f"{exc} (is another process using the port?)", markup=False, highlight=False)
        raise typer.Exit(1) from exc
