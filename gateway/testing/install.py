"""Install a plugin package the way ops will, into a throwaway environment, without downloads.

    python = make_venv(tmp_path / "venv")        # sees the gateway and its dependencies
    pip_install(python, plugin_source_dir)       # --no-deps --no-build-isolation
    subprocess.run([python, "-m", "gateway", "plugins"], check=True)

The environment is a virtual environment whose ``site-packages`` also loads this interpreter's
(through a ``.pth`` file), so the gateway, pytest and the build backend are found without an
index, and what is installed into it stays out of the developer's own environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

__all__ = ["bare_venv", "make_venv", "pip_install", "run"]


def make_venv(directory: Path) -> Path:
    """Create the environment; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(directory)], check=True)
    python = directory / "bin" / "python"
    purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    parent = sysconfig.get_paths()["purelib"]
    Path(purelib.stdout.strip(), "_gateway_parent_env.pth").write_text(
        f"import site; site.addsitedir({parent!r})\n", encoding="utf-8"
    )
    return python


def bare_venv(directory: Path) -> Path:
    """An environment that sees this interpreter's installed distributions as a plain
    ``sys.path`` entry, without running their ``.pth`` hooks: an editable install of the
    gateway here (``make install``) stays invisible, so the gateway there is only what is
    installed into it (its wheel). Returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(directory)], check=True)
    python = directory / "bin" / "python"
    purelib = run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    # a plain path line: appended after the environment's own site-packages, .pth not run
    Path(purelib.stdout.strip(), "_gateway_parent_path.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8"
    )
    return python


def pip_install(python: Path, source: Path) -> None:
    """``pip install`` a package directory into the environment (builds in ``source``)."""
    result = run(
        python,
        *("-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet"),
        str(source),
    )
    if result.returncode != 0:
        raise RuntimeError(f"pip install {source} failed:\n{result.stdout}\n{result.stderr}")


def run(
    python: Path, *args: str, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``python args...`` with output captured (never raises on a non-zero exit)."""
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
