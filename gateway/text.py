"""Text that may be stored, and stored values made safe to show.

Input: no NUL or other C0 control characters (PostgreSQL refuses NUL, and control characters in
names and receipts only ever come from broken or hostile clients), no lone UTF-16 surrogates
(JSON lets a client send ``"\\ud800"``; it is no character, cannot be encoded as UTF-8 and made
every view of the case fail), and free-form JSON nested at most :data:`MAX_DEPTH` levels.

Output: :func:`readable` turns any stored value into one that can always be rendered, so a
value stored before these checks (or by a plugin) cannot break a list page.
"""

from __future__ import annotations

import math
import re
from types import SimpleNamespace
from typing import Annotated, Any

from pydantic import AfterValidator

#: How deep a free-form JSON value (an application's ``form``) may nest: real forms are a few
#: levels deep; hundreds of levels only come from an attacker (and break serialisers).
MAX_DEPTH = 32

# C0 controls but tab, newline and carriage return; lone surrogates (a regex: this runs on every
# intake field)
_BAD = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_CUT = "…"


def _check(value: str) -> str:
    found = _BAD.search(value)
    if found:
        if _SURROGATE.match(found.group()):
            raise ValueError("contains a lone UTF-16 surrogate (not a character)")
        raise ValueError("contains control characters (such as NUL)")
    return value


def check_tree(value: Any, path: str = "", depth: int = 0) -> Any:
    """Check every string (keys too) in a JSON-like value, and how deep it nests."""
    if depth > MAX_DEPTH:
        raise ValueError(f"nests deeper than {MAX_DEPTH} levels (at {path or 'the top'})")
    if isinstance(value, str):
        _at(path, value)
    elif isinstance(value, float) and not math.isfinite(value):
        # JSON has no NaN or Infinity (Python's parser accepts them, and 1e400 as inf)
        raise ValueError(f"{path or 'value'}: not a finite number")
    elif isinstance(value, dict):
        for k, v in value.items():
            key = str(k)
            _at(path, key)
            check_tree(v, f"{path}.{key}" if path else key, depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_tree(v, f"{path}[{i}]", depth + 1)
    return value


def _at(path: str, value: str) -> None:
    try:
        _check(value)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}" if path else str(exc)) from None


def readable(value: Any, depth: int = 0) -> Any:
    """``value`` safe to render as JSON: lone surrogates become U+FFFD and anything nested deeper
    than :data:`MAX_DEPTH` becomes ``"…"`` (a copy; scalars other than strings as they are)."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value) if _SURROGATE.search(value) else value
    if isinstance(value, dict | list):
        if depth >= MAX_DEPTH:
            return _CUT
        if isinstance(value, dict):
            return {readable(str(k), depth): readable(v, depth + 1) for k, v in value.items()}
        return [readable(v, depth + 1) for v in value]
    return value


def shown(row: Any) -> Any:
    """A stored row (or any object with attributes) with every value made :func:`readable`:
    a value that got into the database some other way must not break every page listing it."""
    mapping = getattr(row, "_mapping", None)
    values = dict(mapping) if mapping is not None else dict(vars(row))
    return SimpleNamespace(**{k: readable(v) for k, v in values.items()})


CleanStr = Annotated[str, AfterValidator(_check)]
CleanJson = Annotated[dict[str, Any], AfterValidator(check_tree)]
