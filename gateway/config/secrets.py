"""Where config must not hold a literal: a value under a key named like a secret (``token``,
``password``, ``passwd``, ``key``, ``secret``, or ending ``_token``, ``_password``,
``_secret``, ``_key``) must be a ``${ENV}`` reference.

What is a field name (or a public key) and not a secret is declared, not guessed: a
connector's ``Options`` model marks such options with a :class:`~gateway.connector.NotSecret`
(``Annotated[dict[str, str], FIELD_NAMES]``, ``Annotated[str | None, PUBLIC_KEY]``), and
:func:`literal_secrets` walks a raw table beside the model, skipping exactly those. A table
with no model (``[simulator]``, a connector not installed) is checked by key names alone.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from gateway.connector import NotSecret

__all__ = ["ENV_REF", "field_of", "is_secret_name", "literal_secrets", "models_in"]

ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SECRET_NAMES = frozenset({"token", "password", "passwd", "key", "secret"})
_SECRET_SUFFIXES = ("_token", "_password", "_secret", "_key")

Loc = tuple[str | int, ...]


def is_secret_name(name: str) -> bool:
    name = name.lower().replace("-", "_")
    return name in _SECRET_NAMES or name.endswith(_SECRET_SUFFIXES)


def field_of(model: type[BaseModel], name: str) -> FieldInfo | None:
    """The field of ``model`` a config key names (by name or alias)."""
    for field_name, info in model.model_fields.items():
        if name in (field_name, info.alias):
            return info
    return None


def models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models a field's value is validated by (several for a union; a list's items)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if typing.get_origin(annotation) in (list, typing.Union, types.UnionType, typing.Annotated):
        return [m for arg in typing.get_args(annotation) for m in models_in(arg)]
    return []


def literal_secrets(value: Any, loc: Loc, models: list[type[BaseModel]]) -> list[Loc]:
    """Where ``value`` (a raw, unresolved TOML table at ``loc``, validated by one of
    ``models``) holds a literal under a key named like a secret."""
    found: list[Loc] = []
    if isinstance(value, list):
        for i, item in enumerate(value):
            found += literal_secrets(item, (*loc, i), models)
    elif isinstance(value, dict):
        for key, item in value.items():
            info = next((f for m in models if (f := field_of(m, key)) is not None), None)
            if info is not None and any(isinstance(m, NotSecret) for m in info.metadata):
                continue  # declared: names of fields, a public key
            if isinstance(item, dict) or not is_secret_name(key):
                found += literal_secrets(
                    item, (*loc, key), models_in(info.annotation) if info else []
                )
            else:
                found += _literals(item, (*loc, key))
    return found


def _literals(value: Any, loc: Loc) -> list[Loc]:
    if isinstance(value, list):
        return [where for i, item in enumerate(value) for where in _literals(item, (*loc, i))]
    if value is None or (isinstance(value, str) and ENV_REF.search(value)):
        return []
    return [loc]
