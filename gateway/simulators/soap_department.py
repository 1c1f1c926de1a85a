"""A simulated department back-office system that speaks SOAP 1.1 (spyne), all in memory.

It decides cases exactly like the REST simulator (same status codes, delays and seeded mix, see
:mod:`gateway.simulators.rest_department`) but behind a WSDL. The spyne WSGI app runs in a2wsgi's
thread pool under uvicorn, so it is a real HTTP server on loopback inside the caller's event loop;
an ASGI layer in front of it does what spyne does not: HTTP basic auth, WS-Security
UsernameToken checks, fault injection and the control endpoints.

Operations (namespace :data:`NAMESPACE`, document/literal wrapped)::

    SubmitApplication(Request: ApplicationRequest) -> CaseInfo     dedupes on IdempotencyKey (or
                                                                   an IdempotencyKey SOAP header)
    QueryStatus(CaseId) -> CaseInfo                                documents are base64 elements
    ListCases(Since, Until, Cursor, Limit) -> CaseList             Items appear to zeep as
                                                                   {"CaseSummary": [...]}
    ListChanges(Since, Until, Cursor, Limit) -> ChangeList         the change feed: each case
                                                                   changed in the window, whole

Endpoints::

    POST /soap          the service; GET /soap?wsdl is its WSDL (address = the requested host)
    POST /_control      {"mode": see :data:`MODES`, "slow_seconds", "html_status", "huge_bytes"}
    GET  /_stats        {"submissions", "cases", "duplicates", ...}

Fault modes: ``server_fault`` (soap Server), ``client_fault`` (soap Client), ``reject``
(Client.Rejected, a business answer), ``html`` (an HTML error page with ``html_status``),
``malformed`` (broken XML), ``huge`` (a valid answer of ``huge_bytes``), ``xxe`` and
``billion_laughs`` (hostile DTDs), ``fail503``, ``slow`` and ``timeout`` (never answers).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from a2wsgi import WSGIMiddleware
from lxml import etree
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from spyne import (
    Application,
    ByteArray,
    ComplexModel,
    DateTime,
    Fault,
    Integer,
    ServiceBase,
    Unicode,
    rpc,
)
from spyne import const as spyne_const
from spyne.model.complex import Array
from spyne.protocol.soap import Soap11
from spyne.server.wsgi import WsgiApplication

from gateway.simulators.decisions import Mix, Outcome, default_mix, draw, version_of
from gateway.simulators.rest_department import SimCase
from gateway.simulators.soap_plain import NAMESPACE, SOAP_ENV, SUBMIT_FIELDS, plain_call
from gateway.simulators.soap_plain import answer as plain_answer

# spyne runs a full gc.collect() after a call whenever a second has passed since the last one,
# to close files a call left open (this simulator leaves none): in the city day that was a third
# of the simulator process's time, holding up the other departments it serves
spyne_const.MIN_GC_INTERVAL = math.inf

__all__ = [
    "MODES",
    "NAMESPACE",
    "SoapControl",
    "SoapDepartmentState",
    "SoapSimulatorSettings",
    "create_soap_department",
]

_WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
_WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
_DIGEST = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0"
    "#PasswordDigest"
)
_SOAP_ENV = SOAP_ENV
_KEY_HEADER = "x-sim-idempotency-key"
_HANG_SECONDS = 3600.0

Mode = Literal[
    "ok",
    "server_fault",
    "client_fault",
    "reject",
    "html",
    "malformed",
    "huge",
    "xxe",
    "billion_laughs",
    "fail503",
    "slow",
    "timeout",
]
MODES: tuple[str, ...] = Mode.__args__  # type: ignore[attr-defined]


class SoapSimulatorSettings(BaseModel):
    """The ``[simulator]`` table of a department file whose simulator kind is ``soap``."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["soap"] = "soap"
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    path: str = Field(default="/soap", pattern=r"^/[A-Za-z0-9/_-]*$")
    seed: int = 1
    decision_delay_seconds: float = Field(default=2.0, ge=0)
    mix: Mix = Field(default_factory=default_mix)
    case_prefix: str = "NRP"
    wsse_username: str | None = Field(default=None, description="require a UsernameToken")
    wsse_password: str | None = None
    basic_username: str | None = Field(default=None, description="require HTTP basic auth")
    basic_password: str | None = None
    mode: Mode = "ok"
    slow_seconds: float = Field(default=1.0, ge=0)
    html_status: int = Field(default=502, ge=200, le=599)
    huge_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)


class SoapControl(BaseModel):
    """Body of ``POST /_control``."""

    model_config = ConfigDict(extra="forbid")

    mode: Mode = "ok"
    slow_seconds: float = Field(default=1.0, ge=0)
    html_status: int = Field(default=502, ge=200, le=599)
    huge_bytes: int | None = Field(default=None, ge=1024)


class _SoapCase(SimCase):
    """A case of the SOAP department: a case it does not accept is refused at acceptance
    (received -> not accepted), never after review as the shared timeline would have it."""

    def phase(self, now: dt.datetime, delay: float) -> tuple[str, dt.datetime]:
        # a forced status (a test's or a drift helper's) wins over any drawn outcome
        if self.forced is not None or self.outcome != "not_accept" or delay <= 0:
            return super().phase(now, delay)
        decided = self.created_at + dt.timedelta(seconds=delay)
        return ("2", decided) if now >= decided else ("0", self.created_at)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class SoapDepartmentState:
    """Everything the simulated department holds; tests read and set it directly.

    Spyne runs in worker threads, so every change to cases goes through ``lock``.
    """

    settings: SoapSimulatorSettings
    clock: Callable[[], dt.datetime] = _utcnow
    cases: dict[str, SimCase] = field(default_factory=dict)
    by_key: dict[str, str] = field(default_factory=dict)
    submissions: int = 0
    duplicates: int = 0
    requests: int = 0
    mode: str = "ok"
    slow_seconds: float = 1.0
    html_status: int = 502
    huge_bytes: int = 16 * 1024 * 1024
    #: password types of accepted UsernameTokens, in order ("text" or "digest")
    wsse_seen: list[str] = field(default_factory=list)
    basic_seen: int = 0
    #: idempotency keys that arrived in a SOAP header
    header_keys: list[str] = field(default_factory=list)
    wsdl_requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.mode = self.settings.mode
        self.slow_seconds = self.settings.slow_seconds
        self.html_status = self.settings.html_status
        self.huge_bytes = self.settings.huge_bytes

    def stats(self) -> dict[str, int]:
        with self.lock:
            return {
                "submissions": self.submissions,
                "cases": len(self.cases),
                "duplicates": self.duplicates,
                "requests": self.requests,
                "wsdl_requests": self.wsdl_requests,
            }

    def outcome_for(self, idempotency_key: str) -> Outcome:
        """Deterministic in (seed, key), the same draw as the REST simulator."""
        return draw(
            self.settings.seed,
            idempotency_key,
            self.settings.mix,
            resent=version_of(idempotency_key)[1] > 1,
        )

    def create(self, idempotency_key: str, body: dict[str, Any]) -> tuple[SimCase, bool]:
        """Record a submission; returns the case and whether it is new."""
        with self.lock:
            self.submissions += 1
            existing = self.by_key.get(idempotency_key)
            if existing is not None:
                self.duplicates += 1
                return self.cases[existing], False
            now = self.clock()
            seq = len(self.cases) + 1
            case = _SoapCase(
                seq=seq,
                id=f"{self.settings.case_prefix}-{now.year}-{seq:06d}",
                idempotency_key=idempotency_key,
                outcome=self.outcome_for(idempotency_key),
                body=body,
                created_at=now,
                version=body.get("Version"),
            )
            self.cases[case.id] = case
            self.by_key[idempotency_key] = case.id
            return case, True

    def view(self, case: SimCase) -> dict[str, Any]:
        return case.view(self.clock(), self.settings.decision_delay_seconds)

    def control(self, request: SoapControl) -> None:
        self.mode = request.mode
        self.slow_seconds = request.slow_seconds
        self.html_status = request.html_status
        if request.huge_bytes is not None:
            self.huge_bytes = request.huge_bytes


# -- the spyne service -------------------------------------------------------------------------


class Document(ComplexModel):  # type: ignore[misc]
    __namespace__ = NAMESPACE
    Name = Unicode
    ContentType = Unicode
    Content = ByteArray


class ApplicationRequest(ComplexModel):  # type: ignore[misc]
    __namespace__ = NAMESPACE
    IdempotencyKey = Unicode
    ReceiptNumber = Unicode
    MatterCode = Unicode
    Region = Unicode
    ApplicantName = Unicode
    ApplicantIdNo = Unicode
    Version = Integer
    FormJson = Unicode


class CaseInfo(ComplexModel):  # type: ignore[misc]
    __namespace__ = NAMESPACE
    CaseId = Unicode
    IdempotencyKey = Unicode
    Status = Unicode
    Opinion = Unicode
    Version = Integer
    UpdatedAt = DateTime
    SupplementItems = Array(Unicode)
    Documents = Array(Document)


class CaseSummary(ComplexModel):  # type: ignore[misc]
    __namespace__ = NAMESPACE
    CaseId = Unicode
    IdempotencyKey = Unicode
    Status = Unicode
    UpdatedAt = DateTime


class CaseList(ComplexModel):  # type: ignore[misc]
    __namespace__ = NAMESPACE
    Items = Array(CaseSummary)
    Next = Unicode


class ChangeList(ComplexModel):  # type: ignore[misc]
    """A page of the change feed: each changed case whole, as QueryStatus returns it."""

    __namespace__ = NAMESPACE
    Items = Array(CaseInfo)
    Next = Unicode


def _info(state: SoapDepartmentState, case: SimCase) -> dict[str, Any]:
    """CaseInfo's fields (document contents in base64, as the answer carries them)."""
    view = state.view(case)
    return {
        "CaseId": case.id,
        "IdempotencyKey": case.idempotency_key,
        "Status": view["status"],
        "Opinion": view["opinion"],
        "Version": case.version,
        "UpdatedAt": dt.datetime.fromisoformat(view["updated_at"].replace("Z", "+00:00")),
        "SupplementItems": view["supplement_items"],
        "Documents": [
            {"Name": d["name"], "ContentType": d["content_type"], "Content": d["content_b64"]}
            for d in view["documents"]
        ],
    }


def _case_info(state: SoapDepartmentState, case: SimCase) -> CaseInfo:
    info = _info(state, case)
    documents = [
        Document(
            Name=d["Name"], ContentType=d["ContentType"], Content=[base64.b64decode(d["Content"])]
        )
        for d in info.pop("Documents")
    ]
    return CaseInfo(**info, Documents=documents)


def _submission(values: dict[str, Any]) -> dict[str, Any]:
    """What the department keeps of a submission (values of ApplicationRequest's fields)."""
    return {
        name: values.get(name)
        for name in ("ReceiptNumber", "MatterCode", "Region", "Version", "FormJson")
    }


def _mode_fault(state: SoapDepartmentState) -> None:
    mode = state.mode
    if mode == "server_fault":
        raise Fault(faultcode="Server", faultstring="back-office database unavailable")
    if mode == "client_fault":
        raise Fault(faultcode="Client", faultstring="request does not match the schema")
    if mode == "reject":
        raise Fault(
            faultcode="Client.Rejected",
            faultstring="不予受理：申请事项不属于本机关职权范围",
        )


def _build_service(state: SoapDepartmentState) -> type[ServiceBase]:
    class DepartmentService(ServiceBase):  # type: ignore[misc]
        @rpc(ApplicationRequest, _returns=CaseInfo)  # type: ignore[untyped-decorator]
        def SubmitApplication(ctx: Any, Request: ApplicationRequest | None) -> CaseInfo:
            _mode_fault(state)
            header_key = ctx.transport.req_env.get("HTTP_" + _KEY_HEADER.upper().replace("-", "_"))
            key = (Request.IdempotencyKey if Request is not None else None) or header_key
            if not key:
                raise Fault(faultcode="Client.MissingKey", faultstring="IdempotencyKey required")
            values = {name: getattr(Request, name, None) for name in SUBMIT_FIELDS}
            case, _new = state.create(str(key), _submission(values))
            return _case_info(state, case)

        @rpc(Unicode, _returns=CaseInfo)  # type: ignore[untyped-decorator]
        def QueryStatus(ctx: Any, CaseId: str | None) -> CaseInfo:
            _mode_fault(state)
            with state.lock:
                case = state.cases.get(CaseId or "")
            if case is None:
                raise Fault(faultcode="Client.NotFound", faultstring=f"no case {CaseId}")
            return _case_info(state, case)

        @rpc(DateTime, DateTime, Unicode, Integer, _returns=CaseList)  # type: ignore[untyped-decorator]
        def ListCases(
            ctx: Any,
            Since: dt.datetime | None,
            Until: dt.datetime | None,
            Cursor: str | None,
            Limit: int | None,
        ) -> CaseList:
            _mode_fault(state)
            page, next_cursor = _changed_in(state, Since, Until, Cursor, Limit)
            items = [
                CaseSummary(
                    CaseId=case.id, IdempotencyKey=case.idempotency_key, Status=status, UpdatedAt=at
                )
                for case, status, at in page
            ]
            return CaseList(Items=items, Next=next_cursor)

        @rpc(DateTime, DateTime, Unicode, Integer, _returns=ChangeList)  # type: ignore[untyped-decorator]
        def ListChanges(
            ctx: Any,
            Since: dt.datetime | None,
            Until: dt.datetime | None,
            Cursor: str | None,
            Limit: int | None,
        ) -> ChangeList:
            """The change feed: cases whose status changed in [Since, Until), each whole."""
            _mode_fault(state)
            page, next_cursor = _changed_in(state, Since, Until, Cursor, Limit)
            return ChangeList(Items=[_case_info(state, c) for c, _s, _a in page], Next=next_cursor)

    return DepartmentService


def _changed_in(
    state: SoapDepartmentState,
    since: dt.datetime | None,
    until: dt.datetime | None,
    cursor: str | None,
    limit: int | None,
) -> tuple[list[tuple[SimCase, str, dt.datetime]], str | None]:
    """One page of the cases whose status changed in ``[since, until)``, after ``cursor``
    (case sequence numbers): (case, status, changed at) each, and the next page's cursor."""
    try:
        after = int(cursor) if cursor else 0
    except ValueError:
        raise Fault(faultcode="Client", faultstring="bad cursor") from None
    size = min(max(limit or 100, 1), 1000)
    lower, upper = _aware(since), _aware(until)
    now, delay = state.clock(), state.settings.decision_delay_seconds
    with state.lock:
        cases = list(state.cases.values())
    page: list[tuple[SimCase, str, dt.datetime]] = []
    for case in cases:
        if case.seq <= after:
            continue
        status, updated = case.phase(now, delay)
        if (lower and updated < lower) or (upper and updated >= upper):
            continue
        if len(page) == size:
            return page, str(page[-1][0].seq)
        page.append((case, status, updated))
    return page, None


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


# -- the ASGI layer: auth, faults that are not SOAP faults, control ------------------------------

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


def _fault_envelope(code: str, message: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>'
        f'<soap11env:Envelope xmlns:soap11env="{_SOAP_ENV}"><soap11env:Body>'
        f"<soap11env:Fault><faultcode>soap11env:{code}</faultcode>"
        f"<faultstring>{message}</faultstring></soap11env:Fault>"
        f"</soap11env:Body></soap11env:Envelope>"
    ).encode()


_XXE = (
    b'<?xml version="1.0"?>\n<!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n'
    b'<soap11env:Envelope xmlns:soap11env="' + _SOAP_ENV.encode() + b'"><soap11env:Body>'
    b"<x>&xxe;</x></soap11env:Body></soap11env:Envelope>"
)


def _billion_laughs() -> bytes:
    lines = ['<!ENTITY lol0 "lol">']
    for i in range(1, 10):
        lines.append(f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10}">')
    return (
        '<?xml version="1.0"?>\n<!DOCTYPE lolz [' + "".join(lines) + "]>\n"
        f'<soap11env:Envelope xmlns:soap11env="{_SOAP_ENV}"><soap11env:Body>'
        "<x>&lol9;</x></soap11env:Body></soap11env:Envelope>"
    ).encode()


def _huge(size: int) -> bytes:
    head = (
        f'<?xml version="1.0" encoding="UTF-8"?><soap11env:Envelope xmlns:soap11env="{_SOAP_ENV}">'
        f'<soap11env:Body><tns:QueryStatusResponse xmlns:tns="{NAMESPACE}">'
        f"<tns:QueryStatusResult><tns:Opinion>"
    ).encode()
    tail = (
        b"</tns:Opinion></tns:QueryStatusResult></tns:QueryStatusResponse>"
        b"</soap11env:Body></soap11env:Envelope>"
    )
    return head + b"x" * max(size - len(head) - len(tail), 0) + tail


async def _respond(send: Send, status: int, body: bytes, content_type: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # a2wsgi only waits here for a disconnect
        return {"type": "http.disconnect"}

    return receive


_SAFE_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)


def _check_wsse(settings: SoapSimulatorSettings, root: Any) -> str | None:
    """The password type of a valid UsernameToken, or None."""
    token = root.find(f"{{{_SOAP_ENV}}}Header/{{{_WSSE}}}Security/{{{_WSSE}}}UsernameToken")
    if token is None:
        return None
    username = token.findtext(f"{{{_WSSE}}}Username") or ""
    password_el = token.find(f"{{{_WSSE}}}Password")
    if password_el is None or not hmac.compare_digest(
        username.encode(), (settings.wsse_username or "").encode()
    ):
        return None
    expected = (settings.wsse_password or "").encode()
    given = (password_el.text or "").encode()
    if password_el.get("Type") == _DIGEST:
        nonce = base64.b64decode(token.findtext(f"{{{_WSSE}}}Nonce") or "")
        created = (token.findtext(f"{{{_WSU}}}Created") or "").encode()
        digest = base64.b64encode(hashlib.sha1(nonce + created + expected).digest())
        return "digest" if hmac.compare_digest(given, digest) else None
    return "text" if hmac.compare_digest(given, expected) else None


class _Department:
    """The ASGI app: control endpoints, auth, fault modes, then spyne via a2wsgi."""

    def __init__(self, state: SoapDepartmentState, wsgi: Any) -> None:
        self.state = state
        self.wsgi = wsgi
        #: answer plain calls without spyne (tests turn it off to compare with spyne's)
        self.plain = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        state, settings = self.state, self.state.settings
        if path == "/_stats":
            await _respond(send, 200, json.dumps(state.stats()).encode(), "application/json")
            return
        if path == "/_control" and method == "POST":
            try:
                state.control(SoapControl.model_validate_json(await _read_body(receive)))
            except ValidationError as exc:
                await _respond(send, 422, exc.json().encode(), "application/json")
                return
            await _respond(send, 200, json.dumps({"mode": state.mode}).encode(), "application/json")
            return
        if path.rstrip("/") != settings.path.rstrip("/"):
            await _respond(send, 404, b"not found", "text/plain")
            return
        if method == "GET":
            with state.lock:
                state.wsdl_requests += 1
            await self.wsgi(scope, receive, send)
            return
        with state.lock:
            state.requests += 1
        if settings.basic_username is not None and not self._basic_ok(scope):
            await _respond(send, 401, b"<html><body>401 Unauthorized</body></html>", "text/html")
            return
        body = await _read_body(receive)
        headers = list(scope["headers"])
        try:
            root = etree.fromstring(body, _SAFE_PARSER)
        except etree.XMLSyntaxError:
            root = None
        if root is not None:
            kind = _check_wsse(settings, root)
            if settings.wsse_username is not None:
                if kind is None:
                    fault = _fault_envelope("Client.Authentication", "invalid UsernameToken")
                    await _respond(send, 500, fault, "text/xml; charset=utf-8")
                    return
                with state.lock:
                    state.wsse_seen.append(kind)
            key = root.findtext(f"{{{_SOAP_ENV}}}Header/{{*}}IdempotencyKey")
            if key:
                with state.lock:
                    state.header_keys.append(key)
                headers.append((_KEY_HEADER.encode(), key.encode()))
        if await self._injected_fault(receive, send):
            return
        call = plain_call(root) if root is not None and state.mode == "ok" and self.plain else None
        answer = self._answer(*call) if call is not None else None
        if answer is not None:
            await _respond(send, 200, answer, "text/xml; charset=utf-8")
            return
        await self.wsgi({**scope, "headers": headers}, _replay(body), send)

    def _answer(self, operation: str, values: dict[str, Any]) -> bytes | None:
        """A plain call's answer, as spyne gives it (see :mod:`.soap_plain`); None: spyne."""
        state = self.state
        if operation == "SubmitApplication":
            case, _new = state.create(values["IdempotencyKey"], _submission(values))
        else:
            with state.lock:
                found = state.cases.get(values["CaseId"])
            if found is None:
                return None  # spyne's fault
            case = found
        return plain_answer(operation, _info(state, case))

    async def _injected_fault(self, receive: Receive, send: Send) -> bool:
        state = self.state
        mode = state.mode
        xml = "text/xml; charset=utf-8"
        if mode == "html":
            page = (
                b"<html><head><title>Bad Gateway</title></head><body><h1>Error</h1></body></html>"
            )
            await _respond(send, state.html_status, page, "text/html; charset=utf-8")
        elif mode == "malformed":
            await _respond(send, 200, b"<soap11env:Envelope><soap11env:Body><unclosed>", xml)
        elif mode == "huge":
            await _respond(send, 200, _huge(state.huge_bytes), xml)
        elif mode == "xxe":
            await _respond(send, 200, _XXE, xml)
        elif mode == "billion_laughs":
            await _respond(send, 200, _billion_laughs(), xml)
        elif mode == "fail503":
            await _respond(send, 503, b"Service Unavailable", "text/plain")
        elif mode == "timeout":
            # Never answer; return when the client gives up so the server can shut down.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_HANG_SECONDS):
                    while (await receive())["type"] != "http.disconnect":
                        pass
        elif mode == "slow":
            await asyncio.sleep(state.slow_seconds)
            return False
        else:
            return False
        return True

    def _basic_ok(self, scope: Scope) -> bool:
        settings = self.state.settings
        given = dict(scope["headers"]).get(b"authorization", b"")
        pair = f"{settings.basic_username}:{settings.basic_password or ''}".encode()
        ok = hmac.compare_digest(given, b"Basic " + base64.b64encode(pair))
        if ok:
            with self.state.lock:
                self.state.basic_seen += 1
        return ok

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                # a2wsgi's worker threads would otherwise outlive the server
                self.wsgi.executor.shutdown(wait=False, cancel_futures=True)
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_soap_department(
    settings: SoapSimulatorSettings,
    *,
    clock: Callable[[], dt.datetime] = _utcnow,
) -> tuple[Any, SoapDepartmentState]:
    """Build the simulated SOAP department's ASGI app and the state it serves from."""
    state = SoapDepartmentState(settings=settings, clock=clock)
    application = Application(
        [_build_service(state)],
        tns=NAMESPACE,
        name="DepartmentService",
        in_protocol=Soap11(validator="lxml"),
        out_protocol=Soap11(),
    )
    wsgi: Any = WSGIMiddleware(WsgiApplication(application), workers=8)
    return _Department(state, wsgi), state
