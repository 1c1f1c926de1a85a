"""Values describing what happened to a case, shared by the store, the hooks and the API."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any, TypeVar

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


M = TypeVar("M", bound=BaseModel)


def trusted(cls: type[M], values: dict[str, Any]) -> M:
    """``cls.model_construct(**values)`` (no validation) for ``values`` that name every field
    of ``cls`` in its declared order, without model_construct's walk over the fields (aliases,
    defaults): ~1 us instead of ~5 us on the benchmark machine, and the delivery path makes
    six to nine changes per case. ``values`` becomes the instance's ``__dict__``. Any other
    ``values``, or a model with extras, a root or ``model_post_init``, goes through
    ``model_construct``."""
    names = _FIELD_ORDER.get(cls)
    if names is None:
        plain = (
            cls.model_config.get("extra") != "allow"
            and not cls.__pydantic_root_model__
            and not cls.__pydantic_post_init__
            and not cls.__private_attributes__
            and all(
                f.alias is None and f.validation_alias is None for f in cls.model_fields.values()
            )
        )
        names = _FIELD_ORDER[cls] = tuple(cls.model_fields) if plain else ()
    if not names or tuple(values) != names:
        return cls.model_construct(**values)
    made = cls.__new__(cls)
    _set(made, "__dict__", values)
    _set(made, "__pydantic_fields_set__", set(names))
    _set(made, "__pydantic_extra__", None)
    _set(made, "__pydantic_private__", None)
    return made


_FIELD_ORDER: dict[type[BaseModel], tuple[str, ...]] = {}
_set = object.__setattr__
