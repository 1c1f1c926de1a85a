"""Checks of identity data at intake: resident ID numbers and phone numbers.

A resident ID number (``id_type = "resident_id"``, the default) must be a valid GB 11643 number:
18 characters, a known region, a real birth date and the right check digit (python-stdnum's
``cn.ric``). A phone number must be a mainland mobile number (11 digits, 13x-19x; ``+86`` may
precede it) or a landline with its area code (0 and 9-11 more digits; a hyphen may follow the
area code). Messages never repeat the number: it is personal data.
"""

from __future__ import annotations

import re

from stdnum.cn import ric
from stdnum.exceptions import InvalidChecksum, InvalidComponent, InvalidFormat, InvalidLength

RESIDENT_ID = "resident_id"
_MOBILE = re.compile(r"^(?:\+?86)?1[3-9]\d{9}$")
_LANDLINE = re.compile(r"^0\d{2,3}-?\d{7,8}$")


def check_resident_id(value: str) -> str:
    """The number, upper-cased (a final ``x`` is ``X``); ValueError saying what is wrong."""
    try:
        return str(ric.validate(value.strip()))
    except InvalidLength:
        raise ValueError("must be 18 long: 17 digits and a check digit (or X)") from None
    except InvalidFormat:
        raise ValueError("must be 17 digits and a check digit (or X)") from None
    except InvalidChecksum:
        raise ValueError("the check digit does not match: the number was mistyped") from None
    except (InvalidComponent, LookupError):
        # stdnum raises KeyError for a region known only at province level: still bad input
        raise ValueError("the birth date or region in the number is not valid") from None


def check_phone(value: str) -> str:
    compact = value.replace(" ", "")
    if _MOBILE.match(compact) or _LANDLINE.match(compact):
        return compact
    raise ValueError(
        "not a mainland mobile number (11 digits starting 13-19) or a landline with its area "
        "code (such as 0571-88888888)"
    )
