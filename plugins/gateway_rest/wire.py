"""What goes on the wire besides the body mapping: fixed headers and static auth, form fields,
and the Retry-After an overloaded department sends."""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import json
from collections.abc import Mapping
from typing import Any

from gateway_rest.options import ApiKeyAuth, BasicAuth, BearerAuth, RestOptions

__all__ = ["form_fields", "retry_after", "static_headers"]


def static_headers(options: RestOptions) -> dict[str, str]:
    headers = {"Accept": "application/json", **options.headers}
    auth = options.auth
    if isinstance(auth, BearerAuth):
        headers["Authorization"] = f"Bearer {auth.token.get_secret_value()}"
    elif isinstance(auth, ApiKeyAuth):
        headers[auth.header] = auth.key.get_secret_value()
    elif isinstance(auth, BasicAuth):
        pair = f"{auth.username}:{auth.password.get_secret_value()}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    return headers


def form_fields(body: Mapping[str, Any]) -> dict[str, str]:
    """Form fields of a mapped body: top-level names; a nested value goes as compact JSON
    (what form-based systems that take structured fields expect), None as empty."""
    out: dict[str, str] = {}
    for name, value in body.items():
        if value is None:
            out[name] = ""
        elif isinstance(value, str):
            out[name] = value
        elif isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif isinstance(value, int | float):
            out[name] = str(value)
        else:
            out[name] = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return out


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max((when - dt.datetime.now(dt.UTC)).total_seconds(), 0.0)
