"""The event loop and HTTP parser every gateway process runs on.

``standard`` (the default): uvloop's event loop and uvicorn's httptools parser, uvicorn's own
"standard" stack, where they are installed (dependencies on Linux and macOS). ``plain``:
asyncio's own loop and uvicorn's pure-Python h11 parser. ``GATEWAY_SERVER_STACK=plain`` chooses
the plain stack for a process and the processes it starts (a fallback should uvloop misbehave
on a platform; the benchmarks use it to measure both stacks).

Why standard: a city day (benchmarks/cityday.py, 3,000 applications) took ~15 % less CPU per
application on it, in every process: the API's and the simulators' HTTP parsing, and the
daemon's many small socket reads and timers (docs/performance.md, session 7).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

__all__ = ["STACK_ENV", "Stack", "http_parser", "loop_factory", "run", "stack"]

T = TypeVar("T")
Stack = Literal["standard", "plain"]

#: the environment variable that chooses the stack (inherited by the processes a command starts)
STACK_ENV = "GATEWAY_SERVER_STACK"


def stack() -> Stack:
    """The stack this process asks for (:data:`STACK_ENV`; ``standard`` unless it says ``plain``).

    :raises ValueError: the variable holds something else (named, with the values allowed).
    """
    chosen = os.environ.get(STACK_ENV, "").strip().lower() or "standard"
    if chosen not in ("standard", "plain"):
        raise ValueError(f"{STACK_ENV}={chosen!r}: expected 'standard' or 'plain'")
    return "standard" if chosen == "standard" else "plain"


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop on the standard stack where uvloop is installed; else None (asyncio's)."""
    if stack() == "plain":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def http_parser() -> Literal["httptools", "h11"]:
    """uvicorn's ``http`` setting: httptools on the standard stack where it is installed."""
    if stack() == "plain":
        return "h11"
    try:
        import httptools  # noqa: F401
    except ImportError:
        return "h11"
    return "httptools"


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(coro)`` on this process's stack."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(coro)
