"""The simulated SOAP department's two busy operations without spyne, where the answer is
spyne's byte for byte.

spyne (schema validation, its object model, a2wsgi's worker threads) made a SubmitApplication
or QueryStatus call cost the simulator process several times a REST call; in the city day it
was a quarter of the process, on the two cores the gateway shares. A request of exactly the
plain shape a client such as zeep sends (an envelope with a body and nothing else, the
operation's elements in schema order, text only, no attributes, an integer Version) is read
here and answered from a template; anything else (SOAP headers, WS-Security, a missing or
malformed field, an unknown case, a fault mode) goes to spyne as before.
tests/test_soap_simulator.py compares both answers for every outcome.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

__all__ = ["NAMESPACE", "SOAP_ENV", "SUBMIT_FIELDS", "answer", "plain_call"]

NAMESPACE = "urn:onewindow:simulated-department"
SOAP_ENV = "http://schemas.xmlsoap.org/soap/envelope/"
#: ApplicationRequest's elements in schema order
SUBMIT_FIELDS = (
    "IdempotencyKey",
    "ReceiptNumber",
    "MatterCode",
    "Region",
    "ApplicantName",
    "ApplicantIdNo",
    "Version",
    "FormJson",
)
_ENVELOPE, _BODY = f"{{{SOAP_ENV}}}Envelope", f"{{{SOAP_ENV}}}Body"
_SUBMIT, _QUERY = f"{{{NAMESPACE}}}SubmitApplication", f"{{{NAMESPACE}}}QueryStatus"
_REQUEST, _CASE_ID = f"{{{NAMESPACE}}}Request", f"{{{NAMESPACE}}}CaseId"
_ORDER = {f"{{{NAMESPACE}}}{name}": i for i, name in enumerate(SUBMIT_FIELDS)}
_INTEGER = re.compile(r"[0-9]{1,18}")
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})
_HEAD = (
    "<?xml version='1.0' encoding='UTF-8'?>\n"
    f'<soap11env:Envelope xmlns:soap11env="{SOAP_ENV}" xmlns:tns="{NAMESPACE}">'
    "<soap11env:Body>"
)
_TAIL = "</soap11env:Body></soap11env:Envelope>"


def _bare(el: Any) -> bool:
    """No attributes and no text or tail around the element's children."""
    return not el.attrib and not el.tail and (len(el) == 0 or not el.text)


def _only_child(el: Any, tag: str) -> Any:
    if len(el) != 1 or not _bare(el) or el[0].tag != tag or not _bare(el[0]):
        return None
    return el[0]


def plain_call(root: Any) -> tuple[str, dict[str, Any]] | None:
    """(operation, its arguments) of a request answered here; None: spyne answers it."""
    if root.tag != _ENVELOPE:
        return None
    body = _only_child(root, _BODY)
    call = None if body is None or len(body) != 1 else body[0]
    if call is None or not _bare(call):
        return None
    if call.tag == _QUERY:
        case_id = _only_child(call, _CASE_ID)
        if case_id is None or len(case_id) or not case_id.text:
            return None
        return "QueryStatus", {"CaseId": case_id.text}
    if call.tag != _SUBMIT:
        return None
    request = _only_child(call, _REQUEST)
    if request is None:
        return None
    values: dict[str, Any] = {}
    last = -1
    for field in request:
        at = _ORDER.get(field.tag) if isinstance(field.tag, str) else None
        if at is None or at <= last or len(field) or not _bare(field):
            return None  # unknown, repeated or out of order, nested, a comment
        last = at
        values[SUBMIT_FIELDS[at]] = field.text or ""
    version = values.get("Version")
    if version is not None:
        if not _INTEGER.fullmatch(version):
            return None
        values["Version"] = int(version)
    if not values.get("IdempotencyKey"):
        return None
    return "SubmitApplication", values


def _text(value: str) -> str:
    return value.translate(_ESCAPES)


def _element(name: str, value: Any) -> str:
    if value is None:
        return ""  # spyne leaves out what is None
    return f"<tns:{name}>{_text(str(value))}</tns:{name}>"


def _array(name: str, inner: list[str]) -> str:
    return f"<tns:{name}>{''.join(inner)}</tns:{name}>" if inner else f"<tns:{name}/>"


def answer(operation: str, info: dict[str, Any]) -> bytes:
    """The answer of ``operation`` with the case ``info`` (CaseInfo's fields), as spyne
    writes it."""
    updated = info["UpdatedAt"]
    documents = [
        "<tns:Document>"
        + _element("Name", d["Name"])
        + _element("ContentType", d["ContentType"])
        + _element("Content", d["Content"])
        + "</tns:Document>"
        for d in info["Documents"]
    ]
    fields = (
        _element("CaseId", info["CaseId"])
        + _element("IdempotencyKey", info["IdempotencyKey"])
        + _element("Status", info["Status"])
        + _element("Opinion", info["Opinion"])
        + _element("Version", info["Version"])
        + _element("UpdatedAt", updated.isoformat() if isinstance(updated, dt.datetime) else None)
        + _array("SupplementItems", [_element("string", s) for s in info["SupplementItems"]])
        + _array("Documents", documents)
    )
    return (
        f"{_HEAD}<tns:{operation}Response><tns:{operation}Result>{fields}"
        f"</tns:{operation}Result></tns:{operation}Response>{_TAIL}"
    ).encode()
