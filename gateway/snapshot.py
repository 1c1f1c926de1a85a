"""What a gateway process is doing right now, for a process that looks stuck (``kill -USR1``).

One WARNING ``process snapshot`` whose ``text`` holds, line by line: every department link's
guards (slots in use and waiting, breaker, rate tokens), the dispatcher's deliveries in flight
and the departments it skips as empty, and every asyncio task with the chain of awaits it waits
in (function, file and line only: no values, so no personal data). Nothing is changed by
taking it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable

import structlog

from gateway.departments import DepartmentLink
from gateway.dispatcher import Dispatcher

log = structlog.get_logger("gateway.snapshot")

#: awaits shown per task (the innermost: where it waits)
STACK_FRAMES = 12


def link_line(link: DepartmentLink) -> str:
    breaker = link.breaker
    state = "open" if breaker.is_open() else "half-open" if breaker.tripped else "closed"
    line = (
        f"link {link.code}: slots {link.slots.used}/{link.slots.cap} in use, "
        f"{link.slots.waiting} waiting; breaker {state} (failures {breaker.failures}"
    )
    line += f", open {breaker.open_for():.1f} s more)" if breaker.is_open() else ")"
    if link.bucket is not None:
        line += f"; rate tokens {link.bucket.tokens:.2f}"
    return line


def dispatcher_line(dispatcher: Dispatcher) -> str:
    clock = time.monotonic()
    inflight = {code: n for code, n in sorted(dispatcher.inflight.items()) if n}
    skipped = {
        code: round(until - clock, 2)
        for code, until in sorted(dispatcher.skipping_empty().items())
        if until > clock
    }
    late = {code: n for code, n in sorted(dispatcher.late.items()) if n}
    return (
        f"dispatcher {dispatcher.owner}: {len(dispatcher.tasks)} deliveries running "
        f"{inflight or ''}; queued {dispatcher.queued() or 'none'}"
        f"{f' (dropped late so far {late})' if late else ''}"
        f"; skipped as empty for (s): {skipped or 'none'}"
        f"{'; stopping' if dispatcher.stopping.is_set() else ''}"
    )


def _chain(task: asyncio.Task[object]) -> list[str]:
    """The task's awaits, outermost first: ``Task.get_stack`` shows a suspended coroutine's
    own frame only, so the chain of ``await``s is followed down to where it waits."""
    where: list[str] = []
    obj: object = task.get_coro()
    while obj is not None and len(where) < 100:
        frame = next(
            (f for f in (getattr(obj, a, None) for a in ("cr_frame", "ag_frame", "gi_frame")) if f),
            None,
        )
        if frame is None:
            if isinstance(obj, asyncio.Future):
                where.append("a future")
            break
        where.append(
            f"{frame.f_code.co_name} ({frame.f_code.co_filename.rsplit('/', 1)[-1]}:"
            f"{frame.f_lineno})"
        )
        obj = next(
            (
                a
                for a in (getattr(obj, n, None) for n in ("cr_await", "ag_await", "gi_yieldfrom"))
                if a
            ),
            None,
        )
    return where


def task_lines(tasks: Iterable[asyncio.Task[object]]) -> list[str]:
    lines = []
    for task in sorted(tasks, key=lambda t: t.get_name()):
        chain = _chain(task)[-STACK_FRAMES:]
        lines.append(f"task {task.get_name()}: {' -> '.join(chain) or 'not started'}")
    return lines


def describe(links: Iterable[DepartmentLink], dispatcher: Dispatcher | None) -> str:
    lines = [link_line(link) for link in links]
    if dispatcher is not None:
        lines.append(dispatcher_line(dispatcher))
        if dispatcher.more_to_tell is not None:
            lines += dispatcher.more_to_tell()
    lines += task_lines(asyncio.all_tasks())
    return "\n".join(lines)


def log_snapshot(links: Iterable[DepartmentLink], dispatcher: Dispatcher | None) -> None:
    """Write the snapshot to the log (the SIGUSR1 handler)."""
    log.warning("process snapshot", text=describe(links, dispatcher))


__all__ = ["describe", "log_snapshot"]
