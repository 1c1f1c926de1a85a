"""The SOAP call path without zeep's per-call work, where it gives exactly zeep's result.

zeep builds every request envelope from the schema (an lxml tree, then serialised) and reads
every answer into its own value objects before the connector turns them into dicts: about
half of a poll's client-side cost. For a plain operation both are done once here:

* :class:`Template`: the request for one shape of arguments (which keys, which non-string
  values) is built by zeep once, with a marker in each string argument, and serialised; a
  call joins the bytes around the markers with its values escaped as lxml escapes text.
  Only markers that come out verbatim (the schema type leaves the string as it is) make a
  template; anything else, a value lxml would refuse, WS-Security, WS-Addressing or plugins,
  goes through zeep.
* :class:`Reader`: an answer is parsed with zeep's parser settings (no entities, no network,
  no DTD) and read by a plan compiled from the operation's output schema: sequences of elements of
  simple types (converted by the type's own ``pythonvalue``) and of such complex types. An
  answer with anything else (any attribute, such as ``xsi:nil`` or ``xsi:type``, an element
  out of order or unknown, a fault, MTOM) is handed to zeep, so the result is zeep's in
  every case; :func:`read` returns it already as the plain dicts the connector uses.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from typing import Any

from lxml import etree
from zeep.wsdl.utils import etree_to_string as _etree_to_string
from zeep.xsd.elements.element import Element
from zeep.xsd.elements.indicators import Sequence
from zeep.xsd.types.complex import ComplexType
from zeep.xsd.types.simple import AnySimpleType

__all__ = ["UNREAD", "Reader", "Template", "Templates", "plan_for", "templates_for"]

_to_bytes: Any = _etree_to_string  # zeep is untyped
#: what :meth:`Reader.read` returns when zeep must read the answer
UNREAD: Any = object()
#: shapes of arguments remembered per operation (listing windows make a new shape per call)
MAX_SHAPES = 32
#: characters lxml refuses in text (XML 1.0 Char, without the surrogates Python cannot encode)
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})


def _escape(value: str) -> bytes:
    return value.translate(_ESCAPES).encode()


# -- requests ------------------------------------------------------------------------------------


def _shape(value: Any, leaves: list[str]) -> Any:
    """A hashable key for the structure of ``value``; string leaves collected in order."""
    if isinstance(value, str):
        leaves.append(value)
        return str
    if isinstance(value, dict):
        return (dict, tuple((k, _shape(value[k], leaves)) for k in sorted(value)))
    if isinstance(value, list | tuple):
        return (type(value), tuple(_shape(v, leaves) for v in value))
    if value is None or isinstance(value, int | float | bool):
        return (type(value), value)
    raise TypeError  # anything else (dates, bytes, lxml elements): zeep every time


def _marked(value: Any, marks: list[str]) -> Any:
    if isinstance(value, str):
        marks.append(f" \t{secrets.token_hex(8)}&<> ")
        return marks[-1]
    if isinstance(value, dict):
        return {k: _marked(value[k], marks) for k in sorted(value)}
    if isinstance(value, list | tuple):
        return type(value)(_marked(v, marks) for v in value)
    return value


class Template:
    """One operation's request for one shape of arguments: bytes around the string slots.
    ``order``: which leaf (in :func:`_shape`'s sorted-key order) fills each slot, in the order
    the schema puts the elements in the body."""

    def __init__(self, parts: list[bytes], order: list[int], headers: dict[str, str]) -> None:
        self.parts = parts
        self.order = order
        self.headers = headers

    def render(self, leaves: list[str]) -> bytes | None:
        """The request with these string values, or None where lxml would refuse one."""
        out = [self.parts[0]]
        for index, part in zip(self.order, self.parts[1:], strict=True):
            value = leaves[index]
            if _NOT_XML.search(value):
                return None
            out.append(_escape(value))
            out.append(part)
        return b"".join(out)

    @classmethod
    def build(
        cls, create: Callable[[dict[str, Any]], Any], kwargs: dict[str, Any]
    ) -> Template | None:
        """``create(kwargs) -> (envelope, headers)`` is zeep's; None if no template fits."""
        marks: list[str] = []
        envelope, headers = create(_marked(kwargs, marks))
        texts = [el.text for el in envelope.iter() if isinstance(el.tag, str)]
        if any(texts.count(mark) != 1 for mark in marks):
            return None  # the schema type changed a value (or dropped it): not a plain slot
        body: bytes = _to_bytes(envelope)
        # the slots in body order: the marks were made in sorted-key order, the schema's
        # sequence puts the elements in its own (a multi-field request always differs)
        slots = []
        for index, mark in enumerate(marks):
            escaped = _escape(mark)
            if body.count(escaped) != 1:
                return None
            slots.append((body.index(escaped), len(escaped), index))
        slots.sort()
        parts, at = [], 0
        for start, size, _index in slots:
            parts.append(body[at:start])
            at = start + size
        parts.append(body[at:])
        return cls(parts, [index for _start, _size, index in slots], dict(headers))


class Templates:
    """The templates of one operation, by shape of arguments (None: that shape goes to zeep)."""

    def __init__(self, create: Callable[[dict[str, Any]], Any]) -> None:
        self._create = create
        self._by_shape: dict[Any, Template | None] = {}

    def request(self, kwargs: dict[str, Any]) -> tuple[bytes, dict[str, str]] | None:
        leaves: list[str] = []
        try:
            shape = _shape(kwargs, leaves)
        except TypeError:
            return None
        if shape in self._by_shape:
            template = self._by_shape[shape]
        elif len(self._by_shape) < MAX_SHAPES:
            try:
                template = Template.build(self._create, kwargs)
            except Exception:  # zeep refuses these arguments: it will say why on the real call
                template = None
            self._by_shape[shape] = template
        else:
            return None
        if template is None:
            return None
        body = template.render(leaves)
        return None if body is None else (body, template.headers)


def templates_for(
    binding: Any, client: Any, options: dict[str, Any], operation: str
) -> Templates | None:
    """Templates for ``operation``, or None where every call must go through zeep."""
    op = binding.get(operation)
    if op is None or client.wsse is not None or client.plugins or op.abstract.wsa_action:
        return None

    def create(kwargs: dict[str, Any]) -> Any:
        return binding._create(operation, (), kwargs, client=client, options=options)

    return Templates(create)


# -- answers -------------------------------------------------------------------------------------

#: a compiled reader of one element's content: lxml element -> plain value (or raises _Unread)
Plan = Callable[[Any], Any]


class _Unread(Exception):
    """The answer is not one the plan reads exactly as zeep would."""


def _simple(xsd_type: Any) -> Plan:
    convert = xsd_type.pythonvalue

    def read(el: Any) -> Any:
        if len(el):
            raise _Unread
        text = el.text
        if text is None:
            return None
        try:
            return convert(text)
        except (TypeError, ValueError):
            raise _Unread from None  # zeep logs it and reads None: let zeep do that

    return read


def _complex(xsd_type: Any, depth: int) -> Plan:
    if xsd_type.attributes or getattr(xsd_type, "_array_type", None):
        raise _Unread
    if type(xsd_type).parse_xmlelement is not ComplexType.parse_xmlelement:
        raise _Unread
    nested = xsd_type.elements_nested
    if not nested:
        return lambda el: _empty(el)
    if len(nested) != 1 or type(nested[0][1]) is not Sequence or nested[0][1].accepts_multiple:
        raise _Unread
    fields = []
    for name, element in nested[0][1].elements:
        if type(element) is not Element or (
            element.default is not None and not element.is_optional
        ):
            raise _Unread
        plan = _plan(element.type, depth + 1)
        many = element.accepts_multiple
        limit = None if element.max_occurs == "unbounded" else int(element.max_occurs)
        fields.append((name, element.qname.text, plan, many, limit, element.is_optional))

    def read(el: Any) -> Any:
        children = list(el)
        if not children:
            return None
        out: dict[str, Any] = {}
        i, n = 0, len(children)
        for name, tag, plan, many, limit, optional in fields:
            if many:
                items: list[Any] = []
                while i < n and children[i].tag == tag and (limit is None or len(items) < limit):
                    items.append(plan(children[i]))
                    i += 1
                out[name] = items
            elif i < n and children[i].tag == tag:
                out[name] = plan(children[i])
                i += 1
            elif i < n and not optional:
                raise _Unread  # zeep: "unexpected element"
            else:
                out[name] = [] if many else None
        if i < n:
            raise _Unread  # an element the schema does not have here (or one zeep matches loosely)
        return out

    return read


def _empty(el: Any) -> None:
    return None


def _plan(xsd_type: Any, depth: int = 0) -> Plan:
    if depth > 20:
        raise _Unread  # a recursive schema: zeep reads it
    if isinstance(xsd_type, AnySimpleType):
        if type(xsd_type).parse_xmlelement is not AnySimpleType.parse_xmlelement:
            raise _Unread
        return _simple(xsd_type)
    if isinstance(xsd_type, ComplexType):
        return _complex(xsd_type, depth)
    raise _Unread


#: any attribute in an answer's body (xsi:nil, xsi:type, SOAP-encoding hrefs): zeep reads it
_ATTRIBUTES = etree.XPath("boolean(descendant-or-self::*/@*)")


class Reader:
    """Reads an operation's answers as zeep reads them and ``serialize_object`` flattens them."""

    def __init__(
        self,
        body_tag: str,
        soap_ns: str,
        plan: Plan,
        unwrap: str | None,
        inner: str | None,
        settings: Any,
    ) -> None:
        self.body = f"{{{soap_ns}}}Body"
        self.tag = body_tag
        self.plan = plan
        self.unwrap, self.inner = unwrap, inner
        # zeep's parse_xml settings, one parser for every answer: no entities resolved, no
        # network, no huge trees, no recovery; a document with a DTD is left to zeep (which
        # refuses it; the connector refuses it even before)
        self.parser = etree.XMLParser(
            remove_comments=True,
            resolve_entities=False,
            recover=not settings.strict,
            huge_tree=settings.xml_huge_tree,
            no_network=True,
        )

    def read(self, status: int, content_type: str, content: bytes) -> Any:
        """The plain result, or :data:`UNREAD` (zeep reads this answer)."""
        if status != 200 or not content or "multipart" in content_type.lower():
            return UNREAD
        try:
            doc = etree.fromstring(content, self.parser)
            if doc.getroottree().docinfo.doctype:
                return UNREAD
            body = [el for el in doc if el.tag == self.body]
            if len(body) != 1 or len(body[0]) != 1 or body[0][0].tag != self.tag:
                return UNREAD
            answer = body[0][0]
            if _ATTRIBUTES(answer):
                return UNREAD
            value = self.plan(answer)
        except Exception:  # _Unread, or the parser refusing it: zeep says what it is
            return UNREAD
        if value is None or self.unwrap is None:
            return value
        value = value[self.unwrap]
        if self.inner is not None and isinstance(value, dict):
            return value[self.inner]
        return value


def plan_for(binding: Any, operation: str, settings: Any) -> Reader | None:
    """A reader for ``operation``'s answers, or None where zeep reads every one."""
    op = binding.get(operation)
    message = getattr(op, "output", None)
    try:
        if (
            message is None
            or type(message).__name__ != "DocumentMessage"
            or message._is_body_wrapped
            or message.header is None
            or message.header.type._element
            or type(message.body) is not Element
        ):
            return None
        wrapper = message.body.type
        if not isinstance(wrapper, ComplexType):
            return None
        plan = _plan(wrapper)
        # DocumentMessage.deserialize's unwrapping: one field -> its value; that value a
        # complex one with one element and no attributes -> that element's value
        fields = wrapper.elements
        unwrap = inner = None
        if len(fields) == 1:
            unwrap = fields[0][0]
            child = fields[0][1].type
            if isinstance(child, ComplexType) and len(child.elements) == 1 and not child.attributes:
                inner = child.elements[0][0]
        elif not fields:
            return None
        soap_ns = message.nsmap["soap-env"]
    except _Unread:
        return None
    return Reader(message.body.qname.text, soap_ns, plan, unwrap, inner, settings)
