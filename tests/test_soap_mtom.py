"""MTOM/XOP result documents, end to end over loopback HTTP: a small ASGI department serves the
simulated SOAP department's own WSDL (fetched from the spyne simulator) and answers QueryStatus
as a real MTOM service does (``multipart/related``, an ``application/xop+xml`` root with an
``xop:Include`` where the document content would be, the document as a binary part). The
connector must hand back the attachment byte for byte, the gateway must store and serve it by
content hash, and broken or hostile multipart answers must be clean PermanentErrors."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from gateway_soap.connector import SoapConnector
from lxml import etree
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway.config.loader import Config
from gateway.connector import Receipt
from gateway.errors import PermanentError
from gateway.events import Source
from gateway.runtime import Runtime
from gateway.simulators.server import serve_asgi
from gateway.simulators.soap_department import NAMESPACE
from gateway.updates import apply_case_update
from tests.handout_fixtures import ID_NUMBER, quiet_runtime, submit
from tests.test_soap_connector import make_connector, soap_department

CASE = "NRP-2026-000042"
# A certificate whose bytes a lossy decoder would change: CR/LF at both ends, every byte value.
CERTIFICATE = b"\r\n%PDF-1.4\n" + bytes(range(256)) + b"\n%%EOF\r\n"
BOUNDARY = "uuid:6b9a2c1e-mtom-test"
ROOT_ID = "<root.message@nrp.example>"
DOC_ID = "certificate-1@nrp.example"


@dataclass
class MtomDepartment:
    """What the MTOM department answers; tests change it before polling."""

    wsdl: bytes
    document: bytes = CERTIFICATE
    href: str = "cid:certificate-1%40nrp.example"  # RFC 2392: the Content-ID, URL-encoded
    transfer_encoding: str = "binary"
    root_last: bool = False  # the root found through the start parameter, not by position
    root_prolog: bytes = b""
    stream: bool = False  # chunked, no Content-Length
    closed: bool = True
    queried: list[str] = field(default_factory=list)

    def answer(self, case_id: str) -> bytes:
        root = (
            b"<?xml version='1.0' encoding='UTF-8'?>" + self.root_prolog + b"<soap11env:Envelope"
            b' xmlns:soap11env="http://schemas.xmlsoap.org/soap/envelope/"'
            b' xmlns:tns="' + NAMESPACE.encode() + b'"><soap11env:Body><tns:QueryStatusResponse>'
            b"<tns:QueryStatusResult><tns:CaseId>" + case_id.encode() + b"</tns:CaseId>"
            b"<tns:Status>9</tns:Status><tns:Opinion>\xe5\x87\x86\xe4\xba\x88\xe8\xae\xb8\xe5"
            b"\x8f\xaf</tns:Opinion><tns:Documents><tns:Document>"
            b"<tns:Name>certificate.pdf</tns:Name><tns:ContentType>application/pdf"
            b"</tns:ContentType><tns:Content><xop:Include"
            b' xmlns:xop="http://www.w3.org/2004/08/xop/include" href="'
            + self.href.encode()
            + b'"/></tns:Content></tns:Document></tns:Documents></tns:QueryStatusResult>'
            b"</tns:QueryStatusResponse></soap11env:Body></soap11env:Envelope>"
        )
        root_part = (
            b'Content-Type: application/xop+xml; charset=UTF-8; type="text/xml"\r\n'
            b"Content-Transfer-Encoding: 8bit\r\nContent-ID: " + ROOT_ID.encode() + b"\r\n\r\n"
        ) + root
        content = self.document
        if self.transfer_encoding == "base64":
            encoded = base64.encodebytes(content)  # 76-column lines
            content = encoded.replace(b"\n", b"\r\n")
        elif self.transfer_encoding == "quoted-printable":
            content = binascii.b2a_qp(content, istext=False).replace(b"=\n", b"=\r\n")
        doc_part = (
            b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: "
            + self.transfer_encoding.encode()
            + b"\r\nContent-ID: <"
            + DOC_ID.encode()
            + b">\r\n\r\n"
            + content
        )
        parts = [doc_part, root_part] if self.root_last else [root_part, doc_part]
        mark = b"--" + BOUNDARY.encode()
        body = b"preamble, ignored\r\n"
        for part in parts:
            body += mark + b"\r\n" + part + b"\r\n"
        return body + (mark + b"--\r\n" if self.closed else b"")

    def app(self) -> Starlette:
        async def wsdl(request: Request) -> Response:
            return Response(self.wsdl, media_type="text/xml; charset=utf-8")

        async def soap(request: Request) -> Response:
            tree = etree.fromstring(await request.body())
            case_id = str(tree.findtext(f".//{{{NAMESPACE}}}CaseId"))
            self.queried.append(case_id)
            body = self.answer(case_id)
            headers = {
                "content-type": f'multipart/related; type="application/xop+xml"; '
                f'boundary="{BOUNDARY}"; start="{ROOT_ID}"; start-info="text/xml"'
            }
            if self.stream:

                async def chunks() -> AsyncIterator[bytes]:
                    for at in range(0, len(body), 512):
                        yield body[at : at + 512]

                return StreamingResponse(chunks(), headers=headers)
            return Response(body, headers=headers)

        return Starlette(
            routes=[Route("/soap", wsdl, methods=["GET"]), Route("/soap", soap, methods=["POST"])]
        )


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=60) as client:
        yield client


@pytest.fixture
async def mtom(http: httpx.AsyncClient) -> AsyncIterator[tuple[str, MtomDepartment]]:
    """The MTOM department on a free loopback port, serving the spyne simulator's WSDL."""
    async with soap_department() as (spyne_url, _state):
        wsdl = (await http.get(f"{spyne_url}/soap?wsdl")).content
    department = MtomDepartment(wsdl=wsdl)
    async with serve_asgi(department.app()) as url:
        yield url, department


def connector(http: httpx.AsyncClient, url: str, **changes: Any) -> SoapConnector:
    return make_connector(http, url, endpoint=f"{url}/soap", **changes)


Mtom = tuple[str, MtomDepartment]


@pytest.mark.parametrize(
    ("transfer_encoding", "root_last"),
    [("binary", False), ("base64", False), ("quoted-printable", False), ("binary", True)],
    ids=["binary", "base64", "quoted-printable", "start-parameter"],
)
async def test_xop_attachment_becomes_the_result_document(
    http: httpx.AsyncClient, mtom: Mtom, transfer_encoding: str, root_last: bool
) -> None:
    url, department = mtom
    department.transfer_encoding = transfer_encoding
    department.root_last = root_last
    update = await connector(http, url).poll(Receipt(case_id=CASE))
    assert update is not None and department.queried == [CASE]
    assert (update.case_id, update.status, update.detail) == (CASE, "9", "准予许可")
    [doc] = update.documents
    assert (doc.name, doc.content_type) == ("certificate.pdf", "application/pdf")
    assert doc.content == CERTIFICATE  # byte for byte, CR/LF at the ends included


async def test_large_attachment_streamed_without_content_length(
    http: httpx.AsyncClient, mtom: Mtom
) -> None:
    """Bigger than the parser's text-node limit would allow once base64-inlined (10 MB)."""
    url, department = mtom
    department.document = b"%PDF-1.4\n" + b"\x00\xff" * (4 * 1024 * 1024) + b"%%EOF\n"
    department.stream = True
    update = await connector(http, url, max_response_bytes=9 * 1024 * 1024).poll(
        Receipt(case_id=CASE)
    )
    assert update is not None
    assert hashlib.sha256(update.documents[0].content or b"").digest() == (
        hashlib.sha256(department.document).digest()
    )


@pytest.fixture
async def runtime(example_config: Config) -> AsyncIterator[Runtime]:
    """The example city's runtime; the MTOM department's answer is applied as a poll would."""
    async with quiet_runtime(example_config) as rt:
        yield rt


async def test_xop_document_is_stored_and_served_by_content_hash(
    http: httpx.AsyncClient,
    mtom: Mtom,
    api: httpx.AsyncClient,
    runtime: Runtime,
    centre_headers: dict[str, str],
) -> None:
    url, _department = mtom
    app = await submit(api, centre_headers)
    update = await connector(http, url).poll(Receipt(case_id=CASE))
    assert update is not None
    changes = await apply_case_update(runtime, app["id"], update, source=Source.POLL, actor="poll")
    assert [c.to_status.value for c in changes] == ["approved", "ready_for_pickup"]

    case = (await api.get(f"/v1/applications/{app['id']}", headers=centre_headers)).json()
    [doc] = case["documents"]
    digest = hashlib.sha256(CERTIFICATE).hexdigest()
    assert (doc["sha256"], doc["size"]) == (digest, len(CERTIFICATE))
    assert await runtime.blobs.get(digest) == CERTIFICATE
    got = await api.get(doc["download"], headers=centre_headers)
    assert got.status_code == 200
    assert got.content == CERTIFICATE
    assert got.headers["content-type"] == "application/pdf"
    assert got.headers["x-content-sha256"] == digest


# -- broken and hostile answers ------------------------------------------------------------------


async def test_xop_reference_to_a_missing_attachment_is_permanent(
    http: httpx.AsyncClient, mtom: Mtom
) -> None:
    url, department = mtom
    department.href = "cid:no-such-part%40nrp.example"
    with pytest.raises(PermanentError) as caught:
        await connector(http, url).poll(Receipt(case_id=ID_NUMBER))  # echoed nowhere
    message = str(caught.value)
    assert message.startswith("nrp: POST ") and "/soap: MTOM/XOP answer unusable" in message
    assert "missing attachment ('cid:no-such-part%40nrp.example')" in message
    assert ID_NUMBER not in message and department.queried == [ID_NUMBER]


async def test_xop_reference_that_is_not_a_cid_is_permanent(
    http: httpx.AsyncClient, mtom: Mtom
) -> None:
    url, department = mtom
    department.href = "http://attacker.example/doc"
    with pytest.raises(PermanentError, match="an xop:Include is not a cid: reference"):
        await connector(http, url).poll(Receipt(case_id=CASE))


@pytest.mark.parametrize("stream", [False, True], ids=["content-length", "chunked"])
async def test_oversized_attachment_is_permanent(
    http: httpx.AsyncClient, mtom: Mtom, stream: bool
) -> None:
    url, department = mtom
    department.document = b"\x00" * 4096
    department.stream = stream
    with pytest.raises(PermanentError, match="answer larger than 2048 bytes"):
        await connector(http, url, max_response_bytes=2048).poll(Receipt(case_id=CASE))


async def test_dtd_in_the_root_part_is_refused(http: httpx.AsyncClient, mtom: Mtom) -> None:
    url, department = mtom
    department.root_prolog = b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
    with pytest.raises(PermanentError, match="root part declares a DTD or entities"):
        await connector(http, url).poll(Receipt(case_id=CASE))


async def test_truncated_multipart_answer_is_permanent(http: httpx.AsyncClient, mtom: Mtom) -> None:
    url, department = mtom
    department.closed = False
    with pytest.raises(PermanentError, match="truncated"):
        await connector(http, url).poll(Receipt(case_id=CASE))
