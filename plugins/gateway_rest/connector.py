"""The built-in ``rest`` connector: departments with a JSON-over-HTTP back-office system.

Every httpx error and every HTTP status is translated here, at the boundary::

    timeout, connection refused/reset, 5xx, 429   -> TransientError (429/503 honour Retry-After)
    status in ``reject_statuses``                  -> DepartmentRejected(reason from the answer)
    any other 4xx                                  -> PermanentError
    2xx that is not JSON or lacks a mapped field   -> PermanentError naming the path

Messages name the department, method, path and status, never the request body: it holds
applicants' ID numbers.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.utils
import json
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from typing import Any, ClassVar

import httpx
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
from gateway.errors import DepartmentRejected, PermanentError, TransientError
from gateway.mapping import MISSING, get_path, map_envelope, parse_time, put_path
from gateway.pii import mask_echo
from gateway_rest.options import ApiKeyAuth, BasicAuth, BearerAuth, PollResponse, RestOptions

__all__ = ["RestConnector", "RestOptions"]


class RestConnector(Connector):
    """Delivers applications to a REST department and reads their status back."""

    kind: ClassVar[str] = "rest"
    Options: ClassVar[type[BaseModel]] = RestOptions

    def __init__(self, context: ConnectorContext) -> None:
        super().__init__(context)
        self.options = options = self.options_as(RestOptions)
        self._headers = _static_headers(options)

    # -- the contract --------------------------------------------------------------------------

    async def submit(self, envelope: Envelope) -> Receipt:
        submit = self.options.submit
        payload = await self._payload(envelope)
        headers = {self.options.idempotency_header: envelope.idempotency_key}
        response = await self._call(
            submit.method, submit.path, json_body=payload, headers=headers, envelope=envelope
        )
        data = self._json(response, submit.method, submit.path)
        case_id = self._require(data, submit.response.case_id, submit.method, submit.path)
        status = get_path(data, submit.response.status) if submit.response.status else None
        detail = get_path(data, submit.response.detail) if submit.response.detail else None
        return Receipt(
            case_id=str(case_id),
            status=None if status in (None, MISSING) else str(status),
            detail=None if detail in (None, MISSING) else str(detail),
        )

    async def poll(self, receipt: Receipt) -> CaseUpdate | None:
        poll = self.options.poll
        if poll is None:
            return None
        path = poll.path.replace("{case_id}", urllib.parse.quote(receipt.case_id, safe=""))
        response = await self._call(poll.method, path, label=poll.path)
        data = self._json(response, poll.method, poll.path)
        return self._case_update(data, poll.response, poll.method, poll.path)

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
        cursor: str | None = None
        for _ in range(listing.max_pages):
            params: dict[str, str | int] = {
                listing.since_param: since.isoformat(),
                listing.until_param: until.isoformat(),
                listing.limit_param: listing.page_size,
            }
            if cursor:
                params[listing.cursor_param] = cursor
            response = await self._call("GET", listing.path, params=params)
            data = self._json(response, "GET", listing.path)
            items = self._require(data, listing.items, "GET", listing.path)
            if not isinstance(items, list):
                raise PermanentError(
                    self._where("GET", listing.path, f"{listing.items!r} is not a list")
                )
            for item in items:
                yield self._summary(item, listing.path)
            nxt = get_path(data, listing.next)
            if nxt in (None, MISSING, ""):
                return
            cursor = str(nxt)
        raise PermanentError(
            self._where("GET", listing.path, f"more than {listing.max_pages} pages; cursor loop?")
        )

    async def withdraw(self, receipt: Receipt) -> None:
        spec = self.options.withdraw
        if spec is None:
            raise NotImplementedError(f"{self.context.department}: no [options.withdraw]")
        path = spec.path.replace("{case_id}", urllib.parse.quote(receipt.case_id, safe=""))
        # 409: the department has decided already and refuses, with its reason
        await self._call(spec.method, path, label=spec.path, refusals=(409,))

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
        mapped = self.context.map_payload(envelope)
        submit = self.options.submit
        source = envelope.model_dump(mode="json")
        if mapped is not None:
            payload = dict(mapped)
        elif not submit.body:
            payload = source
            if submit.materials == "none":
                payload.pop("materials", None)
        else:
            payload = map_envelope(
                source, submit.body, where=f"{self.context.department} [options.submit.body]"
            )
        for target, value in submit.constants.items():
            put_path(payload, target, value)
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
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str | int] | None = None,
        label: str | None = None,
        envelope: Envelope | None = None,
        refusals: tuple[int, ...] = (),
    ) -> httpx.Response:
        label = label or path
        url = self.options.base_url + path
        all_headers = {**self._headers, **(headers or {})}
        content: bytes | None = None
        if json_body is not None:
            content = json.dumps(json_body, ensure_ascii=False).encode()
            all_headers.setdefault("Content-Type", "application/json")
        try:
            response = await self.context.http.request(
                method,
                url,
                content=content,
                headers=all_headers,
                params=params,
                timeout=self.options.timeout_seconds,
            )
        except (httpx.TransportError, OSError) as exc:
            # OSError: a reset the transport did not wrap (aiohttp's mapping is partial)
            raise TransientError(self._where(method, label, self._transport_problem(exc))) from exc
        status = response.status_code
        if status < 300:
            return response
        if status == 429 or status >= 500:
            raise TransientError(
                self._where(method, label, f"HTTP {status}"),
                retry_after=_retry_after(response.headers.get("Retry-After")),
            )
        if status in self.options.reject_statuses or status in refusals:
            reason = self._reason(response) or f"HTTP {status}"
            raise DepartmentRejected(_echo(reason, envelope), status=self.options.reject_status)
        raise PermanentError(self._where(method, label, f"HTTP {status}"))

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

    def _json(self, response: httpx.Response, method: str, path: str) -> Any:
        try:
            return response.json()
        except (ValueError, UnicodeDecodeError) as exc:
            kind = response.headers.get("content-type", "no content type")
            raise PermanentError(
                self._where(
                    method, path, f"HTTP {response.status_code} answer is not JSON ({kind})"
                )
            ) from exc

    def _require(self, data: Any, path: str, method: str, url_path: str) -> Any:
        value = get_path(data, path)
        if value in (None, MISSING):
            raise PermanentError(
                self._where(method, url_path, f"answer has no {path!r} (check [options] mapping)")
            )
        return value

    def _reason(self, response: httpx.Response) -> str | None:
        try:
            value = get_path(response.json(), self.options.reject_reason)
        except (ValueError, UnicodeDecodeError):
            text = response.text.strip()
            return text[:500] or None
        if value in (None, MISSING):
            return None
        return str(value)[:500]

    def _case_update(self, data: Any, spec: PollResponse, method: str, path: str) -> CaseUpdate:
        case_id = self._require(data, spec.case_id, method, path)
        status = self._require(data, spec.status, method, path)
        detail = get_path(data, spec.detail) if spec.detail else None
        occurred = get_path(data, spec.occurred_at) if spec.occurred_at else None
        docs = get_path(data, spec.documents) if spec.documents else None
        items = get_path(data, spec.supplement_items) if spec.supplement_items else None
        documents: list[ResultDocument] = []
        fields = spec.document_fields
        for raw in docs if isinstance(docs, list) else []:
            if not isinstance(raw, dict):
                raise PermanentError(self._where(method, path, "document entry is not an object"))
            encoded = raw.get(fields.content_b64)
            try:
                content = base64.b64decode(encoded, validate=True) if encoded else None
            except (binascii.Error, TypeError) as exc:
                raise PermanentError(
                    self._where(method, path, f"document {fields.content_b64!r} is not base64")
                ) from exc
            documents.append(
                ResultDocument(
                    name=str(raw.get(fields.name) or "document"),
                    content_type=str(raw.get(fields.content_type) or "application/octet-stream"),
                    content=content,
                    url=raw.get(fields.url) or None,
                )
            )
        return CaseUpdate(
            case_id=str(case_id),
            status=str(status),
            detail=None if detail in (None, MISSING) else str(detail),
            occurred_at=parse_time(occurred),
            documents=documents,
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


def _static_headers(options: RestOptions) -> dict[str, str]:
    headers = {"Accept": "application/json", **options.headers}
    auth = options.auth
    if isinstance(auth, BearerAuth):
        headers["Authorization"] = f"Bearer {auth.token.get_secret_value()}"
    elif isinstance(auth, ApiKeyAuth):
        headers[auth.header] = auth.key.get_secret_value()
    elif isinstance(auth, BasicAuth):
        pair = f"{auth.username}:{auth.password.get_secret_value()}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    return headers


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP-date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max((when - dt.datetime.now(dt.UTC)).total_seconds(), 0.0)


def _echo(text: str, envelope: Envelope | None) -> str:
    """Mask the applicant's ID number and phone if a department echoes them in a reason."""
    if envelope is None:
        return text
    return mask_echo(text, envelope.applicant.id_number, envelope.applicant.phone)
