"""MTOM/XOP answers (``multipart/related``), put in the one shape zeep decodes without loss.

zeep 4.3 can read XOP, but its reading is fragile: the root must be the first part (the
``start`` parameter is ignored), an attachment sent with ``Content-Transfer-Encoding: binary``
loses any leading or trailing CR/LF bytes (a PDF ending in ``%%EOF\\n`` comes back one byte short,
with a different hash), a ``Content-ID`` without angle brackets is never found, and an
``xop:Include`` naming no part raises a bare ``ValueError``.

So the transport splits the answer here first (:func:`split`), the connector refuses a DTD in the
root part exactly as in a plain answer, and :func:`for_zeep` checks every ``xop:Include`` and
rebuilds the answer canonically: root first, then each referenced attachment, already decoded,
with no transfer encoding and a ``<content-id>``. zeep then puts each attachment's bytes into the
tree it has already parsed, so a large document never becomes a huge text node for the parser.
Unreferenced parts (SOAP with Attachments) are dropped: the connector maps elements only.

The size cap needs nothing here: it applies to the whole answer, attachments included, before
anything is split.
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import email.utils
import quopri
import secrets
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser
from urllib.parse import unquote

from lxml import etree

__all__ = ["MtomError", "Parts", "for_zeep", "split"]

XOP_INCLUDE = "{http://www.w3.org/2004/08/xop/include}Include"


class MtomError(Exception):
    """The multipart answer cannot be used; the message says why (no content is quoted)."""


@dataclass(frozen=True)
class Parts:
    root_type: str  # the root part's XML media type (the inner type of application/xop+xml)
    root: bytes
    attachments: dict[str, bytes]  # Content-ID without <> -> decoded content


def split(content_type: str, body: bytes) -> Parts:
    """Split a ``multipart/related`` answer into its root part and attachments."""
    params = _params(content_type)
    boundary = params.get("boundary")
    if not boundary:
        raise MtomError("multipart answer without a boundary")
    delimiter = b"\r\n--" + boundary.encode("ascii", "replace")
    segments = (b"\r\n" + body).split(delimiter)
    parts: list[tuple[Message, bytes]] = []
    closed = False
    for segment in segments[1:]:  # segments[0] is the preamble
        if segment.startswith(b"--"):
            closed = True
            break
        line_end = segment.find(b"\r\n")
        if line_end < 0 or segment[:line_end].strip(b" \t"):
            raise MtomError("multipart answer is malformed (a boundary line has extra text)")
        segment = segment[line_end:]  # keep the CRLF: an empty header block is then CRLF CRLF
        head, found, content = segment.partition(b"\r\n\r\n")
        if not found:
            raise MtomError("multipart answer is malformed (a part has no header block)")
        headers = BytesHeaderParser(policy=email.policy.compat32).parsebytes(head.lstrip())
        parts.append((headers, _decode(headers, content)))
    if not parts:
        raise MtomError("multipart answer has no parts")
    if not closed:
        raise MtomError("multipart answer is truncated (no closing boundary)")

    start = params.get("start")
    root_index = 0
    if start:
        ids = [_content_id(headers) for headers, _ in parts]
        if _strip_id(start) not in ids:
            raise MtomError("multipart answer's start part is missing")
        root_index = ids.index(_strip_id(start))
    root_headers, root = parts[root_index]
    root_params = _params(root_headers.get("Content-Type", "text/xml"))
    root_type = root_params.get("type") if root_params[""] == "application/xop+xml" else None
    attachments: dict[str, bytes] = {}
    for index, (headers, content) in enumerate(parts):
        cid = _content_id(headers)
        if index != root_index and cid:
            attachments.setdefault(cid, content)
    return Parts(
        root_type=root_type or root_params[""] or "text/xml", root=root, attachments=attachments
    )


def for_zeep(parts: Parts) -> tuple[str, bytes]:
    """The answer as zeep should see it: ``(content type, body)``.

    Plain XML when nothing is referenced, otherwise a canonical ``multipart/related``.
    :raises MtomError: an ``xop:Include`` is not a ``cid:`` reference or names no part.
    """
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False
    )
    try:
        tree = etree.fromstring(parts.root, parser)
    except etree.XMLSyntaxError:
        return parts.root_type, parts.root  # zeep reports the broken XML as it always does
    referenced: dict[str, bytes] = {}
    for include in tree.iter(XOP_INCLUDE):
        href = str(include.get("href") or "")
        if not href.startswith("cid:"):
            raise MtomError(f"an xop:Include is not a cid: reference ({href[:80]!r})")
        cid = unquote(href[4:])
        if cid not in parts.attachments:
            raise MtomError(f"an xop:Include names a missing attachment ({href[:80]!r})")
        if any(ord(c) < 0x20 or c in "<>" for c in cid):
            raise MtomError("an xop:Include names an unusable Content-ID")
        referenced[cid] = parts.attachments[cid]
    if not referenced:
        return parts.root_type, parts.root
    boundary = secrets.token_hex(16)
    while any(boundary.encode() in c for c in (parts.root, *referenced.values())):
        boundary = secrets.token_hex(16)  # pragma: no cover - 128 random bits
    mark = b"--" + boundary.encode()
    chunks = [mark, b"\r\nContent-Type: ", parts.root_type.encode(), b"\r\n\r\n", parts.root]
    for cid, content in referenced.items():
        chunks += [b"\r\n", mark, b"\r\nContent-ID: <", cid.encode(), b">\r\n\r\n", content]
    chunks += [b"\r\n", mark, b"--\r\n"]
    return f'multipart/related; type="application/xop+xml"; boundary="{boundary}"', b"".join(chunks)


def _params(content_type: str) -> dict[str, str]:
    """A Content-Type's media type (key ``""``, lower case) and parameters, quotes removed."""
    message = Message()
    message["Content-Type"] = content_type
    found: dict[str, str] = {"": message.get_content_type()}
    for key, value in message.get_params(failobj=[])[1:]:
        found[key.lower()] = email.utils.collapse_rfc2231_value(value)
    return found


def _strip_id(value: str) -> str:
    value = value.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    return value.strip()


def _content_id(headers: Message) -> str:
    return _strip_id(str(headers.get("Content-ID", "")))


def _decode(headers: Message, content: bytes) -> bytes:
    encoding = str(headers.get("Content-Transfer-Encoding", "binary")).strip().lower()
    if encoding == "base64":
        try:
            return base64.b64decode(b"".join(content.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise MtomError("an attachment's base64 transfer encoding is broken") from exc
    if encoding == "quoted-printable":
        return quopri.decodestring(content)
    return content  # binary, 8bit, 7bit: as sent, byte for byte
