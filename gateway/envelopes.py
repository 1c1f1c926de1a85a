"""What a department receives: an application version as an :class:`Envelope`, and the
idempotency key that names it on every attempt."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row

from gateway.connector import Applicant, Envelope, MaterialRef


def idempotency_key(application_id: str, version: int) -> str:
    """What the department sees: stable across attempts, new per supplement version."""
    return f"ow-{application_id}-v{version}"


def envelope_for(app: Row[Any]) -> Envelope:
    return Envelope(
        application_id=app.id,
        idempotency_key=idempotency_key(app.id, app.version),
        version=app.version,
        department=app.department,
        matter_code=app.matter_code,
        matter_name=app.matter_name,
        region=app.region,
        receipt_number=app.receipt_number,
        centre=app.centre,
        applicant=Applicant.model_validate(app.applicant),
        form=app.form,
        materials=[MaterialRef.model_validate(m) for m in app.materials],
        submitted_at=app.created_at,
    )


__all__ = ["envelope_for", "idempotency_key"]
