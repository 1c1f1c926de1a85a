"""Real-world REST departments by configuration alone (issue 13).

Each file in ``config/examples/`` is a department in one style government back offices use
(envelope errors in HTTP 200, inline base64 documents, page-number / offset / next-link listing,
form bodies, GBK answers, token auth, signed requests). For each, the file is loaded by the real
config loader, the simulator plays the department from the file's own ``[simulator]`` table,
and a whole gateway takes applications through it: a transient business error is retried (not
failed), a refusal is refused with the department's message, documents are collected byte for
byte, and reconciliation reads every page and says how many it read.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
import pytest_asyncio
from gateway_rest.connector import RestConnector
from prometheus_client import REGISTRY
from typer.testing import CliRunner

from gateway import documents
from gateway.cli import app as cli
from gateway.config import check_connector_options, load_config
from gateway.config.models import DepartmentConfig, RetryPolicy
from gateway.connector import ConnectorContext, Envelope, MaterialRef, Receipt
from gateway.errors import CaseNotFound, DepartmentRejected, PermanentError
from gateway.plugin_manager import load_plugins
from gateway.poller import poll_department
from gateway.reconcile import reconcile_department
from gateway.runtime import Runtime
from gateway.simulators import SIMULATORS, serve_asgi
from gateway.simulators.rest_department import RestDepartmentState, certificate
from gateway.store import cases
from gateway.testing import (
    ConnectorConformance,
    Failure,
    case_status,
    dispatch,
    make_config,
    running_gateway,
)
from gateway.testing import submit_application as submit
from tests.conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "config" / "examples").glob("*.toml"))
ENV = {"GOV_TOKEN_SECRET": "token-secret-for-tests", "GOV_SIGN_SECRET": "sign-secret-for-tests"}
#: one page short of three: five cases at page_size 2
CASES, PAGES = 5, 3


@dataclasses.dataclass
class Clock:
    """The simulator's clock, moved by the test (decisions come when it says, not by sleeping)."""

    now: dt.datetime

    def __call__(self) -> dt.datetime:
        return self.now


def config_folder(path: Path, tmp_path: Path, url: str | None = None) -> Path:
    """A config folder holding only the department in ``path`` (at ``url`` if given) and a
    SQLite database of the test's own; returns its gateway.toml."""
    folder = tmp_path / "config"
    (folder / "departments").mkdir(parents=True)
    main = (ROOT / "config" / "gateway.toml").read_text(encoding="utf-8")
    main = re.sub(
        r"(?m)^database_url = .*$", f'database_url = "sqlite+aiosqlite:///{tmp_path}/gw.db"', main
    )
    main = re.sub(r"(?m)^data_dir = .*$", f'data_dir = "{tmp_path / "var"}"', main)
    (folder / "gateway.toml").write_text(main, encoding="utf-8")
    dept = path.read_text(encoding="utf-8")
    if url is not None:
        dept = re.sub(r'(?m)^base_url = "http://[^/"]+', f'base_url = "{url}', dept)
    (folder / "departments" / path.name).write_text(dept, encoding="utf-8")
    (folder / "matters.csv").write_text(
        f"code,name,department,regions,promised_days\nXK00000001,Test,{path.stem},339900,5\n",
        encoding="utf-8",
    )
    return folder / "gateway.toml"


def load_example(path: Path, tmp_path: Path) -> tuple[DepartmentConfig, dict[str, Any]]:
    """The department in ``path`` through the real loader (secrets, env references, the
    connector's options model), and its resolved ``[simulator]`` table."""
    config = load_config(config_folder(path, tmp_path), env=ENV)
    assert check_connector_options(config, load_plugins().connectors()) == []
    dept = config.departments[path.stem]
    assert dept.simulator is not None
    return dept, dict(dept.simulator)


def pointed_at(dept: DepartmentConfig, url: str) -> DepartmentConfig:
    """The department at the running simulator, polled and retried at test speed."""
    options = {**dept.options, "base_url": f"{url}/api/v1"}
    retry = RetryPolicy(
        max_attempts=8, base_seconds=0.05, max_seconds=0.1, jitter=0, in_call_attempts=1
    )
    return dept.model_copy(
        update={"options": options, "retry": retry, "poll_interval_seconds": 0.01}
    )


@pytest.fixture(params=EXAMPLES, ids=[p.stem for p in EXAMPLES])
async def styled(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Runtime, RestDepartmentState, Clock, str]]:
    """A gateway connected to the simulator by one example file."""
    dept, table = load_example(request.param, tmp_path)
    clock = Clock(dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    _settings, app, state = SIMULATORS["rest"].build({**table, "port": 0, "mix": {"approve": 1.0}})
    state.clock = clock
    async with serve_asgi(app) as url:
        config = make_config(tmp_path / "gateway", departments=[pointed_at(dept, url)])
        async with running_gateway(config) as runtime:
            yield runtime, state, clock, dept.code


async def statuses(runtime: Runtime, ids: list[str]) -> list[str]:
    return [await case_status(runtime, i) for i in ids]


async def until(
    runtime: Runtime, step: Callable[[], Any], ids: list[str], wanted: set[str]
) -> None:
    async def done() -> bool:
        await step()
        return set(await statuses(runtime, ids)) <= wanted

    try:
        await wait_for(done, timeout=20)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: statuses {await statuses(runtime, ids)}") from None


async def test_example_department_connects_by_config_alone(
    styled: tuple[Runtime, RestDepartmentState, Clock, str],
) -> None:
    runtime, state, clock, code = styled
    accepted = [await submit(runtime, form={"licenceNo": f"L-{i}"}) for i in range(CASES)]
    refused = await submit(runtime, form={})
    everyone = [*accepted, refused]

    # the department is busy for one call: HTTP 200 with code 5001 "系统繁忙"
    state.mode, state.fail_left = "busy", 1
    await dispatch(runtime)
    assert state.transient_answers == 1
    after_busy = await statuses(runtime, everyone)
    assert "failed" not in after_busy
    assert after_busy.count("dispatching") == 1, after_busy  # waiting for its retry
    async with runtime.engine.connect() as conn:
        waiting = [
            row
            for i in everyone
            if (row := await cases.get_application(conn, i)) and row.status == "dispatching"
        ]
    assert "5001" in waiting[0].last_error and "系统繁忙" in waiting[0].last_error

    # a refusal is decided (not_accepted) and handed out as such: ready_for_pickup
    await until(runtime, lambda: dispatch(runtime), everyone, {"delivered", "ready_for_pickup"})
    assert await statuses(runtime, accepted) == ["delivered"] * CASES
    async with runtime.engine.connect() as conn:
        history = await cases.history(conn, refused)
    [refusal] = [e for e in history if e.to_status == "not_accepted"]
    # the department's own message is the reason
    assert refusal.detail["reason"] == "申请材料不全：缺少 form.licenceNo"

    # the department decides; polls bring the certificates
    clock.now += dt.timedelta(seconds=state.settings.decision_delay_seconds + 1)
    await until(runtime, lambda: poll_department(runtime, code), accepted, {"ready_for_pickup"})
    async with runtime.engine.connect() as conn:
        for app_id in accepted:
            row = await cases.get_application(conn, app_id)
            [doc] = await documents.for_application(conn, app_id)
            assert await runtime.blobs.get(doc.sha256) == certificate(row.department_case_id)
            assert doc.name == f"certificate-{row.department_case_id}.pdf"

    run = await reconcile_department(runtime, code)
    assert run.state == "done", run.error
    assert run.counts["department_cases"] == CASES
    assert run.counts["department_pages"] == PAGES


# -- the conformance suite against each example ----------------------------------------------


@dataclasses.dataclass
class StyledSystem:
    url: str
    state: RestDepartmentState
    department: DepartmentConfig


class _StyleConformance(ConnectorConformance):
    """The conformance suite against the simulator in one example file's style."""

    connector_class = RestConnector
    plugin_name = "rest"
    department_statuses = ("0", "1", "2", "3", "4", "5", "8", "9")
    pulls_results = False
    example: ClassVar[Path]

    @pytest_asyncio.fixture
    async def department_system(self, tmp_path: Path) -> AsyncIterator[StyledSystem]:
        dept, table = load_example(self.example, tmp_path)
        _settings, app, state = SIMULATORS["rest"].build(
            {**table, "port": 0, "decision_delay_seconds": 0}
        )
        async with serve_asgi(app) as url:
            yield StyledSystem(url, state, pointed_at(dept, url))

    def department_config(self, system: StyledSystem) -> DepartmentConfig:
        return system.department.model_copy(update={"timeout_seconds": 1.0})

    def build_envelope(self, **changes: Any) -> Envelope:
        # the example departments refuse applications without a licence number
        return super().build_envelope(**{"form": {"licenceNo": "L-1"}, **changes})

    async def count_cases(self, system: StyledSystem, idempotency_key: str) -> int:
        return sum(1 for c in system.state.cases.values() if c.idempotency_key == idempotency_key)

    def provoke(
        self, system: StyledSystem, failure: Failure
    ) -> contextlib.AbstractAsyncContextManager[None]:
        @contextlib.asynccontextmanager
        async def failing() -> AsyncIterator[None]:
            # a "server error" in these styles is the envelope's busy code in an HTTP 200
            system.state.mode = {"timeout": "timeout", "server_error": "busy"}[failure]
            try:
                yield
            finally:
                system.state.mode = "ok"

        return failing()

    async def decide_with_documents(
        self, system: StyledSystem, receipt: Receipt, envelope: Envelope
    ) -> list[bytes]:
        return [system.state.approve(receipt.case_id)]

    def callback_body(
        self, system: StyledSystem, receipt: Receipt, envelope: Envelope
    ) -> dict[str, Any]:
        case = system.state.cases[receipt.case_id]
        view = case.view(system.state.clock(), 0)  # the simulator's callbacks carry a list
        return {
            "event_id": f"e-{receipt.case_id}",
            "case_id": view["id"],
            "idempotency_key": view["idempotency_key"],
            "status": view["status"],
            "opinion": view["opinion"],
            "occurred_at": view["updated_at"],
            "documents": view["documents"],
            "supplement_items": view["supplement_items"],
        }


for _path in EXAMPLES:
    _name = "TestConformance_" + _path.stem
    globals()[_name] = type(_name, (_StyleConformance,), {"example": _path})


# -- what each style needs beyond the shared walk-through ------------------------------------

WINDOW = (
    dt.datetime.now(dt.UTC) - dt.timedelta(hours=1),
    dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
)


def rest_connector(dept: DepartmentConfig, http: httpx.AsyncClient) -> RestConnector:
    async def no_material(ref: MaterialRef) -> bytes:
        raise AssertionError("no materials here")

    options = RestConnector.Options.model_validate(dept.options)
    context = ConnectorContext(
        department=dept.code, options=options, http=http, read_material=no_material
    )
    return RestConnector(context)


def envelope(key: str, **changes: Any) -> Envelope:
    return _StyleConformance().build_envelope(
        idempotency_key=f"ow-{key}-v1", matter_code="XK00000001", **changes
    )


def example(name: str) -> Path:
    return ROOT / "config" / "examples" / f"{name}.toml"


async def test_resend_is_recorded_counted_and_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A department that already holds the case (an earlier delivery reached it, its answer was
    lost) answers 2001 "案件已存在": the delivered event says re-sent, a metric counts it and
    ``gateway status`` shows it."""
    _dept, table = load_example(example("gov_envelope"), tmp_path / "a")
    _settings, app, state = SIMULATORS["rest"].build({**table, "port": 0})
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    async with serve_asgi(app) as url:
        path = config_folder(example("gov_envelope"), tmp_path, url)
        runtime = Runtime(load_config(path))
        await runtime.prepare_database()
        try:
            app_id = await submit(runtime, form={"licenceNo": "L-9"})
            state.create(f"ow-{app_id}-v1", {"form": {"licenceNo": "L-9"}})  # the lost delivery
            before = REGISTRY.get_sample_value(
                "gateway_resends_total", {"department": "gov_envelope"}
            )
            await dispatch(runtime)
            assert await case_status(runtime, app_id) == "delivered"
            async with runtime.engine.connect() as conn:
                history = await cases.history(conn, app_id)
            [delivered] = [e for e in history if e.to_status == "delivered"]
            assert delivered.detail["resent"] is True
            after = REGISTRY.get_sample_value(
                "gateway_resends_total", {"department": "gov_envelope"}
            )
            assert (after or 0) == (before or 0) + 1
        finally:
            await runtime.aclose()
        shown = await asyncio.to_thread(
            CliRunner().invoke, cli, ["status", app_id, "--config", str(path)]
        )
    assert shown.exit_code == 0, shown.output
    assert "re-sent 1 time(s): the department already held this case" in shown.output
    assert state.stats()["cases"] == 1


async def test_token_is_cached_and_fetched_again_on_401(tmp_path: Path) -> None:
    dept, table = load_example(example("gov_token"), tmp_path)
    _settings, app, state = SIMULATORS["rest"].build({**table, "port": 0})
    async with serve_asgi(app) as url, httpx.AsyncClient() as http:
        connector = rest_connector(pointed_at(dept, url), http)
        first = await connector.submit(envelope("tok-1"))
        await connector.submit(envelope("tok-2"))
        await connector.poll(first)
        assert state.tokens is not None and state.tokens.issued == 1  # one token, cached
        state.tokens.expire_all()  # the department restarted: every token is void
        assert (await connector.poll(first)) is not None  # 401, a fresh token, the call again
        assert state.tokens.issued == 2
    wrong = dept.options["auth"] | {"app_secret": "not-the-secret"}
    async with serve_asgi(app) as url, httpx.AsyncClient() as http:
        options = {**pointed_at(dept, url).options, "auth": wrong}
        connector = rest_connector(dept.model_copy(update={"options": options}), http)
        with pytest.raises(PermanentError, match="token refused: HTTP 401"):
            await connector.submit(envelope("tok-3"))


@pytest.mark.parametrize("algorithm", ["md5", "sha256", "hmac-sha256", "sm3"])
@pytest.mark.parametrize("place", ["header", "query"])
async def test_signed_requests(tmp_path: Path, algorithm: str, place: str) -> None:
    dept, table = load_example(example("gov_signed"), tmp_path)
    signing = {**table["signing"], "algorithm": algorithm, "place": place}
    _settings, app, state = SIMULATORS["rest"].build({**table, "port": 0, "signing": signing})
    async with serve_asgi(app) as url, httpx.AsyncClient() as http:
        base = pointed_at(dept, url)
        options = {**base.options, "signing": {**base.options["signing"], **signing}}
        connector = rest_connector(base.model_copy(update={"options": options}), http)
        receipt = await connector.submit(envelope("sig-1"))
        await connector.poll(receipt)
        listed = [c async for c in connector.list_cases(*WINDOW)]
        assert [c.case_id for c in listed] == [receipt.case_id]
        assert len(state.nonces) == 3  # three calls, each signed and checked
        forged = {**options["signing"], "secret": "not-the-secret"}
        options = {**options, "signing": forged}
        connector = rest_connector(base.model_copy(update={"options": options}), http)
        with pytest.raises(PermanentError, match="department code 4003: 签名错误"):
            await connector.submit(envelope("sig-2"))


async def test_gbk_answers_are_read(tmp_path: Path) -> None:
    dept, table = load_example(example("gov_gbk"), tmp_path)
    _settings, app, _state = SIMULATORS["rest"].build({**table, "port": 0})
    async with serve_asgi(app) as url, httpx.AsyncClient() as http:
        raw = await http.post(f"{url}/api/v1/cases", json={}, headers={"Idempotency-Key": "k"})
        assert raw.headers["content-type"] == "application/json; charset=gbk"
        with pytest.raises(UnicodeDecodeError):
            raw.content.decode("utf-8")  # really GBK on the wire
        connector = rest_connector(pointed_at(dept, url), http)
        with pytest.raises(DepartmentRejected, match=r"申请材料不全：缺少 form\.licenceNo"):
            await connector.submit(envelope("gbk-1", form={}))
        with pytest.raises(CaseNotFound, match=r"no such case NONE \(department code 4004"):
            await connector.poll(Receipt(case_id="NONE"))


async def test_form_bodies_are_form_encoded(tmp_path: Path) -> None:
    dept, table = load_example(example("gov_form_body"), tmp_path)
    _settings, app, state = SIMULATORS["rest"].build({**table, "port": 0})
    async with serve_asgi(app) as url, httpx.AsyncClient() as http:
        connector = rest_connector(pointed_at(dept, url), http)
        receipt = await connector.submit(envelope("form-1"))
    body = state.cases[receipt.case_id].body
    assert body["idNo"] == "110101199003074514" and body["itemCode"] == "XK00000001"
    assert body["form"] == {"licenceNo": "L-1"}  # a nested value travels as JSON text


async def test_listing_short_of_the_total_fails(tmp_path: Path) -> None:
    """A department whose pages hold fewer cases than its total says: never a quiet success."""
    dept, table = load_example(example("gov_page_list"), tmp_path)
    _settings, app, _state = SIMULATORS["rest"].build({**table, "port": 0})
    async with serve_asgi(app) as url, httpx.AsyncClient() as http:
        base = pointed_at(dept, url)
        connector = rest_connector(base, http)
        for i in range(3):
            await connector.submit(envelope(f"page-{i}"))
        # the issue's department: paged by number, read as if by cursor (page 1 only)
        options = {**base.options, "list": {**base.options["list"], "style": "cursor"}}
        wrong = rest_connector(base.model_copy(update={"options": options}), http)
        with pytest.raises(PermanentError, match="the department says 3 cases, 1 pages gave 2"):
            [c async for c in wrong.list_cases(*WINDOW)]
        listed = [c async for c in connector.list_cases(*WINDOW)]
        assert len(listed) == 3 and connector.last_listing_pages == 2


async def test_change_feed_pages_whole_cases_changed_in_the_window(tmp_path: Path) -> None:
    """gov_page_list's [options.changes]: page-numbered, enveloped, each item the whole case
    with its certificate; a case that changed before the window is not in it."""
    dept, table = load_example(example("gov_page_list"), tmp_path)
    _settings, app, state = SIMULATORS["rest"].build(
        {**table, "port": 0, "decision_delay_seconds": 3600}
    )
    async with serve_asgi(app) as url, httpx.AsyncClient() as http:
        connector = rest_connector(pointed_at(dept, url), http)
        assert connector.offers_changes()
        receipts = [await connector.submit(envelope(f"feed-{i}")) for i in range(3)]
        state.approve(receipts[0].case_id)
        old = state.cases[receipts[2].case_id]
        old.forced = ("9", dt.datetime.now(dt.UTC) - dt.timedelta(hours=2))
        changed = [u async for u in connector.changes(*WINDOW)]
    assert connector.last_listing_pages == 1  # 2 cases in the window, page_size 2: one page
    assert sorted(u.case_id for u in changed) == sorted(r.case_id for r in receipts[:2])
    approved = next(u for u in changed if u.case_id == receipts[0].case_id)
    assert approved.status == "9" and approved.idempotency_key == "ow-feed-0-v1"
    assert approved.documents[0].content == certificate(receipts[0].case_id)


async def test_numbered_change_feed_reads_every_change_after_the_last_number(
    tmp_path: Path,
) -> None:
    """gov_next_link's [options.changes] by sequence: the changes after a number, in order,
    page after page (page_size 2), each carrying its number; none after the last."""
    dept, table = load_example(example("gov_next_link"), tmp_path)
    _settings, app, state = SIMULATORS["rest"].build(
        {**table, "port": 0, "decision_delay_seconds": 3600}
    )
    async with serve_asgi(app) as url, httpx.AsyncClient() as http:
        connector = rest_connector(pointed_at(dept, url), http)
        assert connector.offers_changes() and connector.changes_by_sequence()
        receipts = [await connector.submit(envelope(f"seq-{i}")) for i in range(3)]
        state.force_status(receipts[1].case_id, "9")
        every = [u async for u in connector.changes_after(0)]
        assert connector.last_listing_pages == 3  # 4 changes, 2 a page: two full, one empty
        later = [u async for u in connector.changes_after(3)]
        none = [u async for u in connector.changes_after(4)]
        with pytest.raises(NotImplementedError, match="by sequence"):
            [u async for u in connector.changes(*WINDOW)]
    assert [u.sequence for u in every] == [1, 2, 3, 4]
    assert [u.case_id for u in every[:3]] == [r.case_id for r in receipts]
    assert [(u.case_id, u.status) for u in later] == [(receipts[1].case_id, "9")]
    assert later[0].idempotency_key == "ow-seq-1-v1" and none == []


async def test_a_numbered_feed_that_goes_back_is_refused(tmp_path: Path) -> None:
    """A department whose numbers do not increase would be read forever: a PermanentError."""
    dept, _table = load_example(example("gov_next_link"), tmp_path)

    def handler(request: httpx.Request) -> httpx.Response:
        after = int(request.url.params["since_seq"])
        items = [{"seq": after, "id": "C1", "status": "1"}]  # the same number again
        return httpx.Response(200, json={"code": 0, "msg": "ok", "data": {"items": items}})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        connector = rest_connector(pointed_at(dept, "http://dept.test"), http)
        with pytest.raises(PermanentError, match="sequence 5 after 5: not increasing"):
            [u async for u in connector.changes_after(5)]


async def test_next_link_to_another_host_is_refused(tmp_path: Path) -> None:
    dept, table = load_example(example("gov_next_link"), tmp_path)
    _settings, app, _state = SIMULATORS["rest"].build({**table, "port": 0})
    async with serve_asgi(app) as url, httpx.AsyncClient() as http:
        connector = rest_connector(pointed_at(dept, url), http)
        with pytest.raises(PermanentError, match="link to another host refused"):
            connector._url("http://elsewhere.example/api/v1/cases?cursor=2", "/cases")
        assert connector._url("/api/v1/cases?cursor=2", "/cases") == f"{url}/api/v1/cases?cursor=2"


async def test_documents_by_url_are_fetched_with_the_departments_auth(tmp_path: Path) -> None:
    """A certificate given as a link is fetched (token and signature included) and stored byte
    for byte, not kept as a link the front desk could not open."""
    dept, table = load_example(example("gov_token"), tmp_path)
    _settings, app, state = SIMULATORS["rest"].build(
        {**table, "port": 0, "documents": "url", "decision_delay_seconds": 0}
    )
    async with serve_asgi(app) as url, httpx.AsyncClient() as http:
        base = pointed_at(dept, url)
        poll = {
            "path": "/cases/{case_id}",
            "response": {
                **base.options["poll"]["response"],
                "documents": "",
                "document": {"url": "data.certUrl", "name": "data.certName"},
                "fetch_documents": True,
            },
        }
        options = {**base.options, "poll": poll}
        connector = rest_connector(base.model_copy(update={"options": options}), http)
        receipt = await connector.submit(envelope("url-1"))
        issued = state.approve(receipt.case_id)
        update = await connector.poll(receipt)
    assert update is not None and update.status == "9"
    [doc] = update.documents
    assert doc.content == issued and doc.url is None
    assert (
        doc.name == f"certificate-{receipt.case_id}.pdf" and doc.content_type == "application/pdf"
    )


async def test_withdraw_and_no_such_case_in_the_envelope_style(tmp_path: Path) -> None:
    dept, table = load_example(example("gov_envelope"), tmp_path)
    _settings, app, state = SIMULATORS["rest"].build(
        {**table, "port": 0, "decision_delay_seconds": 3600}
    )
    async with serve_asgi(app) as url, httpx.AsyncClient() as http:
        connector = rest_connector(pointed_at(dept, url), http)
        pending = await connector.submit(envelope("wd-1"))
        await connector.withdraw(pending)
        assert state.cases[pending.case_id].forced is not None
        assert state.cases[pending.case_id].forced[0] == "8"  # 撤回 at the department
        decided = await connector.submit(envelope("wd-2"))
        state.approve(decided.case_id)
        with pytest.raises(DepartmentRejected, match="already decided"):
            await connector.withdraw(decided)
        with pytest.raises(CaseNotFound, match=r"no such case GONE-1 \(department code 4004"):
            await connector.poll(Receipt(case_id="GONE-1"))
        again = await connector.submit(envelope("wd-1"))  # the same key: the case it has
        assert again.case_id == pending.case_id and again.resent


async def test_the_issues_2900_cases_are_read_on_every_page(tmp_path: Path) -> None:
    """The issue's department: 2,900 cases paged by number, 50 a page; all 58 pages are read."""
    dept, table = load_example(example("gov_page_list"), tmp_path)
    _settings, app, state = SIMULATORS["rest"].build({**table, "port": 0})
    for i in range(2900):
        state.create(f"ow-bulk{i}-v1", {})
    async with serve_asgi(app) as url, httpx.AsyncClient() as http:
        base = pointed_at(dept, url)
        options = {**base.options, "list": {**base.options["list"], "page_size": 50}}
        connector = rest_connector(base.model_copy(update={"options": options}), http)
        listed = [c async for c in connector.list_cases(*WINDOW)]
    assert len({c.case_id for c in listed}) == 2900
    assert connector.last_listing_pages == 58
