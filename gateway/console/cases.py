"""One case as the console shows it: ID and phone numbers masked everywhere, event details
scrubbed (a department may echo personal data in a reason)."""

from __future__ import annotations

import json
from typing import Any

from gateway import deadlines, documents
from gateway.pii import mask_id, mask_phone, scrub
from gateway.runtime import Runtime
from gateway.states import FINAL, State
from gateway.store import cases

_MASKS = {"id_number": mask_id, "phone": mask_phone}


def masked(applicant: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in (applicant if isinstance(applicant, dict) else {}).items():
        text = "" if value is None else str(value)
        mask = _MASKS.get(str(key))
        out[str(key)] = (mask(text) or "") if mask else scrub(text)
    return out


def detail_text(detail: Any) -> str:
    text = json.dumps(detail, ensure_ascii=False, sort_keys=True, default=str)
    return scrub(text)[:400]


async def case_page(runtime: Runtime, query: str) -> dict[str, Any] | None:
    """The case with this application id or receipt number, ready to show; None when none."""
    async with runtime.engine.connect() as conn:
        app = await cases.get_application(conn, query) or await cases.by_receipt(conn, query)
        if app is None:
            return None
        history = await cases.history(conn, app.id)
        docs = await documents.for_application(conn, app.id)
        pauses = await deadlines.pause_history(conn, [app.id])
    deadline = None
    if app.promised_by is not None and State(app.status) not in FINAL:
        deadline = deadlines.deadline_of(app, pauses.get(app.id, []), deadlines.today())
    return {
        "app": app,
        "applicant": masked(app.applicant),
        "history": [(e, detail_text(e.detail)) for e in history],
        "documents": docs,
        "delivery": {k: scrub(str(v)) for k, v in (app.delivery or {}).items()},
        "deadline": deadline,
        "last_error": scrub(app.last_error or ""),
    }
