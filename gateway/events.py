"""Values describing what happened to a case, shared by the store, the hooks and the API."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gateway.states import State


class Source(enum.StrEnum):
    API = "api"
    DISPATCH = "dispatch"
    CALLBACK = "callback"
    POLL = "poll"
    RECONCILE = "reconcile"
    OPERATOR = "operator"
    #: the deadline watch: a promised date became final on the installed holiday calendar
    DEADLINES = "deadlines"


class StatusChange(BaseModel):
    """One committed status change of one case (no applicant PII)."""

    model_config = ConfigDict(frozen=True)

    application_id: str
    receipt_number: str
    department: str
    matter_code: str
    centre: str
    version: int
    from_status: State | None
    to_status: State
    source: Source
    actor: str
    at: dt.datetime
    detail: dict[str, Any] = Field(default_factory=dict)
