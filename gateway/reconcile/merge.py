"""The streaming core of reconciliation: both sides sorted by (application id, version), merged.

The gateway's side comes from the database in key order, page by page. A department lists its
cases in its own order, so that side goes through an external sort: runs of ``CHUNK`` cases are
sorted in memory and spilled to temporary files, then merged with ``heapq.merge``. Memory stays
at about one chunk plus one page, whatever the number of cases.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import heapq
import marshal
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import IO

from gateway.connector import CaseSummary
from gateway.results import parse_idempotency_key

CHUNK = 50_000


@dataclass(frozen=True, slots=True)
class GatewayCase:
    app_id: str
    version: int
    status: str
    case_id: str | None
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class DeptCase:
    """One line of the department's list; ``app_id``/``version`` parsed from our key."""

    app_id: str
    version: int
    case_id: str
    status: str
    key: str | None

    @classmethod
    def of(cls, summary: CaseSummary) -> DeptCase:
        parsed = parse_idempotency_key(summary.idempotency_key or "")
        app_id, version = parsed if parsed else ("", 0)
        return cls(app_id, version, summary.case_id, summary.status, summary.idempotency_key)


def _key(d: DeptCase) -> tuple[str, int, str]:
    return (d.app_id, d.version, d.case_id)


def _spill(items: list[DeptCase]) -> IO[bytes]:
    items.sort(key=_key)
    f = tempfile.TemporaryFile()  # noqa: SIM115 (closed by sorted_department)
    # marshal, one record at a time: no memo (a pickle.Unpickler keeps every object it ever
    # read in its memo, which grows with the run), and the fastest format for str/int tuples
    for item in items:
        marshal.dump((item.app_id, item.version, item.case_id, item.status, item.key), f)
    f.seek(0)
    return f


def _read(f: IO[bytes]) -> Iterator[DeptCase]:
    while True:
        try:
            yield DeptCase(*marshal.load(f))
        except EOFError:
            return


@contextlib.asynccontextmanager
async def sorted_department(
    stream: AsyncIterator[CaseSummary],
    *,
    chunk: int | None = None,
    counter: list[int] | None = None,
) -> AsyncIterator[Iterator[DeptCase]]:
    """The department's cases in key order (cases without our key first, app_id "")."""
    chunk = chunk or CHUNK
    runs: list[IO[bytes]] = []
    buf: list[DeptCase] = []
    seen = 0
    try:
        async for summary in stream:
            buf.append(DeptCase.of(summary))
            seen += 1
            if counter is not None:
                counter[0] = seen
            if len(buf) >= chunk:
                runs.append(_spill(buf))
                buf = []
        buf.sort(key=_key)
        if not runs:
            yield iter(buf)
        else:
            if buf:
                runs.append(_spill(buf))
            yield heapq.merge(*(_read(f) for f in runs), key=_key)
    finally:
        for f in runs:
            with contextlib.suppress(OSError):
                f.close()


async def pair(
    gateway: AsyncIterator[GatewayCase], department: Iterator[DeptCase]
) -> AsyncIterator[tuple[GatewayCase | None, list[DeptCase]]]:
    """Group both sides by application id: (gateway case or None, the department's cases for
    that application, every version). Department cases without our key come first, one group
    each, with app_id ""."""
    dept = iter(department)
    nxt = next(dept, None)
    async for g in gateway:
        while nxt is not None and nxt.app_id < g.app_id:
            group, nxt = _take(nxt, dept)
            if group[0].app_id == "":
                for d in group:
                    yield None, [d]
            else:
                yield None, group
        if nxt is not None and nxt.app_id == g.app_id:
            group, nxt = _take(nxt, dept)
            yield g, group
        else:
            yield g, []
    while nxt is not None:
        group, nxt = _take(nxt, dept)
        if group[0].app_id == "":
            for d in group:
                yield None, [d]
        else:
            yield None, group


def _take(first: DeptCase, rest: Iterator[DeptCase]) -> tuple[list[DeptCase], DeptCase | None]:
    group = [first]
    for d in rest:
        if d.app_id != first.app_id:
            return group, d
        group.append(d)
    return group, None


__all__ = ["CHUNK", "DeptCase", "GatewayCase", "pair", "sorted_department"]
