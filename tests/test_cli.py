"""The command line as a person and a script meet it: quick help, plain help text, readable
errors. (Speed itself is measured by benchmarks/cli_startup.py, not by a timed test.)"""

from __future__ import annotations

import importlib.metadata as md
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _python(*code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "\n".join(code)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_help_imports_nothing_heavy() -> None:
    # what makes `gateway --help` slow is importing the database, connectors, the API and the
    # logging stack; the commands import them when they run
    result = _python(
        "import sys, json",
        "from gateway.cli import app",
        "try:",
        "    app(['--help'])",
        "except SystemExit:",
        "    pass",
        "heavy = ['sqlalchemy', 'structlog', 'pydantic', 'fastapi', 'httpx', 'rich.console',",
        "         'gateway.runtime', 'gateway.plugin_manager', 'gateway_rest', 'zeep']",
        "print(json.dumps([m for m in heavy if m in sys.modules]))",
    )
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout and "daemon" in result.stdout
    loaded = json.loads(result.stdout.splitlines()[-1])
    assert loaded == [], f"a command module imports {loaded} at its top: import inside the command"


def test_option_help_keeps_square_brackets() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0
    assert "override [gateway.api] host" in " ".join(result.stdout.split())


def test_help_lists_exactly_the_commands_built_in_plugins_register() -> None:
    # help names them from a table instead of importing the plugins: the table must be true
    import typer

    from gateway.cli import BUILTIN_PLUGIN_COMMANDS, OWN_DISTRIBUTION
    from gateway.plugin_manager import load_plugins

    own = [
        ep.name
        for ep in md.entry_points(group="gateway")
        if ep.dist is not None and ep.dist.name == OWN_DISTRIBUTION
    ]
    cli = typer.Typer()
    load_plugins(load=own).register_commands(cli)
    group = typer.main.get_group(cli)
    registered = {name: (cmd.help or "").strip() for name, cmd in group.commands.items()}
    assert registered == BUILTIN_PLUGIN_COMMANDS
    listed = subprocess.run(
        [sys.executable, "-m", "gateway", "--help"], capture_output=True, text=True, timeout=60
    )
    for name in BUILTIN_PLUGIN_COMMANDS:
        assert f"  {name} " in listed.stdout


def test_unknown_command_says_did_you_mean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "migrat"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "Did you mean 'migrate'" in result.stderr


def test_migrate_says_what_it_did(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from gateway.cli import app
    from tests.test_crash_recovery import write_config

    config = write_config(tmp_path / "c", f"sqlite+aiosqlite:///{tmp_path / 'g.db'}", {})
    first = CliRunner().invoke(app, ["migrate", "--config", str(config)])
    assert first.exit_code == 0, first.output
    assert "created the schema in sqlite+aiosqlite:///" in first.output
    again = CliRunner().invoke(app, ["migrate", "--config", str(config)])
    assert "is already at the newest schema" in again.output and "nothing to do" in again.output


def test_status_piped_is_plain_tab_separated_in_the_city_time_zone(tmp_path: Path) -> None:
    import asyncio

    from typer.testing import CliRunner

    from gateway.cli import app
    from gateway.config.loader import load_config
    from gateway.intake import ApplicationIn, submit
    from gateway.runtime import Runtime
    from gateway.store.clients import Client
    from tests.conftest import application
    from tests.test_crash_recovery import write_config

    config = write_config(tmp_path / "c", f"sqlite+aiosqlite:///{tmp_path / 'g.db'}", {})

    async def one_application() -> Any:
        runtime = Runtime(load_config(config))
        try:
            await runtime.prepare_database()
            client = Client(id="c-cli", name="cli", centre="C01", ops=False)
            return await submit(runtime, client, "k1", ApplicationIn.model_validate(application()))
        finally:
            await runtime.aclose()

    made = asyncio.run(one_application())
    app_id = made.accepted.id
    result = CliRunner().invoke(app, ["status", app_id, "--config", str(config)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].endswith(": received") and "C01-" in lines[0]
    assert lines[1] == "# history (times in Asia/Shanghai)"
    assert lines[2].split("\t") == ["at", "source", "actor", "from", "to", "detail"]
    first = lines[3].split("\t")
    assert first[0].endswith("+08:00") and first[4] == "received"
    assert first[5] == "" or isinstance(json.loads(first[5]), dict)


def test_unknown_department_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from gateway.cli import app
    from tests.test_crash_recovery import write_config

    config = write_config(tmp_path / "c", f"sqlite+aiosqlite:///{tmp_path / 'g.db'}", {})
    result = CliRunner().invoke(app, ["deadlines", "-d", "amrr", "--config", str(config)])
    assert result.exit_code == 1
    assert "unknown department 'amrr'. Did you mean 'amr'?" in result.output
    assert "known: amr, civil, hrss, nrp" in result.output


def test_plugins_says_why_the_config_does_not_load(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from gateway.cli import app
    from tests.test_crash_recovery import write_config

    config = write_config(tmp_path / "c", f"sqlite+aiosqlite:///{tmp_path / 'g.db'}", {})
    config.write_text(config.read_text().replace("batch_size = 64", "batch_sise = 64"))
    result = CliRunner().invoke(app, ["plugins", "--config", str(config)])
    assert "does not load" in result.output
    assert "batch_sise" in result.output  # the problem itself, not only that there is one
    assert "rest" in result.output  # the listing still comes


def test_a_read_on_an_empty_database_says_to_migrate(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from gateway.cli import app
    from tests.test_crash_recovery import write_config

    config = write_config(tmp_path / "c", f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}", {})
    result = CliRunner().invoke(app, ["status", "C01-x", "--config", str(config)])
    assert result.exit_code == 1
    assert "run 'gateway migrate' once" in result.output
    assert "Traceback" not in result.output and "OperationalError" not in result.output


def test_an_unreachable_database_is_named_not_a_traceback(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from gateway.cli import app
    from gateway.testing.ports import free_port
    from tests.test_crash_recovery import write_config

    port = free_port()  # nothing listens there
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{port}/gateway"
    config = write_config(tmp_path / "c", url, {})
    result = CliRunner().invoke(app, ["keys", "list", "--config", str(config)])
    assert result.exit_code == 1
    # named by the gateway: uvloop's refusal does not say where it tried
    assert f"database unreachable at 127.0.0.1:{port}: ConnectionRefusedError" in result.output
    assert "is the database server up and [gateway] database_url right?" in result.output
    assert "Traceback" not in result.output


def test_unknown_centre_for_a_key_says_did_you_mean(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from gateway.cli import app
    from tests.test_crash_recovery import write_config

    config = write_config(tmp_path / "c", f"sqlite+aiosqlite:///{tmp_path / 'g.db'}", {})
    result = CliRunner().invoke(app, ["keys", "create", "--centre", "C011", "-c", str(config)])
    assert result.exit_code == 1
    assert "unknown centre 'C011'. Did you mean 'C01'?" in result.output
    assert "known: C01, C02, C03" in result.output
