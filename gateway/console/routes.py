"""The console's pages under ``/console`` (ops keys only; not part of the OpenAPI document)."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import secrets
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from fastapi.routing import APIRoute

from gateway import audit, deadlines, operations, reconcile
from gateway.audit import Read
from gateway.console import figures, i18n, svg
from gateway.console.cases import case_page
from gateway.console.sessions import ABSOLUTE_SECONDS, COOKIE, Session, sessions_of
from gateway.console.settings import shown_settings
from gateway.console.web import (
    HERE,
    PRE_COOKIE,
    PREFIX,
    form_of,
    lang_of,
    redirect,
    render,
    runtime_of,
    safe_next,
    secure,
    signed_in,
    to_signin,
    with_headers,
)
from gateway.pii import scrub
from gateway.store import clients


class _SignedIn(APIRoute):
    """A page for a signed-in session only: without one the browser is sent to sign in; a
    POST must carry the session's CSRF token. The handler finds the session in
    ``request.state.session`` and a POST's form in ``request.state.form``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def signed(request: Request) -> Response:
            session = await signed_in(request)
            if session is None:
                return to_signin(request)
            request.state.session = session
            if request.method == "POST":
                request.state.form = await form_of(request, session)
                if request.state.form is None:
                    return render(request, "error.html", session, 403, message="csrf.bad")
            return await handler(request)

        return signed


router = APIRouter(prefix=PREFIX, include_in_schema=False)
#: the pages behind sign-in (included into ``router`` at the end of this module)
pages = APIRouter(include_in_schema=False, route_class=_SignedIn)


def _session(request: Request) -> Session:
    session: Session = request.state.session
    return session


#: the board's CSV export, one row per department (docs/ops.md lists them)
CSV_COLUMNS = (
    "rank",
    "department",
    "name",
    "decided",
    "on_time",
    "on_time_rate",
    "overdue",
    "due_soon",
)

_STATIC = {
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
}


def _actor(session: Session) -> str:
    return f"ops/{session.client.name}"


async def _audit(request: Request, session: Session, action: str, ids: list[str]) -> None:
    if ids:
        who = f"{session.client.id} {session.client.name}"
        await audit.record(runtime_of(request), Read("console", who, None, action, tuple(ids)))


# -- sign-in, sign-out, language, static files -------------------------------------------------


@router.get("")
@router.get("/")
async def home(request: Request) -> Response:
    if await signed_in(request) is None:
        return to_signin(request)
    return redirect(f"{PREFIX}/overview")


@router.get("/static/{name}")
async def static(name: str) -> Response:
    media = _STATIC.get(name)
    if media is None:
        return PlainTextResponse("not found", status_code=404)
    body = (HERE / "static" / name).read_bytes()
    return Response(body, media_type=media, headers={"Cache-Control": "max-age=3600"})


def _signin_page(request: Request, error: str = "", status_code: int = 200) -> Response:
    token = request.cookies.get(PRE_COOKIE) or secrets.token_urlsafe(32)
    why = request.query_params.get("why", "")
    message = error or ("signin.expired" if why == "expired" else "")
    response = render(request, "signin.html", None, status_code, pre_csrf=token, error=message)
    response.set_cookie(
        PRE_COOKIE, token, path=PREFIX, httponly=True, samesite="strict", secure=secure(request)
    )
    return response


@router.get("/signin")
async def signin_form(request: Request) -> Response:
    return _signin_page(request)


@router.post("/signin")
async def signin(request: Request) -> Response:
    form = await request.form()
    token, key = form.get("csrf"), form.get("key")
    pre = request.cookies.get(PRE_COOKIE)
    if not (pre and isinstance(token, str) and secrets.compare_digest(pre, token)):
        return _signin_page(request, "csrf.bad", 403)
    if not isinstance(key, str) or not key.strip() or len(key) > 200:
        return _signin_page(request, "signin.bad", 401)
    client = await request.app.state.keyring.find(key.strip())
    if client is None:
        return _signin_page(request, "signin.bad", 401)
    if not client.ops:
        return _signin_page(request, "signin.centre", 403)
    session = await sessions_of(runtime_of(request)).open(
        hashlib.sha256(key.strip().encode()).hexdigest()
    )
    response = redirect(f"{PREFIX}/overview")
    response.set_cookie(
        COOKIE,
        session.id,
        max_age=ABSOLUTE_SECONDS,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=secure(request),
    )
    response.delete_cookie(PRE_COOKIE, path=PREFIX)
    return response


@pages.post("/signout")
async def signout(request: Request) -> Response:
    await sessions_of(runtime_of(request)).close(_session(request).id)
    return to_signin(request)


@router.get("/lang/{code}")
async def language(code: str, request: Request) -> Response:
    response = redirect(safe_next(request.query_params.get("next")))
    response.set_cookie(
        i18n.COOKIE,
        i18n.pick(code),
        max_age=365 * 86400,
        path=PREFIX,
        samesite="strict",
        secure=secure(request),
    )
    return response


# -- the city overview -------------------------------------------------------------------------


async def _overview(request: Request, template: str) -> Response:
    t = i18n.translator(lang_of(request))
    rows = await figures.overview(runtime_of(request))
    sparks = {r.code: svg.sparkline(r.hourly, f"{r.name}: {t('col.throughput')}") for r in rows}
    return render(
        request,
        template,
        _session(request),
        rows=rows,
        sparks=sparks,
        generated=dt.datetime.now(dt.UTC),
    )


@pages.get("/overview")
async def overview(request: Request) -> Response:
    return await _overview(request, "overview.html")


@pages.get("/overview/table")
async def overview_table(request: Request) -> Response:
    """The overview's table alone: what the page's script swaps in every few seconds."""
    return await _overview(request, "_overview_table.html")


# -- failures and replays ----------------------------------------------------------------------


@pages.get("/failures")
async def failures(request: Request) -> Response:
    session = _session(request)
    runtime = runtime_of(request)
    department = request.query_params.get("department") or None
    if department not in runtime.config.departments:
        department = None
    rows = await figures.failed_cases(runtime, department=department)
    await _audit(request, session, "console failures", [r.id for r in rows])
    return render(
        request,
        "failures.html",
        session,
        rows=rows,
        department=department,
        departments=sorted(runtime.config.departments),
        scrub=scrub,
    )


@pages.post("/failures/replay")
async def replay(request: Request) -> Response:
    session = _session(request)
    form = request.state.form
    ids = [str(i)[:32] for i in form.get("id") or []][:200]
    if not ids:
        return render(request, "error.html", session, 400, message="replay.none")
    if form.get("confirmed") != "yes":
        return render(request, "replay_confirm.html", session, ids=ids)
    results: list[tuple[str, str, bool]] = []
    for app_id in ids:
        try:
            change = await operations.replay(runtime_of(request), app_id, actor=_actor(session))
            results.append((app_id, change.to_status.value, True))
        except operations.NotReplayable as exc:
            results.append((app_id, str(exc), False))
    return render(request, "replay_done.html", session, results=results)


# -- case lookup -------------------------------------------------------------------------------


@pages.get("/cases")
async def cases(request: Request) -> Response:
    session = _session(request)
    query = (request.query_params.get("q") or "").strip()[:64]
    found = await case_page(runtime_of(request), query) if query else None
    if found is not None:
        await _audit(request, session, "console case lookup", [found["app"].id])
    return render(request, "cases.html", session, query=query, found=found, scrub=scrub)


# -- keys and plugins --------------------------------------------------------------------------


@pages.get("/keys")
async def keys(request: Request) -> Response:
    session = _session(request)
    runtime = runtime_of(request)
    async with runtime.engine.connect() as conn:
        found = await clients.list_keys(conn, limit=1000)
    new_key = await sessions_of(runtime).take_new_key(session)
    return render(
        request,
        "keys.html",
        session,
        keys=found,
        new_key=new_key,
        centres=[c.code for c in runtime.config.gateway.centres],
        error=request.query_params.get("error", ""),
    )


@pages.post("/keys")
async def create_key(request: Request) -> Response:
    session = _session(request)
    form = request.state.form
    runtime = runtime_of(request)
    name = str(form.get("name") or "").strip()[:100]
    scope = str(form.get("scope") or "")
    centre = str(form.get("centre") or "") if scope == "centre" else None
    centres = {c.code for c in runtime.config.gateway.centres}
    if not name or scope not in ("ops", "centre") or (centre is not None and centre not in centres):
        return redirect(f"{PREFIX}/keys?error=1")
    async with runtime.engine.begin() as conn:
        _client, key = await clients.create_client(
            conn, name=name, centre=centre, ops=scope == "ops"
        )
    await sessions_of(runtime).keep_new_key(session, key)
    return redirect(f"{PREFIX}/keys")


@pages.post("/keys/{key_id}/revoke")
async def revoke_key(key_id: str, request: Request) -> Response:
    async with runtime_of(request).engine.begin() as conn:
        await clients.revoke(conn, key_id[:32])
    return redirect(f"{PREFIX}/keys")


@pages.get("/plugins")
async def plugins(request: Request) -> Response:
    session = _session(request)
    runtime = runtime_of(request)
    return render(
        request,
        "plugins.html",
        session,
        plugins=runtime.plugins.info(),
        failures=sorted(runtime.plugins.failures.items()),
        unavailable=sorted(runtime.unavailable.items()),
    )


# -- a department ------------------------------------------------------------------------------


@pages.get("/departments/{code}")
async def department(code: str, request: Request) -> Response:
    session = _session(request)
    runtime = runtime_of(request)
    dept = runtime.config.departments.get(code)
    if dept is None:
        return render(request, "error.html", session, 404, message="lookup.none")
    t = i18n.translator(lang_of(request))
    # one refresh of the summary tables for the whole page
    due = await deadlines.counts(runtime, within_days=0, department=code, budget=figures.CATCH_UP)
    overdue = await deadlines.most_overdue(runtime, code, 200, budget=0)
    weeks = await figures.weekly(runtime, code, refresh=False)
    labels = [w.monday.strftime("%m-%d") for w in weeks]
    time_chart = svg.lines(
        labels,
        [("p50", [w.p50 for w in weeks]), ("p95", [w.p95 for w in weeks])],
        t("dept.decisions"),
    )
    rate_chart = svg.lines(
        labels,
        [(t("col.on_time_rate"), [w.on_time_rate for w in weeks])],
        t("dept.on_time"),
        "%",
        top=100,
    )
    failed = await figures.failed_cases(runtime, department=code, limit=50)
    runs = await reconcile.list_runs(runtime, department=code, limit=10)
    found = [await reconcile.get_run(runtime, r.id, limit=50) for r in runs]
    await _audit(request, session, "console department", [r.id for r in failed])
    return render(
        request,
        "department.html",
        session,
        dept=dept,
        weeks=weeks,
        time_chart=time_chart,
        rate_chart=rate_chart,
        overdue=overdue,
        overdue_total=due[code].overdue if code in due else 0,
        failed=failed,
        runs=[(run, disc) for run, disc in found if run is not None],
        settings=shown_settings(dept),
        scrub=scrub,
    )


# -- the 效能 board ------------------------------------------------------------------------------


def _period(request: Request) -> tuple[dt.date, dt.date]:
    today = deadlines.today()
    try:
        end = dt.date.fromisoformat(request.query_params.get("to") or today.isoformat())
        start = dt.date.fromisoformat(
            request.query_params.get("from") or (end - dt.timedelta(days=29)).isoformat()
        )
    except ValueError:
        end, start = today, today - dt.timedelta(days=29)
    if start > end:
        start, end = end, start
    return max(start, end - dt.timedelta(days=366)), end


@pages.get("/board")
async def board(request: Request) -> Response:
    session = _session(request)
    t = i18n.translator(lang_of(request))
    start, end = _period(request)
    rows = await figures.board(runtime_of(request), start, end)
    chart = svg.bars([(r.name, r.on_time_rate) for r in rows], t("col.on_time_rate"), "%", top=100)
    return render(request, "board.html", session, rows=rows, start=start, end=end, chart=chart)


@pages.get("/board.csv")
async def board_csv(request: Request) -> Response:
    start, end = _period(request)
    rows = await figures.board(runtime_of(request), start, end)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        rate = "" if r.on_time_rate is None else f"{r.on_time_rate:.1f}"
        writer.writerow([r.rank, r.code, r.name, r.decided, r.on_time, rate, r.overdue, r.due_soon])
    name = f"board-{start.isoformat()}-{end.isoformat()}.csv"
    return with_headers(
        Response(
            out.getvalue(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    )


router.include_router(pages)
