"""How every simulated department decides: a seeded, per-key draw from a weighted mix, so the
same idempotency key always gets the same decision (re-sends and restarts agree)."""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

from pydantic import AfterValidator

Outcome = Literal["approve", "reject", "supplement", "not_accept"]
OUTCOMES: tuple[Outcome, ...] = ("approve", "reject", "supplement", "not_accept")


def default_mix() -> dict[str, float]:
    return {"approve": 0.7, "reject": 0.15, "supplement": 0.1, "not_accept": 0.05}


def _check_mix(value: dict[str, float]) -> dict[str, float]:
    unknown = sorted(set(value) - set(OUTCOMES))
    if unknown:
        raise ValueError(f"unknown outcomes {unknown}; use {list(OUTCOMES)}")
    if any(w < 0 for w in value.values()) or sum(value.values()) <= 0:
        raise ValueError("weights must be >= 0 and not all zero")
    return value


#: The ``mix`` setting of a simulator: outcome -> weight.
Mix = Annotated[dict[str, float], AfterValidator(_check_mix)]


def version_of(idempotency_key: str) -> tuple[str, int]:
    """(lineage, version) of a gateway key ``ow-<application>-v<n>``: a simulator uses it to
    know a re-sent version (a real department sees the version in the request body)."""
    lineage, sep, version = idempotency_key.rpartition("-v")
    return (lineage, int(version)) if sep and version.isdigit() else (idempotency_key, 1)


def draw(seed: int, key: str, mix: dict[str, float], *, resent: bool = False) -> Outcome:
    """The decision for ``key``. A version re-sent after a supplement brought what was asked
    for, so it is never sent back for another one (approved if supplement is all the mix has)."""
    point = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") / 2**64
    weights = {o: max(mix.get(o, 0.0), 0.0) for o in OUTCOMES}
    if resent:
        weights["supplement"] = 0.0
        if not any(weights.values()):
            return "approve"
    total = sum(weights.values())
    acc = 0.0
    for outcome, weight in weights.items():
        acc += weight / total
        if point < acc and weight > 0:
            return outcome
    return next(o for o, w in weights.items() if w > 0)
