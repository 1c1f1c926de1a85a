"""docs/security.md names the test that proves each defence: every one it names exists, so the
page cannot point at a test that was renamed or removed."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "security.md"
# `tests/test_x.py`, `tests/test_x.py::test_y`, and `::test_z` (another test of the file before)
_NAMED = re.compile(r"`(tests/[\w/]+\.py)?(?:::(\w+))?`")


def named_tests() -> list[tuple[str, str | None]]:
    found: list[tuple[str, str | None]] = []
    last: str | None = None
    for match in _NAMED.finditer(PAGE.read_text("utf-8")):
        path, name = match.group(1) or last, match.group(2)
        if path is None or (match.group(1) is None and name is None):
            continue
        found.append((path, name))
        last = path
    return found


def test_every_test_the_security_page_names_exists() -> None:
    named = named_tests()
    assert len(named) >= 25, named  # the page's references were read, not silently skipped
    missing = []
    for path, name in named:
        file = ROOT / path
        if not file.is_file():
            missing.append(path)
        elif name and not re.search(rf"^(async )?def {name}\(", file.read_text("utf-8"), re.M):
            missing.append(f"{path}::{name}")
    assert not missing, f"docs/security.md names tests that do not exist: {missing}"
