"""The worked third-party example (docs/examples/gateway-landreg): installed into a throwaway
environment like any department's package, its own conformance suite green, and run as a
department of a copy of the demo city."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from gateway.testing.install import make_venv, pip_install, run

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "gateway-landreg"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(python of an environment with gateway-landreg installed, a copy of the example)."""
    tmp = tmp_path_factory.mktemp("landreg")
    source = tmp / "gateway-landreg"
    # a copy: pip builds in the source tree, which must stay clean
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    python = make_venv(tmp / "venv")
    pip_install(python, source)
    return python, source


@pytest.mark.slow
def test_example_passes_its_conformance_suite(installed: tuple[Path, Path]) -> None:
    python, source = installed
    result = run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=source)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    # the whole conformance suite ran (it grows: at least the 15 checks it had when written)
    ran = re.search(r"(\d+) passed", result.stdout)
    assert ran and int(ran.group(1)) >= 15, result.stdout[-2000:]
    assert "failed" not in result.stdout and "error" not in result.stdout, result.stdout[-2000:]


@pytest.mark.slow
def test_example_runs_in_the_demo_city(installed: tuple[Path, Path], tmp_path: Path) -> None:
    python, source = installed
    script = source / "demo" / "run_in_demo_city.py"
    result = run(python, str(script), str(ROOT / "config"), str(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["connector"] == "LandregConnector"
    assert outcome["delivered"] == ["delivered", "delivered"]
    # granted: approved (no certificate document sent); denied: the decision letter is ready
    assert outcome["final"] == ["approved", "ready_for_pickup"]
    assert sorted(outcome["registry_cases"].values()) == ["D", "G"]
