"""Request and result file formats (JSON, XML, CSV).

Requests are nested dicts written as a JSON object, an XML element tree or a one-row CSV with
dotted column names. Results are read back into nested dicts the same way. XML is parsed with
entity expansion, DTD loading and network access off, and a document with a DOCTYPE is refused
outright: a department's result file has no business declaring entities.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
from typing import Any

from lxml import etree

__all__ = [
    "EXTENSIONS",
    "ResultFileError",
    "carries_all",
    "decode_result",
    "encode_request",
    "unencodable",
]

EXTENSIONS = {"json": ".json", "xml": ".xml", "csv": ".csv"}
_XML_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


class ResultFileError(ValueError):
    """A result file cannot be read; the message is the quarantine reason."""


# -- requests ------------------------------------------------------------------------------------

#: encodings that carry every character: nothing to check
_COMPLETE = frozenset({"utf_8", "utf_8_sig", "utf_16", "utf_32", "gb18030"})


def carries_all(encoding: str) -> bool:
    try:
        return codecs.lookup(encoding).name.replace("-", "_") in _COMPLETE
    except LookupError:
        return False


def unencodable(value: Any, encoding: str, path: str) -> tuple[str, str] | None:
    """The first text inside ``value`` (keys included) that ``encoding`` cannot write: its
    dotted path and the character as ``U+XXXX`` (never the text itself: it may be personal)."""
    if isinstance(value, str):
        for ch in value:
            try:
                ch.encode(encoding)
            except UnicodeEncodeError:
                return path, f"U+{ord(ch):04X}"
        return None
    if isinstance(value, dict):
        for key, child in value.items():
            found = unencodable(str(key), encoding, path) or unencodable(
                child, encoding, f"{path}.{key}" if path else str(key)
            )
            if found:
                return found
    elif isinstance(value, list):
        for i, child in enumerate(value):
            if found := unencodable(child, encoding, f"{path}[{i}]"):
                return found
    return None


def encode_request(payload: dict[str, Any], fmt: str, *, encoding: str, xml_root: str) -> bytes:
    if fmt == "json":
        return json.dumps(payload, ensure_ascii=False, indent=2).encode(encoding)
    if fmt == "xml":
        root = etree.Element(xml_root)
        _xml_fill(root, payload)
        return bytes(
            etree.tostring(root, xml_declaration=True, encoding=encoding, pretty_print=True)
        )
    if fmt == "csv":
        flat = _flatten(payload)
        out = io.StringIO(newline="")
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow(list(flat))
        writer.writerow(list(flat.values()))
        return out.getvalue().encode(encoding)
    raise ValueError(f"unknown format {fmt!r}")


def _xml_fill(element: Any, value: Any) -> None:
    if isinstance(value, dict):
        for key, child in value.items():
            name = str(key)
            # Form keys come from the applicant: never trust them to be element names.
            if _XML_NAME.fullmatch(name) and not name.lower().startswith("xml"):
                sub = etree.SubElement(element, name)
            else:
                sub = etree.SubElement(element, "field", name=name)
            _xml_fill(sub, child)
    elif isinstance(value, list):
        for child in value:
            _xml_fill(etree.SubElement(element, "item"), child)
    elif value is None:
        return
    elif isinstance(value, bool):
        element.text = "true" if value else "false"
    else:
        element.text = str(value)


def _flatten(value: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, child in value.items():
        name = f"{prefix}{key}"
        if isinstance(child, dict) and child:
            flat.update(_flatten(child, name + "."))
        elif isinstance(child, (dict, list)):
            flat[name] = json.dumps(child, ensure_ascii=False)
        elif child is None:
            flat[name] = ""
        elif isinstance(child, bool):
            flat[name] = "true" if child else "false"
        else:
            flat[name] = str(child)
    return flat


# -- results -------------------------------------------------------------------------------------


def decode_result(data: bytes, fmt: str, *, encoding: str) -> dict[str, Any]:
    """The result file as a dict; raises :class:`ResultFileError` with a quarantine reason."""
    if fmt == "xml":
        return _decode_xml(data)
    try:
        text = data.decode(encoding)
    except (UnicodeDecodeError, LookupError) as exc:
        raise ResultFileError(f"not {encoding} text") from exc
    if fmt == "json":
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ResultFileError(f"not JSON ({exc.msg} at line {exc.lineno})") from exc
        if not isinstance(value, dict):
            raise ResultFileError("JSON result is not an object")
        return value
    if fmt == "csv":
        try:
            rows = list(csv.DictReader(io.StringIO(text.lstrip("\ufeff"), newline="")))
        except csv.Error as exc:
            raise ResultFileError(f"not CSV ({exc})") from exc
        if len(rows) != 1:
            raise ResultFileError(f"CSV result must hold one record, not {len(rows)}")
        row = rows[0]
        if None in row or any(v is None for v in row.values()):
            raise ResultFileError("CSV record does not match its header")
        return dict(row)
    raise ValueError(f"unknown format {fmt!r}")


def _decode_xml(data: bytes) -> dict[str, Any]:
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
    )
    try:
        root = etree.fromstring(data, parser=parser)
    except etree.XMLSyntaxError as exc:
        raise ResultFileError(f"not well-formed XML ({exc.msg})") from exc
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise ResultFileError("XML with a DOCTYPE is refused (entities are not allowed)")
    value = _xml_value(root)
    if not isinstance(value, dict):
        raise ResultFileError("XML result has no fields")
    return value


def _xml_value(element: Any) -> Any:
    children = [c for c in element if isinstance(c.tag, str)]
    if not children:
        return (element.text or "").strip()
    grouped: dict[str, list[Any]] = {}
    for child in children:
        tag = etree.QName(child).localname
        if tag == "field" and child.get("name"):
            tag = child.get("name")
        grouped.setdefault(tag, []).append(_xml_value(child))
    return {tag: values[0] if len(values) == 1 else values for tag, values in grouped.items()}
