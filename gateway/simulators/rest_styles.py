"""The ways real government back offices speak HTTP, for the simulated REST department.

Each is switched on in the ``[simulator]`` table (see :class:`SimStyle`), so one simulator can
play a department in any of them and the REST connector is proven against each by config alone:

- ``envelope = true``: every answer is HTTP 200 ``{"code", "msg", "data"}``; business codes
  :data:`CODES` (busy ``5001`` is transient, ``4001`` a refusal, ``4004`` no such case, ``2001``
  case already exists on a re-send, ``4003`` bad signature)
- ``documents = "inline"``: the certificate as base64 in ``certFile`` with ``certName``;
  ``"url"``: a link to it in ``certUrl`` (``GET /api/v1/cases/{id}/certificate``, same auth)
- ``listing``: ``cursor``, ``next_link`` (``links.next``), ``page`` (``page``/``size``, ``total``)
  or ``offset`` (``offset``/``limit``, ``total``)
- ``charset = "gbk"``: answers encoded in GBK (declared in Content-Type)
- ``form_bodies = true``: submits as ``application/x-www-form-urlencoded`` are taken too
- ``[simulator.token]``: ``POST /api/v1/auth/token`` with app id and secret; calls need
  ``Authorization: Bearer <token>``, refused with 401 once it expires
- ``[simulator.signing]``: every call signed over sorted parameters (MD5, SHA-256,
  HMAC-SHA256 or SM3) with app id, timestamp and nonce; a replayed nonce is refused
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import secrets
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import Response
from gmssl import func as gm_func
from gmssl import sm3 as gm_sm3
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "CODES",
    "SimSigning",
    "SimStyle",
    "SimToken",
    "TokenStore",
    "answer",
    "check_signature",
    "read_body",
]

#: business codes of the envelope style (with the message each comes with)
CODES: dict[str, tuple[str, str]] = {
    "ok": ("0", "成功"),
    "exists": ("2001", "案件已存在"),
    "busy": ("5001", "系统繁忙，请稍后再试"),
    "refused": ("4001", "申请材料不全"),
    "bad_sign": ("4003", "签名错误"),
    "not_found": ("4004", "案件不存在"),
}


class SimToken(BaseModel):
    """``[simulator.token]``: the department's token endpoint."""

    model_config = ConfigDict(extra="forbid")

    app_id: str
    app_secret: str
    ttl_seconds: float = Field(default=600.0, gt=0)


class SimSigning(BaseModel):
    """``[simulator.signing]``: how the department checks request signatures."""

    model_config = ConfigDict(extra="forbid")

    algorithm: Literal["md5", "sha256", "hmac-sha256", "sm3"]
    app_id: str
    secret: str
    place: Literal["header", "query"] = "header"
    timestamp_unit: Literal["s", "ms"] = "ms"
    max_skew_seconds: float = Field(default=300.0, gt=0)


class SimStyle(BaseModel):
    """The style fields of the ``[simulator]`` table (defaults: the plain JSON style)."""

    model_config = ConfigDict(extra="forbid")

    envelope: bool = False
    documents: Literal["list", "inline", "url"] = "list"
    listing: Literal["cursor", "next_link", "page", "offset"] = "cursor"
    charset: str = "utf-8"
    form_bodies: bool = False
    token: SimToken | None = None
    signing: SimSigning | None = None


def answer(style: SimStyle, data: Any, *, status: int = 200, code: str = "ok") -> Response:
    """An answer in the department's style: ``data`` as is, or wrapped in the envelope with
    business ``code`` (then always HTTP 200, the way such systems answer)."""
    if style.envelope:
        number, message = CODES[code]
        data, status = {"code": number, "msg": message, "data": data}, 200
    body = json.dumps(data, ensure_ascii=False).encode(style.charset)
    return Response(
        body, status_code=status, media_type=f"application/json; charset={style.charset}"
    )


def error(style: SimStyle, status: int, code: str, message: str) -> Response:
    """A failure: HTTP ``status`` with ``{"error"}``, or in the envelope style HTTP 200 with the
    business code for ``code`` and ``message`` as its ``msg``."""
    if style.envelope and code in CODES:
        number = CODES[code][0]
        body = json.dumps({"code": number, "msg": message, "data": None}, ensure_ascii=False)
        return Response(
            body.encode(style.charset),
            media_type=f"application/json; charset={style.charset}",
        )
    body = json.dumps({"error": {"code": code, "message": message}}, ensure_ascii=False)
    return Response(
        body.encode(style.charset),
        status_code=status,
        media_type=f"application/json; charset={style.charset}",
    )


async def read_body(request: Request, style: SimStyle) -> tuple[dict[str, Any] | None, str]:
    """The submitted body as a dict (form fields whose value is JSON are decoded) and its
    raw text; None when it is neither a JSON object nor (if taken) a form."""
    raw = (await request.body()).decode("utf-8", errors="replace")
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        if not style.form_bodies:
            return None, raw
        fields = dict(urllib.parse.parse_qsl(raw, keep_blank_values=True))
        return {k: _maybe_json(v) for k, v in fields.items()}, raw
    try:
        body = json.loads(raw)
    except ValueError:
        return None, raw
    return (body if isinstance(body, dict) else None), raw


def _maybe_json(value: str) -> Any:
    if value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _digest(algorithm: str, text: str, secret: str) -> str:
    if algorithm == "hmac-sha256":
        return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()
    salted = f"{text}&key={secret}".encode()
    if algorithm == "md5":
        return hashlib.md5(salted, usedforsecurity=False).hexdigest()
    if algorithm == "sha256":
        return hashlib.sha256(salted).hexdigest()
    return str(gm_sm3.sm3_hash(gm_func.bytes_to_list(salted)))


_SIGN_NAMES = ("appKey", "timestamp", "nonce", "sign")


def check_signature(
    spec: SimSigning, request: Request, raw_body: str, seen_nonces: set[str]
) -> str | None:
    """What is wrong with the request's signature, or None when it checks out.

    Written independently of the connector's signing module (the same published rule, so a
    shared mistake does not pass unnoticed): sorted ``k=v`` pairs joined by ``&``, a JSON body
    as ``body``, then ``&key=<secret>`` (or HMAC-SHA256 keyed by the secret), upper-case hex."""
    source = request.headers if spec.place == "header" else request.query_params
    given = {name: source.get(name, "") for name in _SIGN_NAMES}
    if any(not given[name] for name in _SIGN_NAMES):
        return "missing signature parameters"
    if given["appKey"] != spec.app_id:
        return "unknown appKey"
    try:
        stamp = int(given["timestamp"]) / (1000 if spec.timestamp_unit == "ms" else 1)
    except ValueError:
        return "bad timestamp"
    if abs(time.time() - stamp) > spec.max_skew_seconds:
        return "timestamp outside the allowed skew"
    if given["nonce"] in seen_nonces:
        return "nonce replayed"
    pairs = {k: v for k, v in request.query_params.items() if k != "sign"}
    pairs.update({k: given[k] for k in ("appKey", "timestamp", "nonce")})
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/x-www-form-urlencoded"):
        pairs.update(urllib.parse.parse_qsl(raw_body, keep_blank_values=True))
    elif raw_body:
        pairs["body"] = raw_body
    text = "&".join(f"{k}={v}" for k, v in sorted(pairs.items()) if v != "")
    expected = _digest(spec.algorithm, text, spec.secret).upper()
    if not hmac.compare_digest(expected.encode(), given["sign"].encode()):
        return "signature does not match"
    seen_nonces.add(given["nonce"])
    return None


@dataclass
class TokenStore:
    """Tokens the simulated token endpoint gave out, with their expiry."""

    spec: SimToken
    tokens: dict[str, dt.datetime] = field(default_factory=dict)
    issued: int = 0

    def issue(self, now: dt.datetime) -> tuple[str, float]:
        token = secrets.token_urlsafe(24)
        self.tokens[token] = now + dt.timedelta(seconds=self.spec.ttl_seconds)
        self.issued += 1
        return token, self.spec.ttl_seconds

    def valid(self, header: str, now: dt.datetime) -> bool:
        token = header.removeprefix("Bearer ")
        expires = self.tokens.get(token)
        return expires is not None and now < expires

    def expire_all(self) -> None:
        """Every token given out so far expires now (the department restarted, say)."""
        self.tokens.clear()
