"""The plugin docs cannot drift: every hook spec is documented and tested, every code block in
docs/plugins/ (the author kit's pages) runs or is the text of a tested file, and the ops
switches do what the docs say."""

from __future__ import annotations

import inspect
import re
import tomllib
from pathlib import Path

import pytest
import structlog

from gateway import hookspecs
from gateway.config.loader import load_config
from gateway.config.models import DepartmentConfig
from gateway.plugin_manager import Plugins, load_plugins
from gateway.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "plugins"
PAGES = ["README.md", "connectors.md", "hooks.md", "example-third-party.md"]
HOOKS = sorted(
    name
    for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
    if hasattr(fn, "gateway_spec")
)
# ```lang then the block; an optional <!-- from: path --> or <!-- department --> line before it
BLOCK = re.compile(r"(?:<!-- (?P<mark>[^>]*) -->\n)?```(?P<lang>\w*)\n(?P<code>.*?)\n```", re.S)


def blocks(lang: str) -> list[tuple[str, str, str]]:
    found = []
    for page in PAGES:
        for m in BLOCK.finditer((DOCS / page).read_text(encoding="utf-8")):
            if m["lang"] == lang:
                found.append((page, m["mark"] or "", m["code"]))
    return found


def test_hooks_are_found() -> None:
    assert {"register_connectors", "map_payload", "status_changed"} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_docstring(hook: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert len(doc) > 40, f"hook spec {hook} in gateway/hookspecs.py needs a docstring"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented(hook: str) -> None:
    page = (DOCS / "hooks.md").read_text(encoding="utf-8")
    assert f"\n## {hook}\n" in page, f"docs/plugins/hooks.md has no '## {hook}' section"
    section = page.split(f"\n## {hook}\n", 1)[1].split("\n## ", 1)[0]
    assert "```python" in section, f"docs/plugins/hooks.md: {hook} has no example"
    params = inspect.signature(getattr(hookspecs, hook)).parameters
    for param in params:
        assert f"`{param}`" in section, f"docs/plugins/hooks.md: {hook} does not explain {param}"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook: str) -> None:
    # a test implements the hook (def hook(...)) or calls it (.hook(...)) outside this file
    pattern = re.compile(rf"(def |\.){hook}\(")
    testing = [
        p.name
        for p in (ROOT / "tests").glob("test_*.py")
        if p.name != Path(__file__).name and pattern.search(p.read_text(encoding="utf-8"))
    ]
    assert testing, f"hook {hook} is neither implemented nor called in any tests/test_*.py"


def test_every_page_is_linked_from_the_index() -> None:
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    for page in [*PAGES[1:], "rest.md", "soap.md", "filedrop.md"]:
        assert f"]({page}" in index, f"docs/plugins/README.md does not link {page}"


def test_python_blocks_are_tested() -> None:
    found = blocks("python")
    assert len(found) >= 8
    for page, mark, code in found:
        if mark.startswith("from: "):
            source = (ROOT / mark.removeprefix("from: ")).read_text(encoding="utf-8")
            assert code in source, f"{page}: a block drifted from {mark}:\n{code[:300]}"
        else:
            compile(code, page, "exec")


@pytest.mark.parametrize(
    "code", [c for _p, m, c in blocks("python") if not m], ids=lambda c: c.split("\n")[-1][:40]
)
def test_runnable_python_blocks_run(code: str) -> None:
    exec(compile(code, "docs/plugins", "exec"), {"__name__": "docs_example"})


def test_toml_blocks_parse_and_departments_validate() -> None:
    found = blocks("toml")
    assert found
    for page, mark, code in found:
        data = tomllib.loads(code)
        if mark.startswith("from: "):
            source = (ROOT / mark.removeprefix("from: ")).read_text(encoding="utf-8")
            assert code in source, f"{page}: a block drifted from {mark}"
        if mark == "department" or "connector" in data:
            DepartmentConfig.model_validate(data)


# -- the ops switches, as docs/plugins/README.md describes them ----------------------------------


def _entry_points(plugins: Plugins) -> list[str]:
    # the core's own in-code registrations (e.g. manual mail) are not subject to the switches
    return [p.name for p in plugins.info() if p.origin.startswith("entry point")]


def _write_city(tmp_path: Path, plugins_table: str) -> Path:
    source = (ROOT / "config" / "gateway.toml").read_text(encoding="utf-8")
    default = "[gateway.plugins]\nload = []       # only these plugins (empty: every installed one)"
    assert default in source
    head, tail = source.split("[gateway.plugins]\n", 1)
    tail = tail.split("\n\n", 1)[1]
    city = tmp_path / "city"
    city.mkdir()
    (city / "gateway.toml").write_text(head + plugins_table + "\n\n" + tail, encoding="utf-8")
    for name in ("departments", "schemas"):
        (city / name).symlink_to(ROOT / "config" / name)
    (city / "matters.csv").symlink_to(ROOT / "config" / "matters.csv")
    return city / "gateway.toml"


async def test_load_switch_in_gateway_toml(tmp_path: Path) -> None:
    config = load_config(_write_city(tmp_path, '[gateway.plugins]\nload = ["rest"]'))
    runtime = Runtime(config)
    await runtime.aclose()
    assert _entry_points(runtime.plugins) == ["rest"]
    assert "soap" in runtime.unavailable["nrp"] and "not installed" in runtime.unavailable["nrp"]
    assert "amr" in runtime.connectors


async def test_block_switch_in_gateway_toml(tmp_path: Path) -> None:
    config = load_config(_write_city(tmp_path, '[gateway.plugins]\nblock = ["rest"]'))
    runtime = Runtime(config)
    await runtime.aclose()
    names = {p.name for p in runtime.plugins.info()}
    assert "rest" not in names and "soap" in names
    assert "amr" not in runtime.connectors and "not installed" in runtime.unavailable["amr"]


def test_env_switches_combine_with_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_LOAD_PLUGINS", "rest, soap")
    monkeypatch.setenv("GATEWAY_BLOCK_PLUGINS", "soap")
    assert _entry_points(load_plugins()) == ["rest"]
    monkeypatch.delenv("GATEWAY_LOAD_PLUGINS")
    names = {p.name for p in load_plugins(block=["filedrop"]).info()}
    assert "soap" not in names and "filedrop" not in names and "rest" in names


@pytest.mark.parametrize("how", ["env", "config"])
async def test_trace_switch_logs_every_hook_call(
    how: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with structlog.testing.capture_logs() as logs:
        if how == "env":
            monkeypatch.setenv("GATEWAY_TRACE_PLUGINS", "1")
            load_plugins(load=["rest"]).connectors()
        else:
            city = _write_city(tmp_path, '[gateway.plugins]\nload = ["rest"]\ntrace = true')
            await Runtime(load_config(city)).aclose()  # builds the connectors: one hook call
    calls = [e for e in logs if e.get("event") == "hook"]
    assert len(calls) == 1
    assert {"plugin": "rest", "hook": "register_connectors"}.items() <= calls[0].items()
    monkeypatch.delenv("GATEWAY_TRACE_PLUGINS", raising=False)
    with structlog.testing.capture_logs() as quiet:
        load_plugins(load=["rest"]).connectors()
    assert not [e for e in quiet if e.get("event") == "hook"]
