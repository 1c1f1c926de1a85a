"""The one clock and the one id generator, so tests can steer time and ids sort by creation."""

from __future__ import annotations

import datetime as dt
import secrets
import time


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_id(prefix: str = "") -> str:
    """A 24-hex-digit id that sorts by creation time (48-bit milliseconds + 48 random bits)."""
    return f"{prefix}{time.time_ns() // 1_000_000:012x}{secrets.token_hex(6)}"
