"""Configuration reload (SIGHUP, ``gateway reload``): validate first, then swap.

The new files are loaded and checked exactly as ``gateway check-config`` checks them. Anything
wrong, or a change that only a restart can apply, and the reload is refused: the running
configuration stays, and one WARNING says why. Otherwise the runtime takes the new
configuration at once; work in flight finishes under the settings it started with.

Applied by a reload: the matter catalog, regions, centres, and per department its name,
``status_map``, ``callback_secrets`` (rotation without a restart), ``timeout_seconds``,
``retry``, ``concurrency``, ``rate_limit_per_second``, ``[breaker]`` and
``reconcile_missing``. A department whose concurrency, rate limit or breaker changed gets fresh
guards (calls in flight finish under the old ones).

Only a restart applies :data:`RESTART_ONLY` (what processes, sockets, pools, schedules or
connector instances were built from).
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import structlog

from gateway.config.loader import Config, check_connector_options, load_config
from gateway.errors import ConfigError
from gateway.runtime import Runtime

__all__ = ["RESTART_ONLY", "pid_files", "reload", "restart_needed", "signal_running"]

log = structlog.get_logger("gateway.reload")

#: settings a reload refuses to change: ``[gateway]`` keys, then department keys
RESTART_ONLY: tuple[tuple[str, ...], tuple[str, ...]] = (
    (
        "name",
        "city",
        "database_url",
        "data_dir",
        "data_dir_min_free_mb",
        "api",
        "dispatch",
        "plugins",
        "schedule",
        "database",
        "http",
        "api_keys",
        "timezone",
        "security",
    ),
    ("connector", "enabled", "options", "poll_interval_seconds", "reconcile_cron", "simulator"),
)


def restart_needed(old: Config, new: Config) -> list[str]:
    """What differs between ``old`` and ``new`` that only a restart can apply."""
    found: list[str] = []
    for key in RESTART_ONLY[0]:
        if getattr(old.gateway, key) != getattr(new.gateway, key):
            found.append(f"[gateway] {key}")
    for code in sorted(set(old.departments) ^ set(new.departments)):
        what = "added" if code in new.departments else "removed"
        found.append(f"departments/{code}.toml ({what})")
    for code in sorted(set(old.departments) & set(new.departments)):
        before, after = old.departments[code], new.departments[code]
        for key in RESTART_ONLY[1]:
            if getattr(before, key) != getattr(after, key):
                found.append(f"departments/{code}.toml {key}")
    return found


async def reload(runtime: Runtime, path: Path) -> bool:
    """Load ``path``, check it, and make it the runtime's configuration; False (and a WARNING
    with the reasons) when it is refused and the running configuration is kept."""
    try:
        new = await asyncio.to_thread(load_config, path)
        problems = [str(p) for p in check_connector_options(new, runtime.plugins.connectors())]
    except ConfigError as exc:
        problems = [str(p) for p in exc.problems]
    except Exception as exc:  # an unreadable file, a plugin failing: still a refusal, not a crash
        problems = [f"{path}: {type(exc).__name__}: {exc}"]
    if problems:
        log.warning(
            "configuration reload refused: the running configuration is kept",
            problems=problems[:20],
        )
        return False
    needs = restart_needed(runtime.config, new)
    if needs:
        log.warning(
            "configuration reload refused: these changes need a restart; "
            "the running configuration is kept",
            changes=needs,
        )
        return False
    runtime.apply_config(new)
    log.info(
        "configuration reloaded",
        config=str(path),
        departments=len(new.departments),
        matters=len(new.catalog),
    )
    return True


# -- `gateway reload`: which processes to tell ------------------------------------------------


def run_dir(data_dir: Path) -> Path:
    return data_dir / "run"


def pid_files(data_dir: Path) -> list[Path]:
    folder = run_dir(data_dir)
    return sorted(folder.glob("gateway-*.pid")) if folder.is_dir() else []


def write_pid_file(data_dir: Path) -> Path:
    """Note this process under ``data_dir/run`` so ``gateway reload`` can find it."""
    folder = run_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"gateway-{os.uname().nodename}-{os.getpid()}.pid"
    path.write_text(f"{os.getpid()}\n", encoding="ascii")
    return path


def signal_running(data_dir: Path) -> tuple[list[int], list[str]]:
    """Send SIGHUP to every gateway process of this host noted under ``data_dir/run``; returns
    (pids told, notes about stale files removed)."""
    host = os.uname().nodename
    told: list[int] = []
    notes: list[str] = []
    for path in pid_files(data_dir):
        if not path.name.startswith(f"gateway-{host}-"):
            continue  # another machine's process (the data folder is shared)
        try:
            pid = int(path.read_text(encoding="ascii").strip())
            os.kill(pid, signal.SIGHUP)
            told.append(pid)
        except (ValueError, ProcessLookupError):
            path.unlink(missing_ok=True)
            notes.append(f"removed {path.name}: no such process")
        except PermissionError:
            notes.append(f"{path.name}: not allowed to signal it (run as the gateway's user)")
    return told, notes
