"""Requests the department refused: it moves the request to its error folder with a reason
file (``<request name>.err`` or ``<key>.err``). Each becomes an update that moves its case to
``failed`` with the department's reason (WARNING, counted); once applied the reason file is
archived and the ledger notes the refusal, so ``gateway replay`` writes the request anew."""

from __future__ import annotations

import logging

from prometheus_client import Counter

from gateway.connector import CaseUpdate, UpdateOutcome
from gateway.errors import TransientError
from gateway_filedrop import quarantine, records
from gateway_filedrop.ledger import Ledger
from gateway_filedrop.share import KEY, Share, plain_name
from gateway_filedrop.storage import FileTooLarge, UnsafeFile

__all__ = ["ERR_REF", "REFUSALS", "REFUSED", "read_refusals", "settle_refusal"]

log = logging.getLogger("gateway_filedrop")

REFUSALS = Counter(
    "gateway_filedrop_refused_requests_total",
    "Request files the department moved to its error folder, by department",
    ["department"],
)

#: the status a refused request (a department-side .err file) reports: the gateway state
REFUSED = "failed"
#: an update's ``ref`` for an error file: this prefix and the file's name
ERR_REF = "errors:"
_REASON_BYTES = 4096


async def read_refusals(share: Share, limit: int) -> list[CaseUpdate]:
    """Up to ``limit`` of the department's error files, oldest first, as updates."""
    folders = share.folders
    assert folders.errors is not None
    try:
        entries = await share.list(folders.errors)
    except TransientError:
        return []  # the department has not made its error folder (yet)
    out: list[CaseUpdate] = []
    for entry in sorted(entries, key=lambda e: (e.mtime, e.name)):
        if len(out) >= limit:
            break
        name = entry.name
        key = name.split(".", 1)[0]
        if not name.endswith(folders.error_suffix) or not KEY.fullmatch(key):
            continue
        if entry.kind != "file":
            why = f"(its reason file is a {entry.kind}; not read)"
        else:
            why = await _reason_text(share, f"{folders.errors}/{name}")
        REFUSALS.labels(share.department).inc()
        log.warning("%s: the department refused request %s (%s)", share.department, key, name)
        out.append(
            CaseUpdate(
                case_id=key,
                idempotency_key=key,
                ref=ERR_REF + name,
                status=REFUSED,
                detail=f"the department refused the request file: {why}",
            )
        )
    return out


async def _reason_text(share: Share, path: str) -> str:
    try:
        data = await share.storage.read(path, _REASON_BYTES)
    except FileTooLarge:
        return f"(its reason file is over {_REASON_BYTES} bytes; not read)"
    except (UnsafeFile, TransientError):
        return "(its reason file could not be read)"
    return records.note_text(data, share.options.request.encoding)


async def settle_refusal(
    share: Share, ledger: Ledger, update: CaseUpdate, outcome: UpdateOutcome, reason: str
) -> None:
    """After the gateway applied (or could not match) a refusal: archive its error file (or
    quarantine it, with the reason) and note the refusal in the ledger."""
    folders = share.folders
    name = (update.ref or "")[len(ERR_REF) :]
    if not plain_name(name) or folders.errors is None:
        return
    target = folders.quarantine if outcome == "unmatched" else folders.archive
    if outcome != "unmatched":
        # a replay writes the request again instead of trusting the record of it
        await ledger.note(update.case_id, None, refused=update.detail or "refused")
    moved = await share.move(folders.errors, name, target)
    if moved is not None and outcome == "unmatched":
        await quarantine.note(share.storage, folders, moved, name, reason or "no matching case")
