"""Shared helpers of the filedrop tests: a connector on real folders, envelopes, a steerable
clock for the stability check."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from gateway_filedrop.connector import FiledropConnector
from gateway_filedrop.options import FiledropOptions
from sqlalchemy import select

from gateway.connector import Applicant, ConnectorContext, Envelope, MaterialRef
from gateway.runtime import Runtime
from gateway.simulators.sftp import SftpServer
from gateway.states import State
from gateway.store.tables import applications, events

MATERIAL = b"%PDF-1.4 scanned household register\n"
MATERIAL_REF = MaterialRef(
    id="m1",
    sha256=hashlib.sha256(MATERIAL).hexdigest(),
    filename="../../etc/passwd 户口簿.pdf",
    content_type="application/pdf",
    size=len(MATERIAL),
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


#: the idempotency key of :func:`envelope` with its defaults
KEY = "ow-a0123456789abcdef-v1"


def envelope(app_id: str = "a0123456789abcdef", version: int = 1, **changes: Any) -> Envelope:
    data: dict[str, Any] = {
        "application_id": app_id,
        "idempotency_key": f"ow-{app_id}-v{version}",
        "version": version,
        "department": "civil",
        "matter_code": "QR00401000",
        "matter_name": "结婚登记",
        "region": "339901",
        "receipt_number": "C01-20250101-0001",
        "centre": "C01",
        "applicant": Applicant(name="张三", id_number="110101199003074514", phone="13800138000"),
        "form": {"spouse": "李四"},
        "materials": [MATERIAL_REF],
        "submitted_at": dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
    }
    data.update(changes)
    return Envelope.model_validate(data)


async def read_material(ref: MaterialRef) -> bytes:
    assert ref.sha256 == MATERIAL_REF.sha256
    return MATERIAL


def make_connector(
    options: dict[str, Any], http: httpx.AsyncClient, clock: FakeClock | None = None
) -> FiledropConnector:
    validated = FiledropOptions.model_validate(options)
    context = ConnectorContext(
        department="civil", options=validated, http=http, read_material=read_material
    )
    connector = FiledropConnector(context)
    if clock is not None:
        connector.results.clock = clock
    return connector


def sftp_target(server: SftpServer, **changes: Any) -> dict[str, Any]:
    """``[options.target]`` for the simulated SFTP server (key login, its host key)."""
    data: dict[str, Any] = {
        "type": "sftp",
        "host": server.host,
        "port": server.port,
        "username": server.username,
        "private_key": str(server.client_key_path),
        "host_key": server.host_key_line,
        "root": "/",
    }
    data.update(changes)
    return data


def local_options(root: Path, **changes: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"target": {"type": "local", "root": str(root)}}
    options.update(changes)
    return options


def result_json(key: str, status: str = "9", **changes: Any) -> bytes:
    record: dict[str, Any] = {
        "case_id": "MZ-2025-000001",
        "idempotency_key": key,
        "status": status,
        "opinion": "准予登记",
        "occurred_at": "2025-01-02T03:04:05Z",
    }
    record.update(changes)
    return json.dumps(record, ensure_ascii=False).encode()


async def http_client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def tree(root: Path) -> set[str]:
    """Every file under ``root``, as relative POSIX paths."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


async def department_case_ids(rt: Runtime, ids: list[str]) -> list[tuple[str, str | None]]:
    """(application id, the department's case id) of each of ``ids``."""
    async with rt.engine.connect() as conn:
        q = select(applications.c.id, applications.c.department_case_id)
        return [(r[0], r[1]) for r in await conn.execute(q.where(applications.c.id.in_(ids)))]


async def event_details(rt: Runtime, ids: list[str], to: State) -> list[dict[str, Any]]:
    """The detail of every event that moved one of ``ids`` to ``to`` (JSON as stored)."""
    async with rt.engine.connect() as conn:
        q = select(events.c.detail).where(
            events.c.application_id.in_(ids), events.c.to_status == to
        )
        found = (await conn.execute(q)).scalars().all()
    return [d if isinstance(d, dict) else json.loads(d) for d in found]
