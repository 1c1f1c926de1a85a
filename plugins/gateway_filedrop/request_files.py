"""Writing request files into the department's inbox: the request (and each material beside
it) named from the idempotency key, committed by rename or a done marker, recorded in the
ledger so a retry or a replay never writes it twice (unless the department refused it)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from gateway.connector import ConnectorContext, Envelope, Receipt
from gateway.errors import PermanentError
from gateway.mapping import build_payload, put_path
from gateway_filedrop.formats import EXTENSIONS, encode_request, unencodable
from gateway_filedrop.ledger import ENTRY_BYTES as _ENTRY_BYTES
from gateway_filedrop.ledger import Ledger
from gateway_filedrop.share import KEY, Share
from gateway_filedrop.storage import UnsafeFile

__all__ = ["RequestWriter"]

_MATERIAL_EXT = {"application/pdf": ".pdf", "image/jpeg": ".jpg", "image/png": ".png"}


class RequestWriter:
    def __init__(self, share: Share, ledger: Ledger, context: ConnectorContext) -> None:
        self.share = share
        self.storage = share.storage
        self.ledger = ledger
        self.context = context
        self._dept = share.department

    async def submit(self, envelope: Envelope) -> Receipt:
        key = envelope.idempotency_key
        if not KEY.fullmatch(key):
            raise PermanentError(f"{self._dept}: idempotency key unfit for a file name")
        try:
            return await self._submit(envelope, key)
        except UnsafeFile as exc:
            raise self.share.unsafe(exc) from exc

    async def _submit(self, envelope: Envelope, key: str) -> Receipt:
        await self.share.prepare()
        folders, request = self.share.folders, self.share.options.request
        name = key + EXTENSIONS[request.format]
        receipt = Receipt(case_id=key)
        inbox_path = f"{folders.inbox}/{name}"
        written = [inbox_path] + ([f"{folders.processed}/{name}"] if folders.processed else [])
        if request.commit == "rename" and not (request.materials == "files" and envelope.materials):
            # the usual case, a request never written and no material files, in one trip: no
            # ledger entry and no request found, the request written (and fsynced), then its
            # ledger record (fsynced), in that order, as below
            started = dt.datetime.now(dt.UTC)
            try:
                data = await self._encode(envelope, key)
            except PermanentError:
                data = None  # said below, after the look for an earlier request
            if data is not None and await self.storage.create_new(
                [self.ledger.path(key), *written],
                inbox_path,
                data,
                (self.ledger.path(key), self.ledger.sent(envelope, name, started), _ENTRY_BYTES),
            ):
                return receipt
        # materials as files, a done marker, or something found: one look, then each step
        if await self.storage.any_exists(
            [self.ledger.path(key), *written]
        ) and await self._written_before(envelope, name, inbox_path, written):
            return receipt
        # new, or refused by the department and now sent again (an operator's replay)
        started = dt.datetime.now(dt.UTC)
        data = await self._encode(envelope, key)
        if request.commit == "rename":
            await self.storage.write(inbox_path, data, atomic=True)
        else:
            await self.storage.write(inbox_path, data, atomic=False)
            await self.storage.write(inbox_path + request.done_suffix, b"", atomic=False)
        await self.ledger.record_sent(envelope, name, started)
        return receipt

    async def _encode(self, envelope: Envelope, key: str) -> bytes:
        """The request file's bytes (its materials written beside it first, if they go as
        files)."""
        request = self.share.options.request
        payload = await self._payload(envelope, key)
        try:
            return encode_request(
                payload, request.format, encoding=request.encoding, xml_root=request.xml_root
            )
        except UnicodeEncodeError as exc:
            # intake refuses such text for this department; this is what slipped past it
            # (a material's file name, a case accepted before the check): name the field only
            path, char = unencodable(payload, request.encoding, "") or ("?", "?")
            raise PermanentError(
                f"{self._dept}: request field {path}: character {char} cannot be written in "
                f"{request.encoding}"
            ) from exc

    async def _written_before(
        self, envelope: Envelope, name: str, inbox_path: str, written: list[str]
    ) -> bool:
        """Whether the request was written before and stands (nothing to write now; its
        ledger entry made if an earlier attempt stopped before it)."""
        request = self.share.options.request
        ledger = await self.ledger.read(envelope.idempotency_key)
        if ledger is not None and not ledger.get("refused"):
            if ledger.get("status") or await self._at_department(name) is not False:
                return True
            ledger = None  # the department lost it (reconciliation's re-send): write it again
        if ledger is None and await self.storage.any_exists(written):
            # an earlier attempt wrote the request and stopped before recording it
            if request.commit == "done_marker" and await self.storage.exists(inbox_path):
                await self.storage.write(inbox_path + request.done_suffix, b"", atomic=False)
            await self.ledger.record_sent(envelope, name, dt.datetime.now(dt.UTC))
            return True
        return False

    async def _at_department(self, name: str) -> bool | None:
        """Whether the request ``name`` is in the department's inbox, processed or error
        folder; None when that cannot be known (no processed folder: taken requests vanish)."""
        folders = self.share.folders
        if not folders.processed:
            return None
        where = (folders.inbox, folders.processed, folders.errors)
        return await self.storage.any_exists([f"{f}/{name}" for f in where if f])

    async def _payload(self, envelope: Envelope, key: str) -> dict[str, Any]:
        request = self.share.options.request
        payload = build_payload(
            envelope.model_dump(mode="json"),
            self.context.map_payload(envelope),
            request.body,
            request.constants,
            where=f"{self._dept} [options.request.body]",
        )
        if request.materials == "files":
            put_path(payload, request.materials_field, await self._write_materials(envelope, key))
        return payload

    async def _write_materials(self, envelope: Envelope, key: str) -> list[dict[str, Any]]:
        """Each material next to the request, named from the key (the applicant's file name
        goes inside the request as data, never into a path). Written before the request, so
        a department that sees the request finds its materials."""
        listed = []
        for index, material in enumerate(envelope.materials, start=1):
            file = f"{key}.m{index}{_MATERIAL_EXT.get(material.content_type, '.bin')}"
            content = await self.context.read_material(material)
            await self.storage.write(f"{self.share.folders.inbox}/{file}", content, atomic=True)
            listed.append(
                {
                    "file": file,
                    "filename": material.filename,
                    "content_type": material.content_type,
                    "sha256": material.sha256,
                    "size": material.size,
                }
            )
        return listed
