"""One way to page every list endpoint.

Every list answers ``{"items": [...], "next_cursor": "..." | null}`` and takes the same two
query parameters: ``limit`` (1 to :data:`MAX_LIMIT`, default ``[gateway.api] page_size``) and
``cursor`` (the ``next_cursor`` of the page before). ``next_cursor`` is null only on the last
page: a list is never cut short without saying so. A cursor is opaque to clients (base64url of
the endpoint's name and the sort key of the last item shown) and is refused on any other
endpoint.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Query, Request
from pydantic import BaseModel, Field

from gateway.api.problems import Problem

MAX_LIMIT = 500
_DT = "dt:"

T = TypeVar("T")
K = TypeVar("K")


class Page(BaseModel, Generic[T]):
    """One page of a list; follow ``next_cursor`` until it is null."""

    items: list[T]
    next_cursor: str | None = Field(
        description="pass as ?cursor= for the next page; null on the last page"
    )


@dataclass(frozen=True)
class PageQuery:
    """The paging parameters of a request, checked."""

    cursor: str | None
    limit: int

    def key(self, kind: str, arity: int) -> list[Any] | None:
        """The sort key this page starts after (None on the first page); a cursor from
        another list, or not one this API made, is a 400 naming ``cursor``."""
        if self.cursor is None:
            return None
        try:
            raw = base64.urlsafe_b64decode(self.cursor.encode("ascii") + b"==")
            decoded = json.loads(raw)
        except (ValueError, UnicodeError, binascii.Error):
            decoded = None
        if (
            not isinstance(decoded, list)
            or len(decoded) != arity + 1
            or decoded[0] != kind
            or not all(isinstance(v, str | int) for v in decoded[1:])
        ):
            raise Problem(
                400,
                "Bad cursor",
                "cursor is not one this list returned; start again without it",
                field="cursor",
                code="bad_cursor",
            )
        return [_load(v) for v in decoded[1:]]

    def page(self, kind: str, rows: Sequence[K], sort_key: Callable[[K], Sequence[Any]]) -> Cut[K]:
        """Cut ``rows`` (fetched with ``limit + 1``) to a page and its next cursor."""
        if len(rows) <= self.limit:
            return Cut(list(rows), None)
        shown = list(rows[: self.limit])
        return Cut(shown, encode(kind, sort_key(shown[-1])))

    def slice(
        self, kind: str, items: Sequence[K], sort_key: Callable[[K], Sequence[Any]]
    ) -> Cut[K]:
        """Page a list held in memory (config-sized lists: matters, departments), ordered by
        ``sort_key``, the same way as a database list."""
        start = self.key(kind, len(sort_key(items[0])) if items else 1)
        ordered = sorted(items, key=lambda i: tuple(sort_key(i)))
        if start is not None:
            ordered = [i for i in ordered if tuple(sort_key(i)) > tuple(start)]
        return self.page(kind, ordered[: self.limit + 1], sort_key)


@dataclass(frozen=True)
class Cut(Generic[K]):
    items: list[K]
    next_cursor: str | None


def encode(kind: str, key: Sequence[Any]) -> str:
    values = [_dump(v) for v in key]
    raw = json.dumps([kind, *values], separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _dump(value: Any) -> str | int:
    if isinstance(value, dt.datetime):
        return _DT + value.isoformat()
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TypeError(f"cannot put {type(value).__name__} in a cursor")
    return value


def _load(value: str | int) -> Any:
    if isinstance(value, str) and value.startswith(_DT):
        try:
            parsed = dt.datetime.fromisoformat(value.removeprefix(_DT))
        except ValueError:
            parsed = None
        if parsed is None or parsed.tzinfo is None:
            raise Problem(
                400,
                "Bad cursor",
                "cursor is not one this list returned; start again without it",
                field="cursor",
                code="bad_cursor",
            )
        return parsed
    return value


async def page_query(
    request: Request,
    cursor: Annotated[
        str | None,
        Query(max_length=500, description="next_cursor of the page before; omit for the first"),
    ] = None,
    limit: Annotated[
        int | None,
        Query(ge=1, le=MAX_LIMIT, description="items per page (default: the configured size)"),
    ] = None,
) -> PageQuery:
    default = request.app.state.runtime.config.gateway.api.page_size
    return PageQuery(cursor=cursor or None, limit=limit or default)


PageDep = Annotated[PageQuery, Depends(page_query)]
