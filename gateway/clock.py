"""The one clock and the one id generator, so tests can steer time and ids sort by creation."""

from __future__ import annotations

import datetime as dt
import secrets
import time
import zoneinfo
from typing import Annotated

from pydantic import AfterValidator


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_id(prefix: str = "") -> str:
    """A 24-hex-digit id that sorts by creation time (48-bit milliseconds + 48 random bits)."""
    return f"{prefix}{time.time_ns() // 1_000_000:012x}{secrets.token_hex(6)}"


def id_time(an_id: str) -> dt.datetime | None:
    """When an id from :func:`new_id` was made (None for ids of another shape)."""
    stamp = an_id[-24:-12]
    try:
        return (
            dt.datetime.fromtimestamp(int(stamp, 16) / 1000, dt.UTC) if len(stamp) == 12 else None
        )
    except ValueError:
        return None


def _known_zone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"{value!r} is not an IANA time zone (e.g. Asia/Shanghai)") from exc
    return value


#: a time zone name in config (``Asia/Shanghai``), checked against the zone database
ZoneName = Annotated[str, AfterValidator(_known_zone)]
