"""Masking of personal data (ID numbers, phone numbers) for logs, errors and API views."""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any

# 18-digit resident ID (last may be X), 15-digit old IDs, mainland mobile numbers.
_ID = re.compile(r"(?<![0-9A-Za-z])(\d{6})\d{8,11}(\d{3}[\dXx])(?![0-9A-Za-z])")
_PHONE = re.compile(r"(?<!\d)(1[3-9]\d)\d{4}(\d{4})(?!\d)")


def mask_id(value: str | None) -> str | None:
    if not value:
        return value
    if len(value) <= 8:
        return "*" * len(value)
    return value[:4] + "*" * (len(value) - 8) + value[-4:]


def mask_phone(value: str | None) -> str | None:
    if not value:
        return value
    return (
        value[:3] + "*" * max(len(value) - 7, 0) + value[-4:]
        if len(value) > 7
        else "*" * len(value)
    )


def scrub(text: str) -> str:
    """Mask anything in free text that looks like an ID or phone number."""
    text = _ID.sub(lambda m: m.group(1)[:4] + "*" * (len(m.group(0)) - 8) + m.group(2), text)
    return _PHONE.sub(lambda m: m.group(1) + "****" + m.group(2), text)


def scrub_event(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: no log line leaves the process with PII in it."""
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = scrub(value)
        elif isinstance(value, BaseException):
            event[key] = scrub(repr(value))
    return event


def mask_echo(text: str, *values: str | None) -> str:
    """Mask known values (an applicant's ID number, phone) wherever a department echoes them."""
    for value in values:
        if value and len(value) >= 4 and value in text:
            text = text.replace(value, value[:2] + "*" * (len(value) - 4) + value[-2:])
    return text
