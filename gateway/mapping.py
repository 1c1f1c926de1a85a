"""Declarative mapping between an :class:`~gateway.connector.Envelope` and a department's
payload, shared by connectors (part of the plugin API).

Paths are dotted: ``applicant.id_number``, ``form.shop.area``; a list index is a number
(``items.0.name``). A department file maps *target path* = *envelope path*::

    [options.submit.body]
    "applicant.idNo" = "applicant.id_number"
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from gateway.connector import Applicant, Envelope
from gateway.errors import PermanentError

#: What :func:`get_path` returns for a path that is not there (``None`` may be a real value).
MISSING: Any = object()


def get_path(data: Any, path: str | None) -> Any:
    """The value at dotted ``path`` in nested dicts and lists, or :data:`MISSING` (also for no
    path). A key that itself contains dots (a CSV column) is found as it is."""
    if not path:
        return MISSING
    if isinstance(data, dict) and path in data:
        return data[path]
    node = data
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return MISSING
    return node


def put_path(target: dict[str, Any], path: str, value: Any) -> None:
    """Set dotted ``path`` in ``target``, making the dicts on the way."""
    parts = path.split(".")
    node = target
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def check_source_path(path: str) -> str:
    """Check that ``path`` names something in an Envelope (for Options validators); returns it.

    ``applicant.<field>`` and top-level fields must exist; ``form.<anything>`` is free-form.
    """
    parts = path.split(".")
    if not path or any(not p for p in parts):
        raise ValueError(f"empty segment in envelope path {path!r}")
    head, rest = parts[0], parts[1:]
    if head not in Envelope.model_fields:
        known = ", ".join(sorted(Envelope.model_fields))
        raise ValueError(f"unknown envelope field {head!r} in {path!r} (known: {known})")
    if head == "form":
        return path
    if head == "applicant":
        if len(rest) > 1 or (rest and rest[0] not in Applicant.model_fields):
            known = ", ".join(sorted(Applicant.model_fields))
            raise ValueError(f"unknown applicant field in {path!r} (known: {known})")
        return path
    if rest:
        raise ValueError(f"envelope field {head!r} has no sub-field {'.'.join(rest)!r}")
    return path


def map_envelope(
    source: dict[str, Any], fields: Mapping[str, str], *, where: str
) -> dict[str, Any]:
    """Build a payload from ``source`` (an envelope as JSON data): ``target = source path`` for
    each entry of ``fields``. A source path the envelope lacks (a form field the front desk did
    not fill) is a PermanentError naming it and ``where`` it is mapped."""
    payload: dict[str, Any] = {}
    for target, path in fields.items():
        value = get_path(source, path)
        if value is MISSING:
            raise PermanentError(f"{where}: envelope has no {path!r} (mapped to {target!r})")
        put_path(payload, target, value)
    return payload


def build_payload(
    source: dict[str, Any],
    mapped: Mapping[str, Any] | None,
    fields: Mapping[str, str],
    constants: Mapping[str, Any],
    *,
    where: str,
    drop_materials: bool = True,
) -> dict[str, Any]:
    """A department payload: the ``map_payload`` hook's answer (``mapped``) when it gave one,
    else ``source`` (an envelope as JSON data) mapped through ``fields`` (:func:`map_envelope`),
    or all of it when ``fields`` is empty (its ``materials`` dropped when ``drop_materials``);
    then each of ``constants`` put at its dotted path."""
    if mapped is not None:
        payload = dict(mapped)
    elif not fields:
        payload = dict(source)
        if drop_materials:
            payload.pop("materials", None)
    else:
        payload = map_envelope(source, fields, where=where)
    for target, value in constants.items():
        put_path(payload, target, value)
    return payload


def parse_time(value: Any) -> dt.datetime | None:
    """A department's timestamp (ISO 8601, ``Z`` allowed, or a datetime) as aware UTC-or-zoned
    time; naive values are taken as UTC. None for anything else: a bad timestamp is no reason
    to drop a status update."""
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


__all__ = [
    "MISSING",
    "build_payload",
    "check_source_path",
    "get_path",
    "map_envelope",
    "parse_time",
    "put_path",
]
