"""The ``landreg`` connector: a land registry whose back office speaks lines over TCP.

One request per connection, UTF-8, each line ends with ``\\n``::

    SUBMIT <idempotency_key> <json>   -> OK <case_id> <status>
    STATUS <case_id>                  -> OK <case_id> <status> [<opinion>]
    LIST <since_epoch> <until_epoch>  -> CASE <case_id> <key> <status> <updated_epoch> ... END
    PING                              -> PONG
    any request                       -> ERR <code> <reason>   (503 busy, 422 refused, 400 bad)

Failures are translated here, at the boundary: no answer within ``timeout_seconds``, refused or
reset connections and ``ERR 5xx`` raise TransientError; ``ERR 422`` is the registry's business
"no" (DepartmentRejected, status ``D``); ``ERR 404`` to ``STATUS`` is CaseNotFound; any other
``ERR`` is a PermanentError.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from gateway.connector import (
    CaseSummary,
    CaseUpdate,
    Connector,
    ConnectorContext,
    Envelope,
    Health,
    Receipt,
)
from gateway.errors import (
    CaseNotFound,
    ConnectorError,
    DepartmentRejected,
    PermanentError,
    TransientError,
)


class LandregOptions(BaseModel):
    """``[options]`` of a department with ``connector = "landreg"``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    timeout_seconds: float = Field(default=10.0, gt=0)


class LandregConnector(Connector):
    kind: ClassVar[str] = "landreg"
    Options: ClassVar[type[BaseModel]] = LandregOptions

    def __init__(self, context: ConnectorContext) -> None:
        super().__init__(context)
        self.options = LandregOptions.model_validate(context.options.model_dump())

    async def submit(self, envelope: Envelope) -> Receipt:
        # the registry keeps one case per key: a retried SUBMIT answers with the same case
        body = {
            "ref": envelope.receipt_number,
            "matter": envelope.matter_code,
            "region": envelope.region,
            "version": envelope.version,
            "applicant": envelope.applicant.name,
            "id_number": envelope.applicant.id_number,
            "form": envelope.form,
        }
        line = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        [answer] = await self._ask(f"SUBMIT {envelope.idempotency_key} {line}")
        _ok, case_id, status = self._fields(answer, 3)
        return Receipt(case_id=case_id, status=status)

    async def poll(self, receipt: Receipt) -> CaseUpdate | None:
        [answer] = await self._ask(f"STATUS {receipt.case_id}")
        _ok, case_id, status, *opinion = answer.split(" ", 3)
        return CaseUpdate(case_id=case_id, status=status, detail=opinion[0] if opinion else None)

    async def list_cases(
        self, since: dt.datetime, until: dt.datetime
    ) -> AsyncIterator[CaseSummary]:
        lines = await self._ask(f"LIST {since.timestamp():.3f} {until.timestamp():.3f}")
        for line in lines[:-1]:
            _tag, case_id, key, status, updated = self._fields(line, 5)
            yield CaseSummary(
                case_id=case_id,
                idempotency_key=key,
                status=status,
                updated_at=dt.datetime.fromtimestamp(float(updated), dt.UTC),
            )

    async def health(self) -> Health:
        try:
            [answer] = await self._ask("PING")
        except ConnectorError as exc:
            return Health(ok=False, detail=str(exc))
        return Health(ok=answer == "PONG", detail=answer)

    async def aclose(self) -> None:
        """Nothing held between calls: every request has its own connection."""

    async def _ask(self, request: str) -> list[str]:
        """Send one request; the answer's lines (``CASE`` lines up to a final one)."""
        verb = request.split(" ", 1)[0]
        where = f"{self.context.department}: {verb} to {self.options.host}:{self.options.port}"
        lines: list[str] = []
        try:
            async with asyncio.timeout(self.options.timeout_seconds):
                reader, writer = await asyncio.open_connection(self.options.host, self.options.port)
                try:
                    writer.write(request.encode() + b"\n")
                    await writer.drain()
                    while not lines or lines[-1].startswith("CASE "):
                        raw = await reader.readline()
                        if not raw.endswith(b"\n"):
                            raise TransientError(f"{where}: connection closed mid-answer")
                        lines.append(raw.decode().rstrip("\n"))
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except TimeoutError as exc:
            raise TransientError(f"{where}: no answer in {self.options.timeout_seconds}s") from exc
        except OSError as exc:  # refused, reset, unreachable
            raise TransientError(f"{where}: {type(exc).__name__}") from exc
        last = lines[-1]
        if last.startswith("ERR "):
            code, _, reason = last[4:].partition(" ")
            if code == "422":
                raise DepartmentRejected(reason, status="D")
            if code.startswith("5"):
                raise TransientError(f"{where}: ERR {code} {reason}")
            if code == "404" and verb == "STATUS":  # STATUS <case id>: no such case
                raise CaseNotFound(self.context.department, request.split(" ")[1], reason)
            raise PermanentError(f"{where}: ERR {code} {reason}")
        return lines

    def _fields(self, line: str, count: int) -> list[str]:
        fields = line.split(" ")
        if len(fields) != count:
            raise PermanentError(f"{self.context.department}: unexpected answer {line[:80]!r}")
        return fields
