"""docs/ops.md says what the code does: the department settings it shows validate and are the
defaults, and the lease rule's figure is the link's."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, cast

from gateway.config.models import DepartmentConfig
from gateway.connector import Connector
from gateway.departments import DepartmentLink

OPS = Path(__file__).resolve().parents[1] / "docs" / "ops.md"
#: shown as an example value, not the default (the default is no limit)
EXAMPLES = {"rate_limit_per_second"}


def _department_block() -> dict[str, Any]:
    section = OPS.read_text(encoding="utf-8").split("## Departments: one guarded link", 1)[1]
    block = re.search(r"```toml\n(.*?)```", section, re.S)
    assert block is not None
    return tomllib.loads(block.group(1))


def test_department_settings_in_the_guide_validate_and_are_the_defaults() -> None:
    shown = _department_block()
    dept = DepartmentConfig.model_validate(
        {"code": "x1", "name": "x", "connector": "rest", **shown}
    )
    defaults = DepartmentConfig(code="x1", name="x", connector="rest")
    for key, value in shown.items():
        if key in EXAMPLES:
            continue
        if isinstance(value, dict):
            for sub, v in value.items():
                assert getattr(getattr(defaults, key), sub) == v, f"{key}.{sub}"
        else:
            assert getattr(defaults, key) == value, key
    assert dept.breaker.threshold == 5


def test_sync_settings_in_the_guide_are_the_defaults() -> None:
    section = OPS.read_text(encoding="utf-8").split("## Status sync", 1)[1]
    block = re.search(r"```toml\n(.*?)```", section, re.S)
    assert block is not None
    shown = tomllib.loads(block.group(1))["sync"]
    defaults = DepartmentConfig(code="x1", name="x", connector="rest").sync
    assert shown == defaults.model_dump()


def test_the_lease_figure_is_the_links() -> None:
    link = DepartmentLink(
        DepartmentConfig(code="x1", name="x", connector="rest"), cast(Connector, None)
    )
    assert round(link.lease_seconds(60.0)) == 125
    assert "about 125 s" in OPS.read_text(encoding="utf-8")


def test_check_config_knows_the_link_settings(tmp_path: Path) -> None:
    import shutil

    from tests.test_config import EXAMPLE as EXAMPLE_DIR
    from tests.test_config import append, edit, only, problems

    cfg = tmp_path / "config"
    shutil.copytree(EXAMPLE_DIR, cfg)
    amr = cfg / "departments" / "amr.toml"
    line = edit(amr, "concurrency = 8", "concurrency = 8\nmax_answer_byte = 4096")
    breaker = append(amr, "\n[breaker]\nthresold = 3\n")
    found = problems(cfg)
    typo = only(found, "departments/amr.toml", "max_answer_byte")
    assert "did you mean 'max_answer_bytes'" in typo.message and typo.line == line + 1
    nested = only(found, "departments/amr.toml", "breaker.thresold")
    assert "did you mean 'threshold'" in nested.message and nested.line == breaker + 2
