"""The filedrop connector on real local folders: request files, idempotency, the stability
check, result parsing and quarantine, archive, path safety, permission problems, list_cases."""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_filedrop.connector import FiledropConnector, safe_document_name
from gateway_filedrop.options import FiledropOptions
from lxml import etree
from pydantic import ValidationError

from gateway.connector import Ack
from gateway.errors import PermanentError, TransientError
from tests.filedrop_helpers import (
    KEY,
    MATERIAL,
    FakeClock,
    envelope,
    local_options,
    make_connector,
    result_json,
    tree,
)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def conn(tmp_path: Path, http: httpx.AsyncClient, clock: FakeClock) -> FiledropConnector:
    return make_connector(local_options(tmp_path, result={"stable_seconds": 1.0}), http, clock)


def drop(root: Path, name: str, data: bytes) -> Path:
    path = root / "outbox" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# -- submit --------------------------------------------------------------------------------------


async def test_submit_writes_request_and_materials_named_from_the_key(
    conn: FiledropConnector, tmp_path: Path
) -> None:
    receipt = await conn.submit(envelope())
    assert receipt.case_id == KEY
    files = tree(tmp_path)
    assert f"inbox/{KEY}.json" in files
    assert f"inbox/{KEY}.m1.pdf" in files
    assert f"sent/{KEY}.json" in files
    # no temporary file is left, and nothing was named after the applicant's file name
    assert not any(name.rsplit("/", 1)[-1].startswith(".") for name in files)
    assert not any("passwd" in name or "户口簿" in name for name in files)
    assert (tmp_path / "inbox" / f"{KEY}.m1.pdf").read_bytes() == MATERIAL
    body = json.loads((tmp_path / "inbox" / f"{KEY}.json").read_text(encoding="utf-8"))
    assert body["idempotency_key"] == KEY and body["applicant"]["name"] == "张三"
    assert body["materials"][0]["file"] == f"{KEY}.m1.pdf"
    assert body["materials"][0]["filename"] == "../../etc/passwd 户口簿.pdf"  # data, not a path


async def test_resubmitting_never_writes_a_second_request(
    conn: FiledropConnector, tmp_path: Path
) -> None:
    first = await conn.submit(envelope())
    request = tmp_path / "inbox" / f"{KEY}.json"
    stamp = request.stat().st_mtime_ns
    assert await conn.submit(envelope()) == first
    assert request.stat().st_mtime_ns == stamp
    # the department took the request; the gateway crashed before recording it: still one
    (tmp_path / "processed").mkdir()
    request.rename(tmp_path / "processed" / request.name)
    (tmp_path / "sent" / f"{KEY}.json").unlink()
    assert await conn.submit(envelope()) == first
    assert not request.exists()
    assert (tmp_path / "sent" / f"{KEY}.json").exists()
    # a new version is a new request
    second = await conn.submit(envelope(version=2))
    assert second.case_id == "ow-a0123456789abcdef-v2"
    assert (tmp_path / "inbox" / "ow-a0123456789abcdef-v2.json").exists()


async def test_done_marker_commit_and_recovery(tmp_path: Path, http: httpx.AsyncClient) -> None:
    conn = make_connector(local_options(tmp_path, request={"commit": "done_marker"}), http)
    await conn.submit(envelope())
    assert (tmp_path / "inbox" / f"{KEY}.json.done").exists()
    # crashed after the file, before the marker and the record: the retry adds the marker only
    (tmp_path / "inbox" / f"{KEY}.json.done").unlink()
    (tmp_path / "sent" / f"{KEY}.json").unlink()
    await conn.submit(envelope())
    assert (tmp_path / "inbox" / f"{KEY}.json.done").exists()
    assert sorted(p.name for p in (tmp_path / "inbox").iterdir()) == [
        f"{KEY}.json",
        f"{KEY}.json.done",
        f"{KEY}.m1.pdf",
    ]


async def test_xml_and_csv_requests_with_a_body_map(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    body = {"case.ref": "idempotency_key", "applicant.idNo": "applicant.id_number", "form": "form"}
    xml = make_connector(
        local_options(
            tmp_path / "x",
            request={"format": "xml", "body": body, "constants": {"case.kind": "MZ"}},
        ),
        http,
    )
    (tmp_path / "x").mkdir()
    await xml.submit(envelope(form={"spouse": "李四", "<bad key>": "x"}))
    root = etree.fromstring((tmp_path / "x" / "inbox" / f"{KEY}.xml").read_bytes())
    assert root.tag == "application"
    assert root.findtext("case/ref") == KEY and root.findtext("case/kind") == "MZ"
    assert root.findtext("applicant/idNo") == "110101199003074514"
    assert root.find("form/field").get("name") == "<bad key>"  # never an element name
    assert root.findtext("materials/item/file") == f"{KEY}.m1.pdf"

    (tmp_path / "c").mkdir()
    csv_conn = make_connector(
        local_options(tmp_path / "c", request={"format": "csv", "body": body, "materials": "none"}),
        http,
    )
    await csv_conn.submit(envelope())
    rows = list(
        csv.DictReader(
            io.StringIO((tmp_path / "c" / "inbox" / f"{KEY}.csv").read_text(encoding="utf-8"))
        )
    )
    assert rows == [
        {"case.ref": KEY, "applicant.idNo": "110101199003074514", "form.spouse": "李四"}
    ]
    assert not (tmp_path / "c" / "inbox" / f"{KEY}.m1.pdf").exists()


def test_options_are_strict() -> None:
    with pytest.raises(ValidationError, match="known_hosts or host_key"):
        FiledropOptions.model_validate(
            {"target": {"type": "sftp", "host": "h", "username": "u", "password": "p"}}
        )
    with pytest.raises(ValidationError, match="password or private_key"):
        FiledropOptions.model_validate(
            {
                "target": {
                    "type": "sftp",
                    "host": "h",
                    "username": "u",
                    "host_key": "ssh-ed25519 AAAA",
                }
            }
        )
    for bad in ("../etc", "/etc", "a//b", "inbox/../x", "a/b/c/d/e"):
        with pytest.raises(ValidationError, match="not a folder path"):
            FiledropOptions.model_validate(
                {"target": {"type": "local", "root": "/x"}, "folders": {"outbox": bad}}
            )
    nested = FiledropOptions.model_validate(
        {"target": {"type": "local", "root": "/x"}, "folders": {"processed": "inbox/done"}}
    )
    assert nested.folders.processed == "inbox/done"
    for key, value, message in [
        ("timezone", "Mars/Olympus", "IANA time zone"),
        ("list_separators", [" "], "non-blank"),
        ("document_patterns", ["../{stem}.pdf"], "beside the result"),
    ]:
        with pytest.raises(ValidationError, match=message):
            FiledropOptions.model_validate(
                {"target": {"type": "local", "root": "/x"}, "result": {key: value}}
            )
    with pytest.raises(ValidationError, match="Extra inputs"):
        FiledropOptions.model_validate({"target": {"type": "local", "root": "/x"}, "formt": 1})
    with pytest.raises(ValidationError, match="unknown envelope field"):
        FiledropOptions.model_validate(
            {"target": {"type": "local", "root": "/x"}, "request": {"body": {"a": "nope"}}}
        )


# -- results -------------------------------------------------------------------------------------


async def test_partial_write_is_not_read_until_stable(
    conn: FiledropConnector, tmp_path: Path, clock: FakeClock
) -> None:
    await conn.submit(envelope())
    data = result_json(KEY)
    path = drop(tmp_path, "MZ-1.json", data[:10])  # a copy in progress
    assert await conn.pull_updates(10) == []
    clock.now += 5
    with path.open("ab") as fh:  # the writer carries on: size changed, the clock restarts
        fh.write(data[10:])
    assert await conn.pull_updates(10) == []
    clock.now += 0.5
    assert await conn.pull_updates(10) == []
    clock.now += 0.6
    [update] = await conn.pull_updates(10)
    assert (update.idempotency_key, update.status, update.ref) == (KEY, "9", "MZ-1.json")
    assert update.case_id == "MZ-2025-000001"
    assert update.occurred_at == dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    # not acknowledged: returned again by the next pull
    assert [u.ref for u in await conn.pull_updates(10)] == ["MZ-1.json"]
    await conn.ack_update(update, "applied")
    assert tree(tmp_path / "archive") == {"MZ-1.json"}
    assert await conn.pull_updates(10) == []


async def test_done_marker_results(tmp_path: Path, http: httpx.AsyncClient) -> None:
    conn = make_connector(local_options(tmp_path, result={"complete": "done_marker"}), http)
    drop(tmp_path, "r1.json", result_json(KEY))
    assert await conn.pull_updates(10) == []
    drop(tmp_path, "r1.json.done", b"")
    [update] = await conn.pull_updates(10)
    await conn.ack_update(update, "duplicate")
    assert tree(tmp_path / "archive") == {"r1.json", "r1.json.done"}
    assert tree(tmp_path / "outbox") == set()


async def test_garbage_and_hostile_files_are_quarantined(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    conn = make_connector(
        local_options(
            tmp_path,
            result={"stable_seconds": 0, "max_bytes": 4096, "missing_document_wait_seconds": 0},
        ),
        http,
    )
    drop(tmp_path, "a-garbage.json", b"{not json")
    drop(tmp_path, "a2-binary.json", b"\x00\xff")
    drop(tmp_path, "b-list.json", b"[1, 2]")
    drop(tmp_path, "c-nostatus.json", json.dumps({"case_id": "X"}).encode())
    drop(tmp_path, "d-huge.json", b" " * 5000)
    drop(tmp_path, "e-notes.txt", b"hello")
    drop(tmp_path, "f-badb64.json", result_json(KEY, documents=[{"content_b64": "***"}]))
    drop(tmp_path, "g-traversal.json", result_json(KEY, documents=[{"file": "../../etc/passwd"}]))
    drop(tmp_path, "h-missing-doc.json", result_json(KEY, documents=[{"file": "cert.pdf"}]))
    drop(tmp_path, ".hidden.json.tmp", b"{")  # a writer's temporary file: left alone
    assert await conn.pull_updates(100) == []
    quarantined = tree(tmp_path / "quarantine")
    names = [
        "a-garbage.json",
        "a2-binary.json",
        "b-list.json",
        "c-nostatus.json",
        "d-huge.json",
        "e-notes.txt",
        "f-badb64.json",
        "g-traversal.json",
        "h-missing-doc.json",
    ]
    assert quarantined == set(names) | {f"{n}.reason" for n in names}
    reason = (tmp_path / "quarantine" / "g-traversal.json.reason").read_text()
    assert "unsafe document file name" in reason
    assert "not JSON" in (tmp_path / "quarantine" / "a-garbage.json.reason").read_text()
    assert "larger than 4096" in (tmp_path / "quarantine" / "d-huge.json.reason").read_text()
    assert tree(tmp_path / "outbox") == {".hidden.json.tmp"}


async def test_xml_results_are_parsed_safely(tmp_path: Path, http: httpx.AsyncClient) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP SECRET")
    conn = make_connector(
        local_options(tmp_path, result={"format": "xml", "stable_seconds": 0}), http
    )
    drop(
        tmp_path,
        "xxe.xml",
        (
            f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file://{secret}">]>'
            f"<result><idempotency_key>{KEY}</idempotency_key><status>9</status>"
            "<opinion>&x;</opinion></result>"
        ).encode(),
    )
    drop(
        tmp_path,
        "ok.xml",
        (
            f"<result><idempotency_key>{KEY}</idempotency_key><status>9</status>"
            "<opinion>准予登记</opinion><supplement_items><item>a</item><item>b</item>"
            "</supplement_items><documents><document><name>../../etc/passwd</name>"
            f"<content_b64>{base64.b64encode(b'%PDF').decode()}</content_b64></document>"
            "</documents></result>"
        ).encode(),
    )
    [update] = await conn.pull_updates(10)
    assert update.ref == "ok.xml" and update.supplement_items == ["a", "b"]
    [doc] = update.documents
    assert doc.content == b"%PDF" and doc.name == "passwd"
    assert "DOCTYPE" in (tmp_path / "quarantine" / "xxe.xml.reason").read_text()
    assert not any("SECRET" in p.read_text(errors="ignore") for p in tmp_path.rglob("*.xml"))


async def test_csv_results_with_document_files(tmp_path: Path, http: httpx.AsyncClient) -> None:
    conn = make_connector(
        local_options(tmp_path, result={"format": "csv", "stable_seconds": 0}), http
    )
    (tmp_path / "outbox" / "r1.files").mkdir(parents=True)
    (tmp_path / "outbox" / "r1.files" / "cert.pdf").write_bytes(b"%PDF cert")
    drop(
        tmp_path,
        "r1.csv",
        (
            "case_id,idempotency_key,status,opinion,supplement_items,documents\r\n"
            f"MZ-1,{KEY},9,ok,,cert.pdf\r\n"
        ).encode(),
    )
    [update] = await conn.pull_updates(10)
    assert [(d.name, d.content) for d in update.documents] == [("cert.pdf", b"%PDF cert")]
    await conn.ack_update(update, "applied")
    assert tree(tmp_path / "archive") == {"r1.csv", "r1.files/cert.pdf"}


async def test_unmatched_and_duplicate_result_files(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    conn = make_connector(local_options(tmp_path, result={"stable_seconds": 0}), http)
    drop(tmp_path, "r1.json", result_json(KEY))
    drop(tmp_path, "r2.json", result_json("ow-nobody-v1"))
    one, two = await conn.pull_updates(10)
    await conn.ack_update(one, "applied")
    await conn.ack_update(two, "unmatched", "no case with this idempotency key")
    assert "no case" in (tmp_path / "quarantine" / "r2.json.reason").read_text()
    # the department sends the same result again under the same name
    drop(tmp_path, "r1.json", result_json(KEY))
    [again] = await conn.pull_updates(10)
    await conn.ack_update(again, "duplicate")
    assert tree(tmp_path / "archive") == {"r1.json", "r1.dup1.json"}
    # acking twice (another daemon got there first) is harmless
    await conn.ack_update(again, "duplicate")
    assert tree(tmp_path / "outbox") == set()


def test_document_names_never_become_paths() -> None:
    assert safe_document_name("../../etc/passwd") == "passwd"
    assert safe_document_name("..\\..\\boot.ini") == "boot.ini"
    assert safe_document_name("...") == "document"
    assert safe_document_name("a\x00b\nc.pdf") == "abc.pdf"


async def test_limit_and_order(tmp_path: Path, http: httpx.AsyncClient) -> None:
    import os

    conn = make_connector(local_options(tmp_path, result={"stable_seconds": 0}), http)
    for i, status in enumerate(["1", "9", "1"]):
        path = drop(tmp_path, f"r{i}.json", result_json(KEY, status))
        os.utime(path, (1000 + i, 1000 + i))
    assert [u.ref for u in await conn.pull_updates(2)] == ["r0.json", "r1.json"]


# -- permission problems -------------------------------------------------------------------------


async def test_root_that_is_a_file_is_a_transient_error(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    root = tmp_path / "share"
    root.write_text("not a folder (share not mounted)")
    conn = make_connector(local_options(root), http)
    with pytest.raises(TransientError, match="not a directory"):
        await conn.submit(envelope())
    with pytest.raises(TransientError):
        await conn.pull_updates(10)
    assert not (await conn.health()).ok
    assert tree(tmp_path) == {"share"}


async def test_unwritable_inbox_is_a_transient_error_without_pii(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    # root ignores chmod, so the inbox is made unusable another way: a file in its place
    (tmp_path / "inbox").write_text("")
    conn = make_connector(local_options(tmp_path), http)
    with pytest.raises(TransientError) as info:
        await conn.submit(envelope())
    assert "110101199003074514" not in str(info.value) and "张三" not in str(info.value)
    assert not (tmp_path / "sent" / f"{KEY}.json").exists()


async def test_bad_key_is_permanent(conn: FiledropConnector) -> None:
    with pytest.raises(PermanentError):
        await conn.submit(envelope(idempotency_key="../../x"))


# -- reconciliation ------------------------------------------------------------------------------


async def test_list_cases_from_the_sent_record(tmp_path: Path, http: httpx.AsyncClient) -> None:
    conn = make_connector(local_options(tmp_path, result={"stable_seconds": 0}), http)
    await conn.submit(envelope())
    await conn.submit(envelope("a0000000000000002"))
    drop(tmp_path, "r.json", result_json(KEY, "4"))
    [update] = await conn.pull_updates(10)
    await conn.ack_update(update, "applied")
    since = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    until = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    cases = {c.idempotency_key: c async for c in conn.list_cases(since, until)}
    assert cases[KEY].case_id == "MZ-2025-000001"  # the department's case number, once known
    assert cases[KEY].status == "4"
    assert cases[KEY].updated_at == dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert cases["ow-a0000000000000002-v1"].status == "delivered"
    later = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)
    assert {c.case_id async for c in conn.list_cases(later, until)} == {"ow-a0000000000000002-v1"}
    assert cases["ow-a0000000000000002-v1"].case_id == "ow-a0000000000000002-v1"


async def test_a_refusal_read_before_the_request_was_recorded_still_lets_a_replay_resend(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    """The department can take and refuse a request before the gateway has recorded it in its
    ledger, and the gateway's result pull can read that refusal first: the refusal must
    survive the record, or a replay trusts the record and never writes the request again (the
    case stays delivered while the department holds only the refused request). Seen as a
    replay test that failed under load in CI."""
    conn = make_connector(local_options(tmp_path, folders={"errors": "error"}), http)
    await conn.share.prepare()
    started = dt.datetime.now(dt.UTC)
    (tmp_path / "error").mkdir(parents=True, exist_ok=True)
    (tmp_path / "error" / f"{KEY}.json").write_text("{}")  # taken and refused meanwhile
    await conn.ledger.note(KEY, None, refused="申请人证件号码缺失")  # the pull read it first
    await conn.ledger.record_sent(envelope(), f"{KEY}.json", started)  # then the record
    assert not (tmp_path / "inbox" / f"{KEY}.json").exists()
    await conn.submit(envelope())  # the operator's replay
    assert (tmp_path / "inbox" / f"{KEY}.json").exists()  # written again


async def test_a_refusal_of_an_earlier_request_is_not_carried_into_a_new_record(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    conn = make_connector(local_options(tmp_path, folders={"errors": "error"}), http)
    await conn.share.prepare()
    await conn.ledger.note(KEY, None, refused="an earlier request's")
    await conn.ledger.record_sent(envelope(), f"{KEY}.json", dt.datetime.now(dt.UTC))
    entry = await conn.ledger.read(KEY)
    assert entry is not None and "refused" not in entry


# -- trips to the storage's worker thread ---------------------------------------------------------


def _count_trips(conn: FiledropConnector) -> list[str]:
    """Every trip the connector's local storage makes to a worker thread, by what it did."""
    storage = conn.storage
    trips: list[str] = []
    run = storage._run  # type: ignore[attr-defined]

    async def counted(what: str, fn: Any) -> Any:
        trips.append(what)
        return await run(what, fn)

    storage._run = counted  # type: ignore[attr-defined]
    return trips


async def test_a_new_request_and_its_results_take_few_trips_to_the_worker_thread(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    """A trip to a worker thread costs more CPU than the file operations it runs (the city
    day's file-drop department made ~24 a case): a new request is one look (no ledger entry,
    no request anywhere), the request and its ledger record, all in one trip; a pull reads its
    results in one trip; settling a batch of results is their moves to the archive (under a
    free name, with done markers and documents) in one trip and their ledger notes in one."""
    conn = make_connector(
        local_options(tmp_path, result={"stable_seconds": 0}, folders={"processed": "done"}),
        http,
    )
    await conn.share.prepare()
    trips = _count_trips(conn)
    await conn.submit(envelope(materials=[]))
    assert len(trips) == 1, trips
    (tmp_path / "done").mkdir()  # the department takes it
    (tmp_path / "inbox" / f"{KEY}.json").rename(tmp_path / "done" / f"{KEY}.json")
    drop(tmp_path, "MZ-1-1.json", result_json(KEY, "1"))
    drop(tmp_path, "MZ-1-2.json", result_json(KEY, "9"))
    trips.clear()
    updates = await conn.pull_updates(10)
    assert [u.status for u in updates] == ["1", "9"]
    assert len(trips) == 2, trips  # the listing, then both results read in one trip
    trips.clear()
    await conn.ack_updates([Ack(update, "applied") for update in updates])
    assert len(trips) == 2, trips
    archived = sorted(p.name for p in (tmp_path / "archive").iterdir())
    assert archived == ["MZ-1-1.json", "MZ-1-2.json"]
    entry = await conn.ledger.read(KEY)
    assert entry is not None and entry["status"] == "9"
    trips.clear()
    await conn.submit(envelope(materials=[]))  # sent before: nothing written again
    assert not (tmp_path / "inbox" / f"{KEY}.json").exists()


async def test_a_batch_is_archived_in_groups_and_a_cut_leaves_the_rest_to_come_again(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    """``ack_updates`` archives 25 results a group (a trip for the moves, one for the ledger
    notes): a call cut short after the first group has that group archived and noted, and
    the others still in the outbox, pulled and settled by the next round."""
    from gateway_filedrop.result_files import SETTLE_GROUP

    conn = make_connector(local_options(tmp_path, result={"stable_seconds": 0}), http)
    keys = [f"ow-a{i:016x}-v1" for i in range(SETTLE_GROUP + 5)]
    for i, key in enumerate(keys):
        await conn.submit(envelope(f"a{i:016x}", materials=[]))
        drop(tmp_path, f"MZ-{i:02d}.json", result_json(key, "9"))
    updates = await conn.pull_updates(100)
    assert len(updates) == len(keys)
    trips = _count_trips(conn)
    real = conn.storage.move_free_many

    async def cut(moves: Any) -> Any:
        if any(name == "MZ-25.json" for _src, name, _dst, _suffix in moves):
            raise TransientError("civil: no answer within 10 s (ack_updates)")
        return await real(moves)

    conn.storage.move_free_many = cut  # type: ignore[method-assign]
    with pytest.raises(TransientError):
        await conn.ack_updates([Ack(u, "applied") for u in updates])
    assert len(trips) == 2, trips  # the first group's moves, then its notes
    assert len(list((tmp_path / "archive").iterdir())) == SETTLE_GROUP
    noted = [json.loads((tmp_path / "sent" / f"{k}.json").read_bytes())["status"] for k in keys]
    assert noted == ["9"] * SETTLE_GROUP + [None] * 5
    conn.storage.move_free_many = real  # type: ignore[method-assign]
    again = await conn.pull_updates(100)
    assert sorted(u.ref or "" for u in again) == [f"MZ-{i}.json" for i in range(25, 30)]
    await conn.ack_updates([Ack(u, "duplicate") for u in again])
    assert len(list((tmp_path / "archive").iterdir())) == len(keys)
    assert await conn.pull_updates(100) == []


async def test_a_cases_results_settled_together_write_its_ledger_entry_once(
    tmp_path: Path, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A case's "accepted" and its decision, settled in one batch, are noted on its ledger
    entry read once and written once (each write is a new file renamed over the entry, the
    result path's largest cost in a city day), leaving what noting them one after the other
    leaves: the last status, the department's case number, the last result's time."""
    import os

    conn = make_connector(local_options(tmp_path, result={"stable_seconds": 0}), http)
    await conn.submit(envelope(materials=[]))
    other = "ow-a0000000000000002-v1"
    await conn.submit(envelope("a0000000000000002", materials=[]))
    drop(tmp_path, "MZ-1-1.json", result_json(KEY, "1", occurred_at="2025-01-01T00:00:00Z"))
    drop(tmp_path, "MZ-1-2.json", result_json(KEY, "9"))
    drop(tmp_path, "MZ-2-1.json", result_json(other, "4"))
    updates = await conn.pull_updates(10)
    assert sorted(u.status for u in updates) == ["1", "4", "9"]
    replaced: list[str] = []
    real = os.replace
    monkeypatch.setattr(
        os, "replace", lambda src, dst, **kw: (replaced.append(str(dst)), real(src, dst, **kw))[1]
    )
    await conn.ack_updates([Ack(update, "applied") for update in updates])
    assert sorted(replaced) == sorted([f"{KEY}.json", f"{other}.json"])  # one write each
    entry = await conn.ledger.read(KEY)
    assert entry is not None
    assert (entry["status"], entry["case_id"]) == ("9", "MZ-2025-000001")
    assert entry["updated_at"] == "2025-01-02T03:04:05Z"
    assert entry["file"] == f"{KEY}.json"  # the request's record kept
    entry = await conn.ledger.read(other)
    assert entry is not None and entry["status"] == "4"


async def test_a_requests_results_pulled_apart_are_settled_in_one_group(
    tmp_path: Path, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pull lists a day's "accepted" results before their decisions: the batch is settled
    in groups of whole requests (at most 25 results), so each ledger entry is still written
    once, and the group after a cut still comes again whole."""
    import os

    from gateway_filedrop.result_files import SETTLE_GROUP

    conn = make_connector(local_options(tmp_path, result={"stable_seconds": 0}), http)
    keys = [f"ow-a{i:016x}-v1" for i in range(SETTLE_GROUP + 5)]
    for i, key in enumerate(keys):
        await conn.submit(envelope(f"a{i:016x}", materials=[]))
        drop(tmp_path, f"MZ-{i:02d}-1.json", result_json(key, "1"))
    for i, key in enumerate(keys):
        drop(tmp_path, f"MZ-{i:02d}-2.json", result_json(key, "9"))
    updates = await conn.pull_updates(100)
    assert len(updates) == 2 * len(keys)
    assert [u.status for u in updates[: len(keys)]] == ["1"] * len(keys)  # as listed
    replaced: list[str] = []
    real = os.replace
    monkeypatch.setattr(
        os, "replace", lambda src, dst, **kw: (replaced.append(str(dst)), real(src, dst, **kw))[1]
    )
    trips = _count_trips(conn)
    await conn.ack_updates([Ack(u, "applied") for u in updates])
    assert sorted(replaced) == sorted(f"{k}.json" for k in keys)  # once each
    assert len(trips) == 2 * 3, trips  # 12, 12 and 6 requests: moves and notes each
    assert len(list((tmp_path / "archive").iterdir())) == len(updates)
    noted = [json.loads((tmp_path / "sent" / f"{k}.json").read_bytes())["status"] for k in keys]
    assert noted == ["9"] * len(keys)


def test_results_are_read_in_groups_of_bounded_size() -> None:
    from gateway_filedrop.result_files import _GROUP_BYTES, _groups
    from gateway_filedrop.storage import Entry

    small = [Entry(f"r{i}.json", 1000, 0.0, "file") for i in range(5)]
    assert [len(g) for g in _groups(small)] == [5]
    big = Entry("big.json", _GROUP_BYTES, 0.0, "file")
    half = Entry("half.json", _GROUP_BYTES // 2, 0.0, "file")
    assert [[e.name for e in g] for g in _groups([half, half, half, big, small[0]])] == [
        ["half.json", "half.json"],
        ["half.json"],
        ["big.json"],
        ["r0.json"],
    ]
    assert _groups([]) == []


async def test_a_status_note_is_not_fsynced_a_request_its_record_and_a_refusal_are(
    tmp_path: Path, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Durable: the request before it counts as sent, its ledger record, and a refusal (what
    lets a replay write the request again). A result's status in the ledger is not: the
    gateway's database has the case's."""
    import os

    synced: list[int] = []
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), fsync(fd))[1])
    conn = make_connector(local_options(tmp_path, result={"stable_seconds": 0}), http)
    await conn.submit(envelope(materials=[]))
    assert len(synced) == 2  # the request, then its record
    drop(tmp_path, "MZ-1-2.json", result_json(KEY, "9"))
    (update,) = await conn.pull_updates(10)
    synced.clear()
    await conn.ack_update(update, "applied")
    assert synced == []
    entry = await conn.ledger.read(KEY)
    assert entry is not None and entry["status"] == "9"
    await conn.ledger.note(KEY, None, refused="第2行：申请人证件号码校验未通过")
    assert len(synced) == 1


async def test_a_new_request_without_material_files_is_one_trip_to_the_share(
    conn: FiledropConnector, tmp_path: Path
) -> None:
    """The usual submit (nothing written before, no materials to write as files) looks, writes
    the request and its ledger record in one trip to a worker thread; anything found goes the
    step-by-step way, and writes nothing again."""
    trips: list[str] = []
    run = conn.storage._run  # type: ignore[attr-defined]

    async def counted(what: str, fn: Any) -> Any:
        trips.append(what)
        return await run(what, fn)

    await conn.share.prepare()  # the folders, once per connector
    conn.storage._run = counted  # type: ignore[attr-defined]
    await conn.submit(envelope(materials=[]))
    assert trips == [f"write inbox/{KEY}.json"]
    assert json.loads((tmp_path / "sent" / f"{KEY}.json").read_bytes())["file"] == f"{KEY}.json"
    request = tmp_path / "inbox" / f"{KEY}.json"
    stamp = request.stat().st_mtime_ns
    trips.clear()
    await conn.submit(envelope(materials=[]))  # again: found, not written again
    assert request.stat().st_mtime_ns == stamp
    assert trips[0] == f"write inbox/{KEY}.json" and len(trips) > 1
    trips.clear()
    await conn.submit(envelope(version=2))  # a material to write beside it: step by step
    assert len(trips) > 1
    assert (tmp_path / "inbox" / "ow-a0123456789abcdef-v2.m1.pdf").exists()


def test_the_intake_check_follows_a_reloaded_department() -> None:
    """The request encoding is looked up once per department config (the options were
    validated for every application); a reload's new config is read afresh."""
    from gateway_filedrop.intake import encoding_problems

    from gateway.config.models import DepartmentConfig
    from gateway.connector import Applicant

    def civil(encoding: str) -> DepartmentConfig:
        options = {**local_options(Path("/nowhere")), "request": {"encoding": encoding}}
        return DepartmentConfig(code="civil", name="民政局", connector="filedrop", options=options)

    applicant = Applicant(name="𠮷田", id_number="110101199003074514")
    gbk = civil("gbk")
    for _ in range(2):  # the second time from what the first looked up
        problems = encoding_problems({}, applicant, gbk)
        assert problems and problems[0].startswith("applicant.name: character")
    assert encoding_problems({}, applicant, civil("utf-8")) is None
    assert encoding_problems({}, applicant, civil("gbk"))
