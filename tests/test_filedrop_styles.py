"""File-exchange back offices written by someone else, met by configuration alone: GBK CSV with
Chinese column names, documents beside the result (named in a column or by a pattern),
full-width list separators, literal column names, zone-less local times, nested folders, and a
department error folder of ``.err`` files. Quarantine is never silent."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from gateway_filedrop.refusals import REFUSALS
from gateway_filedrop.result_files import QUARANTINED
from typer.testing import CliRunner

from gateway.cli import app
from gateway.config.loader import check_connector_options, load_config
from gateway.errors import PermanentError
from gateway.plugin_manager import load_plugins
from tests.filedrop_helpers import (
    KEY,
    FakeClock,
    envelope,
    local_options,
    make_connector,
    result_json,
    tree,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "config"
CERT = b"%PDF-1.4 certificate\n"
SHANGHAI = dt.timezone(dt.timedelta(hours=8))
# the back office's own words: GBK, Chinese columns and status words
GBK_FIELDS = {
    "case_id": "办件编号",
    "idempotency_key": "申请编号",
    "status": "办理状态",
    "detail": "办理意见",
    "occurred_at": "办结时间",
    "documents": "证照文件",
    "supplement_items": "补正材料",
}


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def gbk_csv(row: dict[str, str]) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(list(row))
    writer.writerow(list(row.values()))
    return out.getvalue().encode("gbk")


def gbk_options(root: Path, **result: Any) -> dict[str, Any]:
    return local_options(
        root,
        folders={"processed": "inbox/done", "errors": "error"},
        request={"format": "csv", "encoding": "gbk"},
        result={
            "format": "csv",
            "encoding": "gbk",
            "stable_seconds": 0,
            "fields": GBK_FIELDS,
            "list_separators": [";", "；"],
            "documents_beside": True,
            **result,
        },
    )


def row(status: str = "办结", **changes: str) -> dict[str, str]:
    data = {
        "办件编号": "MZ-2025-000001",
        "申请编号": KEY,
        "办理状态": status,
        "办理意见": "准予登记",
        "办结时间": "2025-01-02 09:30:00",
        "证照文件": "",
        "补正材料": "",
    }
    data.update(changes)
    return data


async def test_gbk_csv_with_a_certificate_beside_the_result(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    conn = make_connector(gbk_options(tmp_path), http)
    await conn.submit(envelope(applicant={"name": "张三", "id_number": "110101199003074514"}))
    request = (tmp_path / "inbox" / f"{KEY}.csv").read_bytes()
    assert "张三".encode("gbk") in request
    outbox = tmp_path / "outbox"
    (outbox / "结婚证-MZ1.pdf").write_bytes(CERT)
    (outbox / "MZ1.csv").write_bytes(gbk_csv(row(证照文件="结婚证-MZ1.pdf")))
    [update] = await conn.pull_updates(10)
    assert (update.case_id, update.idempotency_key, update.status) == (
        "MZ-2025-000001",
        KEY,
        "办结",
    )
    assert update.detail == "准予登记"
    # a time without a zone is the department's local time (Asia/Shanghai unless configured)
    assert update.occurred_at == dt.datetime(2025, 1, 2, 9, 30, tzinfo=SHANGHAI)
    [doc] = update.documents
    assert (doc.name, doc.content_type, doc.content) == ("结婚证-MZ1.pdf", "application/pdf", CERT)
    await conn.ack_update(update, "applied")
    assert tree(tmp_path / "archive") == {"MZ1.csv", "结婚证-MZ1.pdf"}
    assert tree(outbox) == set()
    assert tree(tmp_path / "quarantine") == set()


async def test_full_width_separators_and_documents_by_pattern(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    conn = make_connector(
        gbk_options(tmp_path, document_patterns=["{stem}.pdf", "{stem}_*.ofd"]), http
    )
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    (outbox / "MZ[1].pdf").write_bytes(CERT)
    (outbox / "MZ[1]_副本.ofd").write_bytes(b"ofd")
    (outbox / "MZ2.pdf").write_bytes(b"someone else's")
    (outbox / "MZ[1].csv").write_bytes(
        gbk_csv(row("补正", 补正材料="居民户口簿复印件；近期免冠照片;结婚登记声明书"))
    )
    [update] = await conn.pull_updates(10)
    assert update.supplement_items == ["居民户口簿复印件", "近期免冠照片", "结婚登记声明书"]
    assert [(d.name, d.content_type) for d in update.documents] == [
        ("MZ[1].pdf", "application/pdf"),
        ("MZ[1]_副本.ofd", "application/ofd"),
    ]
    await conn.ack_update(update, "applied")
    assert tree(outbox) == {"MZ2.pdf"}  # waits for its own result


async def test_a_document_written_after_its_result_is_waited_for(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    clock = FakeClock()
    conn = make_connector(gbk_options(tmp_path, missing_document_wait_seconds=30), http, clock)
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    (outbox / "MZ1.csv").write_bytes(gbk_csv(row(证照文件="证书.pdf")))
    assert await conn.pull_updates(10) == []
    clock.now += 10
    assert await conn.pull_updates(10) == []
    (outbox / "证书.pdf").write_bytes(CERT)
    [update] = await conn.pull_updates(10)
    assert update.documents[0].content == CERT
    # one that never comes: quarantined once the wait is over, with the reason
    (outbox / "MZ2.csv").write_bytes(gbk_csv(row(证照文件="never.pdf")))
    assert await conn.pull_updates(10) == [update]  # not yet acknowledged: offered again
    clock.now += 31
    await conn.pull_updates(10)
    reason = (tmp_path / "quarantine" / "MZ2.csv.reason").read_text()
    assert "missing" in reason and "never.pdf" in reason


async def test_literal_column_names_and_explicit_zones(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    conn = make_connector(
        local_options(
            tmp_path,
            result={
                "stable_seconds": 0,
                "timezone": "Asia/Urumqi",
                "fields": {"case_id": "办件.编号", "status": "状态.代码"},
            },
        ),
        http,
    )
    (tmp_path / "outbox").mkdir()
    record = {"办件.编号": "X-1", "状态.代码": "1", "occurred_at": "2025-01-02T09:30:00"}
    (tmp_path / "outbox" / "a.json").write_bytes(result_json(KEY, **record))
    (tmp_path / "outbox" / "b.json").write_bytes(
        result_json(KEY, **{**record, "occurred_at": "2025/1/2 09:30:00+08:00"})
    )
    first, second = await conn.pull_updates(10)
    assert (first.case_id, first.status) == ("X-1", "1")
    assert first.occurred_at == dt.datetime(2025, 1, 2, 3, 30, tzinfo=dt.UTC)  # Urumqi is +6
    assert second.occurred_at == dt.datetime(2025, 1, 2, 1, 30, tzinfo=dt.UTC)


async def test_quarantine_is_logged_counted_and_shown_in_health(
    tmp_path: Path, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    conn = make_connector(local_options(tmp_path, result={"stable_seconds": 0}), http)
    assert (await conn.health()).ok
    before = QUARANTINED.labels("civil")._value.get()
    (tmp_path / "outbox").mkdir()
    (tmp_path / "outbox" / "junk.json").write_bytes(b"{")
    with caplog.at_level(logging.WARNING, logger="gateway_filedrop"):
        assert await conn.pull_updates(10) == []
    [record] = [r for r in caplog.records if r.name == "gateway_filedrop"]
    assert record.levelno == logging.WARNING
    assert "junk.json quarantined" in record.getMessage()
    assert QUARANTINED.labels("civil")._value.get() == before + 1
    health = await conn.health()
    assert not health.ok and "1 result file(s) in quarantine" in health.detail


async def test_department_error_files_fail_the_case_and_a_replay_resends(
    tmp_path: Path, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    conn = make_connector(gbk_options(tmp_path), http)
    await conn.submit(envelope())
    before = REFUSALS.labels("civil")._value.get()
    # the department moves the request to its error folder and says why, in its encoding
    (tmp_path / "error").mkdir()
    (tmp_path / "inbox" / f"{KEY}.csv").rename(tmp_path / "error" / f"{KEY}.csv")
    (tmp_path / "error" / f"{KEY}.csv.err").write_bytes("第2行：身份证号码格式错误".encode("gbk"))
    with caplog.at_level(logging.WARNING, logger="gateway_filedrop"):
        [update] = await conn.pull_updates(10)
    assert (update.idempotency_key, update.status) == (KEY, "failed")
    assert update.detail == "the department refused the request file: 第2行：身份证号码格式错误"
    assert REFUSALS.labels("civil")._value.get() == before + 1
    assert any("refused request" in r.getMessage() for r in caplog.records)
    since = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    until = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    # reconciliation reads the department's side: the refusal, read or not yet
    assert [c.status async for c in conn.list_cases(since, until)] == ["failed"]
    await conn.ack_update(update, "applied")
    assert tree(tmp_path / "error") == {f"{KEY}.csv"}
    assert f"{KEY}.csv.err" in tree(tmp_path / "archive")
    assert await conn.pull_updates(10) == []  # read once
    assert [c.status async for c in conn.list_cases(since, until)] == ["failed"]
    # an operator's replay sends the same key again: the request is written anew
    await conn.submit(envelope())
    assert (tmp_path / "inbox" / f"{KEY}.csv").exists()
    assert [c.status async for c in conn.list_cases(since, until)] == ["delivered"]
    await conn.submit(envelope())  # and is idempotent again


async def test_reconciliation_leaves_out_a_request_the_department_lost(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    conn = make_connector(gbk_options(tmp_path), http)
    await conn.submit(envelope())
    await conn.submit(envelope("a0000000000000002"))
    await conn.submit(envelope("a0000000000000003"))
    (tmp_path / "inbox" / "done").mkdir()
    taken = "ow-a0000000000000002-v1.csv"
    (tmp_path / "inbox" / taken).rename(tmp_path / "inbox" / "done" / taken)
    (tmp_path / "inbox" / "ow-a0000000000000003-v1.csv").unlink()  # lost
    since = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    until = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    listed = {c.idempotency_key: c.status async for c in conn.list_cases(since, until)}
    assert listed == {KEY: "delivered", "ow-a0000000000000002-v1": "delivered"}
    # asked to re-send it, the connector writes it again rather than trusting its record
    await conn.submit(envelope("a0000000000000003"))
    assert (tmp_path / "inbox" / "ow-a0000000000000003-v1.csv").exists()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """The CLI configures logging onto the runner's stream, closed after it: put it back."""
    saved = structlog.get_config()
    handlers = logging.root.handlers[:]
    yield
    structlog.configure(**saved)
    logging.root.handlers[:] = handlers


@pytest.mark.usefixtures("restore_logging")
def test_ops_list_and_requeue_the_quarantine(tmp_path: Path) -> None:
    cfg = tmp_path / "config"
    shutil.copytree(EXAMPLE, cfg)
    share = tmp_path / "share"
    civil = cfg / "departments" / "civil.toml"
    civil.write_text(
        civil.read_text(encoding="utf-8").replace(
            'root = "var/filedrop/civil"', f'root = "{share}"', 1
        ),
        encoding="utf-8",
    )
    for folder in ("outbox", "quarantine", "archive"):
        (share / folder).mkdir(parents=True)
    (share / "quarantine" / "r1.json").write_text("{")
    (share / "quarantine" / "r1.json.reason").write_text(
        "2025-01-02T03:04:05Z r1.json: no status in 'status'\n"
    )
    runner = CliRunner()
    args = ["filedrop", "quarantine", "--config", str(cfg / "gateway.toml")]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [
        {
            "department": "civil",
            "name": "r1.json",
            "size": 1,
            "kind": "file",
            "reason": "no status in 'status'",
            "noted_at": "2025-01-02T03:04:05Z",
        }
    ]
    result = runner.invoke(app, args)
    assert "no status in 'status'" in result.output and "1 file(s)" in result.output
    result = runner.invoke(
        app, ["filedrop", "requeue", "civil", "r1.json", "--config", str(cfg / "gateway.toml")]
    )
    assert result.exit_code == 0, result.output
    assert tree(share) == {"outbox/r1.json", "archive/r1.json.reason"}
    result = runner.invoke(
        app, ["filedrop", "requeue", "civil", "r1.json", "--config", str(cfg / "gateway.toml")]
    )
    assert result.exit_code == 1 and "already holds" in result.output


async def test_text_the_encoding_cannot_carry_fails_naming_the_field_only(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    conn = make_connector(gbk_options(tmp_path), http)
    rare = envelope(applicant={"name": "张𠮷", "id_number": "110101199003074514"})
    with pytest.raises(PermanentError) as info:
        await conn.submit(rare)
    message = str(info.value)
    assert "applicant.name" in message and "U+20BB7" in message and "gbk" in message
    assert "张" not in message
    assert not (tmp_path / "inbox" / f"{KEY}.csv").exists()


def test_a_mapping_field_named_like_a_secret_is_a_field_name(tmp_path: Path) -> None:
    cfg = tmp_path / "config"
    shutil.copytree(EXAMPLE, cfg)
    civil = cfg / "departments" / "civil.toml"
    text = civil.read_text(encoding="utf-8")
    text = text.replace(
        '"case.ref" = "idempotency_key"',
        'case_key = "idempotency_key"\napp_token = "applicant.name"',
        1,
    )
    civil.write_text(text, encoding="utf-8")
    body = load_config(cfg / "gateway.toml").departments["civil"].options["request"]["body"]
    assert body["case_key"] == "idempotency_key" and body["app_token"] == "applicant.name"
    # the body is declared field names (FIELD_NAMES): a value that is no gateway field is
    # refused by the model as a wrong field name
    civil.write_text(text.replace('case_key = "idempotency_key"', 'api_key = "s3cr3t"'), "utf-8")
    config = load_config(cfg / "gateway.toml")
    [found] = check_connector_options(config, load_plugins().connectors())
    assert found.key == "options.request.body" and "field 's3cr3t'" in found.message
