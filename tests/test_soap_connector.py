"""The soap connector against the real simulated SOAP department (spyne over loopback HTTP):
the happy path, idempotency, every fault mapping, hostile and broken answers, auth, timeouts,
offline schema imports and the per-process WSDL cache."""

from __future__ import annotations

import datetime as dt
import json
import os
import resource
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_soap.connector import SoapConnector
from gateway_soap.options import SoapOptions
from gateway_soap.wsdl import cache_info, clear_cache
from lxml import etree
from zeep.exceptions import Fault

from gateway.connector import Applicant, ConnectorContext, Envelope, MaterialRef, Receipt
from gateway.errors import DepartmentRejected, PermanentError, TransientError
from gateway.simulators.server import serve_asgi
from gateway.simulators.soap_department import (
    NAMESPACE,
    SoapDepartmentState,
    SoapSimulatorSettings,
    create_soap_department,
)

NRP_OPTIONS: dict[str, Any] = {
    "faults": {"Server": "transient", "Client": "permanent", "Client.Rejected": "rejected"},
    "reject_status": "2",
    "submit": {
        "json_arguments": ["Request.FormJson"],
        "arguments": {
            "Request.ReceiptNumber": "receipt_number",
            "Request.MatterCode": "matter_code",
            "Request.Region": "region",
            "Request.ApplicantName": "applicant.name",
            "Request.ApplicantIdNo": "applicant.id_number",
            "Request.Version": "version",
            "Request.FormJson": "form",
        },
    },
    "poll": {},
    "list": {},
}


@asynccontextmanager
async def soap_department(**settings: Any) -> AsyncIterator[tuple[str, SoapDepartmentState]]:
    """A simulated SOAP department on a free loopback port; yields (base url, state)."""
    app, state = create_soap_department(
        SoapSimulatorSettings(**{"decision_delay_seconds": 0.0, **settings})
    )
    async with serve_asgi(app) as url:
        yield url, state


async def _no_material(ref: MaterialRef) -> bytes:
    return b""


def make_connector(http: httpx.AsyncClient, url: str, **changes: Any) -> SoapConnector:
    # 60 s unless a test is about the deadline: calls took over 10 s (the default) at load ~25
    options = {
        "wsdl": f"{url}/soap?wsdl",
        "endpoint": f"{url}/soap",
        "timeout_seconds": 60,
        **NRP_OPTIONS,
        **changes,
    }
    context = ConnectorContext(
        department="nrp",
        options=SoapOptions.model_validate(options),
        http=http,
        read_material=_no_material,
    )
    return SoapConnector(context)


def envelope(key: str = "app-1:v1", **changes: Any) -> Envelope:
    values: dict[str, Any] = {
        "application_id": "app-1",
        "idempotency_key": key,
        "department": "nrp",
        "matter_code": "XK00301000",
        "matter_name": "建设工程规划许可证核发",
        "region": "339900",
        "receipt_number": "C01-20260101-0001",
        "centre": "C01",
        "applicant": Applicant(name="张三", id_number="110101199003074514", phone="13800138000"),
        "form": {"项目名称": "示范楼"},
        "submitted_at": dt.datetime.now(dt.UTC),
    }
    values.update(changes)
    return Envelope(**values)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=60) as client:
        yield client


@pytest.fixture
async def department() -> AsyncIterator[tuple[str, SoapDepartmentState]]:
    async with soap_department() as running:
        yield running


Dept = tuple[str, SoapDepartmentState]
EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
FAR = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)


# -- the happy path -----------------------------------------------------------------------------


async def test_submit_poll_list(http: httpx.AsyncClient, department: Dept) -> None:
    url, state = department
    connector = make_connector(http, url)
    receipt = await connector.submit(envelope())
    assert receipt.case_id.startswith("NRP-") and receipt.case_id.endswith("-000001")
    case = state.cases[receipt.case_id]
    assert case.idempotency_key == "app-1:v1" and case.body["MatterCode"] == "XK00301000"
    update = await connector.poll(receipt)
    assert update is not None and update.case_id == receipt.case_id
    assert update.status == receipt.status and update.status in {"2", "3", "4", "9"}
    assert update.occurred_at is not None and update.occurred_at.tzinfo is not None
    listed = [c async for c in connector.list_cases(EPOCH, FAR)]
    assert [(c.case_id, c.idempotency_key) for c in listed] == [(receipt.case_id, "app-1:v1")]


async def test_approved_case_carries_its_certificate(http: httpx.AsyncClient) -> None:
    async with soap_department(mix={"approve": 1.0}) as (url, _state):
        connector = make_connector(http, url)
        update = await connector.poll(await connector.submit(envelope()))
    assert update is not None and update.status == "9" and update.detail == "准予许可"
    [document] = update.documents
    assert document.content is not None and document.content.startswith(b"%PDF-1.4")
    assert document.content_type == "application/pdf" and document.name.endswith(".pdf")


async def test_supplement_items_are_read(http: httpx.AsyncClient) -> None:
    async with soap_department(mix={"supplement": 1.0}) as (url, _state):
        connector = make_connector(http, url)
        update = await connector.poll(await connector.submit(envelope()))
    assert update is not None and update.status == "3"
    assert update.supplement_items == ["营业场所使用证明", "法定代表人身份证明复印件"]


async def test_list_pages_through_every_case(http: httpx.AsyncClient, department: Dept) -> None:
    url, _state = department
    connector = make_connector(http, url, list={"page_size": 2})
    ids = {(await connector.submit(envelope(f"k{i}"))).case_id for i in range(5)}
    listed = [c.case_id async for c in connector.list_cases(EPOCH, FAR)]
    assert sorted(listed) == sorted(ids) and len(listed) == 5


async def test_form_is_sent_as_json(http: httpx.AsyncClient, department: Dept) -> None:
    url, state = department
    connector = make_connector(http, url)
    await connector.submit(envelope())
    [case] = state.cases.values()
    assert json.loads(case.body["FormJson"]) == {"项目名称": "示范楼"}
    assert case.body["Version"] == 1 and case.body["Region"] == "339900"


async def test_shared_client_headers_are_left_alone(
    http: httpx.AsyncClient, department: Dept
) -> None:
    url, _state = department
    before = dict(http.headers)
    await make_connector(http, url).submit(envelope())
    assert dict(http.headers) == before


# -- idempotency --------------------------------------------------------------------------------


async def test_resubmitting_the_same_key_creates_no_second_case(
    http: httpx.AsyncClient, department: Dept
) -> None:
    url, state = department
    connector = make_connector(http, url)
    first = await connector.submit(envelope())
    again = await connector.submit(envelope())
    assert again.case_id == first.case_id
    assert state.stats()["cases"] == 1 and state.stats()["duplicates"] == 1


async def test_idempotency_key_as_soap_header(http: httpx.AsyncClient, department: Dept) -> None:
    url, state = department
    submit = {
        **NRP_OPTIONS["submit"],
        "idempotency_argument": None,
        "idempotency_header": f"{{{NAMESPACE}}}IdempotencyKey",
    }
    connector = make_connector(http, url, submit=submit)
    first = await connector.submit(envelope("hdr-1"))
    again = await connector.submit(envelope("hdr-1"))
    assert first.case_id == again.case_id and state.header_keys == ["hdr-1", "hdr-1"]
    assert state.by_key == {"hdr-1": first.case_id}


def test_the_key_must_be_sent_somehow() -> None:
    submit = {"idempotency_argument": None}
    with pytest.raises(ValueError, match="idempotency key must be sent"):
        SoapOptions.model_validate({"wsdl": "x.wsdl", "submit": submit})


# -- faults and broken answers --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "error", "text"),
    [
        ("server_fault", TransientError, "SOAP fault Server: back-office database unavailable"),
        ("client_fault", PermanentError, "SOAP fault Client: request does not match"),
        ("fail503", TransientError, "HTTP 503 answer is text/plain, not SOAP"),
        ("malformed", PermanentError, "not well-formed"),
    ],
)
async def test_fault_mapping(
    http: httpx.AsyncClient, department: Dept, mode: str, error: type[Exception], text: str
) -> None:
    url, state = department
    connector = make_connector(http, url)
    await connector.submit(envelope("warm"))  # WSDL loaded while the department is healthy
    state.mode = mode
    with pytest.raises(error) as caught:
        await connector.submit(envelope())
    assert type(caught.value) is error and text in str(caught.value)
    assert str(caught.value).startswith("nrp: ")


async def test_business_rejection_fault(http: httpx.AsyncClient, department: Dept) -> None:
    url, state = department
    connector = make_connector(http, url)
    await connector.submit(envelope("warm"))
    state.mode = "reject"
    with pytest.raises(DepartmentRejected) as caught:
        await connector.submit(envelope())
    assert caught.value.reason == "不予受理：申请事项不属于本机关职权范围"
    assert caught.value.status == "2"


async def test_unknown_fault_codes_take_the_default(
    http: httpx.AsyncClient, department: Dept
) -> None:
    url, state = department
    connector = make_connector(
        http, url, faults={"Client.Rejected": "rejected"}, fault_default="transient"
    )
    await connector.submit(envelope("warm"))
    state.mode = "client_fault"
    with pytest.raises(TransientError, match="SOAP fault Client"):
        await connector.submit(envelope())
    state.mode = "reject"  # the longest prefix still wins
    with pytest.raises(DepartmentRejected):
        await connector.submit(envelope())


async def test_fault_reason_masks_the_applicants_id(
    http: httpx.AsyncClient, department: Dept
) -> None:
    url, _state = department
    connector = make_connector(http, url)
    await connector.submit(envelope("warm"))
    id_number = "110101199003074514"
    mapped = connector._fault(
        "SubmitApplication", Fault(f"bad id {id_number}", "Client"), envelope()
    )
    assert id_number not in str(mapped) and "11**************14" in str(mapped)


@pytest.mark.parametrize(
    ("status", "error"), [(502, TransientError), (503, TransientError), (200, PermanentError)]
)
async def test_html_error_page(
    http: httpx.AsyncClient, department: Dept, status: int, error: type[Exception]
) -> None:
    url, state = department
    connector = make_connector(http, url)
    await connector.submit(envelope("warm"))
    state.mode, state.html_status = "html", status
    with pytest.raises(error) as caught:
        await connector.poll(Receipt(case_id="NRP-2026-000001"))
    assert type(caught.value) is error
    assert f"HTTP {status} answer is text/html, not SOAP" in str(caught.value)


async def test_oversized_answer_is_cut_off(http: httpx.AsyncClient, department: Dept) -> None:
    url, state = department
    connector = make_connector(http, url, max_response_bytes=64 * 1024)
    await connector.submit(envelope("warm"))
    state.mode, state.huge_bytes = "huge", 4 * 1024 * 1024
    with pytest.raises(PermanentError, match="answer larger than 65536 bytes"):
        await connector.poll(Receipt(case_id="NRP-2026-000001"))


@pytest.mark.parametrize("mode", ["xxe", "billion_laughs"])
async def test_hostile_dtds_are_refused_with_memory_bounded(
    http: httpx.AsyncClient, department: Dept, mode: str
) -> None:
    url, state = department
    connector = make_connector(http, url)
    await connector.submit(envelope("warm"))
    state.mode = mode
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    for _ in range(20):
        with pytest.raises(PermanentError, match="declares a DTD or entities") as caught:
            await connector.poll(Receipt(case_id="NRP-2026-000001"))
        assert "root:" not in str(caught.value)  # /etc/passwd never read into the message
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    # one expansion of lol9 is 3 GB; refusing the DTD keeps the process where it was
    assert grown_mib < 64


async def test_timeout_is_transient_and_bounded(http: httpx.AsyncClient, department: Dept) -> None:
    url, state = department
    # the warm-up (WSDL fetch and parse, first call) gets a generous timeout: a busy machine
    # must not fail it; the parsed WSDL is cached per process, so the 0.3 s connector only
    # makes the call that hangs
    await make_connector(http, url, timeout_seconds=30).submit(envelope("warm"))
    warm = cache_info()
    connector = make_connector(http, url, timeout_seconds=0.3)
    state.mode = "timeout"  # the department never answers (it hangs for an hour)
    started = time.monotonic()
    with pytest.raises(TransientError, match=r"timed out after 0\.3 s"):
        await connector.submit(envelope())
    # bounded: far sooner than the hang, however busy the machine
    assert time.monotonic() - started < 60
    assert cache_info().hits > warm.hits  # the WSDL came from the cache, not over the wire


async def test_slow_answer_within_the_timeout_succeeds(
    http: httpx.AsyncClient, department: Dept
) -> None:
    url, state = department
    # 0.2 s slow against a 30 s deadline: within it however busy the machine (5 s was not, at
    # load ~25)
    connector = make_connector(http, url, timeout_seconds=30)
    await connector.submit(envelope("warm"))
    state.mode, state.slow_seconds = "slow", 0.2
    assert (await connector.submit(envelope())).case_id


async def test_connection_refused_is_transient(http: httpx.AsyncClient) -> None:
    async with soap_department() as (url, _state):
        connector = make_connector(http, url)
        await connector.submit(envelope("warm"))
    # the department is gone now
    with pytest.raises(TransientError, match="connection failed"):
        await connector.submit(envelope())
    assert not (await connector.health()).ok


async def test_wsdl_unreachable_is_transient(http: httpx.AsyncClient) -> None:
    async with soap_department() as (url, _state):
        pass
    connector = make_connector(http, url)
    with pytest.raises(TransientError, match="connection failed"):
        await connector.submit(envelope())


async def test_unknown_operation_and_bad_arguments_are_permanent(
    http: httpx.AsyncClient, department: Dept
) -> None:
    url, _state = department
    wrong_op = make_connector(http, url, submit={"operation": "Nope"})
    with pytest.raises(PermanentError, match="no such operation"):
        await wrong_op.submit(envelope())
    wrong_arg = make_connector(http, url, submit={"arguments": {"Request.NoSuchField": "region"}})
    with pytest.raises(PermanentError, match="arguments do not fit"):
        await wrong_arg.submit(envelope())


# -- auth ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("digest", "seen"), [(False, "text"), (True, "digest")])
async def test_ws_security_username_token(http: httpx.AsyncClient, digest: bool, seen: str) -> None:
    async with soap_department(wsse_username="nrp-gw", wsse_password="pw-1") as (url, state):
        wsse = {"username": "nrp-gw", "password": "pw-1", "digest": digest}
        connector = make_connector(http, url, wsse=wsse)
        await connector.submit(envelope())
        assert state.wsse_seen == [seen] and state.stats()["cases"] == 1
        wrong = make_connector(http, url, wsse={**wsse, "password": "nope"})
        with pytest.raises(PermanentError, match=r"Client\.Authentication"):
            await wrong.submit(envelope("k2"))
        assert state.stats()["cases"] == 1


async def test_http_basic_auth(http: httpx.AsyncClient) -> None:
    async with soap_department(basic_username="gw", basic_password="pw") as (url, state):
        connector = make_connector(http, url, basic_auth={"username": "gw", "password": "pw"})
        await connector.submit(envelope())
        assert state.basic_seen == 1 and state.stats()["cases"] == 1
        anonymous = make_connector(http, url)
        with pytest.raises(PermanentError, match="HTTP 401 answer is text/html"):
            await anonymous.submit(envelope("k2"))


# -- the WSDL: local copies, offline imports, parsed once ------------------------------------------

SCHEMA_URL = "http://schemas.example.invalid/department.xsd"


async def split_wsdl(http: httpx.AsyncClient, url: str, folder: Path) -> Path:
    """Save the department's WSDL with its schema moved to a file the WSDL imports by URL,
    as real departments ship them."""
    root = etree.fromstring((await http.get(f"{url}/soap?wsdl")).content)
    xs = "http://www.w3.org/2001/XMLSchema"
    types = root.find("{http://schemas.xmlsoap.org/wsdl/}types")
    assert types is not None
    [schema] = list(types)
    (folder / "department.xsd").write_bytes(etree.tostring(schema))
    types.remove(schema)
    wrapper = etree.SubElement(types, f"{{{xs}}}schema")
    etree.SubElement(wrapper, f"{{{xs}}}import", namespace=NAMESPACE, schemaLocation=SCHEMA_URL)
    path = folder / "department.wsdl"
    path.write_bytes(etree.tostring(root))
    return path


async def test_local_wsdl_with_local_schema_copy(
    http: httpx.AsyncClient, department: Dept, tmp_path: Path
) -> None:
    url, state = department
    wsdl = await split_wsdl(http, url, tmp_path)
    fetched = state.wsdl_requests
    connector = make_connector(
        http,
        url,
        wsdl=str(wsdl),
        endpoint=f"{url}/soap",
        schemas={SCHEMA_URL: str(tmp_path / "department.xsd")},
    )
    receipt = await connector.submit(envelope())
    assert receipt.case_id in state.cases
    assert state.wsdl_requests == fetched  # nothing fetched at run time


async def test_unmapped_external_import_is_refused(
    http: httpx.AsyncClient, department: Dept, tmp_path: Path
) -> None:
    url, _state = department
    wsdl = await split_wsdl(http, url, tmp_path)
    connector = make_connector(http, url, wsdl=str(wsdl), endpoint=f"{url}/soap")
    with pytest.raises(PermanentError, match=r"not fetched at run time.*\[options.schemas\]"):
        await connector.submit(envelope())


async def test_wsdl_with_a_dtd_is_refused(
    http: httpx.AsyncClient, department: Dept, tmp_path: Path
) -> None:
    url, _state = department
    hostile = tmp_path / "hostile.wsdl"
    hostile.write_text(
        '<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        '<definitions xmlns="http://schemas.xmlsoap.org/wsdl/">&x;</definitions>'
    )
    connector = make_connector(http, url, wsdl=str(hostile), endpoint=f"{url}/soap")
    with pytest.raises(PermanentError, match="WSDL cannot be used"):
        await connector.submit(envelope())


async def test_wsdl_is_parsed_once_per_process(http: httpx.AsyncClient, department: Dept) -> None:
    url, state = department
    clear_cache()
    first = make_connector(http, url)
    await first.submit(envelope("a"))
    cold = cache_info()
    second = make_connector(http, url)  # e.g. the runtime rebuilt after a config reload
    await second.submit(envelope("b"))
    warm = cache_info()
    assert cold.misses == 1 and warm.misses == 1 and warm.hits > cold.hits
    assert state.wsdl_requests == 1


# -- issue 12 item 5: the department's WSDL is not trusted ----------------------------------------


def test_endpoint_must_be_configured() -> None:
    with pytest.raises(ValueError, match="endpoint"):
        SoapOptions.model_validate({"wsdl": "http://127.0.0.1:1/soap?wsdl", **NRP_OPTIONS})


async def test_the_wsdl_address_never_receives_an_application(
    http: httpx.AsyncClient, department: Dept, tmp_path: Path
) -> None:
    """A WSDL whose soap:address points elsewhere: the configured endpoint is called."""
    url, state = department
    async with soap_department() as (elsewhere, thief):
        root = etree.fromstring((await http.get(f"{url}/soap?wsdl")).content)
        [address] = root.iterfind(".//{http://schemas.xmlsoap.org/wsdl/soap/}address")
        address.set("location", f"{elsewhere}/soap")
        wsdl = tmp_path / "department.wsdl"
        wsdl.write_bytes(etree.tostring(root))
        connector = make_connector(http, url, wsdl=str(wsdl), endpoint=f"{url}/soap")
        receipt = await connector.submit(envelope("to-the-right-place"))
    assert receipt.case_id in state.cases and not thief.cases


def _importing(folder: Path, location: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    wsdl = folder / "hostile.wsdl"
    wsdl.write_text(
        '<definitions xmlns="http://schemas.xmlsoap.org/wsdl/" '
        'xmlns:xs="http://www.w3.org/2001/XMLSchema" targetNamespace="urn:t">'
        f'<types><xs:schema><xs:import namespace="urn:x" schemaLocation="{location}"/>'
        "</xs:schema></types></definitions>"
    )
    return wsdl


async def test_a_wsdl_cannot_read_the_gateway_s_disk(
    http: httpx.AsyncClient, department: Dept, tmp_path: Path
) -> None:
    url, _state = department
    secret = tmp_path / "gateway-data" / "secret.xsd"  # e.g. the gateway's own files
    secret.parent.mkdir()
    secret.write_text('<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema"/>')
    for location in (f"file://{secret}", str(secret), "../gateway-data/secret.xsd"):
        clear_cache()
        wsdl = _importing(tmp_path / "offline", location)
        connector = make_connector(http, url, wsdl=str(wsdl))
        # (zeep turns a bare absolute path into an https URL: refused as unmapped)
        with pytest.raises(PermanentError, match=r"outside the offline folder|not fetched"):
            await connector.submit(envelope())


async def test_a_wsdl_import_that_is_no_regular_file_or_too_large_is_refused(
    http: httpx.AsyncClient, department: Dept, tmp_path: Path
) -> None:
    """Checked before anything is read: /dev/zero here once ran out of memory; a FIFO hung."""
    url, _state = department
    folder = tmp_path / "offline"
    folder.mkdir()
    fifo = folder / "pipe.xsd"
    os.mkfifo(fifo)
    link = folder / "zero.xsd"
    link.symlink_to("/dev/zero")  # resolves outside the folder
    big = folder / "big.xsd"
    big.write_bytes(b" " * 8192)
    for name, match in (
        ("pipe.xsd", "not a regular file"),
        ("zero.xsd", "outside the offline folder"),
        ("big.xsd", "larger than 4096 bytes"),
    ):
        clear_cache()
        wsdl = _importing(folder, name)
        connector = make_connector(http, url, wsdl=str(wsdl), max_wsdl_bytes=4096)
        with pytest.raises(PermanentError, match=match):
            await connector.submit(envelope())


def test_check_config_says_the_endpoint_is_missing(tmp_path: Path) -> None:
    from gateway.config.loader import check_connector_options, load_config
    from tests.conftest import EXAMPLE, TEST_SECRETS

    cfg = tmp_path / "config"
    shutil.copytree(EXAMPLE.parent, cfg)
    nrp = cfg / "departments" / "nrp.toml"
    text = nrp.read_text(encoding="utf-8")
    line = next(x for x in text.splitlines() if x.startswith("endpoint = "))
    nrp.write_text(text.replace(line + "\n", ""), encoding="utf-8")
    config = load_config(cfg / "gateway.toml", env=TEST_SECRETS)
    found = check_connector_options(config, {"soap": SoapConnector})
    soap = [(Path(p.file).name, p.key) for p in found if p.key.startswith("options.")]
    assert soap == [("nrp.toml", "options.endpoint")]
