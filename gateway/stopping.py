"""A SIGTERM that comes while a service process is still starting.

``gateway serve``, ``gateway daemon`` and ``gateway simulate`` stop on SIGTERM through a handler
on their event loop, which exists only once they run. Before it (the imports, the configuration
and its plugins, the runtime: seconds on a busy machine) SIGTERM's default ended the process
mid-start, a migration or a port half taken, with exit -15. :func:`hold`, the commands' first
step, notes the signal instead; :func:`on_loop` installs the loop's handler and, when one came
while held, stops at once: the process starts, then stops the usual way and exits 0.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI imports this before anything heavy
    import asyncio

_held = False


def _note(_signum: int, _frame: FrameType | None) -> None:
    global _held
    _held = True


def hold() -> None:
    """Note SIGTERM until :func:`on_loop` takes over (the process's first step)."""
    signal.signal(signal.SIGTERM, _note)


def on_loop(loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> None:
    """``stop`` on SIGTERM from now on, and now if one came while held."""
    loop.add_signal_handler(signal.SIGTERM, stop)
    if _held:
        stop()
