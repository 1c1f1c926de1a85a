"""Prebuilt statements that take a list of keys, in the form each engine handles best.

On PostgreSQL a list is one array parameter (``id = ANY($1)``): one statement text whatever
the list's length, so asyncpg prepares it once per connection. An expanding ``IN`` renders a
new text for every length (``IN ($1, $2)``, ``IN ($1, $2, $3)``...): with batches of 1 to 64
keys and several such statements on the delivery path, the per-connection cache of prepared
statements (100) kept missing, and each miss is a PREPARE round trip, besides SQLAlchemy
rendering the list into the text on every execution. SQLite keeps the expanding ``IN``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, any_, bindparam
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection

S = TypeVar("S")

#: ``one_of(column, name)``: "column is one of the list bound as ``name``"
OneOf = Callable[[ColumnElement[Any], str], ColumnElement[bool]]


def _any(column: ColumnElement[Any], name: str) -> ColumnElement[bool]:
    return column == any_(bindparam(name, type_=ARRAY(column.type)))


def _in(column: ColumnElement[Any], name: str) -> ColumnElement[bool]:
    return column.in_(bindparam(name, expanding=True))


class PerEngine(Generic[S]):
    """A statement built once per form: ``build(one_of)`` is called with each; ``for_(conn)``
    gives the one for the connection's engine (the list parameter is passed as a list)."""

    def __init__(self, build: Callable[[OneOf], S]) -> None:
        self.postgresql = build(_any)
        self.other = build(_in)

    def for_(self, conn: AsyncConnection) -> S:
        return self.postgresql if is_postgresql(conn) else self.other


def is_postgresql(conn: AsyncConnection) -> bool:
    return conn.dialect.name == "postgresql"


__all__ = ["OneOf", "PerEngine", "is_postgresql"]
