"""Whether each department answers, as this process sees it: one WARNING when a department goes
down (with the reason) and one when it comes back, instead of a line per failed call.

Every call the gateway makes to a department reports here, from the department link
(:mod:`gateway.departments.link`).
A department is *down* after :data:`DOWN_AFTER` failures in a row with no success between;
the first success after that brings it back *up*. ``gateway_department_up{department}`` is 1
or 0 (absent until the first call). A department's business answers (rejections) are successes:
it answered.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import structlog

from gateway.metrics import DEPARTMENT_UP

__all__ = ["DOWN_AFTER", "failed", "is_down", "last_answer", "reset", "succeeded"]

DOWN_AFTER = 3

log = structlog.get_logger("gateway.departments")


@dataclass
class _State:
    failures: int = 0
    down_since: float | None = None
    answered_at: float | None = None  # wall clock (time.time()) of the last answer


_states: dict[str, _State] = {}


def succeeded(department: str, via: str) -> None:
    """A call to ``department`` (``via``: the link's operation, e.g. submit, poll) got an
    answer."""
    state = _states.get(department)
    if state is None:
        state = _states[department] = _State()
        DEPARTMENT_UP.labels(department).set(1)
    elif state.down_since is not None:
        log.warning(
            "department back up",
            department=department,
            via=via,
            down_seconds=round(time.monotonic() - state.down_since, 1),
        )
        DEPARTMENT_UP.labels(department).set(1)
    state.failures, state.down_since = 0, None
    state.answered_at = time.time()


def failed(department: str, via: str, reason: str) -> None:
    """A call to ``department`` failed for ``reason`` (no answer, transport or server error)."""
    state = _states.setdefault(department, _State())
    state.failures += 1
    if state.down_since is None and state.failures >= DOWN_AFTER:
        state.down_since = time.monotonic()
        DEPARTMENT_UP.labels(department).set(0)
        log.warning(
            "department down",
            department=department,
            via=via,
            failures=state.failures,
            reason=reason[:500],
        )
    else:
        log.debug("department call failed", department=department, via=via, reason=reason[:500])


def is_down(department: str) -> bool:
    state = _states.get(department)
    return bool(state and state.down_since is not None)


def last_answer(department: str) -> float | None:
    """When ``department`` last answered this process (Unix time), None when never."""
    state = _states.get(department)
    return state.answered_at if state else None


def reset() -> None:
    """Forget everything (tests)."""
    _states.clear()
