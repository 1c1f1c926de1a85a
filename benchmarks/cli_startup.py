"""How fast the command line answers and a daemon gets ready (issue: `gateway --help` under
0.5 s, a daemon ready under 3 s on the 2-core machine).

    .venv/bin/python benchmarks/cli_startup.py [--runs 7]

Prints the median wall time of ``gateway --help`` and of a bare ``python -c pass`` (the floor
every Python command pays; ratio = help / bare), and the time from starting ``gateway daemon``
on the example config to its ``daemon started`` log line, on a fresh SQLite database (includes
creating the schema) and again on the migrated one, each against its target. Wall times on a
shared machine grow with its load (printed at the end); the CPU seconds beside them do not, and
say what the same run takes on a quiet machine (wall >= CPU there).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GATEWAY = Path(sys.executable).with_name("gateway")
SECRETS = {
    "AMR_CALLBACK_SECRET": "amr-callback-secret-for-benchmarks",
    "AMR_API_TOKEN": "amr-token-for-benchmarks",
    "HRSS_API_KEY": "hrss-key-for-benchmarks",
}


HELP_TARGET = 0.5  # seconds, issue 15
READY_TARGET = 3.0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _wall(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run of ``cmd``."""
    cpu, started = _children_cpu(), time.perf_counter()
    subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started, _children_cpu() - cpu


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _verdict(seconds: float, target: float) -> str:
    return f"target {target} s: {'met' if seconds < target else 'NOT met'}"


def daemon_ready(workdir: Path, env: dict[str, str], timeout: float = 120.0) -> tuple[float, float]:
    """(wall, CPU) seconds from spawning ``gateway daemon`` to its ``daemon started`` line."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [str(GATEWAY), "daemon", "--config", str(ROOT / "config" / "gateway.toml")],
        cwd=workdir,
        env={**env, "GATEWAY_LOG_FORMAT": "json"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"no 'daemon started' within {timeout} s")
            try:
                event = json.loads(line).get("event")
            except ValueError:
                continue
            if event == "daemon started":
                return time.perf_counter() - started, _cpu_of(proc.pid)
        raise RuntimeError(f"daemon exited ({proc.wait()}) before it was ready")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    env = {**os.environ, **SECRETS}
    env.pop("GATEWAY_LOG_LEVEL", None)
    bare = statistics.median(
        _wall([sys.executable, "-c", "pass"], env)[0] for _ in range(args.runs)
    )
    helps = [_wall([str(GATEWAY), "--help"], env) for _ in range(args.runs)]
    help_s = statistics.median(w for w, _c in helps)
    help_cpu = statistics.median(c for _w, c in helps)
    walls = [w for w, _c in helps]
    print(f"python -c pass     median {bare:.3f} s")
    print(
        f"gateway --help     median {help_s:.3f} s (min {min(walls):.3f}, max {max(walls):.3f}),"
        f" CPU {help_cpu:.3f} s; {_verdict(help_s, HELP_TARGET)}"
    )
    print(f"ratio = {help_s / bare:.1f} (help / bare interpreter)")
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        fresh, fresh_cpu = daemon_ready(Path(tmp), env)
        warm = [daemon_ready(Path(tmp), env) for _ in range(3)]
    warm_s = statistics.median(w for w, _c in warm)
    warm_cpu = statistics.median(c for _w, c in warm)
    print(
        f"daemon ready       fresh database {fresh:.2f} s (CPU {fresh_cpu:.2f} s), migrated "
        f"median {warm_s:.2f} s (CPU {warm_cpu:.2f} s); {_verdict(warm_s, READY_TARGET)}"
    )
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average       {load} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
