"""Text that may be stored: no NUL or other C0 control characters (PostgreSQL refuses NUL, and
control characters in names and receipts only ever come from broken or hostile clients)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator

# C0 controls but tab, newline and carriage return (a regex: this runs on every intake field)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")


def _check(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("contains control characters (such as NUL)")
    return value


def check_tree(value: Any) -> Any:
    """Check every string (keys too) in a JSON-like value."""
    if isinstance(value, str):
        _check(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check(str(k))
            check_tree(v)
    elif isinstance(value, list):
        for v in value:
            check_tree(v)
    return value


CleanStr = Annotated[str, AfterValidator(_check)]
CleanJson = Annotated[dict[str, Any], AfterValidator(check_tree)]
