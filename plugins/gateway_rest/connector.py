"""The built-in ``rest`` connector: departments with an HTTP back-office system.

Every httpx error, HTTP status and business code is translated here, at the boundary::

    timeout, connection refused/reset, 5xx, 429   -> TransientError (429/503 honour Retry-After)
    status in ``reject_statuses``                  -> DepartmentRejected(reason from the answer)
    poll: status in ``poll.not_found_statuses``    -> CaseNotFound
    401 with token auth                            -> a fresh token, then the call once more
    any other 4xx                                  -> PermanentError
    2xx that is not JSON or lacks a mapped field   -> PermanentError naming the path
    2xx with an ``[options.envelope]`` code        -> see :mod:`gateway_rest.envelope`

Requests are JSON or form-encoded, optionally signed (:mod:`.signing`) and authenticated by a
fetched token (:mod:`.auth`); answers are decoded in the department's charset (GBK included).
Messages name the department, method, path and status, never the request body: it holds
applicants' ID numbers.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.message
import functools
import json
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar, Literal

import httpx
import structlog
from pydantic import BaseModel

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
from gateway.errors import CaseNotFound, DepartmentRejected, PermanentError, TransientError
from gateway.mapping import MISSING, build_payload, get_path, parse_time, put_path
from gateway.pii import mask_echo
from gateway_rest import documents, envelope, wire
from gateway_rest.auth import TokenCache
from gateway_rest.listing import Pager, Request
from gateway_rest.options import (
    ChangeItemFields,
    Paging,
    PollResponse,
    RestOptions,
    TokenAuth,
)
from gateway_rest.signing import sign_parameters

__all__ = ["RestConnector", "RestOptions"]

log = structlog.get_logger("gateway_rest")
Op = Literal["submit", "poll", "withdraw", "list", "token", "document"]
# the charsets real systems declare are often narrower than what they send: GB18030 covers both
_WIDER = {"gbk": "gb18030", "gb2312": "gb18030", "cp936": "gb18030"}


class RestConnector(Connector):
    """Delivers applications to a REST department and reads their status back."""

    kind: ClassVar[str] = "rest"
    Options: ClassVar[type[BaseModel]] = RestOptions

    def __init__(self, context: ConnectorContext) -> None:
        super().__init__(context)
        self.options = options = self.options_as(RestOptions)
        self._headers = wire.static_headers(options)
        auth = options.auth
        self.tokens = TokenCache(auth, self._fetch_token) if isinstance(auth, TokenAuth) else None

    # -- the contract --------------------------------------------------------------------------

    async def submit(self, envelope: Envelope) -> Receipt:
        submit = self.options.submit
        payload = await self._payload(envelope)
        headers = {self.options.idempotency_header: envelope.idempotency_key}
        response = await self._call(
            submit.method,
            submit.path,
            body=payload,
            encoding=submit.encoding,
            headers=headers,
            envelope=envelope,
        )
        data, outcome = self._answer(response, submit.method, submit.path, "submit", envelope)
        case_id = self._require(data, submit.response.case_id, submit.method, submit.path)
        status = get_path(data, submit.response.status) if submit.response.status else None
        detail = get_path(data, submit.response.detail) if submit.response.detail else None
        return Receipt(
            case_id=str(case_id),
            status=None if status in (None, MISSING) else str(status),
            detail=None if detail in (None, MISSING) else str(detail),
            resent=outcome == "exists" or response.status_code in submit.resent_statuses,
        )

    async def poll(self, receipt: Receipt) -> CaseUpdate | None:
        poll = self.options.poll
        if poll is None:
            return None
        path = poll.path.replace("{case_id}", urllib.parse.quote(receipt.case_id, safe=""))
        response = await self._call(
            poll.method, path, label=poll.path, not_found=(poll.not_found_statuses, receipt)
        )
        data, _ = self._answer(response, poll.method, poll.path, "poll", case_id=receipt.case_id)
        update = self._case_update(data, poll.response, poll.method, poll.path)
        if poll.response.fetch_documents:
            update.documents[:] = [await self._fetched(d, poll.path) for d in update.documents]
        return update

    def parse_callback(self, payload: Any) -> CaseUpdate:
        spec = self.options.callback
        update = self._case_update(payload, spec, "POST", "callback")
        event_id = get_path(payload, spec.event_id) if spec.event_id else None
        key = get_path(payload, spec.idempotency_key) if spec.idempotency_key else None
        return update.model_copy(
            update={
                "event_id": None if event_id in (None, MISSING) else str(event_id),
                "idempotency_key": None if key in (None, MISSING) else str(key),
            }
        )

    async def list_cases(
        self, since: dt.datetime, until: dt.datetime
    ) -> AsyncIterator[CaseSummary]:
        listing = self.options.cases
        if listing is None:
            raise NotImplementedError(f"{self.context.department}: no [options.list] configured")
        async for item in self._pages(listing, since, until, "case list read"):
            yield self._summary(item, listing.path)

    def offers_changes(self) -> bool:
        return self.options.changes is not None

    async def changes(self, since: dt.datetime, until: dt.datetime) -> AsyncIterator[CaseUpdate]:
        feed = self.options.changes
        if feed is None:
            raise NotImplementedError(f"{self.context.department}: no [options.changes] configured")
        if feed.by == "sequence":
            raise NotImplementedError(f"{self.context.department}: the feed is by sequence")
        async for item in self._pages(feed, since, until, "change feed read"):
            yield await self._feed_update(item, feed.item, feed.path)

    def changes_by_sequence(self) -> bool:
        return self.options.changes is not None and self.options.changes.by == "sequence"

    async def changes_after(self, sequence: int) -> AsyncIterator[CaseUpdate]:
        feed = self.options.changes
        if feed is None or feed.by != "sequence":
            raise NotImplementedError(
                f'{self.context.department}: no [options.changes] with by = "sequence"'
            )
        spec, after, pages = feed.item, sequence, 0
        while True:
            if pages >= feed.max_pages:
                raise PermanentError(
                    self._where("GET", feed.path, f"more than {feed.max_pages} pages; loop?")
                )
            params: dict[str, str | int] = {
                **feed.params,
                feed.sequence_param: after,
                feed.limit_param: feed.page_size,
            }
            response = await self._call("GET", feed.path, params=params)
            data, _ = self._answer(response, "GET", feed.path, "list")
            items = self._require(data, feed.items, "GET", feed.path)
            if not isinstance(items, list):
                raise PermanentError(self._where("GET", feed.path, f"{feed.items!r} is not a list"))
            pages += 1
            for item in items:
                number = get_path(item, spec.sequence)
                if not isinstance(number, int | str) or not str(number).isdigit():
                    raise PermanentError(
                        self._where("GET", feed.path, f"{spec.sequence!r} is not a number")
                    )
                if int(number) <= after:
                    # a feed that goes back would be read forever
                    raise PermanentError(
                        self._where(
                            "GET", feed.path, f"sequence {number} after {after}: not increasing"
                        )
                    )
                after = int(number)
                update = await self._feed_update(item, spec, feed.path)
                yield update.model_copy(update={"sequence": after})
            self.last_listing_pages = pages
            if len(items) < feed.page_size:
                return

    async def _feed_update(self, item: Any, spec: ChangeItemFields, path: str) -> CaseUpdate:
        update = self._case_update(item, spec, "GET", path)
        key = get_path(item, spec.idempotency_key) if spec.idempotency_key else None
        if key not in (None, MISSING):
            update = update.model_copy(update={"idempotency_key": str(key)})
        if spec.fetch_documents:
            update.documents[:] = [await self._fetched(d, path) for d in update.documents]
        return update

    async def _pages(
        self, spec: Paging, since: dt.datetime, until: dt.datetime, what: str
    ) -> AsyncIterator[Any]:
        """The items of a paged list of cases in ``[since, until)``, page after page."""
        pager = Pager(spec, since, until)
        self.last_listing_pages = 0
        request: Request | None = pager.first()
        while request is not None:
            if pager.pages >= spec.max_pages:
                raise PermanentError(
                    self._where("GET", spec.path, f"more than {spec.max_pages} pages; loop?")
                )
            response = await self._call("GET", spec.path, params=request.params, url=request.url)
            data, _ = self._answer(response, "GET", spec.path, "list")
            items = self._require(data, spec.items, "GET", spec.path)
            if not isinstance(items, list):
                raise PermanentError(self._where("GET", spec.path, f"{spec.items!r} is not a list"))
            for item in items:
                yield item
            request = pager.after(data, items)
            self.last_listing_pages = pager.pages
        if (problem := pager.shortfall()) is not None:
            raise PermanentError(self._where("GET", spec.path, problem))
        log.info(what, department=self.context.department, pages=pager.pages, cases=pager.read)

    async def withdraw(self, receipt: Receipt) -> None:
        spec = self.options.withdraw
        if spec is None:
            raise NotImplementedError(f"{self.context.department}: no [options.withdraw]")
        path = spec.path.replace("{case_id}", urllib.parse.quote(receipt.case_id, safe=""))
        # 409: the department has decided already and refuses, with its reason
        response = await self._call(spec.method, path, label=spec.path, refusals=(409,))
        if self.options.envelope is not None:
            self._answer(response, spec.method, spec.path, "withdraw", case_id=receipt.case_id)

    async def health(self) -> Health:
        url = self.options.base_url + self.options.health_path
        try:
            response = await self.context.http.get(
                url, headers=self._headers, timeout=self.options.timeout_seconds
            )
        except (httpx.HTTPError, OSError) as exc:
            return Health(ok=False, detail=f"{self._transport_problem(exc)}: {exc}"[:300])
        if response.status_code >= 500:
            return Health(ok=False, detail=f"HTTP {response.status_code}")
        return Health(ok=True, detail=f"HTTP {response.status_code}")

    async def aclose(self) -> None:
        """Nothing to release: the shared http client belongs to the gateway."""

    # -- building requests ---------------------------------------------------------------------

    async def _payload(self, envelope: Envelope) -> dict[str, Any]:
        submit = self.options.submit
        payload = build_payload(
            envelope.model_dump(mode="json"),
            self.context.map_payload(envelope),
            submit.body,
            submit.constants,
            where=f"{self.context.department} [options.submit.body]",
            drop_materials=submit.materials == "none",
        )
        if submit.materials == "inline_base64":
            put_path(payload, submit.materials_field, await self._inline_materials(envelope))
        return payload

    async def _inline_materials(self, envelope: Envelope) -> list[dict[str, Any]]:
        out = []
        for material in envelope.materials:
            content = await self.context.read_material(material)
            out.append(
                {
                    "filename": material.filename,
                    "content_type": material.content_type,
                    "sha256": material.sha256,
                    "content_b64": base64.b64encode(content).decode(),
                }
            )
        return out

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        encoding: Literal["json", "form"] = "json",
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str | int] | None = None,
        url: str | None = None,
        label: str | None = None,
        envelope: Envelope | None = None,
        refusals: tuple[int, ...] = (),
        not_found: tuple[list[int], Receipt] | None = None,
    ) -> httpx.Response:
        label = label or path
        target = self._url(url, label) if url is not None else self.options.base_url + path
        all_headers = {**self._headers, **(headers or {})}
        query = {k: str(v) for k, v in (params or {}).items()}
        content: bytes | None = None
        signed: dict[str, str] = dict(query)
        if url is not None:  # a next link carries its own query: signed like any other
            signed.update(urllib.parse.parse_qsl(urllib.parse.urlsplit(target).query))
        if body is not None and encoding == "form":
            fields = wire.form_fields(body)
            content = urllib.parse.urlencode(fields).encode()
            all_headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
            signed.update(fields)
        elif body is not None:
            text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
            content = text.encode()
            all_headers.setdefault("Content-Type", "application/json")
            if self.options.signing is not None:
                signed[self.options.signing.body_name] = text
        response = await self._send(method, target, label, content, all_headers, query, signed)
        status = response.status_code
        if status < 300:
            return response
        if status == 429 or status >= 500:
            raise TransientError(
                self._where(method, label, f"HTTP {status}"),
                retry_after=wire.retry_after(response.headers.get("Retry-After")),
            )
        if not_found is not None and status in not_found[0]:
            raise CaseNotFound(self.context.department, not_found[1].case_id, f"HTTP {status}")
        if status in self.options.reject_statuses or status in refusals:
            reason = self._reason(response) or f"HTTP {status}"
            raise DepartmentRejected(_echo(reason, envelope), status=self.options.reject_status)
        raise PermanentError(self._where(method, label, f"HTTP {status}"))

    async def _send(
        self,
        method: str,
        url: str,
        label: str,
        content: bytes | None,
        headers: dict[str, str],
        query: dict[str, str],
        signed: dict[str, str],
    ) -> httpx.Response:
        """One request, signed and authenticated; with token auth a 401 is answered by one
        more try with a fresh token (the cached one expired early or was revoked)."""
        for attempt in (1, 2):
            sent_headers, sent_query = dict(headers), dict(query)
            if self.options.signing is not None:
                added = sign_parameters(self.options.signing, signed)
                (sent_headers if self.options.signing.place == "header" else sent_query).update(
                    added
                )
            token: str | None = None
            if self.tokens is not None:
                name, token = await self.tokens.header()
                sent_headers[name] = token
            try:
                response = await self.context.http.request(
                    method,
                    _parsed(url),
                    content=content,
                    headers=sent_headers,
                    params=sent_query or None,
                    timeout=self.options.timeout_seconds,
                )
            except (httpx.TransportError, OSError) as exc:
                # OSError: a reset the transport did not wrap (aiohttp's mapping is partial)
                raise TransientError(
                    self._where(method, label, self._transport_problem(exc))
                ) from exc
            if response.status_code != 401 or self.tokens is None or attempt == 2:
                return response
            self.tokens.drop(token)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _fetch_token(self) -> tuple[str, float | None]:
        auth = self.options.auth
        assert isinstance(auth, TokenAuth)
        fields = {
            auth.app_id_field: auth.app_id,
            auth.app_secret_field: auth.app_secret.get_secret_value(),
        }
        url = (
            self._url(auth.path, auth.path)
            if "://" in auth.path
            else self.options.base_url + auth.path
        )
        headers = {"Accept": "application/json"}
        if auth.method == "GET":
            kwargs: dict[str, Any] = {"params": fields}
        elif auth.encoding == "form":
            kwargs = {"data": fields}
        else:
            kwargs = {"json": fields}
        try:
            response = await self.context.http.request(
                auth.method, url, headers=headers, timeout=self.options.timeout_seconds, **kwargs
            )
        except (httpx.TransportError, OSError) as exc:
            raise TransientError(
                self._where(auth.method, auth.path, self._transport_problem(exc))
            ) from exc
        if response.status_code == 429 or response.status_code >= 500:
            raise TransientError(
                self._where(auth.method, auth.path, f"HTTP {response.status_code}")
            )
        if response.status_code >= 300:
            # wrong app id or secret: no retry fixes that, an operator must
            raise PermanentError(
                self._where(auth.method, auth.path, f"token refused: HTTP {response.status_code}")
            )
        data, _ = self._answer(response, auth.method, auth.path, "token")
        token = self._require(data, auth.token_path, auth.method, auth.path)
        ttl = get_path(data, auth.expires_in_path) if auth.expires_in_path else None
        try:
            seconds = float(ttl) if ttl not in (None, MISSING) else None
        except (TypeError, ValueError):
            seconds = None
        return str(token), seconds

    async def _fetched(self, doc: ResultDocument, label: str) -> ResultDocument:
        """A document given as a URL, fetched (same host only) with the department's auth."""
        if doc.content is not None or doc.url is None:
            return doc
        url = self._url(doc.url, label)
        response = await self._call("GET", "", url=url, label=f"{label} (document)")
        return doc.model_copy(update={"content": response.content, "url": None})

    def _url(self, link: str, label: str) -> str:
        """``link`` resolved against ``base_url``; only the department's own host is called (its
        auth headers must never go anywhere else)."""
        url = urllib.parse.urljoin(self.options.base_url + "/", link)
        base = urllib.parse.urlsplit(self.options.base_url)
        got = urllib.parse.urlsplit(url)
        if (got.scheme, got.netloc) != (base.scheme, base.netloc):
            raise PermanentError(
                self._where("GET", label, f"link to another host refused ({got.netloc})")
            )
        return url

    def _transport_problem(self, exc: BaseException) -> str:
        # aiohttp reports a refused connection as ConnectTimeout: look at the real cause.
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, OSError) and not isinstance(cause, TimeoutError):
                return f"connection failed ({type(cause).__name__})"
            cause = cause.__cause__ or cause.__context__
        if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
            return f"timed out after {self.options.timeout_seconds} s"
        return f"connection failed ({type(exc).__name__})"

    # -- reading answers -----------------------------------------------------------------------

    def _where(self, method: str, path: str, what: str) -> str:
        return f"{self.context.department}: {method} {path}: {what}"

    def _decode(self, response: httpx.Response, method: str, path: str) -> Any:
        charset = (
            self.options.charset or _charset(response.headers.get("content-type")) or "utf-8"
        ).lower()
        try:
            return json.loads(response.content.decode(_WIDER.get(charset, charset)))
        except (ValueError, UnicodeDecodeError, LookupError) as exc:
            kind = response.headers.get("content-type", "no content type")
            raise PermanentError(
                self._where(
                    method, path, f"HTTP {response.status_code} answer is not JSON ({kind})"
                )
            ) from exc

    def _answer(
        self,
        response: httpx.Response,
        method: str,
        path: str,
        op: Op,
        envelope_: Envelope | None = None,
        *,
        case_id: str | None = None,
    ) -> tuple[Any, envelope.Outcome]:
        """The decoded answer and, with an envelope, its business outcome (raises for the
        codes that are not a success)."""
        data = self._decode(response, method, path)
        spec = self.options.envelope
        if spec is None:
            return data, "ok"
        outcome = envelope.read_outcome(
            data,
            spec,
            where=lambda what: self._where(method, path, what),
            echo=lambda text: _echo(text, envelope_),
            reject_status=self.options.reject_status,
            department=self.context.department,
            case_id=case_id if op in ("poll", "withdraw") else None,
        )
        return data, outcome

    def _require(self, data: Any, path: str, method: str, url_path: str) -> Any:
        value = get_path(data, path)
        if value in (None, MISSING):
            raise PermanentError(
                self._where(method, url_path, f"answer has no {path!r} (check [options] mapping)")
            )
        return value

    def _reason(self, response: httpx.Response) -> str | None:
        try:
            data = self._decode(response, "", "")
        except PermanentError:
            text = response.text.strip()
            return text[:500] or None
        paths = [self.options.reject_reason]
        if self.options.envelope is not None:
            paths.append(self.options.envelope.message)
        for path in paths:
            value = get_path(data, path)
            if value not in (None, MISSING):
                return str(value)[:500]
        return None

    def _case_update(self, data: Any, spec: PollResponse, method: str, path: str) -> CaseUpdate:
        case_id = self._require(data, spec.case_id, method, path)
        status = self._require(data, spec.status, method, path)
        detail = get_path(data, spec.detail) if spec.detail else None
        occurred = get_path(data, spec.occurred_at) if spec.occurred_at else None
        items = get_path(data, spec.supplement_items) if spec.supplement_items else None
        docs = documents.extract(data, spec, lambda what: self._where(method, path, what))
        return CaseUpdate(
            case_id=str(case_id),
            status=str(status),
            detail=None if detail in (None, MISSING) else str(detail),
            occurred_at=parse_time(occurred),
            documents=docs,
            supplement_items=[str(i) for i in items] if isinstance(items, list) else [],
        )

    def _summary(self, item: Any, path: str) -> CaseSummary:
        spec = self.options.cases
        assert spec is not None
        fields = spec.item
        case_id = self._require(item, fields.case_id, "GET", path)
        status = self._require(item, fields.status, "GET", path)
        key = get_path(item, fields.idempotency_key) if fields.idempotency_key else None
        updated = get_path(item, fields.updated_at) if fields.updated_at else None
        return CaseSummary(
            case_id=str(case_id),
            status=str(status),
            idempotency_key=None if key in (None, MISSING) else str(key),
            updated_at=parse_time(updated),
        )


# -- helpers -----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _parsed(url: str) -> httpx.URL:
    """``url`` parsed once: httpx parses a string URL on every request (~15 us), and a
    connector sends most of its calls to a few URLs (submit's above all). ``httpx.URL`` is
    immutable."""
    return httpx.URL(url)


@functools.lru_cache(maxsize=256)
def _charset(content_type: str | None) -> str | None:
    """The charset a Content-Type names, as ``httpx.Response.charset_encoding`` reads it (with
    the email parser, ~2 % of a delivery's CPU per answer), once per distinct header value."""
    if content_type is None:
        return None
    message = email.message.Message()
    message["content-type"] = content_type
    return message.get_content_charset(failobj=None)


def _echo(text: str, envelope: Envelope | None) -> str:
    """Mask the applicant's ID number and phone if a department echoes them in a reason."""
    if envelope is None:
        return text
    return mask_echo(text, envelope.applicant.id_number, envelope.applicant.phone)
