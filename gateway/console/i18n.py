"""The console's words in zh-CN (the default) and English: one catalogue (messages.tsv, a
table translators can edit), looked up by key.

A key missing from a language falls back to English, then to the key itself, so a page never
breaks for want of a translation (tests/test_console.py checks both languages have every key).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

LANGUAGES = ("zh-CN", "en")
DEFAULT = "zh-CN"
COOKIE = "owg_lang"


def _catalogue() -> dict[str, dict[str, str]]:
    """messages.tsv beside this module: a header line (key and the languages), then one line
    per key (lines starting with # are comments)."""
    lines = [
        line.split("\t")
        for line in (Path(__file__).parent / "messages.tsv").read_text("utf-8").splitlines()
        if line and not line.startswith("#")
    ]
    header, *rows = lines
    return {row[0]: dict(zip(header[1:], row[1:], strict=True)) for row in rows}


MESSAGES: dict[str, dict[str, str]] = _catalogue()


def translator(lang: str) -> Callable[[str], str]:
    def t(key: str) -> str:
        entry = MESSAGES.get(key)
        if entry is None:
            return key
        return entry.get(lang) or entry.get("en") or key

    return t


def pick(cookie: str | None) -> str:
    return cookie if cookie in LANGUAGES else DEFAULT
