"""The file-drop connector's result side in one process: what a city day's civil results cost
the daemon beside its database work (pull: list, read, decode; settle: archive, ledger notes).

``--cases`` requests are written (not timed) to a local share under a temporary folder; the
department then writes each case's results as the simulator does with decision delay 0 (an
"accepted" result, then the decision with an inline certificate), ``--burst`` cases at a
time, so a pull lists many "accepted" results before their decisions. Timed: pull (limit 500)
and settle every result as applied (``ack_updates``), as the daemon's result round does, until
the outbox is empty. The figure is the process's CPU (every thread: the storage's worker
threads do the file work) per case, and the entry writes it took.

    .venv/bin/python benchmarks/filedrop_results.py              # 750 cases (a 3,000 city day)
    .venv/bin/python benchmarks/filedrop_results.py --cases 200 --rounds 3

It imports the installed ``gateway`` and ``gateway_filedrop`` (no path tweaks), so the same file
run with another tree's virtual environment measures that tree.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from gateway_filedrop.connector import FiledropConnector
from gateway_filedrop.options import FiledropOptions

from gateway.connector import Ack, Applicant, ConnectorContext, Envelope, MaterialRef


def _envelope(i: int) -> Envelope:
    app_id = f"a{i:016x}"
    return Envelope.model_validate(
        {
            "application_id": app_id,
            "idempotency_key": f"ow-{app_id}-v1",
            "version": 1,
            "department": "civil",
            "matter_code": "QR00403000",
            "matter_name": "结婚登记",
            "region": "339900",
            "receipt_number": f"C01-20261202-{i:04d}",
            "centre": "C01",
            "applicant": Applicant(name="张三", id_number="110101199003074514"),
            "form": {"note": f"case {i}"},
            "materials": [],
            "submitted_at": dt.datetime(2026, 12, 2, tzinfo=dt.UTC),
        }
    )


async def _no_material(_ref: MaterialRef) -> bytes:
    raise AssertionError("no materials")


def _result(i: int, status: str) -> bytes:
    record = {
        "case_id": f"MZ-2026-{i:06d}",
        "idempotency_key": f"ow-a{i:016x}-v1",
        "status": status,
        "opinion": "准予登记" if status == "9" else "已受理",
        "occurred_at": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
        "supplement_items": [],
        "documents": [],
    }
    if status == "9":
        pdf = b"%PDF-1.4 certificate " + str(i).encode() * 20
        record["documents"] = [
            {
                "name": f"certificate-{i}.pdf",
                "content_type": "application/pdf",
                "content_b64": base64.b64encode(pdf).decode(),
            }
        ]
    return json.dumps(record, ensure_ascii=False).encode()


async def one_round(cases: int, burst: int) -> tuple[float, int, int]:
    """(CPU seconds, results settled, entry writes) of one round."""
    with tempfile.TemporaryDirectory(prefix="fd-results-", dir="/tmp") as tmp:
        root = Path(tmp)
        options = FiledropOptions.model_validate(
            {"target": {"type": "local", "root": str(root)}, "result": {"stable_seconds": 0}}
        )
        async with httpx.AsyncClient() as http:
            conn = FiledropConnector(
                ConnectorContext(
                    department="civil", options=options, http=http, read_material=_no_material
                )
            )
            for i in range(cases):
                await conn.submit(_envelope(i))
            outbox = root / "outbox"
            outbox.mkdir(exist_ok=True)
            for start in range(0, cases, burst):
                chunk = range(start, min(start + burst, cases))
                for status, n in (("1", 1), ("9", 2)):
                    for i in chunk:
                        (outbox / f"MZ-2026-{i:06d}-{n}.json").write_bytes(_result(i, status))
            writes = 0
            replace = os.replace

            def counted(src: str, dst: str, **kw: int) -> None:
                nonlocal writes
                writes += 1
                replace(src, dst, **kw)  # type: ignore[arg-type]

            os.replace = counted  # type: ignore[assignment]
            try:
                settled = 0
                started = time.process_time()
                while updates := await conn.pull_updates(500):
                    await conn.ack_updates([Ack(u, "applied") for u in updates])
                    settled += len(updates)
                spent = time.process_time() - started
            finally:
                os.replace = replace
            await conn.aclose()
    return spent, settled, writes


async def main(args: argparse.Namespace) -> None:
    print(f"load before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    per_case = []
    for r in range(args.rounds):
        spent, settled, writes = await one_round(args.cases, args.burst)
        per_case.append(spent / args.cases * 1e3)
        print(
            f"round {r + 1}: {settled} results of {args.cases} cases settled in {spent:.2f} CPU s: "
            f"{per_case[-1]:.3f} ms a case, {writes} file replacements (ledger entries)"
        )
    print(f"load after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(f"median CPU per case: {statistics.median(per_case):.3f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=750)
    parser.add_argument("--burst", type=int, default=40, help="cases decided together")
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args()))
