"""``gateway new-plugin``: the generated package installs, registers, and once its TODOs are
filled in passes the conformance suite; a non-idempotent variant fails saying why."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import sysconfig
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli import app
from gateway.scaffold import names_for
from gateway.testing.install import bare_venv, run
from tests.conftest import ROOT

# What a plugin author writes in place of each TODO line: a connector for the simulated REST
# department that ships with the gateway.
CONNECTOR_FILL = {
    '        raise NotImplementedError("TODO: submit")': """\
        response = await self._request(
            "POST",
            "/cases",
            json=envelope.model_dump(mode="json"),
            headers={"Idempotency-Key": self._key(envelope)},
        )
        case = response.json()["case"]
        return Receipt(case_id=case["id"], status=case["status"])""",
    '        raise NotImplementedError("TODO: poll")': """\
        import base64

        from gateway.connector import ResultDocument

        path = f"/cases/{receipt.case_id}"
        case = (await self._request("GET", path, case=receipt.case_id)).json()["case"]
        docs = [
            ResultDocument(name=d["name"], content=base64.b64decode(d["content_b64"]))
            for d in case["documents"]
        ]
        return CaseUpdate(
            case_id=case["id"], status=case["status"], detail=case["opinion"], documents=docs
        )""",
    '        raise NotImplementedError("TODO: list_cases")\n'
    "        yield  # an async generator  # pragma: no cover": """\
        params = {"since": since.isoformat(), "until": until.isoformat()}
        for item in (await self._request("GET", "/cases", params=params)).json()["items"]:
            yield CaseSummary(
                case_id=item["id"], idempotency_key=item["idempotency_key"], status=item["status"]
            )""",
    '            await self._request("GET", "/")  # TODO: a cheap read the department answers': (
        '            await self._request("GET", "/cases", params={"limit": 1})'
    ),
    "    async def aclose(self) -> None:": """\
    def _key(self, envelope: Envelope) -> str:
        return envelope.idempotency_key

    async def aclose(self) -> None:""",
}
TESTS_FILL = {
    "    department_statuses: tuple[str, ...] = ()  # TODO: every status code the department reports": (  # noqa: E501
        '    department_statuses = ("0", "1", "2", "3", "4", "5", "9")'
    ),
    "        # TODO: start a test instance of the department system (or a simulator) and yield it\n"
    '        raise NotImplementedError("TODO: department_system")\n'
    "        yield None  # pragma: no cover": """\
        from gateway.simulators.rest_department import (
            RestSimulatorSettings,
            create_rest_department,
        )
        from gateway.simulators.server import serve_asgi

        asgi, state = create_rest_department(RestSimulatorSettings(decision_delay_seconds=0))
        async with serve_asgi(asgi) as url:
            yield url, state""",
    '            options={"base_url": "http://127.0.0.1:9"},  # TODO: point at `system`': (
        '            options={"base_url": system[0] + "/api/v1"},'
    ),
    "            status_map={},  # TODO: department status code -> gateway state": """\
            status_map={
                "0": "delivered", "1": "accepted", "2": "not_accepted", "3": "supplement_required",
                "4": "rejected", "5": "in_review", "9": "approved",
            },""",
    "    # Optional, to run more checks (see gateway.testing.conformance):": """\
    async def count_cases(self, system: Any, idempotency_key: str) -> int:
        return sum(1 for c in system[1].cases.values() if c.idempotency_key == idempotency_key)

    def provoke(self, system: Any, failure: str) -> Any:
        import contextlib

        @contextlib.asynccontextmanager
        async def failing() -> AsyncIterator[None]:
            system[1].mode = {"timeout": "timeout", "server_error": "fail503"}[failure]
            try:
                yield
            finally:
                system[1].mode = "ok"

        return failing()

    async def decide_with_documents(self, system: Any, receipt: Any, envelope: Any) -> Any:
        return [system[1].approve(receipt.case_id)]
""",
}
# The deliberate bug: a fresh key on every call, so every retry makes another case.
FORGETFUL = """\
import uuid

from gateway_land_registry.connector import LandRegistryConnector
from test_conformance import TestLandRegistryConformance as Base


class ForgetfulConnector(LandRegistryConnector):
    def _key(self, envelope):
        return uuid.uuid4().hex


class TestForgetful(Base):
    connector_class = ForgetfulConnector
    plugin_name = None
"""


def fill(path: Path, replacements: dict[str, str]) -> None:
    text = path.read_text()
    for todo, code in replacements.items():
        assert todo in text, f"the template no longer has {todo!r}"
        text = text.replace(todo, code)
    path.write_text(text)


def test_new_plugin_writes_an_installable_package(tmp_path: Path) -> None:
    target = tmp_path / "plugin"
    result = CliRunner().invoke(app, ["new-plugin", "land-registry", "--directory", str(target)])
    assert result.exit_code == 0, result.output
    pyproject = tomllib.loads((target / "pyproject.toml").read_text())
    assert pyproject["project"]["name"] == "gateway-land-registry"
    assert pyproject["project"]["entry-points"]["gateway"] == {
        "land_registry": "gateway_land_registry"
    }
    connector = (target / "gateway_land_registry" / "connector.py").read_text()
    assert "class LandRegistryConnector(Connector):" in connector and "TODO" in connector
    assert (
        "class TestLandRegistryConformance(ConnectorConformance):"
        in (target / "tests" / "test_conformance.py").read_text()
    )
    assert 'connector = "land_registry"' in (target / "README.md").read_text()
    for py in target.rglob("*.py"):
        compile(py.read_text(), str(py), "exec")  # valid Python as generated
    again = CliRunner().invoke(app, ["new-plugin", "land-registry", "--directory", str(target)])
    assert again.exit_code == 2 and "not empty" in again.output


@pytest.mark.parametrize("bad", ["Land", "1land", "land--x", "land registry", "x" * 40])
def test_new_plugin_rejects_unusable_names(bad: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["new-plugin", bad, "--directory", str(tmp_path / "p")])
    assert result.exit_code == 2 and "not usable" in result.output
    assert not (tmp_path / "p").exists()


def test_names_derive_from_the_plugin_name() -> None:
    names = names_for("civil_affairs2")
    assert (names.distribution, names.package, names.kind, names.cls) == (
        "gateway-civil-affairs2",
        "gateway_civil_affairs2",
        "civil_affairs2",
        "CivilAffairs2",
    )


@pytest.mark.slow
# a wheel built, a venv, two installs, a pytest run: the default 120 s ran out at CI's load
@pytest.mark.timeout(900)
def test_generated_plugin_filled_in_installed_and_conformant(tmp_path: Path) -> None:
    """Outside this repository, as a department's IT team has it: the gateway's wheel (what
    `make dist` builds) and the plugin installed into a fresh environment in a temporary
    folder, no editable install and no path into this source tree; the plugin's own tests
    run there. (Third-party dependencies come from this environment's site-packages as a
    plain path: there is no index to download them from in a test.)"""
    built = run(
        Path(sys.executable),
        *("-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist")),
        str(ROOT),
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("onewindow_gateway-*.whl")
    python = bare_venv(tmp_path / "venv")
    pip = ("-m", "pip", "install", "--no-index", "--no-build-isolation", "--quiet")
    installed = run(python, *pip, "--no-deps", str(wheel), cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr
    # the scaffold comes from the installed gateway, not from this source tree
    target = tmp_path / "gateway-land-registry"
    scaffold = tmp_path / "venv" / "bin" / "gateway"
    made = subprocess.run(
        [str(scaffold), "new-plugin", "land-registry", "-d", str(target)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert made.returncode == 0, made.stderr
    assert "onewindow_gateway-" in (target / "README.md").read_text()
    fill(target / "gateway_land_registry" / "connector.py", CONNECTOR_FILL)
    fill(target / "tests" / "test_conformance.py", TESTS_FILL)
    (target / "tests" / "test_forgetful.py").write_text(FORGETFUL)
    # as the plugin's README says: the plugin with its test extra (satisfied here, no index)
    plugin = run(python, *pip, f"{target}[test]", cwd=tmp_path)
    assert plugin.returncode == 0, plugin.stderr
    where = run(
        python,
        "-c",
        "import gateway, gateway_land_registry, sys, json; "
        "print(json.dumps([gateway.__file__, gateway_land_registry.__file__, sys.path]))",
        cwd=tmp_path,
    )
    gateway_file, plugin_file, path = json.loads(where.stdout)
    venv = str(tmp_path / "venv")
    assert gateway_file.startswith(venv) and plugin_file.startswith(venv), where.stdout
    # nothing of this source tree (the dependencies' site-packages aside: .venv lives in it)
    deps = sysconfig.get_paths()["purelib"]
    assert not [p for p in path if p.startswith(str(ROOT)) and p != deps], path
    report = tmp_path / "report.xml"
    result = run(
        python, "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={report}", cwd=target
    )
    outcomes: dict[str, str] = {}
    messages: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname', '').split('.')[-1]}.{case.get('name')}"
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        outcomes[name] = "skipped" if case.find("skipped") is not None else "passed"
        if problem is not None:
            outcomes[name] = "failed"
            messages[name] = problem.get("message", "")
    good = {n: o for n, o in outcomes.items() if n.startswith("TestLandRegistryConformance.")}
    assert len(good) >= 12 and set(good.values()) == {"passed"}, (good, result.stdout[-3000:])
    assert outcomes["test_conformance.test_listed_by_gateway_plugins"] == "passed"
    failed = {n for n, o in outcomes.items() if o == "failed"}
    assert failed and all(n.startswith("TestForgetful.") for n in failed), result.stdout[-3000:]
    why = messages["TestForgetful.test_submit_is_idempotent"]
    assert "submit is not idempotent: the same idempotency_key produced case ids" in why, why
    assert result.returncode == 1


def test_readme_says_how_to_install_the_gateway_outside_its_source_tree(tmp_path: Path) -> None:
    # the gateway is on no public index: `pip install -e '.[test]'` alone cannot work
    target = tmp_path / "plugin"
    result = CliRunner().invoke(app, ["new-plugin", "land-registry", "--directory", str(target)])
    assert result.exit_code == 0
    readme = (target / "README.md").read_text()
    match = re.search(r"pip install '([^']+)'", readme)
    assert match, readme
    source = Path(match.group(1))
    assert source.is_absolute()  # works from any folder, not only inside the repo
    assert 'name = "onewindow-gateway"' in (source / "pyproject.toml").read_text()
    assert "onewindow_gateway-" in readme and ".whl" in readme
    assert match.group(0) in result.output
