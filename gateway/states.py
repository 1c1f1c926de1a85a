"""The case state machine (DESIGN section 5): the one place that decides what a change means.

Within one *version* of a case the graph is acyclic but for the in_review <-> suspended loop,
so "later" is well defined: an update may jump forward over intermediate states (a department
may go from delivered straight to approved), but an update to a state that is not reachable
from the current one is stale (an old message arriving late) or illegal, and is never stored.
The two edges that go back (``supplement_required -> dispatching`` and
``failed -> dispatching``) are taken only by explicit actions: a supplement re-send (which
starts a new version) or an operator retry.
"""

from __future__ import annotations

import enum
from functools import cache


class State(enum.StrEnum):
    RECEIVED = "received"
    DISPATCHING = "dispatching"
    DELIVERED = "delivered"
    FAILED = "failed"
    ACCEPTED = "accepted"
    NOT_ACCEPTED = "not_accepted"
    IN_REVIEW = "in_review"
    SUSPENDED = "suspended"
    SUPPLEMENT_REQUIRED = "supplement_required"
    APPROVED = "approved"
    REJECTED = "rejected"
    READY_FOR_PICKUP = "ready_for_pickup"
    COLLECTED = "collected"
    MAILED = "mailed"
    WITHDRAWN = "withdrawn"


S = State
_DECIDED = (S.APPROVED, S.REJECTED, S.NOT_ACCEPTED)

# Forward edges within one version.
FORWARD: dict[State, frozenset[State]] = {
    S.RECEIVED: frozenset({S.DISPATCHING, S.WITHDRAWN}),
    S.DISPATCHING: frozenset({S.DELIVERED, S.FAILED, S.WITHDRAWN}),
    # delivered -> failed: the department handed the request back as unprocessable (e.g. a
    # file-drop error file) before taking it; an operator replays it like a dispatch failure
    S.DELIVERED: frozenset(
        {S.ACCEPTED, S.NOT_ACCEPTED, S.SUPPLEMENT_REQUIRED, S.FAILED, S.WITHDRAWN}
    ),
    S.ACCEPTED: frozenset({S.IN_REVIEW, S.SUPPLEMENT_REQUIRED, S.WITHDRAWN}),
    S.IN_REVIEW: frozenset(
        {S.APPROVED, S.REJECTED, S.SUPPLEMENT_REQUIRED, S.SUSPENDED, S.WITHDRAWN}
    ),
    S.SUSPENDED: frozenset({S.IN_REVIEW, S.WITHDRAWN}),
    S.SUPPLEMENT_REQUIRED: frozenset({S.WITHDRAWN}),
    S.FAILED: frozenset(),
    S.APPROVED: frozenset({S.READY_FOR_PICKUP}),
    S.REJECTED: frozenset({S.READY_FOR_PICKUP}),
    S.NOT_ACCEPTED: frozenset({S.READY_FOR_PICKUP}),
    S.READY_FOR_PICKUP: frozenset({S.COLLECTED, S.MAILED}),
    S.COLLECTED: frozenset(),
    S.MAILED: frozenset(),
    S.WITHDRAWN: frozenset(),
}

# Edges that start a new round; only explicit actions take them.
RESTART: dict[State, State] = {
    S.SUPPLEMENT_REQUIRED: S.DISPATCHING,  # re-send as version + 1
    S.FAILED: S.DISPATCHING,  # operator retry
}

#: States in which the case waits on nobody: the gateway's work is done or a person must act.
FINAL: frozenset[State] = frozenset(
    {S.FAILED, S.COLLECTED, S.MAILED, S.WITHDRAWN, *_DECIDED, S.READY_FOR_PICKUP}
)
DECIDED: frozenset[State] = frozenset(_DECIDED)
#: States in which the promised-time clock is paused.
PAUSED: frozenset[State] = frozenset({S.SUPPLEMENT_REQUIRED, S.SUSPENDED})
#: States in which the department holds the case (worth polling).
AT_DEPARTMENT: frozenset[State] = frozenset({S.DELIVERED, S.ACCEPTED, S.IN_REVIEW, S.SUSPENDED})


class Verdict(enum.StrEnum):
    APPLY = "apply"  # store the change
    DUPLICATE = "duplicate"  # already there: no-op
    STALE = "stale"  # the case is already past it: no-op
    ILLEGAL = "illegal"  # not a possible change: refused


@cache
def reachable(src: State) -> frozenset[State]:
    """States reachable from ``src`` by forward edges (one or more steps) in one version."""
    seen: set[State] = set()
    todo = [src]
    while todo:
        here = todo.pop()
        for nxt in FORWARD[here]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return frozenset(seen)


def judge(current: State, target: State) -> Verdict:
    """Decide what an update from ``current`` to ``target`` (same version) means."""
    if current == target:
        return Verdict.DUPLICATE
    if target in reachable(current):
        return Verdict.APPLY
    if current in reachable(target) or current in FINAL:
        return Verdict.STALE
    return Verdict.ILLEGAL


__all__ = [
    "AT_DEPARTMENT",
    "DECIDED",
    "FINAL",
    "FORWARD",
    "PAUSED",
    "RESTART",
    "State",
    "Verdict",
    "judge",
    "reachable",
]
