"""The built-in ``soap`` connector: departments whose back-office system speaks SOAP.

zeep does the SOAP; the connector gives it the gateway's shared ``httpx.AsyncClient`` through
an :class:`zeep.transports.AsyncTransport` subclass (zeep's own constructor would overwrite the
shared client's headers), a WSDL parsed once per process (:mod:`gateway_soap.wsdl`) and settings
that refuse DTDs and entities; MTOM/XOP answers are checked and rebuilt for zeep by
:mod:`gateway_soap.mtom`. Every failure is translated here, at the boundary::

    timeout, connection refused/reset                    -> TransientError
    HTTP 429 / 5xx that is not a SOAP answer (HTML, text)  -> TransientError
    HTTP 2xx/3xx/4xx that is not a SOAP answer (HTML page,
      401/403/404 from a proxy: wrong endpoint or account) -> PermanentError
    answer larger than max_response_bytes                -> PermanentError
    malformed XML: with HTTP 5xx                         -> TransientError
                   otherwise                             -> PermanentError
    a DTD or entity declarations in an answer (XXE,
      billion laughs; for MTOM, in the root part)        -> PermanentError (never expanded)
    MTOM/XOP answer: an xop:Include naming a missing
      attachment or no cid:, truncated/malformed
      multipart                                          -> PermanentError (5xx: TransientError)
    SOAP fault                                           -> by [options.faults], longest dotted
                                                            prefix of the fault code; unknown
                                                            codes: fault_default
       "transient" -> TransientError, "permanent" -> PermanentError,
       "rejected"  -> DepartmentRejected(fault string, status=reject_status)
    arguments that do not fit the operation, a result
      without a mapped field, WSDL import not mapped     -> PermanentError naming the option

Messages name the department, operation and what went wrong; fault strings are shown with the
applicant's ID number and phone masked; request bodies never appear.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import json
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx
from lxml import etree
from pydantic import BaseModel
from requests import Response
from requests.structures import CaseInsensitiveDict
from zeep import AsyncClient
from zeep.exceptions import (
    DTDForbidden,
    EntitiesForbidden,
    ExternalReferenceForbidden,
    Fault,
    ValidationError,
    XMLParseError,
)
from zeep.exceptions import Error as ZeepError
from zeep.exceptions import TransportError as ZeepTransportError
from zeep.exceptions import XMLSyntaxError as ZeepXMLSyntaxError
from zeep.helpers import serialize_object
from zeep.proxy import AsyncServiceProxy
from zeep.transports import AsyncTransport
from zeep.wsdl.utils import etree_to_string
from zeep.wsse.username import UsernameToken

from gateway.connector import (
    CaseSummary,
    CaseUpdate,
    Connector,
    ConnectorContext,
    Envelope,
    Health,
    Receipt,
    ResultDocument,
)
from gateway.errors import ConnectorError, DepartmentRejected, PermanentError, TransientError
from gateway.mapping import MISSING, get_path, map_envelope, parse_time, put_path
from gateway.pii import mask_echo
from gateway_soap import fast as fast_path
from gateway_soap import mtom
from gateway_soap.options import Paging, PollResponse, SoapOptions
from gateway_soap.wsdl import RefusedImport, load_document, secure_settings

__all__ = ["SoapConnector", "SoapOptions"]

# zeep is untyped where it matters here; these names keep mypy --strict honest about it.
_AsyncClient: Any = AsyncClient
_AsyncServiceProxy: Any = AsyncServiceProxy
_UsernameToken: Any = UsernameToken
_etree_to_string: Any = etree_to_string
_serialize_object: Any = serialize_object


class _TooLarge(Exception):
    pass


class _Transport(AsyncTransport):
    """zeep's async transport over the gateway's shared client, with a deadline and a size cap."""

    def __init__(self, connector: SoapConnector) -> None:
        # Not AsyncTransport.__init__: it replaces the client's headers with zeep's User-Agent,
        # and the client is shared by every department.
        self.cache = None
        self._close_session = False
        self.connector = connector
        self.client = connector.context.http
        self.logger = logging.getLogger(__name__)

    def load(self, url: str) -> bytes:
        raise PermanentError(f"{self.connector.context.department}: unexpected fetch of {url}")

    async def aclose(self) -> None:
        """The shared client belongs to the gateway."""

    async def post(self, address: str, message: bytes, headers: dict[str, str]) -> Response:
        status, response_headers, body = await self.connector._http(
            "POST", address, message, headers
        )
        content_type = response_headers.get("content-type", "")
        if content_type.lower().startswith("multipart/related"):
            content_type, body = self.connector._unpack(address, status, content_type, body)
            response_headers = httpx.Headers(response_headers)
            response_headers["content-type"] = content_type
        return _response(status, response_headers, body)

    async def post_xml(self, address: str, envelope: Any, headers: dict[str, str]) -> Response:
        return await self.post(address, _etree_to_string(envelope), headers)

    async def get(self, address: str, params: Any, headers: dict[str, str]) -> Response:
        return _response(*await self.connector._http("GET", address, None, headers))


def _response(status: int, headers: httpx.Headers, body: bytes) -> Response:
    response = Response()
    response._content = body
    response.status_code = status
    response.headers = CaseInsensitiveDict(headers.items())
    response.encoding = None  # zeep reads the charset from the XML declaration
    return response


@dataclass(frozen=True, slots=True)
class _Fast:
    """What :mod:`gateway_soap.fast` can do for one operation (None: zeep does it)."""

    templates: fast_path.Templates | None
    reader: fast_path.Reader | None

    @classmethod
    def of(cls, service: Any, operation: str) -> _Fast:
        binding, client = service._binding, service._client
        templates = fast_path.templates_for(binding, client, service._binding_options, operation)
        reader = fast_path.plan_for(binding, operation, client.settings) if templates else None
        return cls(templates, reader)


class SoapConnector(Connector):
    """Delivers applications to a SOAP department and reads their status back."""

    kind: ClassVar[str] = "soap"
    Options: ClassVar[type[BaseModel]] = SoapOptions

    def __init__(self, context: ConnectorContext) -> None:
        super().__init__(context)
        self.options = options = self.options_as(SoapOptions)
        self._transport = _Transport(self)
        self._service: Any = None
        self._fast: dict[str, _Fast] = {}
        self._lock = asyncio.Lock()
        self._auth_header: dict[str, str] = {}
        if options.basic_auth is not None:
            pair = f"{options.basic_auth.username}:{options.basic_auth.password.get_secret_value()}"
            self._auth_header["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()

    # -- the contract --------------------------------------------------------------------------

    async def submit(self, envelope: Envelope) -> Receipt:
        submit = self.options.submit
        kwargs = await self._arguments(envelope)
        if submit.idempotency_argument:
            put_path(kwargs, submit.idempotency_argument, envelope.idempotency_key)
        if submit.idempotency_header:
            header = etree.Element(etree.QName(submit.idempotency_header))
            header.text = envelope.idempotency_key
            kwargs["_soapheaders"] = [header]
        data = await self._invoke(submit.operation, kwargs, envelope)
        spec = submit.response
        case_id = self._require(data, spec.case_id, submit.operation)
        status = get_path(data, spec.status) if spec.status else None
        detail = get_path(data, spec.detail) if spec.detail else None
        return Receipt(
            case_id=str(case_id),
            status=None if status in (None, MISSING) else str(status),
            detail=None if detail in (None, MISSING) else _echo(str(detail), envelope),
        )

    async def poll(self, receipt: Receipt) -> CaseUpdate | None:
        poll = self.options.poll
        if poll is None:
            return None
        kwargs: dict[str, Any] = {}
        for target, value in poll.constants.items():
            put_path(kwargs, target, value)
        put_path(kwargs, poll.case_id_argument, receipt.case_id)
        data = await self._invoke(poll.operation, kwargs)
        return self._case_update(data, poll.response, poll.operation)

    async def list_cases(
        self, since: dt.datetime, until: dt.datetime
    ) -> AsyncIterator[CaseSummary]:
        listing = self.options.cases
        if listing is None:
            raise NotImplementedError(f"{self.context.department}: no [options.list] configured")
        async for item in self._pages(listing, since, until):
            yield self._summary(item, listing.operation)

    def offers_changes(self) -> bool:
        return self.options.changes is not None

    async def changes(self, since: dt.datetime, until: dt.datetime) -> AsyncIterator[CaseUpdate]:
        feed = self.options.changes
        if feed is None:
            raise NotImplementedError(f"{self.context.department}: no [options.changes] configured")
        spec = feed.item
        async for item in self._pages(feed, since, until):
            update = self._case_update(item, spec, feed.operation)
            key = get_path(item, spec.idempotency_key) if spec.idempotency_key else None
            if key not in (None, MISSING):
                update = update.model_copy(update={"idempotency_key": str(key)})
            yield update

    async def _pages(
        self, spec: Paging, since: dt.datetime, until: dt.datetime
    ) -> AsyncIterator[Any]:
        """The items of a paged operation over ``[since, until)``, page after page."""
        cursor: str | None = None
        for _ in range(spec.max_pages):
            kwargs: dict[str, Any] = {}
            put_path(kwargs, spec.since_argument, since)
            put_path(kwargs, spec.until_argument, until)
            put_path(kwargs, spec.limit_argument, spec.page_size)
            if cursor:
                put_path(kwargs, spec.cursor_argument, cursor)
            data = await self._invoke(spec.operation, kwargs)
            items = get_path(data, spec.items)
            if items in (None, MISSING):
                items = []  # an empty Array is often omitted or nil
            if not isinstance(items, list):
                raise PermanentError(self._where(spec.operation, f"{spec.items!r} is not a list"))
            for item in items:
                yield item
            nxt = get_path(data, spec.next)
            if nxt in (None, MISSING, ""):
                return
            cursor = str(nxt)
        raise PermanentError(
            self._where(spec.operation, f"more than {spec.max_pages} pages; cursor loop?")
        )

    async def health(self) -> Health:
        try:
            service = await self._proxy()
            address = str(service._binding_options["address"])
            status, _headers, _body = await self._http("GET", address, None, {})
        except ConnectorError as exc:
            return Health(ok=False, detail=str(exc)[:300])
        if status >= 500:
            return Health(ok=False, detail=f"HTTP {status}")
        return Health(ok=True, detail=f"HTTP {status}")

    async def aclose(self) -> None:
        """Nothing to release: the shared http client belongs to the gateway, the parsed
        WSDL to the process."""

    # -- zeep ----------------------------------------------------------------------------------

    async def _proxy(self) -> Any:
        if self._service is not None:
            return self._service
        async with self._lock:
            if self._service is None:
                self._service = await self._build()
        return self._service

    async def _build(self) -> Any:
        options = self.options
        try:
            document = await load_document(
                options.wsdl, options.schemas, self._fetch_wsdl, options.max_wsdl_bytes
            )
        except ConnectorError:
            raise
        except RefusedImport as exc:
            raise PermanentError(f"{self.context.department}: {exc}") from exc
        except OSError as exc:
            raise PermanentError(
                f"{self.context.department}: cannot read the WSDL or a schema "
                f"({type(exc).__name__}: {exc.strerror or exc}); check [options] wsdl/schemas"
            ) from exc
        except (ZeepError, etree.LxmlError, ValueError) as exc:
            raise PermanentError(
                f"{self.context.department}: the WSDL cannot be used ({type(exc).__name__}: "
                f"{str(exc)[:200]})"
            ) from exc
        wsse = None
        if options.wsse is not None:
            wsse = _UsernameToken(
                options.wsse.username,
                options.wsse.password.get_secret_value(),
                use_digest=options.wsse.digest,
            )
        client = _AsyncClient(
            wsdl=document, transport=self._transport, wsse=wsse, settings=secure_settings()
        )
        services = document.services
        try:
            service = (
                services[options.service] if options.service else next(iter(services.values()))
            )
            ports = service.ports
            port = ports[options.port] if options.port else next(iter(ports.values()))
        except (KeyError, StopIteration) as exc:
            raise PermanentError(
                f"{self.context.department}: the WSDL has no service/port "
                f"{options.service or '(first)'}/{options.port or '(first)'}"
            ) from exc
        # the configured endpoint, never the WSDL's soap:address (the department's document)
        binding_options = {**port.binding_options, "address": options.endpoint}
        return _AsyncServiceProxy(client, port.binding, **binding_options)

    async def _fetch_wsdl(self, url: str) -> bytes:
        status, _headers, body = await self._http("GET", url, None, {})
        if status == 200 and len(body) > self.options.max_wsdl_bytes:
            raise PermanentError(
                f"{self.context.department}: the WSDL is larger than "
                f"{self.options.max_wsdl_bytes} bytes; raise [options] max_wsdl_bytes"
            )
        if status == 200:
            return body
        problem = f"fetching the WSDL: HTTP {status}"
        if status == 429 or status >= 500:
            raise TransientError(f"{self.context.department}: {problem}")
        raise PermanentError(f"{self.context.department}: {problem}; check [options] wsdl")

    async def _invoke(
        self, operation: str, kwargs: dict[str, Any], envelope: Envelope | None = None
    ) -> Any:
        service = await self._proxy()
        try:
            method = service[operation]
        except AttributeError as exc:
            raise PermanentError(
                self._where(operation, "the WSDL has no such operation; check [options]")
            ) from exc
        try:
            result = await self._send(service, method, operation, kwargs)
        except ConnectorError:
            raise
        except Fault as exc:
            raise self._fault(operation, exc, envelope) from exc
        except (DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden) as exc:
            raise PermanentError(
                self._where(
                    operation,
                    f"answer refused: it declares a DTD or entities ({type(exc).__name__}); "
                    "XML entity expansion and external references are off",
                )
            ) from exc
        except ZeepTransportError as exc:
            what = f"HTTP {exc.status_code} answer is not well-formed SOAP"
            if exc.status_code == 429 or exc.status_code >= 500:
                raise TransientError(self._where(operation, what)) from exc
            raise PermanentError(self._where(operation, what)) from exc
        except (ZeepXMLSyntaxError, XMLParseError, etree.XMLSyntaxError) as exc:
            raise PermanentError(self._where(operation, "answer is not well-formed XML")) from exc
        except (ValidationError, TypeError) as exc:
            raise PermanentError(
                self._where(
                    operation,
                    f"arguments do not fit the operation ({str(exc)[:200]}); check the "
                    "argument mapping in [options]",
                )
            ) from exc
        except ZeepError as exc:
            raise PermanentError(
                self._where(operation, f"unusable answer ({type(exc).__name__})")
            ) from exc
        return result

    async def _send(self, service: Any, method: Any, operation: str, kwargs: dict[str, Any]) -> Any:
        """The operation's result as plain dicts: the request from a template and the answer
        read by a compiled plan where they give zeep's result (:mod:`gateway_soap.fast`), else
        zeep's own call."""
        fast = self._fast.get(operation)
        if fast is None:
            fast = self._fast[operation] = _Fast.of(service, operation)
        request = fast.templates.request(kwargs) if fast.templates is not None else None
        if request is None:
            return _plain(await method(**kwargs))
        body, headers = request
        address = str(service._binding_options["address"])
        status, response_headers, content = await self._http("POST", address, body, headers)
        content_type = response_headers.get("content-type", "")
        if fast.reader is not None:
            result = fast.reader.read(status, content_type, content)
            if result is not fast_path.UNREAD:
                return result
        if content_type.lower().startswith("multipart/related"):
            content_type, content = self._unpack(address, status, content_type, content)
            response_headers = httpx.Headers(response_headers)
            response_headers["content-type"] = content_type
        binding = service._binding
        reply = binding.process_reply(
            service._client, binding.get(operation), _response(status, response_headers, content)
        )
        return _plain(reply)

    def _fault(self, operation: str, exc: Fault, envelope: Envelope | None) -> ConnectorError:
        code = str(exc.code or "").rsplit("}", 1)[-1].split(":", 1)[-1]
        for sub in exc.subcodes or []:
            code += "." + str(getattr(sub, "localname", sub)).split(":", 1)[-1]
        parts = code.split(".") if code else []
        action = self.options.fault_default
        for end in range(len(parts), 0, -1):
            candidate = ".".join(parts[:end])
            if candidate in self.options.faults:
                action = self.options.faults[candidate]
                break
        reason = _echo(str(exc.message or code or "SOAP fault"), envelope)[:500]
        if action == "rejected":
            return DepartmentRejected(reason, status=self.options.reject_status)
        message = self._where(operation, f"SOAP fault {code or '(no code)'}: {reason[:200]}")
        if action == "transient":
            return TransientError(message)
        return PermanentError(message)

    # -- http ----------------------------------------------------------------------------------

    async def _http(
        self, method: str, url: str, content: bytes | None, headers: dict[str, str]
    ) -> tuple[int, httpx.Headers, bytes]:
        """One request with a total deadline and a size cap; non-SOAP answers are translated."""
        options = self.options
        all_headers = {**headers, **self._auth_header}
        label = f"{method} {url.split('?', 1)[0]}"
        try:
            async with asyncio.timeout(options.timeout_seconds):
                async with self.context.http.stream(
                    method,
                    url,
                    content=content,
                    headers=all_headers,
                    timeout=options.timeout_seconds,
                ) as response:
                    body = await _read_capped(response, options.max_response_bytes)
        except _TooLarge as exc:
            raise PermanentError(
                f"{self.context.department}: {label}: answer larger than "
                f"{options.max_response_bytes} bytes (raise [options] max_response_bytes "
                "if it is legitimate)"
            ) from exc
        except (httpx.TimeoutException, TimeoutError) as exc:
            raise TransientError(
                f"{self.context.department}: {label}: timed out after {options.timeout_seconds} s"
            ) from exc
        except (httpx.TransportError, OSError) as exc:
            raise TransientError(
                f"{self.context.department}: {label}: connection failed ({type(exc).__name__})"
            ) from exc
        status = response.status_code
        content_type = response.headers.get("content-type", "").lower()
        soapish = "xml" in content_type or content_type.startswith("multipart/related")
        if soapish and _declares_dtd(body):
            # Refused before parsing: no DTD, no entity expansion, however the parser is set.
            raise PermanentError(
                f"{self.context.department}: {label}: answer refused: it declares a DTD or "
                "entities; XML entity expansion and external references are off"
            )
        if method == "GET" or (soapish and status in (200, 202, 400, 500)):
            return status, response.headers, body
        kind = content_type.split(";", 1)[0] or "no content type"
        what = f"HTTP {status}" + ("" if soapish else f" answer is {kind}, not SOAP")
        if status == 429 or status >= 500:
            raise TransientError(f"{self.context.department}: {label}: {what}")
        hint = " (check [options] endpoint and credentials)" if status < 500 else ""
        raise PermanentError(f"{self.context.department}: {label}: {what}{hint}")

    def _unpack(self, url: str, status: int, content_type: str, body: bytes) -> tuple[str, bytes]:
        """An MTOM/XOP answer, checked and rebuilt for zeep (see :mod:`gateway_soap.mtom`)."""
        label = f"POST {url.split('?', 1)[0]}"
        try:
            parts = mtom.split(content_type, body)
            if _declares_dtd(parts.root):
                raise PermanentError(
                    f"{self.context.department}: {label}: answer refused: its root part "
                    "declares a DTD or entities; XML entity expansion and external references "
                    "are off"
                )
            return mtom.for_zeep(parts)
        except mtom.MtomError as exc:
            problem = f"{self.context.department}: {label}: MTOM/XOP answer unusable: {exc}"
            if status >= 500:
                raise TransientError(problem) from exc
            raise PermanentError(problem) from exc

    # -- mapping -------------------------------------------------------------------------------

    async def _arguments(self, envelope: Envelope) -> dict[str, Any]:
        submit = self.options.submit
        mapped = self.context.map_payload(envelope)
        kwargs: dict[str, Any]
        if mapped is not None:
            kwargs = dict(mapped)
        else:
            kwargs = map_envelope(
                envelope.model_dump(mode="json"),
                submit.arguments,
                where=f"{self.context.department} [options.submit.arguments]",
            )
        for target, value in submit.constants.items():
            put_path(kwargs, target, value)
        for target in submit.json_arguments:
            value = get_path(kwargs, target)
            if value is not MISSING:
                put_path(kwargs, target, json.dumps(value, ensure_ascii=False))
        return kwargs

    def _where(self, operation: str, what: str) -> str:
        return f"{self.context.department}: {operation}: {what}"

    def _require(self, data: Any, path: str, operation: str) -> Any:
        value = get_path(data, path)
        if value in (None, MISSING):
            raise PermanentError(
                self._where(operation, f"answer has no {path!r} (check [options] mapping)")
            )
        return value

    def _case_update(self, data: Any, spec: PollResponse, operation: str) -> CaseUpdate:
        case_id = self._require(data, spec.case_id, operation)
        status = self._require(data, spec.status, operation)
        detail = get_path(data, spec.detail) if spec.detail else None
        occurred = get_path(data, spec.occurred_at) if spec.occurred_at else None
        docs = get_path(data, spec.documents) if spec.documents else None
        items = get_path(data, spec.supplement_items) if spec.supplement_items else None
        fields = spec.document_fields
        documents: list[ResultDocument] = []
        for raw in docs if isinstance(docs, list) else []:
            if not isinstance(raw, dict):
                raise PermanentError(self._where(operation, "document entry is not an element"))
            documents.append(
                ResultDocument(
                    name=str(raw.get(fields.name) or "document"),
                    content_type=str(raw.get(fields.content_type) or "application/octet-stream"),
                    content=self._content(raw.get(fields.content), operation),
                )
            )
        return CaseUpdate(
            case_id=str(case_id),
            status=str(status),
            detail=None if detail in (None, MISSING) else str(detail),
            occurred_at=parse_time(occurred),
            documents=documents,
            supplement_items=[str(i) for i in items] if isinstance(items, list) else [],
        )

    def _content(self, value: Any, operation: str) -> bytes | None:
        if value is None or isinstance(value, bytes):
            return value  # base64Binary (and MTOM/XOP parts) arrive decoded
        try:
            return base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise PermanentError(self._where(operation, "document content is not base64")) from exc

    def _summary(self, item: Any, operation: str) -> CaseSummary:
        spec = self.options.cases
        assert spec is not None
        fields = spec.item
        case_id = self._require(item, fields.case_id, operation)
        status = self._require(item, fields.status, operation)
        key = get_path(item, fields.idempotency_key_path) if fields.idempotency_key_path else None
        updated = get_path(item, fields.updated_at) if fields.updated_at else None
        return CaseSummary(
            case_id=str(case_id),
            status=str(status),
            idempotency_key=None if key in (None, MISSING) else str(key),
            updated_at=parse_time(updated),
        )


# -- helpers -----------------------------------------------------------------------------------


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    declared = response.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    total = 0
    async for chunk in response.aiter_bytes():  # decoded: a gzip bomb counts at full size
        total += len(chunk)
        if total > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


_FIRST_MARKUP = re.compile(rb"<(!DOCTYPE|[A-Za-z_])", re.IGNORECASE)


def _declares_dtd(body: bytes) -> bool:
    """Whether a DOCTYPE comes before the root element (zeep refuses the rest, e.g. UTF-16)."""
    match = _FIRST_MARKUP.search(body, 0, 65536)
    return match is not None and match.group(1).upper() == b"!DOCTYPE"


def _plain(result: Any) -> Any:
    """zeep's result objects as plain dicts and lists."""
    return _serialize_object(result, target_cls=dict)


def _echo(text: str, envelope: Envelope | None) -> str:
    """Mask the applicant's ID number and phone if a department echoes them in a reason."""
    if envelope is None:
        return text
    return mask_echo(text, envelope.applicant.id_number, envelope.applicant.phone)
