"""Request signing over sorted parameters, as many government gateways ask for.

The signed text is every ``name=value`` pair sorted by name and joined with ``&`` (empty values
left out): the app id, timestamp and nonce, the query parameters, the form fields, or a JSON body
as one pair under ``body_name``. ``md5``, ``sha256`` and ``sm3`` digest the text followed by
``&<secret_name>=<secret>``; ``hmac-sha256`` keys an HMAC with the secret. The signature is hex,
upper case unless ``uppercase = false``. SM3 (GB/T 32905) comes from gmssl.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Callable, Mapping

from gmssl import func as _gm_func
from gmssl import sm3 as _gm_sm3

from gateway_rest.options import SigningOptions

__all__ = ["digest", "sign_parameters", "signed_text"]


def signed_text(pairs: Mapping[str, str]) -> str:
    """``a=1&b=2``: pairs sorted by name, empty values left out."""
    return "&".join(f"{k}={v}" for k, v in sorted(pairs.items()) if v != "")


def digest(algorithm: str, text: str, secret: str, *, secret_name: str = "key") -> str:
    """The lower-case hex signature of ``text`` with ``secret`` by ``algorithm``."""
    if algorithm == "hmac-sha256":
        return hmac.new(secret.encode(), text.encode(), hashlib.sha256).hexdigest()
    salted = (f"{text}&{secret_name}={secret}" if secret_name else text + secret).encode()
    if algorithm == "md5":
        return hashlib.md5(salted, usedforsecurity=False).hexdigest()
    if algorithm == "sha256":
        return hashlib.sha256(salted).hexdigest()
    if algorithm == "sm3":
        return str(_gm_sm3.sm3_hash(_gm_func.bytes_to_list(salted)))
    raise ValueError(f"unknown signing algorithm {algorithm!r}")


def sign_parameters(
    spec: SigningOptions,
    params: Mapping[str, str],
    *,
    clock: Callable[[], float] = time.time,
    nonce: Callable[[], str] = lambda: uuid.uuid4().hex,
) -> dict[str, str]:
    """The app id, timestamp, nonce and signature to send with a request whose signed
    parameters (query, form fields, or the JSON body under ``body_name``) are ``params``."""
    stamp = clock()
    added = {
        spec.app_id_name: spec.app_id,
        spec.timestamp_name: str(int(stamp * 1000) if spec.timestamp_unit == "ms" else int(stamp)),
        spec.nonce_name: nonce(),
    }
    text = signed_text({**params, **added})
    signature = digest(
        spec.algorithm, text, spec.secret.get_secret_value(), secret_name=spec.secret_name
    )
    added[spec.sign_name] = signature.upper() if spec.uppercase else signature
    return added
