"""docs/plugins/filedrop.md cannot drift: its worked example runs and prints what the page
says, and its configuration examples validate against the connector's Options."""

from __future__ import annotations

import contextlib
import io
import re
import runpy
import tomllib
from pathlib import Path

import pytest
from gateway_filedrop.options import FiledropOptions

from gateway.config.loader import load_config

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "plugins" / "filedrop.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


def test_worked_example_runs_and_prints_what_the_doc_says(tmp_path: Path) -> None:
    [example] = blocks("python")
    [expected] = blocks("text")
    script = tmp_path / "example.py"
    script.write_text(example, encoding="utf-8")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        runpy.run_path(str(script), run_name="__main__")
    assert out.getvalue() == expected


def test_configuration_examples_validate() -> None:
    local, sftp, gbk = (tomllib.loads(text) for text in blocks("toml"))
    assert FiledropOptions.model_validate(local["options"]).target.type == "local"
    assert FiledropOptions.model_validate(sftp["options"]).target.type == "sftp"
    options = FiledropOptions.model_validate(gbk["options"])  # the whole department file:
    assert options.result.fields.case_id == "办件编号"  # tests/test_filedrop_onboarding.py
    assert options.folders.processed == "inbox/done"  # runs it


def test_the_example_city_department_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AMR_CALLBACK_SECRET", "AMR_API_TOKEN", "HRSS_API_KEY"):
        monkeypatch.setenv(name, "x")
    civil = load_config(ROOT / "config" / "gateway.toml").departments["civil"]
    assert civil.enabled and civil.connector == "filedrop"
    options = FiledropOptions.model_validate(civil.options)
    [local, _sftp, _gbk] = (tomllib.loads(text) for text in blocks("toml"))
    documented = FiledropOptions.model_validate(local["options"])
    assert options.target == documented.target
    assert options.result == documented.result
    assert civil.simulator is not None and civil.simulator["kind"] == "filedrop"
