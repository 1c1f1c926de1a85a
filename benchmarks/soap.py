"""SOAP connector costs, measured in one run:

1. WSDL load, cold vs warm: a new ``SoapConnector`` getting its service proxy with the
   process-wide parsed-WSDL cache empty (download + zeep parse) vs filled (cache hit).
2. Per-call overhead: ``connector.poll()`` (zeep builds the envelope, the connector's transport
   posts it, zeep parses the answer, the mapping reads it) vs a raw ``httpx`` POST of the very
   same envelope bytes whose answer is only read, not parsed. Both use the gateway's own http
   client (``gateway.http.make_client``), sequentially, against (a) the simulated spyne
   department and (b) a canned responder that returns the same answer bytes instantly, which
   isolates the client-side cost.

Usage: ``python benchmarks/soap.py [--calls 500] [--loads 20] [--quick]``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from _common import load_average, machine, quiet_logs  # type: ignore[import-not-found]
from gateway_soap.connector import SoapConnector, _etree_to_string
from gateway_soap.options import SoapOptions
from gateway_soap.wsdl import cache_info, clear_cache

from gateway.connector import ConnectorContext, Receipt
from gateway.http import make_client
from gateway.simulators.server import serve_asgi
from gateway.simulators.soap_department import SoapSimulatorSettings, create_soap_department
from tests.test_soap_connector import NRP_OPTIONS, _no_material, envelope

TARGET = 1.5


def connector(http: Any, url: str) -> SoapConnector:
    options = SoapOptions.model_validate(
        {"wsdl": f"{url}/soap?wsdl", "endpoint": f"{url}/soap", **NRP_OPTIONS}
    )
    context = ConnectorContext(
        department="nrp", options=options, http=http, read_material=_no_material
    )
    return SoapConnector(context)


async def wsdl_loads(http: Any, url: str, loads: int) -> tuple[float, float]:
    cold, warm = [], []
    for _ in range(loads):
        clear_cache()
        started = time.perf_counter()
        await connector(http, url)._proxy()
        cold.append(time.perf_counter() - started)
        started = time.perf_counter()
        await connector(http, url)._proxy()
        warm.append(time.perf_counter() - started)
    assert cache_info().misses == 1 and cache_info().hits >= 1
    return statistics.median(cold), statistics.median(warm)


async def query_body(soap: SoapConnector, case_id: str) -> bytes:
    """The exact envelope zeep sends for QueryStatus(case_id)."""
    proxy = await soap._proxy()
    body: bytes = _etree_to_string(
        proxy._client.create_message(proxy, "QueryStatus", CaseId=case_id)
    )
    return body


async def per_call(
    http: Any, soap: SoapConnector, address: str, calls: int, receipt: Receipt
) -> tuple[float, float, float, float]:
    """(connector, raw) seconds per call, wall then CPU (the process's, which includes an
    in-process responder's: the same for both)."""
    body = await query_body(soap, receipt.case_id)
    headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '"QueryStatus"'}
    check = Receipt(case_id=receipt.case_id)
    for _ in range(20):  # warm up both paths
        await soap.poll(check)
        (await http.post(address, content=body, headers=headers)).read()
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        update = await soap.poll(check)
    connector_s = (time.perf_counter() - started) / calls
    connector_cpu = (time.process_time() - cpu) / calls
    assert update is not None and update.case_id == receipt.case_id
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        response = await http.post(address, content=body, headers=headers)
        response.read()
    raw_s = (time.perf_counter() - started) / calls
    raw_cpu = (time.process_time() - cpu) / calls
    assert response.status_code == 200 and receipt.case_id.encode() in response.content
    return connector_s, raw_s, connector_cpu, raw_cpu


def canned(answer: bytes) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/xml; charset=utf-8")],
            }
        )
        await send({"type": "http.response.body", "body": answer})

    return app


async def main(calls: int, loads: int) -> None:
    quiet_logs()
    print(f"machine: {machine()}")
    settings = SoapSimulatorSettings(decision_delay_seconds=0, mix={"approve": 1.0})
    app, _state = create_soap_department(settings)
    http = make_client()
    try:
        async with serve_asgi(app) as url:
            cold, warm = await wsdl_loads(http, url, loads)
            print(
                f"WSDL load, median of {loads}: cold {cold * 1e3:.2f} ms, warm {warm * 1e6:.1f} µs"
            )
            print(f"ratio cold/warm = {cold / warm:.0f}x")
            soap = connector(http, url)
            receipt = await soap.submit(envelope("bench-1"))
            spyne = await per_call(http, soap, f"{url}/soap", calls, receipt)
            body = await query_body(soap, receipt.case_id)
            headers = {"Content-Type": "text/xml; charset=utf-8"}
            answer = (await http.post(f"{url}/soap", content=body, headers=headers)).content
        async with serve_asgi(canned(answer)) as fast:
            soap_fast = connector(http, url)  # the WSDL comes from the cache: spyne is gone
            soap_fast.options = soap_fast.options.model_copy(update={"endpoint": f"{fast}/soap"})
            canned_ = await per_call(http, soap_fast, f"{fast}/soap", calls, receipt)
    finally:
        await http.aclose()
    for label, (c, raw, c_cpu, raw_cpu) in (
        ("spyne department", spyne),
        ("canned responder", canned_),
    ):
        print(
            f"per call vs {label}, {calls} sequential: connector {c * 1e6:.0f} µs, "
            f"raw httpx POST {raw * 1e6:.0f} µs, overhead {(c - raw) * 1e6:.0f} µs, "
            f"ratio = {c / raw:.2f}x (CPU {c_cpu * 1e6:.0f} µs vs {raw_cpu * 1e6:.0f} µs: "
            f"{c_cpu / raw_cpu:.2f}x)"
        )
    c, raw, c_cpu, raw_cpu = canned_
    verdict = "met" if c / raw <= TARGET else "NOT met"
    print(
        f"target (issue 16): connector <= {TARGET}x the raw POST against the canned responder "
        f"(client-side cost): {c / raw:.2f}x wall, {c_cpu / raw_cpu:.2f}x CPU: {verdict}; "
        f"load after: {load_average()}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--loads", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="30 calls, 2 loads (smoke test)")
    args = parser.parse_args()
    asyncio.run(main(30, 2) if args.quick else main(args.calls, args.loads))
