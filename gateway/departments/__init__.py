"""Departments as the gateway reaches them: one guarded link per department.

:class:`DepartmentLink` is the only code that calls a connector (see :mod:`.link` for the
guards it holds); :func:`bounded_client` gives each connector an HTTP client whose answers are
capped (see :mod:`.answers`).
"""

from __future__ import annotations

from gateway.departments.answers import bounded_client
from gateway.departments.guards import Breaker
from gateway.departments.link import (
    RECORD_MARGIN_SECONDS,
    DepartmentLink,
    Operation,
    backoff,
    classify,
)

__all__ = [
    "RECORD_MARGIN_SECONDS",
    "Breaker",
    "DepartmentLink",
    "Operation",
    "backoff",
    "bounded_client",
    "classify",
]
