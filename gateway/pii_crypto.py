"""Opt-in field-level encryption of applicants' ID and phone numbers (``[gateway.security]``).

With ``pii_key`` set, ``applicant.id_number`` and ``applicant.phone`` are stored as
``pii:v1:<key id>:<base64url(nonce + AES-256-GCM ciphertext and tag)>``. The key id is the first
8 hex digits of HMAC-SHA256(key, "onewindow pii key id"): it names the key without revealing
it, so a value written with another key is recognised as such, never decrypted into garbage
(GCM's tag would refuse it anyway). The field name is the associated data: an ID number cannot
be moved into the phone field. A value without the prefix is clear, as written before the key
was set (or with no key): it is read as it is.

The encryption happens in the ``applicant`` column's type (:class:`gateway.store.tables.Sealed`),
so every reader of the column (API views, hand-out checks, envelopes sent to departments,
notifications, the console, the CLI) gets clear values and nothing else changes. Which key
decrypts is the engine's: :func:`use` attaches a :class:`PiiCipher` to an engine's dialect.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import weakref
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Dialect

from gateway.errors import ConfigError, ConfigProblem

PREFIX = "pii:v1:"
#: the applicant fields encrypted when a key is set
FIELDS = ("id_number", "phone")
SETTING = "gateway.security.pii_key"
_NONCE = 12
_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")


def parse_key(text: str) -> bytes:
    """32 bytes from base64 (``openssl rand -base64 32``) or 64 hex digits; ValueError else
    (the message never repeats the value)."""
    text = text.strip()
    if _HEX_KEY.fullmatch(text):
        return bytes.fromhex(text)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ValueError(
            "must be 32 random bytes as base64 (openssl rand -base64 32) or 64 hex digits"
        )
    return raw


def key_id(key: bytes) -> str:
    return hmac.new(key, b"onewindow pii key id", hashlib.sha256).hexdigest()[:8]


def _problem(message: str) -> ConfigError:
    return ConfigError([ConfigProblem("gateway.toml", SETTING, message)])


class PiiCipher:
    """Encrypts with the current key; decrypts with it or any previous key (rotation)."""

    def __init__(self, key: bytes, previous: Iterable[bytes] = ()) -> None:
        # imported here: only a gateway with a pii_key pays for it (~0.1 s of every start)
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.key_id = key_id(key)
        self._current = AESGCM(key)
        self._keys = {key_id(k): AESGCM(k) for k in previous}
        self._keys[self.key_id] = self._current

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def seal(self, field: str, value: str) -> str:
        nonce = os.urandom(_NONCE)
        aad = f"{PREFIX}{field}".encode()
        data = self._current.encrypt(nonce, value.encode("utf-8", "surrogatepass"), aad)
        token = base64.urlsafe_b64encode(nonce + data).rstrip(b"=").decode("ascii")
        return f"{PREFIX}{self.key_id}:{token}"

    def open(self, field: str, value: str) -> str:
        kid, _, token = value[len(PREFIX) :].partition(":")
        aes = self._keys.get(kid)
        if aes is None:
            raise _problem(
                f"an applicant's {field} is encrypted with key id {kid}, which is neither "
                f"pii_key (key id {self.key_id}) nor one of pii_previous_keys: set "
                "GATEWAY_PII_KEY (or the reference in [gateway.security]) to the key it was "
                "written with"
            )
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            clear = aes.decrypt(raw[:_NONCE], raw[_NONCE:], f"{PREFIX}{field}".encode())
        except Exception as exc:  # InvalidTag, bad base64: altered or not ours
            raise _problem(
                f"an applicant's {field} (key id {kid}) does not decrypt: the stored value "
                "was altered or the key is not the one it was written with"
            ) from exc
        return clear.decode("utf-8", "surrogatepass")


def is_sealed(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def seal_applicant(applicant: Any, cipher: PiiCipher | None) -> Any:
    """The applicant as stored: its ID and phone numbers encrypted when there is a key."""
    if cipher is None or not isinstance(applicant, Mapping):
        return applicant
    out = dict(applicant)
    for field in FIELDS:
        value = out.get(field)
        if isinstance(value, str) and value and not is_sealed(value):
            out[field] = cipher.seal(field, value)
    return out


def open_applicant(applicant: Any, cipher: PiiCipher | None) -> Any:
    """The applicant as read: encrypted fields decrypted, clear ones as they are. An encrypted
    field and no key is a :class:`ConfigError` naming the setting, never a ciphertext passed
    on as an ID number."""
    if not isinstance(applicant, dict) or not any(is_sealed(applicant.get(f)) for f in FIELDS):
        return applicant
    out = dict(applicant)
    for field in FIELDS:
        value = out.get(field)
        if isinstance(value, str) and is_sealed(value):
            if cipher is None:
                raise _problem(
                    f"applicants' {field}s are stored encrypted (key id "
                    f"{value[len(PREFIX) :].partition(':')[0]}) but pii_key is not set: set "
                    "it to the key they were written with"
                )
            out[field] = cipher.open(field, value)
    return out


_CIPHERS: weakref.WeakKeyDictionary[Dialect, PiiCipher] = weakref.WeakKeyDictionary()


def use(dialect: Dialect, cipher: PiiCipher | None) -> None:
    """Make ``cipher`` the one the engine of ``dialect`` encrypts and decrypts with."""
    if cipher is None:
        _CIPHERS.pop(dialect, None)
    else:
        _CIPHERS[dialect] = cipher


def cipher_of(dialect: Dialect) -> PiiCipher | None:
    return _CIPHERS.get(dialect)


def check_keys(recorded: Iterable[str], cipher: PiiCipher | None) -> None:
    """Refuse to start when the database holds values written with a key we do not have:
    ``recorded`` are the key ids the database says it has used (table ``pii_keys``)."""
    missing = sorted(set(recorded) - (cipher.key_ids if cipher else frozenset()))
    if not missing:
        return
    if cipher is None:
        raise _problem(
            f"the database holds ID and phone numbers encrypted with key id "
            f"{', '.join(missing)}, but pii_key is not set: set it (e.g. pii_key = "
            '"${GATEWAY_PII_KEY}") to that key'
        )
    raise _problem(
        f"the database holds ID and phone numbers encrypted with key id {', '.join(missing)}; "
        f"pii_key has key id {cipher.key_id}: this is not the key they were written with "
        "(give the old key as pii_key, or in pii_previous_keys while rotating)"
    )


__all__ = [
    "FIELDS",
    "PREFIX",
    "SETTING",
    "PiiCipher",
    "check_keys",
    "cipher_of",
    "is_sealed",
    "key_id",
    "open_applicant",
    "parse_key",
    "seal_applicant",
    "use",
]
