"""A department's settings as the console shows them: every secret replaced, never shown."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, SecretStr

from gateway.config.models import DepartmentConfig

HIDDEN = "••••••"
#: names whose values are secret even when the model types them as plain strings
_SECRET_WORDS = ("secret", "token", "password", "passphrase", "key", "credential", "auth")


def _is_secret_name(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def _clean(value: Any, name: str = "") -> Any:
    if isinstance(value, SecretStr | bytes):
        return HIDDEN
    if isinstance(value, BaseModel):
        value = dict(value)
    if isinstance(value, dict):
        return {str(k): _clean(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v, name) for v in value]
    if name and _is_secret_name(name) and value not in (None, "", False):
        return HIDDEN
    return value


def shown_settings(dept: DepartmentConfig) -> list[tuple[str, str]]:
    """(dotted key, value) of every setting, secrets hidden."""
    flat: list[tuple[str, str]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat.append((prefix, str(value)[:200]))

    walk("", _clean(dept))
    return flat
