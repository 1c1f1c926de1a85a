"""Business answers inside HTTP 200: ``{"code": "5001", "msg": "系统繁忙"}`` and the like.

Many government back offices answer every call with HTTP 200 and put the outcome in the body.
:func:`read_outcome` reads the code where ``[options.envelope]`` says and turns it into what the
gateway understands::

    code in success      -> "ok"
    code in exists       -> "exists"   (submit: the department already held the case)
    code in transient    -> TransientError      (retried later, never failed)
    code in refused      -> DepartmentRejected  (the department's message is the reason)
    code in not_found    -> CaseNotFound        (poll and withdraw; permanent elsewhere)
    any other code       -> PermanentError naming the code and the message
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from gateway.errors import CaseNotFound, DepartmentRejected, PermanentError, TransientError
from gateway.mapping import MISSING, get_path
from gateway_rest.options import EnvelopeOptions

__all__ = ["Outcome", "read_outcome"]

Outcome = Literal["ok", "exists"]
#: the longest department message kept in a reason (it is shown to clerks and ops)
MAX_MESSAGE = 300


def read_outcome(
    data: Any,
    spec: EnvelopeOptions,
    *,
    where: Callable[[str], str],
    echo: Callable[[str], str],
    reject_status: str,
    department: str,
    case_id: str | None = None,
) -> Outcome:
    """Judge one answer by its business code; raises for anything but success or exists.

    ``where`` prefixes a message with the department and call; ``echo`` masks the applicant's
    ID number and phone if the department repeats them in its message."""
    raw = get_path(data, spec.code)
    if raw in (None, MISSING):
        raise PermanentError(where(f"answer has no {spec.code!r} (check [options.envelope])"))
    code = str(raw)
    message = get_path(data, spec.message)
    text = echo("" if message in (None, MISSING) else str(message))[:MAX_MESSAGE]
    said = f"department code {code}" + (f": {text}" if text else "")
    if code in spec.success:
        return "ok"
    if code in spec.exists:
        return "exists"
    if code in spec.transient:
        raise TransientError(where(said))
    if code in spec.refused:
        raise DepartmentRejected(text or said, status=reject_status)
    if code in spec.not_found and case_id is not None:
        raise CaseNotFound(department, case_id, said)
    raise PermanentError(where(said))
