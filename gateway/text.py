"""Text that may be stored: no NUL or other C0 control characters (PostgreSQL refuses NUL, and
control characters in names and receipts only ever come from broken or hostile clients)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator

_ALLOWED_CONTROLS = {"\t", "\n", "\r"}


def _check(value: str) -> str:
    if any(ord(ch) < 32 and ch not in _ALLOWED_CONTROLS for ch in value):
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
