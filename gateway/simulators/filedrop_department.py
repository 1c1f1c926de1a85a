"""A simulated department back-office system that exchanges files through folders.

It watches its inbox (a local folder, served over a real SFTP server on loopback when
``transport = "sftp"``), takes each complete request file into ``processed/``, decides after a
delay with a seeded mix, and writes result files into its outbox: an "accepted" result first
(code ``1``), then the decision. It can be told to write slowly (in chunks straight into the
final name, to exercise the gateway's stability check), to write garbage files and duplicate
results (rates in the settings or ``POST /_control``). Department status codes::

    "1" accepted (受理)   "2" not accepted (不予受理)   "3" supplement required (补正)
    "4" refused (不予许可)   "9" approved, certificate issued

Result files are ``<case id>-<n>.<ext>`` with the fields the ``filedrop`` connector reads by
default (``case_id, idempotency_key, status, opinion, occurred_at, supplement_items,
documents``); JSON and XML carry the certificate inline (base64), CSV names a file in
``<result stem>.files/``. It can also play a back office written by someone else (the
"GBK style" of docs/plugins/filedrop.md): ``encoding`` for requests and results, ``columns``
renaming the result fields (``{"case_id" = "办件编号", ...}``), ``status_words`` instead of
codes (``{"9" = "办结", ...}``), ``documents = "beside"`` (the certificate written next to the
result and named in its documents column), ``list_separator = "；"``, ``local_times`` (zone-less
Asia/Shanghai times), and ``errors``/``error_rate`` (a share of requests refused into an error
folder with a ``<request name>.err`` reason; a refused request sent again is taken). A tiny
control API (``GET /_stats``, ``POST /_control``) runs where
the other simulators run their department API, and its lifespan starts and stops the watcher.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import datetime as dt
import io
import json
import logging
import random
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI
from lxml import etree
from pydantic import BaseModel, ConfigDict, Field

from gateway.connector import FIELD_NAMES
from gateway.simulators.decisions import Mix, Outcome, default_mix, draw, version_of
from gateway.simulators.sftp import SftpServer, sftp_server

__all__ = [
    "FiledropControl",
    "FiledropDepartmentState",
    "FiledropSimulatorSettings",
    "create_filedrop_department",
]

_log = logging.getLogger(__name__)

_FINAL = {"approve": "9", "reject": "4", "supplement": "3", "not_accept": "2"}
_OPINIONS = {
    "approve": "准予登记",
    "reject": "不予许可：申请材料不符合法定条件",
    "supplement": "请补正以下材料",
    "not_accept": "不予受理：申请事项不属于本机关职权范围",
}
_SUPPLEMENT_ITEMS = ["居民户口簿复印件", "近期免冠照片"]
_EXT = {"json": ".json", "xml": ".xml", "csv": ".csv"}
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_SHANGHAI = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")


class FiledropSimulatorSettings(BaseModel):
    """The ``[simulator]`` table of a department file whose simulator kind is ``filedrop``."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["filedrop"] = "filedrop"
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="control API (/_stats, /_control)")
    root: Path | None = Field(default=None, description="exchange folder; none: a temporary one")
    workdir: Path | None = Field(
        default=None,
        description="set by the simulated-city harness: each run works in a fresh folder in it "
        "(removed at the end), instead of root",
    )
    transport: Literal["local", "sftp"] = "local"
    sftp_host: str = "127.0.0.1"
    sftp_port: int = Field(default=0, ge=0, le=65535)
    sftp_username: str = "gateway"
    sftp_password: str | None = None
    inbox: str = "inbox"
    outbox: str = "outbox"
    processed: str = "processed"
    format: Literal["json", "xml", "csv"] = "json"
    request_commit: Literal["rename", "done_marker"] = "rename"
    result_commit: Literal["rename", "done_marker"] = "rename"
    done_suffix: str = ".done"
    scan_interval_seconds: float = Field(default=0.2, gt=0)
    decision_delay_seconds: float = Field(default=2.0, ge=0)
    seed: int = 1
    mix: Mix = Field(default_factory=default_mix)
    case_prefix: str = "MZ"
    progress: bool = Field(default=True, description="write an 'accepted' result first")
    slow_write_rate: float = Field(default=0.0, ge=0, le=1)
    slow_chunk_bytes: int = Field(default=64, ge=1)
    slow_chunk_pause_seconds: float = Field(default=0.05, ge=0)
    garbage_rate: float = Field(default=0.0, ge=0, le=1)
    duplicate_rate: float = Field(default=0.0, ge=0, le=1)
    encoding: str = "utf-8"
    columns: Annotated[dict[str, str], FIELD_NAMES] = Field(
        default_factory=dict, description="result field -> the department's column name"
    )
    status_words: dict[str, str] = Field(
        default_factory=dict, description='status code ("1", "9", ...) -> the word written'
    )
    documents: Literal["auto", "beside"] = Field(
        default="auto",
        description="auto: inline (JSON, XML) or in <result stem>.files/ (CSV); beside: files "
        "next to the result, named in its documents field",
    )
    list_separator: str = ";"
    local_times: bool = Field(default=False, description="zone-less Asia/Shanghai times")
    errors: str | None = Field(default=None, description="error folder for refused requests")
    error_rate: float = Field(default=0.0, ge=0, le=1)


class FiledropControl(BaseModel):
    """``POST /_control``: change fault rates while running (omitted fields stay)."""

    model_config = ConfigDict(extra="forbid")

    slow_write_rate: float | None = Field(default=None, ge=0, le=1)
    garbage_rate: float | None = Field(default=None, ge=0, le=1)
    duplicate_rate: float | None = Field(default=None, ge=0, le=1)
    sftp_drop_after_bytes: int | None = Field(default=None, ge=-1, description="-1: off")


@dataclass
class FileCase:
    seq: int
    case_id: str
    idempotency_key: str
    version: int
    outcome: Outcome
    received_at: dt.datetime
    request_ok: bool = True
    results: list[str] = field(default_factory=list)


@dataclass
class FiledropDepartmentState:
    """Everything the simulated department holds; tests read it directly."""

    settings: FiledropSimulatorSettings
    root: Path = Path()
    cases: dict[str, FileCase] = field(default_factory=dict)
    requests: int = 0
    duplicates: int = 0
    bad_requests: int = 0
    refused: set[str] = field(default_factory=set)
    results_written: int = 0
    slow_writes: int = 0
    garbage_written: int = 0
    duplicate_results: int = 0
    sftp: SftpServer | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _rng: random.Random = field(default_factory=random.Random)
    _scanning: asyncio.Lock = field(default_factory=asyncio.Lock)
    _stack: contextlib.AsyncExitStack | None = None
    _temp: Path | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Create the folders, start the SFTP server (if any) and the inbox watcher."""
        s = self.settings
        self._rng = random.Random(s.seed)
        if s.workdir is not None:
            # a folder of this run's own: the case numbers restart with every run, so results
            # an earlier (or a concurrent) run left in a shared workdir would be read as this
            # run's (MZ-2026-000020-1.json of another city, quarantined or applied wrongly)
            s.workdir.mkdir(parents=True, exist_ok=True)
            self._temp = self.root = Path(tempfile.mkdtemp(prefix="run-", dir=s.workdir))
        elif s.root is not None:
            self.root = s.root
        else:
            self._temp = self.root = Path(tempfile.mkdtemp(prefix="filedrop-sim-"))
        for folder in (s.inbox, s.outbox, s.processed, s.errors):
            if folder:
                (self.root / folder).mkdir(parents=True, exist_ok=True)
        self._stack = contextlib.AsyncExitStack()
        if s.transport == "sftp":
            keydir = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="sftp-")))
            self.sftp = await self._stack.enter_async_context(
                sftp_server(
                    self.root,
                    keydir=keydir,
                    host=s.sftp_host,
                    port=s.sftp_port,
                    username=s.sftp_username,
                    password=s.sftp_password,
                )
            )
        self._spawn(self._watch())

    async def aclose(self) -> None:
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = None
        if self._temp is not None:
            shutil.rmtree(self._temp, ignore_errors=True)
            self._temp = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[FiledropDepartmentState]:
        """``start`` ... ``aclose`` as a block (tests that need no control API)."""
        await self.start()
        try:
            yield self
        finally:
            await self.aclose()

    def connector_options(self) -> dict[str, Any]:
        """Where the gateway's ``filedrop`` connector finds this department (merged into the
        department's ``[options]`` by the simulated-city harness)."""
        if self.sftp is None:
            return {"target": {"type": "local", "root": str(self.root)}}
        target: dict[str, Any] = {
            "type": "sftp",
            "host": self.sftp.host,
            "port": self.sftp.port,
            "username": self.sftp.username,
            "host_key": self.sftp.host_key_line,
            "root": "/",
        }
        if self.sftp.password is not None:
            target["password"] = self.sftp.password
        else:
            target["private_key"] = str(self.sftp.client_key_path)
        return {"target": target}

    def stats(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "cases": len(self.cases),
            "duplicates": self.duplicates,
            "bad_requests": self.bad_requests,
            "results_written": self.results_written,
            "slow_writes": self.slow_writes,
            "garbage_written": self.garbage_written,
            "duplicate_results": self.duplicate_results,
            "refused": len(self.refused),
            "sftp_connections": self.sftp.connections if self.sftp else 0,
            "sftp_dropped": self.sftp.dropped if self.sftp else 0,
        }

    def outcome_for(self, key: str, version: int) -> Outcome:
        """Deterministic in (seed, key); a re-sent version is never sent back for supplement."""
        return draw(self.settings.seed, key, self.settings.mix, resent=version > 1)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _watch(self) -> None:
        while True:
            try:
                await self.scan()
            except OSError:
                _log.exception("filedrop simulator: inbox scan failed")
            await asyncio.sleep(self.settings.scan_interval_seconds)

    async def scan(self) -> int:
        """Take every complete request in the inbox; returns how many were taken."""
        async with self._scanning:
            return await self._scan()

    async def _scan(self) -> int:
        s = self.settings
        ext = _EXT[s.format]
        inbox = self.root / s.inbox
        names = set(await asyncio.to_thread(lambda: [p.name for p in inbox.iterdir()]))
        requests = []
        for name in sorted(names):
            if name.startswith(".") or not name.endswith(ext):
                continue
            if s.request_commit == "done_marker" and name + s.done_suffix not in names:
                continue
            key = name[: -len(ext)]
            if _KEY.fullmatch(key):
                requests.append((key, name))
        if not requests:
            return 0
        # one trip to a worker thread a scan, not one a request (a trip cost more than a take)
        cases, failed = await asyncio.to_thread(self._take_all, requests, names)
        for case in cases:
            if case is not None:
                self._spawn(self._decide(case))
        if failed is not None:
            raise failed  # after deciding what was taken before it
        return len(requests)

    def _take_all(
        self, requests: list[tuple[str, str]], names: set[str]
    ) -> tuple[list[FileCase | None], OSError | None]:
        """:meth:`_take` of each (key, name), up to the first that fails (and that failure)."""
        cases: list[FileCase | None] = []
        for key, name in requests:
            try:
                cases.append(self._take(key, name, names))
            except OSError as exc:
                return cases, exc
        return cases, None

    def _take(self, key: str, name: str, names: set[str]) -> FileCase | None:
        """Move a request into ``processed/``; the new case, or None for a repeat."""
        s = self.settings
        inbox, processed = self.root / s.inbox, self.root / s.processed
        data = (inbox / name).read_bytes()
        ok = _readable(data, s.format, s.encoding)
        refuse = s.errors is not None and key not in self.refused and key not in self.cases
        refuse = refuse and (not ok or random.Random(f"{s.seed}:{key}:err").random() < s.error_rate)
        to = self.root / s.errors if refuse and s.errors else processed
        for other in sorted(names):
            if other.startswith(f"{key}.m") or other == name + s.done_suffix:
                (inbox / other).replace(to / other)
        (inbox / name).replace(to / name)
        self.requests += 1
        if refuse:
            self.refused.add(key)
            why = "申请文件无法读取" if not ok else "第2行：申请人证件号码校验未通过"
            (to / f"{name}.err").write_bytes(why.encode(s.encoding))
            return None
        if key in self.cases:
            self.duplicates += 1
            return None
        _lineage, version = version_of(key)
        now = dt.datetime.now(dt.UTC)
        seq = len(self.cases) + 1
        case = FileCase(
            seq=seq,
            case_id=f"{s.case_prefix}-{now.year}-{seq:06d}",
            idempotency_key=key,
            version=version,
            outcome=self.outcome_for(key, version) if ok else "not_accept",
            received_at=now,
            request_ok=ok,
        )
        if not ok:
            self.bad_requests += 1
        self.cases[key] = case
        return case

    # -- results -------------------------------------------------------------------------------

    async def _decide(self, case: FileCase) -> None:
        s = self.settings
        delay = s.decision_delay_seconds
        if s.progress and case.outcome != "not_accept":
            await asyncio.sleep(delay / 2)
            await self._write_result(case, "1")
            await asyncio.sleep(delay / 2)
        else:
            await asyncio.sleep(delay)
        name = await self._write_result(case, _FINAL[case.outcome], final=True)
        if self._rng.random() < s.duplicate_rate:
            self.duplicate_results += 1
            await self._write_result(
                case, _FINAL[case.outcome], final=True, name=name.replace(".", "-copy.", 1)
            )
        if self._rng.random() < s.garbage_rate:
            await self.write_garbage(f"garbage-{case.case_id}{_EXT[s.format]}")

    def result_record(self, case: FileCase, status: str, *, final: bool) -> dict[str, Any]:
        opinion = _OPINIONS[case.outcome] if final else "已受理"
        if not case.request_ok:
            opinion = "不予受理：申请文件无法读取"
        at = dt.datetime.now(dt.UTC)
        when = (
            at.astimezone(_SHANGHAI).strftime("%Y-%m-%d %H:%M:%S")
            if self.settings.local_times
            else at.isoformat().replace("+00:00", "Z")
        )
        record: dict[str, Any] = {
            "case_id": case.case_id,
            "idempotency_key": case.idempotency_key,
            "status": self.settings.status_words.get(status, status),
            "opinion": opinion,
            "occurred_at": when,
            "supplement_items": list(_SUPPLEMENT_ITEMS) if final and status == "3" else [],
            "documents": [],
        }
        if final and case.outcome == "approve":
            record["documents"] = [
                {
                    "name": f"certificate-{case.case_id}.pdf",
                    "content_type": "application/pdf",
                    "content_b64": base64.b64encode(_certificate(case.case_id)).decode(),
                }
            ]
        return record

    async def _write_result(
        self, case: FileCase, status: str, *, final: bool = False, name: str | None = None
    ) -> str:
        s = self.settings
        name = name or f"{case.case_id}-{len(case.results) + 1}{_EXT[s.format]}"
        record = self.result_record(case, status, final=final)
        outbox = self.root / s.outbox
        if record["documents"] and (s.format == "csv" or s.documents == "beside"):
            folder = outbox
            if s.documents != "beside":
                folder = outbox / f"{name.rsplit('.', 1)[0]}.files"
                folder.mkdir(exist_ok=True)
            names = []
            for doc in record["documents"]:
                (folder / doc["name"]).write_bytes(base64.b64decode(doc["content_b64"]))
                names.append(doc["name"])
            record["documents"] = s.list_separator.join(names)
        if isinstance(record["supplement_items"], list) and s.format == "csv":
            record["supplement_items"] = s.list_separator.join(record["supplement_items"])
        record = {s.columns.get(k, k): v for k, v in record.items()}
        data = encode_result(record, s.format, s.encoding)
        slow = self._rng.random() < s.slow_write_rate
        await self.write_file(name, data, slow=slow)
        case.results.append(name)
        self.results_written += 1
        return name

    async def write_file(self, name: str, data: bytes, *, slow: bool = False) -> None:
        """Put ``name`` into the outbox the way the settings say (slow: in chunks, in place)."""
        s = self.settings
        path = self.root / s.outbox / name
        if slow:
            self.slow_writes += 1
            with path.open("wb") as fh:
                for start in range(0, len(data), s.slow_chunk_bytes):
                    fh.write(data[start : start + s.slow_chunk_bytes])
                    fh.flush()
                    await asyncio.sleep(s.slow_chunk_pause_seconds)
        elif s.result_commit == "rename":
            tmp = path.with_name(f".{name}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
        else:
            path.write_bytes(data)
        if s.result_commit == "done_marker":
            path.with_name(name + s.done_suffix).write_bytes(b"")

    async def write_garbage(self, name: str) -> None:
        self.garbage_written += 1
        await self.write_file(name, b"\x00\xff garbage, not a result \x89PNG\r\n")


def encode_result(record: dict[str, Any], fmt: str, encoding: str = "utf-8") -> bytes:
    """A result record in the department's file format."""
    if fmt == "json":
        return json.dumps(record, ensure_ascii=False, indent=2).encode(encoding)
    if fmt == "xml":
        root = etree.Element("result")
        for key, value in record.items():
            child = etree.SubElement(root, key)
            if key == "documents":
                for doc in value:
                    entry = etree.SubElement(child, "document")
                    for k, v in doc.items():
                        etree.SubElement(entry, k).text = v
            elif key == "supplement_items":
                for item in value:
                    etree.SubElement(child, "item").text = item
            else:
                child.text = str(value)
        return bytes(etree.tostring(root, xml_declaration=True, encoding=encoding))
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    row = {k: ";".join(v) if isinstance(v, list) else str(v) for k, v in record.items()}
    writer.writerow(list(row))
    writer.writerow(list(row.values()))
    return out.getvalue().encode(encoding)


def _readable(data: bytes, fmt: str, encoding: str = "utf-8") -> bool:
    try:
        if fmt == "json":
            return isinstance(json.loads(data.decode(encoding)), dict)
        if fmt == "xml":
            parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
            etree.fromstring(data, parser=parser)
            return True
        return len(list(csv.DictReader(io.StringIO(data.decode(encoding))))) == 1
    except (ValueError, UnicodeDecodeError, etree.XMLSyntaxError, csv.Error):
        return False


def _certificate(case_id: str) -> bytes:
    return b"%PDF-1.4\n% simulated certificate\n" + case_id.encode() + b"\n%%EOF\n"


def create_filedrop_department(
    settings: FiledropSimulatorSettings,
) -> tuple[FastAPI, FiledropDepartmentState]:
    """Build the control app and the state; the app's lifespan runs the department."""
    state = FiledropDepartmentState(settings=settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.aclose()

    app = FastAPI(title="Simulated department (file drop)", lifespan=lifespan)

    @app.get("/_stats")
    async def stats() -> dict[str, int]:
        return state.stats()

    @app.post("/_control")
    async def control(request: FiledropControl) -> dict[str, Any]:
        changes = request.model_dump(exclude_none=True)
        drop = changes.pop("sftp_drop_after_bytes", None)
        if drop is not None and state.sftp is not None:
            state.sftp.faults.drop_after_bytes = None if drop < 0 else drop
        state.settings = state.settings.model_copy(update=changes)
        return {"ok": True, **changes}

    return app, state
