"""What reconciliation compares with: the department's side of every request the gateway
wrote, read from the ledger and the department's folders (not from the gateway's own case
records)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

from gateway.connector import CaseSummary
from gateway_filedrop import records
from gateway_filedrop.ledger import Ledger
from gateway_filedrop.refusals import REFUSED
from gateway_filedrop.share import Share

__all__ = ["department_cases"]


async def department_cases(
    share: Share, ledger: Ledger, since: dt.datetime, until: dt.datetime
) -> AsyncIterator[CaseSummary]:
    """Every request the gateway wrote whose last change falls in ``[since, until)``, as the
    department's side shows it: the last status its result files reported, ``failed`` if it
    refused the request (an error file, read or not), else ``delivered`` while the request is
    in its inbox or (when ``processed`` is configured) its processed folder. A request found
    in neither, with no result ever, is left out: the department lost it, and reconciliation
    reports it missing."""
    await share.prepare()
    folders = share.folders
    waiting = await share.names(folders.inbox)
    taken = await share.names(folders.processed) if folders.processed else None
    refused = await share.names(folders.errors) if folders.errors else set()
    refused_keys = {n.split(".", 1)[0] for n in refused if n.endswith(folders.error_suffix)}
    sent = [e.name for e in await share.list(folders.sent) if e.kind == "file"]
    async for data in ledger.entries(sent):
        key = data["idempotency_key"]
        updated = records.time_of(str(data.get("updated_at") or ""), "UTC")
        status = data.get("status")
        if data.get("refused") or key in refused_keys:
            status = REFUSED
        elif not status and taken is not None:
            request = str(data.get("file") or "")
            if request not in waiting and request not in taken:
                continue  # lost by the department
        if updated is None or since <= updated < until:
            yield CaseSummary(
                case_id=str(data.get("case_id") or key)[:200],
                idempotency_key=key,
                status=str(status or "delivered")[:64],
                updated_at=updated,
            )
