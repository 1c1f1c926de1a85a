"""The SOAP call path without zeep's per-call work (gateway_soap.fast) gives zeep's result:
request bytes equal to what zeep serialises, answers read equal to zeep's reading, and every
answer the plan does not read exactly (nil, xsi:type, order, unknown elements, faults) left
to zeep. Against the real simulated SOAP department (spyne over loopback HTTP)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest
from gateway_soap import fast
from gateway_soap.connector import SoapConnector, _etree_to_string, _plain, _response

from gateway.connector import Applicant, Receipt
from gateway.simulators.soap_department import NAMESPACE
from tests.test_soap_connector import EPOCH, FAR, envelope, make_connector, soap_department

# each test parses the WSDL of up to four simulated departments and compares many calls: a
# minute of CPU starvation on a busy machine (load 25 on 2 cores) outlasted the suite's 120 s
pytestmark = pytest.mark.timeout(600)

SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
XSI = "http://www.w3.org/2001/XMLSchema-instance"


async def _zeep(connector: SoapConnector, operation: str, **kwargs: Any) -> Any:
    service = await connector._proxy()
    return _plain(await service[operation](**kwargs))


async def _fast(connector: SoapConnector, operation: str, **kwargs: Any) -> Any:
    return await connector._invoke(operation, kwargs)


async def test_every_answer_of_the_simulator_reads_as_zeep_reads_it() -> None:
    mixes = [{"approve": 1.0}, {"supplement": 1.0}, {"reject": 1.0}, {"not_accept": 1.0}]
    async with httpx.AsyncClient(timeout=60) as http:
        for mix in mixes:
            async with soap_department(mix=mix) as (url, _state):
                connector = make_connector(http, url, list={"page_size": 2})
                ids = [(await connector.submit(envelope(f"k{i}"))).case_id for i in range(3)]
                fast_ops = connector._fast
                assert fast_ops["SubmitApplication"].templates is not None
                for case_id in ids:
                    got = await _fast(connector, "QueryStatus", CaseId=case_id)
                    assert got == await _zeep(connector, "QueryStatus", CaseId=case_id)
                    assert got["CaseId"] == case_id
                assert fast_ops["QueryStatus"].reader is not None
                window = {"Since": EPOCH, "Until": FAR, "Limit": 2}
                assert await _fast(connector, "ListCases", **window) == await _zeep(
                    connector, "ListCases", **window
                )
                kwargs = await connector._arguments(envelope("k0"))
                kwargs["Request"]["IdempotencyKey"] = "k0"  # sent before: the same case again
                resent = await _fast(connector, "SubmitApplication", **kwargs)
                assert resent == await _zeep(connector, "SubmitApplication", **kwargs)
                assert resent["CaseId"] == ids[0]
                update = await connector.poll(Receipt(case_id=ids[0]))
                assert update is not None and update.case_id == ids[0]


async def _templates(connector: Any, operation: str) -> tuple[Any, Any]:
    """The connector's zeep service and the operation's request templates (which exist)."""
    service = await connector._proxy()
    templates = fast.templates_for(
        service._binding, service._client, service._binding_options, operation
    )
    assert templates is not None
    return service, templates


async def test_requests_from_a_template_are_zeep_s_bytes() -> None:
    async with httpx.AsyncClient(timeout=60) as http, soap_department() as (url, _state):
        connector = make_connector(http, url)
        service, templates = await _templates(connector, "QueryStatus")
        for case_id in ["NRP-1", "  a&b<c>d\r\n\t 中文 ]]> ", "", "x" * 5000]:
            made = templates.request({"CaseId": case_id})
            assert made is not None
            envelope_, headers = service._binding._create(
                "QueryStatus", (), {"CaseId": case_id}, client=service._client
            )
            assert made == (_etree_to_string(envelope_), headers)
        # what lxml would refuse goes to zeep (which says why)
        assert templates.request({"CaseId": "a\x00b"}) is None
        assert templates.request({"CaseId": "\ud800"}) is None
        # arguments of another kind than plain values: zeep every time
        assert templates.request({"CaseId": dt.datetime.now(dt.UTC)}) is None


async def test_a_submission_comes_from_a_template_with_zeep_s_bytes() -> None:
    """Several string fields, which the schema orders otherwise than by name (IdempotencyKey
    first, ApplicantIdNo late): the slots follow the body, and the bytes are zeep's."""
    async with httpx.AsyncClient(timeout=60) as http, soap_department() as (url, _state):
        connector = make_connector(http, url)
        service, templates = await _templates(connector, "SubmitApplication")
        for key, name in [("ow-a1-v1", "张三"), ("ow-a2-v1", "a&b <c> \r\n\t 李四")]:
            kwargs = await connector._arguments(envelope(key, applicant=_applicant(name)))
            kwargs["Request"]["IdempotencyKey"] = key
            made = templates.request(kwargs)
            assert made is not None  # the template, not zeep
            envelope_, headers = service._binding._create(
                "SubmitApplication", (), kwargs, client=service._client
            )
            assert made == (_etree_to_string(envelope_), headers)


def _applicant(name: str) -> Applicant:
    return Applicant(name=name, id_number="110101199003074514", phone="13800138000")


def _answer(inner: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><e:Envelope xmlns:e="{SOAP}" '
        f'xmlns:t="{NAMESPACE}" xmlns:xsi="{XSI}"><e:Body>{inner}</e:Body></e:Envelope>'
    ).encode()


RESULT = (
    "<t:CaseId>NRP-7</t:CaseId><t:IdempotencyKey>k</t:IdempotencyKey><t:Status>9</t:Status>"
    "<t:Opinion>ok</t:Opinion><t:Version>2</t:Version>"
    "<t:UpdatedAt>2026-01-01T08:00:00+08:00</t:UpdatedAt>"
)
ANSWERS = {
    "plain": f"<t:QueryStatusResponse><t:QueryStatusResult>{RESULT}"
    "</t:QueryStatusResult></t:QueryStatusResponse>",
    "no result": "<t:QueryStatusResponse/>",
    "empty arrays": f"<t:QueryStatusResponse><t:QueryStatusResult>{RESULT}<t:SupplementItems/>"
    "<t:Documents/></t:QueryStatusResult></t:QueryStatusResponse>",
    "items": f"<t:QueryStatusResponse><t:QueryStatusResult>{RESULT}<t:SupplementItems>"
    "<t:string>a</t:string><t:string>b</t:string></t:SupplementItems>"
    "</t:QueryStatusResult></t:QueryStatusResponse>",
    "empty text": "<t:QueryStatusResponse><t:QueryStatusResult><t:CaseId></t:CaseId>"
    "<t:Status>1</t:Status></t:QueryStatusResult></t:QueryStatusResponse>",
}
#: answers the plan leaves to zeep (each read by zeep must still give zeep's result)
UNREAD = {
    "nil": '<t:QueryStatusResponse><t:QueryStatusResult><t:CaseId xsi:nil="true"/>'
    "</t:QueryStatusResult></t:QueryStatusResponse>",
    "xsi:type": '<t:QueryStatusResponse><t:QueryStatusResult xsi:type="t:CaseView">'
    f"{RESULT}</t:QueryStatusResult></t:QueryStatusResponse>",
    "out of order": "<t:QueryStatusResponse><t:QueryStatusResult><t:Status>9</t:Status>"
    "<t:CaseId>NRP-7</t:CaseId></t:QueryStatusResult></t:QueryStatusResponse>",
    "unqualified": "<t:QueryStatusResponse><t:QueryStatusResult><CaseId>NRP-7</CaseId>"
    "</t:QueryStatusResult></t:QueryStatusResponse>",
    "not a number": "<t:QueryStatusResponse><t:QueryStatusResult><t:Version>two</t:Version>"
    "</t:QueryStatusResult></t:QueryStatusResponse>",
    "other wrapper": f"<t:ListCasesResponse>{RESULT}</t:ListCasesResponse>",
    "fault": "<e:Fault><faultcode>e:Server</faultcode><faultstring>down</faultstring></e:Fault>",
}


async def test_answers_the_plan_reads_and_those_it_leaves_to_zeep() -> None:
    async with httpx.AsyncClient(timeout=60) as http, soap_department() as (url, _state):
        connector = make_connector(http, url)
        service = await connector._proxy()
        binding, client = service._binding, service._client
        reader = fast.plan_for(binding, "QueryStatus", client.settings)
        assert reader is not None

        def zeep_reads(body: bytes) -> Any:
            headers = httpx.Headers({"content-type": "text/xml; charset=utf-8"})
            response = _response(200, headers, body)
            return _plain(binding.process_reply(client, binding.get("QueryStatus"), response))

        for name, inner in ANSWERS.items():
            body = _answer(inner)
            got = reader.read(200, "text/xml", body)
            assert got is not fast.UNREAD, name
            assert got == zeep_reads(body), name
        for name, inner in UNREAD.items():
            assert reader.read(200, "text/xml", _answer(inner)) is fast.UNREAD, name
        assert reader.read(500, "text/xml", _answer(ANSWERS["plain"])) is fast.UNREAD
        assert reader.read(200, "multipart/related", _answer(ANSWERS["plain"])) is fast.UNREAD
        assert reader.read(200, "text/xml", b"<not xml") is fast.UNREAD
