"""Paging through a department's case list, in the four styles departments use.

``cursor``     the answer's ``next`` is a cursor, sent back as ``cursor_param``
``next_link``  the answer's ``next`` is the next page's URL (relative to ``base_url`` or full)
``page``       ``page_param`` counts pages from ``first_page``
``offset``     ``offset_param`` counts the cases read so far

``page`` and ``offset`` end at ``total`` when the answer has it, else at a short or empty page.
With a ``total``, reading fewer cases than the department said it has is an error: a listing
that quietly stopped early would make reconciliation report lost cases as fine.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from gateway.mapping import MISSING, get_path
from gateway_rest.options import Paging

__all__ = ["Pager", "Request"]


@dataclass(frozen=True)
class Request:
    """The next page: ``url`` (a next link) or the listing path with ``params``."""

    params: dict[str, str | int] = field(default_factory=dict)
    url: str | None = None


class Pager:
    """The requests of one listing, page after page; counts pages and cases."""

    def __init__(self, spec: Paging, since: dt.datetime, until: dt.datetime) -> None:
        self.spec = spec
        self.pages = 0
        self.read = 0
        self.total: int | None = None
        self._base: dict[str, str | int] = {
            **spec.params,
            spec.since_param: since.isoformat(),
            spec.until_param: until.isoformat(),
            spec.limit_param: spec.page_size,
        }

    def first(self) -> Request:
        spec = self.spec
        if spec.style == "page":
            return Request({**self._base, spec.page_param: spec.first_page})
        if spec.style == "offset":
            return Request({**self._base, spec.offset_param: 0})
        return Request(dict(self._base))

    def after(self, data: Any, items: list[Any]) -> Request | None:
        """The request for the page after the one just read (``data``, holding ``items``),
        or None when that was the last."""
        spec = self.spec
        self.pages += 1
        self.read += len(items)
        if spec.total:
            total = get_path(data, spec.total)
            if isinstance(total, int | str) and str(total).isdigit():
                self.total = int(total)
        if spec.style in ("cursor", "next_link"):
            nxt = get_path(data, spec.next)
            if nxt in (None, MISSING, ""):
                return None
            if spec.style == "next_link":
                return Request(url=str(nxt))
            return Request({**self._base, spec.cursor_param: str(nxt)})
        if not items or (self.total is not None and self.read >= self.total):
            return None
        if self.total is None and len(items) < spec.page_size:
            return None
        if spec.style == "page":
            return Request({**self._base, spec.page_param: spec.first_page + self.pages})
        return Request({**self._base, spec.offset_param: self.read})

    def shortfall(self) -> str | None:
        """What is wrong when the listing read fewer cases than the department's total."""
        if self.total is not None and self.read < self.total:
            return (
                f"the department says {self.total} cases, {self.pages} pages gave {self.read} "
                "(check [options.list] paging)"
            )
        return None
