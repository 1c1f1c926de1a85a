"""Accepting applications: validate, route, and store application + dispatch job in ONE
transaction, so a 201 always means the case is durable and will be dispatched."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from jsonschema import Draft202012Validator
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError
from sqlalchemy import Insert, Integer, Select, Table, and_, bindparam, func, insert, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.clock import new_id, now
from gateway.config.catalog import RouteError
from gateway.config.models import REGION_CODE, Matter
from gateway.connector import Applicant
from gateway.errors import FieldError
from gateway.errors import IntakeProblem as IntakeProblem  # where API code has found it
from gateway.events import Source
from gateway.handover import new_handover
from gateway.identity import RESIDENT_ID, check_phone, check_resident_id
from gateway.runtime import Runtime
from gateway.states import State
from gateway.store import driver, driver_pg, jobs, outbox
from gateway.store.chain import canonical_time, seal_first_event
from gateway.store.clients import Client, valid_key
from gateway.store.group import GroupCommit, shared
from gateway.store.lists import OneOf, PerEngine, is_postgresql
from gateway.store.tables import (
    api_clients,
    applications,
    dispatch_jobs,
    events,
    handovers,
    idempotency_records,
    materials,
    receipt_counters,
)
from gateway.text import CleanJson, CleanStr
from gateway.workdays import add_workdays

CHINA = dt.timezone(dt.timedelta(hours=8))


class Delivery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    method: Literal["pickup", "mail"] = "pickup"
    centre: CleanStr | None = Field(
        default=None, description="pickup centre; default: receiving one"
    )
    address: CleanStr | None = Field(default=None, max_length=500)
    recipient: CleanStr | None = Field(default=None, max_length=100)

    @model_validator(mode="after")
    def _mail_needs_address(self) -> Delivery:
        if self.method == "mail" and not self.address:
            raise PydanticCustomError(
                "address_required",
                "delivery.address is required when delivery.method is 'mail'",
                {"field": "address"},
            )
        return self


class ApplicantIn(Applicant):
    """The applicant as the front desk gives it: ID number and phone are checked (not when a
    stored application is read back: what was accepted stays readable)."""

    @field_validator("id_number")
    @classmethod
    def _id_number(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("id_type", RESIDENT_ID) == RESIDENT_ID:
            return check_resident_id(value)
        return value

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str | None) -> str | None:
        return None if value is None else check_phone(value)


class ApplicationIn(BaseModel):
    """What the front desk submits."""

    # a complete, valid application of the example city: client generators show it, and the
    # fuzz test's explicit phase sends it (so intake's accepted path is fuzzed too)
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "matter_code": "GG00301000",
                    "region": "339900",
                    "applicant": {
                        "name": "张三",
                        "id_number": "110101199003074514",
                        "phone": "13800138000",
                    },
                    "form": {},
                    "materials": [],
                    "delivery": {"method": "pickup"},
                }
            ]
        },
    )

    matter_code: str = Field(max_length=16, examples=["XK00123000"])
    region: str = Field(pattern=REGION_CODE, examples=["339901"])
    applicant: ApplicantIn
    form: CleanJson = Field(default_factory=dict)
    materials: list[CleanStr] = Field(
        default_factory=list, max_length=50, description="material ids from POST /v1/materials"
    )
    delivery: Delivery = Field(default_factory=Delivery)
    window: CleanStr | None = Field(default=None, max_length=32)
    clerk: CleanStr | None = Field(default=None, max_length=64)


class ApplicationAccepted(BaseModel):
    id: str
    receipt_number: str
    status: State
    department: str
    promised_by: dt.date | None
    promised_by_final: bool = Field(
        default=True,
        description="false: the holiday calendar does not cover the date yet, so it is an "
        "estimate (weekends only); it becomes final, with an event on the case, once the "
        "calendar covers it",
    )
    pickup_code: str | None = Field(
        default=None,
        description="give it to the applicant: with it (or their ID document) the result is "
        "collected",
    )


@dataclass(frozen=True)
class IntakeResult:
    accepted: ApplicationAccepted
    replayed: bool


def request_hash(body: ApplicationIn) -> str:
    """The body's fingerprint for Idempotency-Key checks. The model's own fields serialise in a
    fixed order (pydantic's fast path); the free-form ``form`` is sorted, so a client that
    re-sends it with its keys in another order is still sending the same application."""
    digest = hashlib.sha256(body.model_dump_json(exclude=_NOT_FORM).encode())
    digest.update(_SORTED_JSON.encode(body.form).encode())
    return digest.hexdigest()


_NOT_FORM = {"form"}
#: json.dumps(value, sort_keys=True, separators=(",", ":")), its encoder made once
_SORTED_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def _route(runtime: Runtime, body: ApplicationIn) -> Matter:
    try:
        matter = runtime.config.catalog.route(body.matter_code, body.region)
    except RouteError as exc:
        raise IntakeProblem(
            422,
            "Cannot route application",
            exc.message,
            exc.field,
            code=exc.code,
            params=exc.params,
        ) from exc
    dept = runtime.config.departments.get(matter.department)
    if dept is None or not dept.enabled:
        raise IntakeProblem(
            422,
            "Matter not available",
            f"matter {matter.code} is handled by department '{matter.department}', which is not "
            "accepting applications through the gateway yet",
            "matter_code",
            params={"matter": matter.code},
        )
    return matter


def _validate_form(runtime: Runtime, body: ApplicationIn, matter: Matter) -> None:
    errors: list[FieldError] = []
    if matter.form_validator is not None:
        errors.extend(_schema_problems(body.form, matter.form_validator))
    department = runtime.config.departments[matter.department]
    for text in runtime.plugins.validate_application(
        body.form, matter, body.region, body.applicant, department
    ):
        # a department plugin's own wording (its clerks' language), passed on as it is; the
        # hook's "form.area: must be positive" convention names the field
        path, sep, reason = text.partition(": ")
        if sep and re.fullmatch(r"(form|applicant)(\.[\w-]+|\[\d+\])*", path):
            errors.append(FieldError(path, "form_rejected", {"reason": reason}))
        else:
            errors.append(FieldError("form", "form_rejected", {"reason": text}))
    if errors:
        fields = ", ".join(dict.fromkeys(e.field for e in errors))
        raise IntakeProblem(
            422,
            "Form incomplete",
            f"the form of matter {matter.code} needs fixing: {fields}",
            code="form_incomplete",
            params={"matter": matter.code, "fields": fields},
            errors=errors,
        )


# JSON Schema keywords -> the API's field error codes (the same codes pydantic errors map to)
_SCHEMA_CODES = {
    "required": "required",
    "type": "wrong_type",
    "minLength": "too_short",
    "maxLength": "too_long",
    "minItems": "too_few",
    "maxItems": "too_many",
    "pattern": "bad_format",
    "format": "bad_format",
    "enum": "not_allowed",
    "const": "not_allowed",
    "minimum": "out_of_range",
    "maximum": "out_of_range",
    "exclusiveMinimum": "out_of_range",
    "exclusiveMaximum": "out_of_range",
    "additionalProperties": "unknown_field",
}


def _schema_problems(form: dict[str, Any], validator: Draft202012Validator) -> list[FieldError]:
    """One error per failing form field (``form.business_name``), never the validator's own
    wording (it quotes the schema and the value)."""
    out: list[FieldError] = []
    for error in sorted(validator.iter_errors(form), key=lambda e: list(e.absolute_path)):
        path = "form" + "".join(
            f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path
        )
        code = _SCHEMA_CODES.get(str(error.validator), "invalid")
        params: dict[str, Any] = {}
        value = error.validator_value
        if code == "required":
            given = form_at(form, list(error.absolute_path))
            for name in value:
                if not isinstance(given, dict) or name not in given:
                    out.append(FieldError(f"{path}.{name}", "required"))
            continue
        if code == "unknown_field":
            given = form_at(form, list(error.absolute_path))
            known = set(error.schema.get("properties", {}))
            for name in given if isinstance(given, dict) else []:
                if name not in known:
                    out.append(FieldError(f"{path}.{name}", "unknown_field"))
            continue
        if code in ("too_short", "too_few"):
            params["min"] = value
        elif code in ("too_long", "too_many"):
            params["max"] = value
        elif code == "not_allowed":
            params["allowed"] = ", ".join(map(str, value if isinstance(value, list) else [value]))
        elif code == "wrong_type":
            params["expected"] = value if isinstance(value, str) else "/".join(value)
        elif code == "out_of_range":
            params["bound"] = value
        out.append(FieldError(path, code, params))
    # jsonschema reports a missing property once per "required" it breaks: one item each
    return list({(e.field, e.code): e for e in out}.values())


def form_at(form: Any, path: list[Any]) -> Any:
    for part in path:
        try:
            form = form[part]
        except (KeyError, IndexError, TypeError):
            return None
    return form


async def _replay(
    conn: AsyncConnection, seen: _Seen, client: Client, key: str, digest: str
) -> IntakeResult | None:
    rec = (await seen.get(conn, [(client.id, key)])).get((client.id, key))
    if rec is None:
        return None
    answer = _answer_replay(rec, digest)
    if isinstance(answer, IntakeProblem):
        raise answer
    return answer


async def submit(runtime: Runtime, client: Client, key: str, body: ApplicationIn) -> IntakeResult:
    """Accept one application from a client already admitted (idempotent on ``(client,
    key)``). Returns once it is committed; raises the IntakeProblem that refuses it."""
    check = KeyCheck(None, _admitted, outcome=client)
    return await submit_keyed(runtime, check, key, body, check_body(runtime, body))


def _admitted(client: Client | None) -> Client:
    raise AssertionError("a KeyCheck with its outcome set is not judged again")


@dataclass
class KeyCheck:
    """The API key an application came with, judged in the transaction that stores it (one
    look-up per batch instead of a look-up's transaction and then the store's). ``admit`` is
    the API's verdict on what the look-up found (None: no such key): it raises to refuse
    (unknown or revoked key, no scope, over quota, a bad Idempotency-Key) or gives the client.
    ``digest`` None: nothing to look up, ``outcome`` is set already (a key from the config, a
    caller that has its client)."""

    digest: str | None  # sha256 of the key, as stored
    admit: Callable[[Client | None], Client]
    #: the verdict, kept: a batch stored again item by item (after a failure) does not look
    #: up and charge the quota twice
    outcome: Client | Exception | None = field(default=None)


@dataclass(frozen=True)
class Checked:
    """What the checks that need no key (route, form) said of a submission: its matter, or
    the problem that refuses it (answered only after the key's checks)."""

    digest: str  # the body's fingerprint (request_hash)
    matter: Matter | None
    problem: IntakeProblem | None = None


def check_body(runtime: Runtime, body: ApplicationIn) -> Checked:
    """Route and validate ``body``."""
    digest = request_hash(body)
    try:
        matter = _route(runtime, body)
        _validate_form(runtime, body, matter)
    except IntakeProblem as exc:
        return Checked(digest, None, exc)
    return Checked(digest, matter)


async def submit_keyed(
    runtime: Runtime, check: KeyCheck, key: str, body: ApplicationIn, checked: Checked
) -> IntakeResult:
    """Accept one application (idempotent on the client and ``key``), whose key is judged by
    ``check`` in the storing transaction; then, in this order, what refuses it: not a
    centre's key, the body's route and form (``checked``), its delivery. An application
    refused after the key was admitted replays the answer its Idempotency-Key got before, if
    any (config may have changed since: that answer still stands). Returns once it is
    committed; raises what refuses it."""
    answer = await _writer(runtime).submit(_Keyed(check, runtime, key, body, checked))
    if isinstance(answer, Exception):
        raise answer
    if not answer.replayed:
        runtime.new_work()  # new work for a dispatcher in this process
    return answer


def _not_a_centre() -> IntakeProblem:
    return IntakeProblem(403, "Not a centre key", "only a centre's key can submit applications")


def _delivery(runtime: Runtime, client: Client, body: ApplicationIn, matter: Matter) -> Delivery:
    assert client.centre is not None
    delivery = body.delivery
    if delivery.method != "pickup":
        return delivery
    pickup = delivery.centre or client.centre
    if pickup not in {c.code for c in runtime.config.gateway.centres}:
        raise IntakeProblem(
            422,
            "Unknown centre",
            f"no centre '{pickup}'",
            "delivery.centre",
            params={"centre": pickup},
        )
    if pickup != client.centre and not matter.pickup_anywhere:
        raise IntakeProblem(
            422,
            "Pickup centre not allowed",
            f"matter {matter.code} must be collected where it was handed in",
            "delivery.centre",
            params={"matter": matter.code},
        )
    return delivery.model_copy(update={"centre": pickup})


@dataclass(frozen=True)
class _Pending:
    client: Client
    key: str
    digest: str
    body: ApplicationIn
    matter: Matter
    delivery: Delivery


@dataclass(frozen=True)
class _Keyed:
    """A submission as it reaches the group commit: its key judged there."""

    check: KeyCheck
    runtime: Runtime  # for the checks that follow the key's
    key: str
    body: ApplicationIn
    checked: Checked


Answer = IntakeResult | Exception
#: submissions waiting for their commit before intake answers 503 (Overloaded): a database
#: slower than the front desk makes clients retry instead of growing this process's memory
QUEUE_LIMIT = 1000


def _writer(runtime: Runtime) -> GroupCommit[_Keyed, Answer]:
    """Group commit for intake: submissions that arrive together are stored in one transaction
    with multi-row inserts, each answered only after that commit (~8 statements per batch
    instead of ~8 and a commit per application)."""
    # idempotent: a batch stored by a COMMIT whose answer was lost is found by its keys
    return shared(
        runtime, "intake", lambda: _store_in_order, max_queue=QUEUE_LIMIT, idempotent=True
    )


async def _store_in_order(conn: AsyncConnection, batch: list[_Keyed]) -> list[Answer]:
    seen = _Seen()
    resolved = await _resolve_keys(conn, batch, seen)
    todo = [item for item in resolved if isinstance(item, _Pending)]
    answers = {id(item): answer for item, answer in await _store_batch(conn, todo, seen)}
    return [answers[id(item)] if isinstance(item, _Pending) else item for item in resolved]


async def _resolve_keys(
    conn: AsyncConnection, batch: list[_Keyed], seen: _Seen
) -> list[_Pending | Answer]:
    """One look-up for the batch's keys not judged yet, each judged by its ``admit``; then
    what refuses an application from an admitted key, in :func:`submit_keyed`'s order. The
    look-up reads the found clients' idempotency records of the batch's keys with them (one
    statement: ``seen``)."""
    unchecked = [i.check for i in batch if i.check.outcome is None]
    if unchecked:
        digests = {c.digest for c in unchecked if c.digest is not None}
        found: dict[str, Client] = {}
        if digests:
            # only keys that can be stored: a key the API refuses (a NUL in it, too long)
            # must not fail the batch's look-up (it is refused by its ``admit`` after it)
            keys = sorted({item.key for item in batch if _storable(item.key)})
            found = await _keys_and_records(conn, sorted(digests), keys, seen)
        for c in unchecked:
            try:
                c.outcome = c.admit(found.get(c.digest) if c.digest is not None else None)
            except Exception as exc:
                c.outcome = exc
    out: list[_Pending | Answer] = []
    for item in batch:
        client = item.check.outcome
        assert client is not None
        if isinstance(client, Exception):
            out.append(client)
            continue
        if client.centre is None:
            out.append(_not_a_centre())
            continue
        checked = item.checked
        try:
            if checked.problem is not None:
                raise checked.problem
            assert checked.matter is not None
            delivery = _delivery(item.runtime, client, item.body, checked.matter)
        except IntakeProblem as exc:
            try:  # an answer given to this key before still stands
                replay = await _replay(conn, seen, client, item.key, checked.digest)
            except IntakeProblem as conflict:
                out.append(conflict)
                continue
            out.append(replay or exc)
            continue
        out.append(_Pending(client, item.key, checked.digest, item.body, checked.matter, delivery))
    return out


async def _store_batch(
    conn: AsyncConnection, batch: list[_Pending], seen: _Seen | None = None
) -> list[tuple[_Pending, IntakeResult | IntakeProblem]]:
    """Store a batch in the caller's transaction; returns every item's answer (to be given
    only after commit). ``seen``: the idempotency records the transaction has read already."""
    answers: list[tuple[_Pending, IntakeResult | IntakeProblem]] = []
    seen = seen or _Seen()
    stored = await seen.get(conn, [(i.client.id, i.key) for i in batch])
    fresh: dict[tuple[str, str], _Pending] = {}
    repeats: list[_Pending] = []  # the same key twice in one batch: answered like the first
    for item in batch:
        ident = (item.client.id, item.key)
        if ident in stored:
            answers.append((item, _answer_replay(stored[ident], item.digest)))
        elif ident in fresh:
            repeats.append(item)
        else:
            fresh[ident] = item
    refs = await _batch_materials(conn, list(fresh.values()))
    ok: list[tuple[_Pending, list[dict[str, Any]]]] = []
    for item in fresh.values():
        found = refs[id(item)]
        if isinstance(found, IntakeProblem):
            answers.append((item, found))
        else:
            ok.append((item, found))
    if ok:
        answers += await _insert(conn, ok)
    first = {(i.client.id, i.key): (i, a) for i, a in answers}
    for item in repeats:
        original, answer = first[(item.client.id, item.key)]
        if original.digest != item.digest:
            answers.append((item, _conflict()))
        elif isinstance(answer, IntakeResult):
            answers.append((item, IntakeResult(answer.accepted, replayed=True)))
        else:
            answers.append((item, answer))
    return answers


def _conflict() -> IntakeProblem:
    return IntakeProblem(
        409,
        "Idempotency-Key reused",
        "this Idempotency-Key was already used for a different application; use a new key "
        "for a new application",
        "Idempotency-Key",
    )


def _answer_replay(record: _Record, digest: str) -> IntakeResult | IntakeProblem:
    if record.request_hash != digest:
        return _conflict()
    return IntakeResult(ApplicationAccepted.model_validate(record.response), replayed=True)


class _Record(NamedTuple):
    """What an idempotency record says about the answer given to its key."""

    request_hash: str
    response: dict[str, Any]


#: the idempotency records of some clients' keys (a superset of the pairs asked for: every
#: client with every key; the pairs are picked in Python). One statement text on each engine
_RECORDS = driver.Query(
    lambda one_of: select(
        idempotency_records.c.client_id,
        idempotency_records.c.key,
        idempotency_records.c.request_hash,
        idempotency_records.c.response,
    ).where(
        one_of(idempotency_records.c.client_id, "clients"),
        one_of(idempotency_records.c.key, "keys"),
    )
)


async def _records(
    conn: AsyncConnection, pairs: list[tuple[str, str]]
) -> dict[tuple[str, str], _Record]:
    """The idempotency records of these (client id, key) pairs."""
    wanted = set(pairs)
    params = {"clients": sorted({c for c, _k in wanted}), "keys": sorted({k for _c, k in wanted})}
    return {
        (client_id, key): _Record(request_hash, response)
        for client_id, key, request_hash, response in await _RECORDS.all(conn, params)
        if (client_id, key) in wanted
    }


#: the longest Idempotency-Key (idempotency_records.key's length): the API refuses longer ones
IDEMPOTENCY_KEY_LENGTH = 200


def _storable(key: str) -> bool:
    """A key the API accepts (and so one a look-up can bind): printable, not too long."""
    return len(key) <= IDEMPOTENCY_KEY_LENGTH and key.isprintable()


class _Seen:
    """The idempotency records one batch's transaction has read. A (client id, key) pair is
    known when it was asked for, or when its client is one the key look-up found and its key
    one of the batch's (:func:`_keys_and_records`): its record is in ``records``, or it has
    none. Others are read when asked for."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], _Record] = {}
        self.known: set[tuple[str, str]] = set()
        self.clients: set[str] = set()  # found by the key look-up: of every key in ``keys``
        self.keys: frozenset[str] = frozenset()

    def _known(self, pair: tuple[str, str]) -> bool:
        return pair in self.known or (pair[0] in self.clients and pair[1] in self.keys)

    async def get(
        self, conn: AsyncConnection, pairs: list[tuple[str, str]]
    ) -> dict[tuple[str, str], _Record]:
        """The records of these pairs (read now if not known yet)."""
        missing = [pair for pair in pairs if not self._known(pair)]
        if missing:
            self.records.update(await _records(conn, missing))
            self.known.update(missing)
        return {pair: self.records[pair] for pair in pairs if pair in self.records}


#: the valid clients among some key digests, each with its idempotency records of some keys
#: (a row per record, or one with a null key when it has none): the key look-up and the
#: idempotency read of a batch in one statement (one round trip on PostgreSQL, one hand-off
#: to SQLite's thread). The client's columns are :func:`gateway.store.clients.find_many`'s
def _keys_and_records_statement(one_of: OneOf) -> Select[Any]:
    return (
        select(
            api_clients.c.key_hash,
            api_clients.c.id,
            api_clients.c.name,
            api_clients.c.centre,
            api_clients.c.ops,
            idempotency_records.c.key,
            idempotency_records.c.request_hash,
            idempotency_records.c.response,
        )
        .select_from(
            api_clients.outerjoin(
                idempotency_records,
                and_(
                    idempotency_records.c.client_id == api_clients.c.id,
                    one_of(idempotency_records.c.key, "keys"),
                ),
            )
        )
        .where(one_of(api_clients.c.key_hash, "hashes"), valid_key())
    )


_KEYS_AND_RECORDS = driver.Query(_keys_and_records_statement)
#: PostgreSQL: straight through asyncpg (gateway.store.driver_pg: the same statement and rows)
_KEYS_AND_RECORDS_PG = driver_pg.Statement(PerEngine(_keys_and_records_statement).postgresql)


async def _keys_and_records(
    conn: AsyncConnection, digests: list[str], keys: list[str], seen: _Seen
) -> dict[str, Client]:
    """The valid clients among these key digests (as :func:`find_many` finds them); their
    idempotency records of ``keys`` go to ``seen``."""
    found: dict[str, Client] = {}
    params = {"hashes": digests, "keys": keys, "at": now()}
    if is_postgresql(conn):
        rows: list[Any] = await _KEYS_AND_RECORDS_PG.rows(conn, params)
    else:
        rows = await _KEYS_AND_RECORDS.all(conn, params)
    for key_hash, client_id, name, centre, ops, key, request_hash, response in rows:
        if key_hash not in found:
            found[key_hash] = Client(client_id, name, centre, ops)
        if key is not None:
            seen.records[(client_id, key)] = _Record(request_hash, response)
    seen.clients.update(client.id for client in found.values())
    seen.keys = frozenset(keys)
    return found


async def _batch_materials(
    conn: AsyncConnection, batch: list[_Pending]
) -> dict[int, list[dict[str, Any]] | IntakeProblem]:
    wanted = {m for item in batch for m in item.body.materials}
    rows: dict[str, Any] = {}
    if wanted:
        q = select(materials).where(materials.c.id.in_(wanted))
        rows = {r.id: r for r in (await conn.execute(q)).all()}
    out: dict[int, list[dict[str, Any]] | IntakeProblem] = {}
    for item in batch:
        try:
            out[id(item)] = _material_refs(item.client, item.body.materials, rows, "materials")
        except IntakeProblem as exc:
            out[id(item)] = exc
    return out


async def _insert(
    conn: AsyncConnection, ok: list[tuple[_Pending, list[dict[str, Any]]]]
) -> list[tuple[_Pending, IntakeResult | IntakeProblem]]:
    at = now()
    receipts = await _receipt_numbers(conn, [item.client.centre or "" for item, _r in ok], at)
    today = at.astimezone(CHINA).date()
    at_text = canonical_time(at)  # the events' time as their hash chain writes it
    apps, evs, jbs, idem, hand = [], [], [], [], []
    promised: dict[int, tuple[dt.date, bool]] = {}  # a batch's matters share a few deadlines
    answers: list[tuple[_Pending, IntakeResult | IntakeProblem]] = []
    for (item, refs), receipt in zip(ok, receipts, strict=True):
        client, body, matter = item.client, item.body, item.matter
        app_id = new_id("a")
        days = matter.promised_days
        if days not in promised:
            promised[days] = add_workdays(today, days)
        promised_by, covered = promised[days]
        delivery = item.delivery.model_dump(mode="json")
        apps.append(
            {
                "id": app_id,
                "receipt_number": receipt,
                "client_id": client.id,
                "centre": client.centre,
                "window": body.window,
                "clerk": body.clerk,
                "matter_code": matter.code,
                "matter_name": matter.name,
                "region": body.region,
                "department": matter.department,
                "status": State.RECEIVED.value,
                "version": 1,
                "applicant": body.applicant.model_dump(mode="json"),
                "form": body.form,
                "materials": refs,
                "delivery": delivery,
                "idempotency_key": item.key,
                "promised_by": promised_by,
                "promised_final": covered,
                "created_at": at,
                "updated_at": at,
            }
        )
        event = {
            "application_id": app_id,
            "version": 1,
            "at": at,
            "source": Source.API.value,
            "actor": f"{client.centre}/{body.clerk or client.name}",
            "from_status": None,
            "to_status": State.RECEIVED.value,
            "detail": {"receipt_number": receipt},
        }
        apps[-1]["events_hash"] = seal_first_event(event, at_text)
        evs.append(event)
        jbs.append(jobs.new_job_row(app_id, 1, matter.department, at))
        row, code = new_handover(app_id, delivery, client.centre or "")
        hand.append(row)
        accepted = ApplicationAccepted(
            id=app_id,
            receipt_number=receipt,
            status=State.RECEIVED,
            department=matter.department,
            promised_by=promised_by,
            promised_by_final=covered,
            pickup_code=code,
        )
        response = {  # accepted.model_dump(mode="json"), written out
            "id": app_id,
            "receipt_number": receipt,
            "status": State.RECEIVED.value,
            "department": matter.department,
            "promised_by": promised_by.isoformat(),
            "promised_by_final": covered,
            "pickup_code": code,
        }
        idem.append(
            {
                "client_id": client.id,
                "key": item.key,
                "request_hash": item.digest,
                "status_code": 201,
                "response": response,
                "created_at": at,
            }
        )
        answers.append((item, IntakeResult(accepted, replayed=False)))
    batch: tuple[tuple[Table, list[dict[str, Any]]], ...] = (
        (applications, apps),
        (events, evs),
        (dispatch_jobs, jbs),
        (handovers, hand),
        (idempotency_records, idem),
    )
    if is_postgresql(conn):
        await _insert_at_once(conn, batch)
    else:
        for table, rows in batch:
            await driver.insert_many(conn, table, rows)
    await outbox.fan_out(conn, [str(row["id"]) for row in apps], at)
    await mark_used(conn, [m["id"] for _item, refs in ok for m in refs], at)
    return answers


async def _insert_at_once(
    conn: AsyncConnection, batch: tuple[tuple[Table, list[dict[str, Any]]], ...]
) -> None:
    """PostgreSQL: a batch's multi-row INSERTs as ONE statement (one round trip instead of
    one a table): each column's values are one array parameter, ``unnest`` makes rows of
    them, every INSERT but the first a CTE of the first's. The foreign keys to the new
    applications hold: PostgreSQL checks them at the end of the statement."""
    shape = tuple((table, tuple(rows[0])) for table, rows in batch)
    params = {
        f"t{i}_{name}": [row[name] for row in rows]
        for i, (_table, rows) in enumerate(batch)
        for name in rows[0]
    }
    await _insert_statement(shape).run(conn, params)


@functools.cache
def _insert_statement(shape: tuple[tuple[Table, tuple[str, ...]], ...]) -> driver_pg.Statement:
    """:func:`_insert_at_once`'s statement, sent straight through asyncpg (prebuilt, cached)."""
    return driver_pg.Statement(_insert_at_once_statement(shape))


def _insert_at_once_statement(shape: tuple[tuple[Table, tuple[str, ...]], ...]) -> Insert:
    """The statement of :func:`_insert_at_once` for these tables and columns (prebuilt)."""
    inserts = []
    for i, (table, names) in enumerate(shape):
        # typed arrays: the dialect casts each ($1::VARCHAR(32)[]) and binds each item as the
        # column's own type does (UTC datetimes, JSON, the applicant sealed); one dimension,
        # so a JSON value that is a list stays one item
        arrays = [
            bindparam(f"t{i}_{name}", type_=ARRAY(table.c[name].type, dimensions=1))
            for name in names
        ]
        rows = func.unnest(*arrays).table_valued(*names).render_derived(name=f"r{i}")
        inserts.append(insert(table).from_select(names, select(rows)))
    first, *rest = inserts
    return first.add_cte(*(stmt.cte(f"i{i}") for i, stmt in enumerate(rest, 1)))


async def mark_used(conn: AsyncConnection, material_ids: list[str], at: dt.datetime) -> None:
    """Materials an application or supplement refers to no longer expire."""
    if material_ids:
        await conn.execute(
            update(materials)
            .where(materials.c.id.in_(sorted(set(material_ids))), materials.c.used_at.is_(None))
            .values(used_at=at)
        )


def _receipt_upsert(ins: Any) -> Any:
    # one statement per centre in a batch: ``n`` receipt numbers taken at once
    n = bindparam("n", type_=Integer())
    return (
        ins(receipt_counters)
        .values(centre=bindparam("centre"), day=bindparam("day"), last=n)
        .on_conflict_do_update(
            index_elements=["centre", "day"], set_={"last": receipt_counters.c.last + n}
        )
        .returning(receipt_counters.c.last)
    )


_RECEIPTS_PG = driver_pg.Statement(_receipt_upsert(pg_insert))
_RECEIPTS_SQLITE = driver.Query(lambda _one_of: _receipt_upsert(sqlite_insert))


async def _receipt_numbers(conn: AsyncConnection, centres: list[str], at: dt.datetime) -> list[str]:
    """Receipt numbers, unique per centre per day, for applications from ``centres``."""
    day = at.astimezone(CHINA).strftime("%Y%m%d")
    wanted = Counter(centres)
    last: dict[str, int] = {}
    for centre, n in wanted.items():
        params = {"centre": centre, "day": day, "n": n}
        if is_postgresql(conn):
            [(last[centre],)] = await _RECEIPTS_PG.fetch(conn, params)
        else:
            [(last[centre],)] = await _RECEIPTS_SQLITE.all(conn, params)
    next_seq = {c: last[c] - n + 1 for c, n in wanted.items()}
    out = []
    for centre in centres:
        out.append(f"{centre}-{day}-{next_seq[centre]:05d}")
        next_seq[centre] += 1
    return out


async def resolve_materials(
    conn: AsyncConnection, client: Client, ids: list[str], field: str = "materials"
) -> list[dict[str, Any]]:
    """Material references for ids this client's centre uploaded (IntakeProblem naming the
    first unknown one)."""
    if not ids:
        return []
    q = select(materials).where(materials.c.id.in_(ids))
    return _material_refs(client, ids, {r.id: r for r in (await conn.execute(q)).all()}, field)


def _material_refs(
    client: Client, ids: list[str], rows: dict[str, Any], field: str
) -> list[dict[str, Any]]:
    out = []
    for i, mid in enumerate(ids):
        row = rows.get(mid)
        if row is None or (row.centre != client.centre and not client.ops):
            raise IntakeProblem(
                422,
                "Unknown material",
                f"no material '{mid}' uploaded by this "
                "centre; upload it with POST /v1/materials first",
                f"{field}[{i}]",
                params={"material": mid},
            )
        out.append(
            {
                "id": row.id,
                "sha256": row.sha256,
                "filename": row.filename,
                "content_type": row.content_type,
                "size": row.size,
            }
        )
    return out
