"""``gateway check-config``: validate every configuration file and the connectors they name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from gateway.cli import app
from gateway.errors import ConfigError, ConfigProblem, GatewayError, PluginError

if TYPE_CHECKING:
    from gateway.config.loader import Config


def _problems(config_path: Path) -> tuple[Config | None, list[ConfigProblem]]:
    from gateway.config.loader import check_connector_options, load_config
    from gateway.plugin_manager import load_plugins

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        return None, list(exc.problems)
    settings = config.gateway.plugins
    try:
        plugins = load_plugins(
            load=settings.load, block=settings.block, enable=settings.enable, trace=settings.trace
        )
        connectors = plugins.connectors()
    except PluginError as exc:
        return config, [ConfigProblem(f"plugin {exc.plugin}", "", str(exc))]
    problems = [
        ConfigProblem(f"plugin {name}", "", f"failed to load: {error}")
        for name, error in sorted(plugins.failures.items())
    ]
    problems.extend(check_connector_options(config, connectors))
    problems.extend(_pii_key_problems(config))
    return config, problems


def _pii_key_problems(config: Config) -> list[ConfigProblem]:
    """The database holds ID numbers encrypted with a key the configuration lacks: the gateway
    would refuse to start, so check-config says so (a database it cannot reach is not its
    business: it checks files)."""
    from gateway.cli.common import run
    from gateway.pii_crypto import SETTING, check_keys
    from gateway.store.pii_keys import recorded_in

    try:
        recorded = run(recorded_in(config.gateway.database_url))
    except Exception:
        return []
    try:
        check_keys(recorded, config.gateway.security.cipher())
    except ConfigError as exc:
        return [ConfigProblem(str(config.path), SETTING, p.message) for p in exc.problems]
    return []


def _summary(config: Config) -> dict[str, Any]:
    return {
        "config": str(config.path),
        "departments": [
            {
                "code": d.code,
                "name": d.name,
                "connector": d.connector,
                "enabled": d.enabled,
                "matters": sum(
                    1
                    for m in config.catalog.all()
                    for row in config.catalog.rows(m.code)
                    if row.department == d.code
                ),
            }
            for d in sorted(config.departments.values(), key=lambda d: d.code)
        ],
        "matters": len(config.catalog),
        "regions": [r.code for r in config.gateway.regions],
        "centres": [c.code for c in config.gateway.centres],
    }


@app.command("check-config")
def check_config(
    config: Path = typer.Option(
        Path("config/gateway.toml"),
        "--config",
        envvar="GATEWAY_CONFIG",
        help="the gateway.toml (departments/ and matters.csv sit next to it)",
    ),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Validate gateway.toml, every department file and the matter catalog; list every problem."""
    try:
        loaded, problems = _problems(config)
    except GatewayError as exc:  # anything unexpected still ends as a readable problem
        loaded, problems = None, [ConfigProblem(str(config), "", str(exc))]
    if as_json:
        out: dict[str, Any] = {
            "ok": not problems,
            "problems": [
                {"file": p.file, "line": p.line, "key": p.key, "message": p.message}
                for p in problems
            ],
        }
        if loaded is not None:
            out["warnings"] = [
                {"file": w.file, "line": w.line, "key": w.key, "message": w.message}
                for w in loaded.warnings
            ]
        if loaded is not None and not problems:
            out["summary"] = _summary(loaded)
        typer.echo(json.dumps(out, ensure_ascii=False, indent=2))
        raise typer.Exit(1 if problems else 0)
    from rich.console import Console

    if problems:
        err = Console(stderr=True, highlight=False, soft_wrap=True)
        for problem in problems:
            err.print(str(problem), markup=False)
        err.print(f"{len(problems)} problem(s) found", style="bold red")
        raise typer.Exit(1)
    assert loaded is not None
    warn = Console(stderr=True, highlight=False, soft_wrap=True)
    for warning in loaded.warnings:
        warn.print(f"warning: {warning}", markup=False)
    _print_summary(loaded)


def _print_summary(config: Config) -> None:
    from gateway.cli.output import print_note, print_table

    summary = _summary(config)
    print_table(
        ("code", "name", "connector", "state", "matters"),
        [
            (
                d["code"],
                d["name"],
                d["connector"],
                "enabled" if d["enabled"] else "disabled",
                d["matters"],
            )
            for d in summary["departments"]
        ],
        title=f"Departments ({config.path})",
    )
    regions = ", ".join(f"{r.code} {r.name}" for r in config.gateway.regions)
    centres = ", ".join(f"{c.code} {c.name}" for c in config.gateway.centres)
    print_note(f"matters: {summary['matters']}")
    print_note(f"regions: {regions}")
    print_note(f"centres: {centres}")
    print_note("configuration OK", style="green")
