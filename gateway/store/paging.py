"""Keyset paging for the store's list queries: a page starts after the sort key of the last item
of the page before (no OFFSET: a page costs the same however deep it is, and a row inserted
meanwhile does not shift the pages after it)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, or_


def after(
    columns: Sequence[ColumnElement[Any]], values: Sequence[Any] | None, *, descending: bool = False
) -> ColumnElement[bool] | None:
    """The condition "sorts after ``values``" for rows ordered by ``columns`` (all ascending,
    or all descending); None when there is no cursor yet."""
    if values is None:
        return None
    assert len(columns) == len(values)
    # spelled out instead of a row-value comparison: each bind parameter then takes its
    # column's type (UTC datetimes, for one)
    clauses = []
    for i, (col, value) in enumerate(zip(columns, values, strict=True)):
        step = col < value if descending else col > value
        equal = [c == v for c, v in zip(columns[:i], values[:i], strict=True)]
        clauses.append(and_(*equal, step) if equal else step)
    return or_(*clauses)
