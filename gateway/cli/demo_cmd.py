"""``gateway demo``: the example city end to end, with a summary per department."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer

from gateway.cli import app
from gateway.cli.common import DEFAULT_CONFIG, ConfigOption, JsonOption, console, err, load, run


@app.command()
def demo(
    config: ConfigOption = DEFAULT_CONFIG,
    count: Annotated[
        int, typer.Option("--count", "-n", min=1, help="applications to submit")
    ] = 200,
    seed: Annotated[int, typer.Option(help="seed of the applicant mix")] = 7,
    timeout: Annotated[float, typer.Option(help="seconds to wait for decisions")] = 180.0,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="where the demo database and files go (default: a new temporary folder)"),
    ] = None,
    keep: Annotated[
        bool,
        typer.Option(
            "--keep",
            help="leave the gateway, simulators and ops console running afterwards; prints the "
            "console URL and a one-time ops key (Ctrl-C stops)",
        ),
    ] = False,
    outage_seconds: Annotated[
        float,
        typer.Option(
            "--outage-seconds",
            min=0,
            help="take one department's system down this long at the start, then bring it "
            "back (0: no outage)",
        ),
    ] = 10.0,
    as_json: JsonOption = False,
) -> None:
    """Run simulated departments and the gateway together, submit applications, summarise
    (--json: the summary as JSON on stdout, the rest on stderr)."""
    from gateway.demo import run_demo, use_demo_secrets  # heavy: only when the demo runs

    use_demo_secrets()
    cfg = load(config)
    folder = data_dir or Path(tempfile.mkdtemp(prefix="gateway-demo-"))
    out = err if as_json else console
    try:
        ok = run(
            run_demo(
                cfg,
                count=count,
                seed=seed,
                data_dir=folder,
                timeout=timeout,
                console=out,
                keep=keep,
                outage_seconds=outage_seconds,
                as_json=as_json,
            )
        )
    except KeyboardInterrupt:  # --keep ends with Ctrl-C: not an error
        out.print("stopped")
        return
    if not ok:
        raise typer.Exit(1)
    out.print("every application reached a final or explained state", style="green")
