"""Intake check for file-drop departments: text their request encoding cannot carry is refused
at the front desk (422 naming the field) instead of failing at dispatch, where the clerk and
the applicant are gone. Registered as the ``validate_application`` hook."""

from __future__ import annotations

from typing import Any

from gateway.config.models import DepartmentConfig
from gateway.connector import Applicant
from gateway_filedrop.formats import carries_all, unencodable
from gateway_filedrop.options import FiledropOptions

__all__ = ["encoding_problems"]

_ORDINALS = {1: "1st", 2: "2nd", 3: "3rd"}
#: id(department config) -> (that config, its request encoding): the options were validated
#: for every application (1.4 % of the API process in the city day); the config is kept so
#: its id is not reused while it is here, and a reload's new config is looked up afresh
_ENCODINGS: dict[int, tuple[DepartmentConfig, str | None]] = {}


def _encoding(department: DepartmentConfig) -> str | None:
    """The department's request encoding; None if its options do not validate."""
    known = _ENCODINGS.get(id(department))
    if known is not None and known[0] is department:
        return known[1]
    try:
        encoding: str | None = FiledropOptions.model_validate(department.options).request.encoding
    except ValueError:
        encoding = None  # check-config reports it; intake is not the place
    if len(_ENCODINGS) >= 256:
        _ENCODINGS.clear()
    _ENCODINGS[id(department)] = (department, encoding)
    return encoding


def encoding_problems(
    form: dict[str, Any], applicant: Applicant, department: DepartmentConfig
) -> list[str] | None:
    """``applicant.name: character U+20BB7 cannot be written in gbk ...`` for each field the
    department's request encoding cannot carry; None for other departments."""
    if department.connector != "filedrop":
        return None
    encoding = _encoding(department)
    if encoding is None or carries_all(encoding):
        return None
    problems = []
    fields = {"applicant": applicant.model_dump(mode="json", exclude_none=True), "form": form}
    for name, value in fields.items():
        found = unencodable(value, encoding, name)
        if found:
            path, char = found
            problems.append(
                f"{path}: character {char} cannot be written in {department.name}'s file "
                f"encoding ({encoding}); use a common form of the character or write it as "
                "the department's clerks agree"
            )
    return problems or None
