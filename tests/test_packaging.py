"""Packaging: an SPDX licence, a constraints file that `make install` uses and that pins every
dependency, `make dist` builds a wheel and an sdist, `make install` says nothing (no backend
banner)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_licence_is_an_spdx_expression() -> None:
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    requires = PYPROJECT["build-system"]["requires"]
    assert any(r.startswith("hatchling>=1.27") for r in requires), requires


def test_constraints_pin_every_dependency_and_make_install_uses_them() -> None:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not pinned: {line}"
            pins[name.lower().replace("_", "-")] = version
    wanted = [
        *PYPROJECT["project"]["dependencies"],
        *PYPROJECT["project"]["optional-dependencies"]["dev"],
    ]
    missing = sorted({_name(r) for r in wanted} - set(pins))
    assert not missing, f"constraints.txt lacks {missing}: run `make lock`"
    makefile = (ROOT / "Makefile").read_text()
    assert "-c $(CONSTRAINTS)" in makefile and "CONSTRAINTS := constraints.txt" in makefile
    assert re.search(r"^dist:", makefile, re.M)


@pytest.mark.slow
def test_dist_builds_wheel_and_sdist_without_deprecation_warnings(tmp_path: Path) -> None:
    # what `make dist` runs (offline: the build backend comes from this environment)
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert "deprecated" not in output.lower(), output[-3000:]
    wheels = list(tmp_path.glob("onewindow_gateway-*.whl"))
    assert len(wheels) == 1 and list(tmp_path.glob("onewindow_gateway-*.tar.gz"))
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = wheel.namelist()
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        assert "License-Expression: Apache-2.0" in wheel.read(metadata).decode()
        assert any(n.startswith("gateway/migrations/versions/") for n in names)
        assert any(n.startswith("gateway_rest/") for n in names)
