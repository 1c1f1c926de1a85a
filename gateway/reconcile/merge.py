"""The streaming core of reconciliation: both sides sorted by (application id, version), merged.

The gateway's side comes from the database in key order, page by page. A department lists its
cases in its own order, so that side goes through an external sort: runs of ``CHUNK`` cases are
sorted in memory and spilled to temporary files, then merged with ``heapq.merge``. Memory stays
at about one chunk plus one page, whatever the number of cases.

Both sides travel as plain tuples, compared and sorted by the interpreter's own tuple order
(no key function, no object per case): a million cases is a million of everything, so the
per-case cost is what the run costs. A department line is :data:`Line`, ``(app_id, version,
case_id, seq, status, key)``; ``seq`` (the position in the department's list) keeps lines that
are equal on the first three in the department's order and is never compared further.
"""

from __future__ import annotations

import contextlib
import heapq
import marshal
import struct
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from typing import IO, NamedTuple

from gateway.connector import CaseSummary
from gateway.results import parse_idempotency_key

CHUNK = 50_000
#: lines per marshalled block of a spilled run (one ``marshal.load`` each)
BLOCK = 2_000
_LENGTH = struct.Struct("<I")

#: one line of the department's list as sorted and merged: (app_id, version, case_id, seq,
#: status, key)
Line = tuple[str, int, str, int, str, str | None]


class Matches(dict[tuple[str, str], bool]):
    """(gateway status, department status code) -> do they match; computed on first use by
    ``judge`` (a run meets a handful of pairs a million times)."""

    def __init__(self, judge: Callable[[str, str], bool]) -> None:
        super().__init__()
        self._judge = judge

    def __missing__(self, pair: tuple[str, str]) -> bool:
        self[pair] = same = self._judge(*pair)
        return same


class GatewayCase(NamedTuple):
    """One gateway case, in the column order of the page query; ``fresh``: changed since the
    window's start."""

    app_id: str
    version: int
    status: str
    case_id: str | None
    fresh: bool


class DeptCase(NamedTuple):
    """One line of the department's list; ``app_id``/``version`` parsed from our key."""

    app_id: str
    version: int
    case_id: str
    status: str
    key: str | None

    @classmethod
    def of(cls, summary: CaseSummary) -> DeptCase:
        return cls.of_line(line_of(summary, 0))

    @classmethod
    def of_line(cls, line: Line) -> DeptCase:
        return cls(line[0], line[1], line[2], line[4], line[5])


def line_of(summary: CaseSummary, seq: int) -> Line:
    key = summary.idempotency_key
    parsed = parse_idempotency_key(key) if key else None
    app_id, version = parsed if parsed else ("", 0)
    return (app_id, version, summary.case_id, seq, summary.status, key)


def _spill(lines: list[Line]) -> IO[bytes]:
    lines.sort()
    f = tempfile.TemporaryFile()  # noqa: SIM115 (closed by sorted_department)
    # marshal, a block at a time behind its length: no memo (a pickle.Unpickler keeps every
    # object it ever read in its memo, which grows with the run), the fastest format for
    # str/int tuples, and one read() per block (marshal.load on a file reads per object)
    for i in range(0, len(lines), BLOCK):
        blob = marshal.dumps(lines[i : i + BLOCK])
        f.write(_LENGTH.pack(len(blob)))
        f.write(blob)
    f.seek(0)
    return f


def _read(f: IO[bytes]) -> Iterator[Line]:
    while head := f.read(_LENGTH.size):
        yield from marshal.loads(f.read(_LENGTH.unpack(head)[0]))


@contextlib.asynccontextmanager
async def sorted_department(
    stream: AsyncIterator[CaseSummary],
    *,
    chunk: int | None = None,
    counter: list[int] | None = None,
) -> AsyncIterator[Iterator[Line]]:
    """The department's lines in key order (lines without our key first, app_id "")."""
    chunk = chunk or CHUNK
    runs: list[IO[bytes]] = []
    buf: list[Line] = []
    seen = 0
    try:
        async for summary in stream:
            buf.append(line_of(summary, seen))
            seen += 1
            if len(buf) >= chunk:
                runs.append(_spill(buf))
                buf = []
                if counter is not None:
                    counter[0] = seen
        if counter is not None:
            counter[0] = seen
        buf.sort()
        if not runs:
            yield iter(buf)
        else:
            if buf:
                runs.append(_spill(buf))
            yield heapq.merge(*(_read(f) for f in runs))
    finally:
        for f in runs:
            with contextlib.suppress(OSError):
                f.close()


#: a gateway case (or None) and the department's lines for that application
Group = tuple[GatewayCase | None, list[Line]]


class Merger:
    """Walks the department's sorted lines alongside pages of gateway cases.

    :meth:`page` takes one page of gateway rows (application-id order, as
    :class:`GatewayCase`'s columns) and returns the groups that need a closer look, in key
    order; a group for which ``plain(row, line)`` holds (one line, same version and case id,
    a matching status) is only counted in :attr:`plain`. :meth:`rest` returns the department's
    lines after the last gateway case. Department lines without our key come one group each.
    """

    def __init__(self, department: Iterator[Line], matched: Matches) -> None:
        self._dept = department
        self._next: Line | None = next(department, None)
        self._matched = matched
        self.plain = 0

    def page(self, rows: list[tuple[str, int, str, str | None, bool]]) -> list[Group]:
        out: list[Group] = []
        dept, nxt, matched = self._dept, self._next, self._matched
        plain = 0
        for row in rows:
            app = row[0]
            while nxt is not None and nxt[0] < app:
                nxt = self._take(nxt, out)
            if nxt is None or nxt[0] != app:
                out.append((GatewayCase(*row), []))
                continue
            line = nxt
            nxt = next(dept, None)
            if nxt is not None and nxt[0] == app:  # several lines for one application
                group = [line]
                while nxt is not None and nxt[0] == app:
                    group.append(nxt)
                    nxt = next(dept, None)
                out.append((GatewayCase(*row), group))
            elif line[1] == row[1] and line[2] == row[3] and matched[row[2], line[4]]:
                plain += 1
            else:
                out.append((GatewayCase(*row), [line]))
        self._next = nxt
        self.plain += plain
        return out

    def rest(self) -> Iterator[Group]:
        nxt = self._next
        while nxt is not None:
            out: list[Group] = []
            nxt = self._take(nxt, out)
            yield from out
        self._next = None

    def _take(self, first: Line, out: list[Group]) -> Line | None:
        """Department lines of one application the gateway has not got; the next line."""
        group = [first]
        nxt = next(self._dept, None)
        while nxt is not None and nxt[0] == first[0]:
            group.append(nxt)
            nxt = next(self._dept, None)
        if first[0] == "":
            out.extend((None, [line]) for line in group)
        else:
            out.append((None, group))
        return nxt


async def pair(
    gateway: AsyncIterator[GatewayCase], department: Iterator[Line]
) -> AsyncIterator[tuple[GatewayCase | None, list[DeptCase]]]:
    """Every group, one at a time (for tests and small lists): (gateway case or None, the
    department's cases for that application, every version)."""
    merger = Merger(department, Matches(lambda _ours, _theirs: False))
    async for g in gateway:
        for case, lines in merger.page([g]):
            yield case, [DeptCase.of_line(line) for line in lines]
    for case, lines in merger.rest():
        yield case, [DeptCase.of_line(line) for line in lines]


__all__ = [
    "BLOCK",
    "CHUNK",
    "DeptCase",
    "GatewayCase",
    "Group",
    "Line",
    "Matches",
    "Merger",
    "line_of",
    "pair",
    "sorted_department",
]
