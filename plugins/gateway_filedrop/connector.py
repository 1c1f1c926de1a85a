"""The built-in ``filedrop`` connector: departments that exchange files through folders.

Layout under the target's root (names from ``[options.folders]``; nested paths allowed)::

    inbox/       requests for the department: <key>.<ext> (+ <key>.m<n>.<ext> materials)
    processed/   where the department moves requests it has taken (optional)
    errors/      where the department moves requests it refused, with <name>.err (optional)
    outbox/      results from the department: any name ending in the result format's extension,
                 documents inline (base64), in the folder <result stem>.files/, or beside
                 the result (``documents_beside``, ``document_patterns``)
    archive/     results the gateway applied (or found already applied), and .err files read
    quarantine/  results it could not read or match, each with a <name>.reason sidecar
                 (among them any link, FIFO, device or socket found where a file should be)
    sent/        the gateway's own record of each request written (idempotency, list_cases)

Every file name the connector makes comes from the gateway's idempotency key
(``ow-<application id>-v<version>``), never from applicant input. Names found in the outbox
are only ever used as one path segment in the folder they were listed from; names inside
result files never become paths unless they pass a strict check.

Nothing is dropped silently: a quarantined result is logged at WARNING and counted
(``gateway_filedrop_quarantined_total``), health reports the quarantine until ops clears it
(``gateway filedrop quarantine`` lists it, ``... requeue`` puts a file back), and a request
the department refused (``.err``) moves its case to ``failed`` with the department's reason,
where ``gateway replay`` re-sends it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Sequence
from typing import ClassVar

from pydantic import BaseModel

from gateway.connector import (
    Ack,
    CaseSummary,
    CaseUpdate,
    Connector,
    ConnectorContext,
    Envelope,
    Health,
    Receipt,
    UpdateOutcome,
)
from gateway.errors import ConnectorError
from gateway_filedrop import quarantine
from gateway_filedrop.ledger import Ledger
from gateway_filedrop.options import FiledropOptions
from gateway_filedrop.reconciliation import department_cases
from gateway_filedrop.records import safe_document_name
from gateway_filedrop.refusals import ERR_REF, REFUSED, read_refusals, settle_refusal
from gateway_filedrop.request_files import RequestWriter
from gateway_filedrop.result_files import ResultReader
from gateway_filedrop.share import Share, open_storage
from gateway_filedrop.storage import UnsafeFile

__all__ = ["REFUSED", "FiledropConnector", "FiledropOptions", "open_storage", "safe_document_name"]


class FiledropConnector(Connector):
    """Writes request files for a department and reads its result files back. The work is
    done by its parts: :class:`RequestWriter` (inbox), :class:`ResultReader` (outbox,
    archive, quarantine), :mod:`~gateway_filedrop.refusals` (the department's error folder)
    and :mod:`~gateway_filedrop.reconciliation` (the department's side of every case)."""

    kind: ClassVar[str] = "filedrop"
    Options: ClassVar[type[BaseModel]] = FiledropOptions

    def __init__(self, context: ConnectorContext) -> None:
        super().__init__(context)
        self.options = self.options_as(FiledropOptions)
        self.share = Share(self.options, context.department)
        self.storage = self.share.storage
        self.ledger = Ledger(self.storage, self.options.folders.sent)
        self.requests = RequestWriter(self.share, self.ledger, context)
        # the file is the department's answer: capped by [options.result] and the department's cap
        max_bytes = min(self.options.result.max_bytes, context.max_answer_bytes)
        self.results = ResultReader(self.share, self.ledger, max_bytes)

    async def submit(self, envelope: Envelope) -> Receipt:
        return await self.requests.submit(envelope)

    async def pull_updates(self, limit: int) -> list[CaseUpdate]:
        await self.share.prepare()
        updates = await self.results.pull(limit)
        if len(updates) < limit and self.options.folders.errors:
            updates += await read_refusals(self.share, limit - len(updates))
        return updates

    async def ack_update(
        self, update: CaseUpdate, outcome: UpdateOutcome, reason: str = ""
    ) -> None:
        if not update.ref:
            return
        if update.ref.startswith(ERR_REF):
            await settle_refusal(self.share, self.ledger, update, outcome, reason)
        else:
            await self.results.settle(update, outcome, reason)

    async def ack_updates(self, acks: Sequence[Ack]) -> None:
        """A batch's results archived together (two trips to the storage for the batch);
        refusals and unmatched results (rare) one by one, as :meth:`ack_update` does."""
        archived = []
        for ack in acks:
            ref = ack.update.ref
            if ref and not ref.startswith(ERR_REF) and ack.outcome != "unmatched":
                archived.append(ack.update)
            else:
                await self.ack_update(ack.update, ack.outcome, ack.reason)
        await self.results.archive_many(archived)

    def list_cases(self, since: dt.datetime, until: dt.datetime) -> AsyncIterator[CaseSummary]:
        return department_cases(self.share, self.ledger, since, until)

    async def health(self) -> Health:
        dept = self.context.department
        try:
            detail = await self.storage.health(self.share.all_folders())
            held = await quarantine.held(
                self.storage,
                self.options.folders,
                self.options.result.done_suffix,
                reasons=False,
            )
        except UnsafeFile as exc:
            return Health(ok=False, detail=str(self.share.unsafe(exc))[:300])
        except ConnectorError as exc:
            return Health(ok=False, detail=str(exc)[:300])
        if held:
            return Health(
                ok=False,
                detail=f"{detail}; {len(held)} result file(s) in quarantine "
                f"(gateway filedrop quarantine --department {dept})",
            )
        return Health(ok=True, detail=detail)

    async def aclose(self) -> None:
        await self.share.aclose()
