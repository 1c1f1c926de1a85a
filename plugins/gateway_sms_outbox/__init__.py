"""Example notifier: texts the applicant at the steps where they must act, by appending to an SMS
outbox file (JSON lines) that an SMS gateway would send from.

Set ``GATEWAY_SMS_OUTBOX`` to the file; unset, the plugin does nothing. The phone number is
written masked (``138****8000``) with the application id, so the file is safe to keep and read;
the sender looks the real number up by the id. No name or ID number is ever written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from gateway.events import StatusChange
from gateway.hookspecs import hookimpl
from gateway.notifications import Contact
from gateway.states import State

__all__ = ["MESSAGES", "status_changed"]

MESSAGES: dict[State, str] = {
    State.SUPPLEMENT_REQUIRED: "您的申请（受理号{receipt}）需补正材料，请携带材料到窗口办理。",
    State.READY_FOR_PICKUP: (
        "您的申请（受理号{receipt}）已办结，请凭身份证件或取件码到{centre}领取。"
    ),
    State.MAILED: "您的办理结果（受理号{receipt}）已寄出，{carrier}运单号{tracking}。",
    State.WITHDRAWN: "您的申请（受理号{receipt}）已撤回。",
    State.FAILED: "您的申请（受理号{receipt}）暂未能送达审批部门，工作人员正在处理。",
}


@hookimpl
def status_changed(change: StatusChange, contact: Contact | None) -> None:
    template = MESSAGES.get(change.to_status)
    if template is None or contact is None or contact.phone is None:
        return  # most changes (delivered, decided): no text, and no environment read
    outbox = os.environ.get("GATEWAY_SMS_OUTBOX")
    if not outbox:
        return
    text = template.format(
        receipt=change.receipt_number,
        centre=change.detail.get("centre", change.centre),
        carrier=change.detail.get("carrier", ""),
        tracking=change.detail.get("tracking_number", ""),
    )
    line = {
        "at": change.at.isoformat(),
        "application_id": change.application_id,
        "receipt_number": change.receipt_number,
        "status": change.to_status.value,
        "to": contact.masked_phone,
        "text": text,
    }
    path = Path(outbox)
    path.parent.mkdir(parents=True, exist_ok=True)
    # one short O_APPEND write per line: lines from several processes do not interleave
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(line, ensure_ascii=False) + "\n")
